//! The records both outbox stores (the embedded redb file and PostgreSQL) keep and hand
//! back: a push, what an idempotency key has seen, a journal record, per-peer counts.

use serde::{Deserialize, Serialize};

/// One push waiting in the outbox (or dead-lettered). Holds the application's plain
/// JSON: the state directory must be readable by the sidecar's user only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Push {
    pub id: u64,
    pub peer: String,
    /// The egress route it came in on (for operators).
    pub route: String,
    /// Path after the peer's url.
    pub remote: String,
    /// Envelope layers at the time it was accepted, outermost first.
    pub layers: Vec<String>,
    /// The application's JSON, as sent.
    pub body: String,
    /// When the application handed it over (ms since the epoch).
    pub created_ms: u64,
    /// Start of its current life in the queue (reset by `outbox retry`); `max_age` counts from here.
    pub queued_ms: u64,
    pub attempts: u32,
    pub next_attempt_ms: u64,
    pub last_error: Option<String>,
    pub max_age_ms: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub timeout_ms: u64,
    /// Idempotency key, when the push carries (`userid`, `ticketNo`, `applicationStatus`).
    pub idem: Option<String>,
    /// Journal date it was filed under, if journaled.
    pub journal_date: Option<String>,
    pub dead_reason: Option<String>,
}

/// What an idempotency key has seen.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Seen {
    pub id: u64,
    pub delivered: bool,
    pub at_ms: u64,
}

/// The outcome of enqueueing a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Written; the new id.
    New(u64),
    /// The same push was already queued or delivered.
    Duplicate(Seen),
}

/// A journal record to write with a push.
#[derive(Debug, Clone)]
pub struct JournalEntry {
    pub date: String,
    pub json: String,
}

/// Counts for metrics and `outbox list`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub queued: u64,
    pub oldest_queued_ms: Option<u64>,
    pub dead: u64,
}
