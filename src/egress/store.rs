//! One interface to the outbox, dead letters, idempotency keys and journal, whichever
//! store holds them: the embedded redb file ([`super::outbox::Store`], the default, one
//! process) or PostgreSQL ([`super::pg::PgStore`], `state.backend.postgres`, a fleet).
//!
//! The redb calls block on disk and run on the blocking pool; the PostgreSQL calls are
//! async. Delivery takes a peer's head with [`Outbox::take_head`] and writes the outcome
//! with the [`Head`] it got, which for PostgreSQL holds the row lock until then.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, OwnedMutexGuard};

use super::blocking;
use super::outbox::{Enqueued, JournalEntry, PeerStats, Push, Seen, Sending, Store, StoreError};
use super::pg::{PgClaim, PgHead, PgStore, PgTaken};

/// The store of one runtime's egress.
#[derive(Clone, Debug)]
pub enum Outbox {
    Embedded(Arc<Store>),
    Postgres(Arc<PgStore>),
}

/// A key claimed by a send; released by [`Claim::release`], or on drop.
pub enum Claim {
    Embedded(#[allow(dead_code)] Sending),
    Postgres(PgClaim),
}

impl Claim {
    /// Lets go of the key now (for PostgreSQL: the fleet-wide claim is deleted before
    /// this returns, so the application's next copy finds the first one's outcome).
    pub async fn release(self) {
        if let Claim::Postgres(c) = self {
            c.release().await;
        }
    }
}

/// The head of a peer's queue, taken for sending.
pub struct Head {
    pub push: Push,
    hold: Hold,
}

#[allow(clippy::large_enum_variant)] // one per delivery step, moved, never stored
enum Hold {
    /// redb: the delivery lock is held by the caller for the whole step.
    Embedded,
    Postgres(PgHead),
}

/// What [`Outbox::take_head`] found.
#[allow(clippy::large_enum_variant)] // one per delivery step, moved, never stored
pub enum Taken {
    Empty,
    /// Another replica is sending the head: look again shortly.
    Busy,
    Head(Head),
}

/// How often a PostgreSQL worker looks for pushes other replicas accepted.
const SHARED_POLL: Duration = Duration::from_secs(1);

impl Outbox {
    pub fn waker(&self, peer: &str) -> Arc<Notify> {
        match self {
            Outbox::Embedded(s) => s.waker(peer),
            Outbox::Postgres(p) => p.waker(peer),
        }
    }

    /// Longest a delivery task waits before looking at its queue again.
    pub fn idle_check(&self, default: Duration) -> Duration {
        match self {
            Outbox::Embedded(_) => default,
            Outbox::Postgres(_) => default.min(SHARED_POLL),
        }
    }

    /// Held for one delivery step: two runtimes of this process never send the same
    /// head. (PostgreSQL's row lock does that fleet-wide: `None`.)
    pub async fn delivery_guard(&self, peer: &str) -> Option<OwnedMutexGuard<()>> {
        match self {
            Outbox::Embedded(s) => Some(s.delivery_lock(peer).lock_owned().await),
            Outbox::Postgres(_) => None,
        }
    }

    /// Claims an idempotency key for the length of one request; `None` when another
    /// request holds it. With PostgreSQL and a `lease` (a synchronous send, which no row
    /// guards while under way), no other replica holds it either, for that long at most.
    pub async fn claim(
        &self,
        key: &str,
        lease: Option<Duration>,
        now_ms: u64,
    ) -> Result<Option<Claim>, StoreError> {
        match self {
            Outbox::Embedded(s) => Ok(s.claim(key).map(Claim::Embedded)),
            Outbox::Postgres(p) => Ok(p.claim(key, lease, now_ms).await?.map(Claim::Postgres)),
        }
    }

    pub async fn seen(&self, key: &str) -> Result<Option<Seen>, StoreError> {
        match self {
            Outbox::Embedded(s) => {
                let key = key.to_string();
                blocking(s, move |s| s.seen(&key)).await
            }
            Outbox::Postgres(p) => Ok(p.seen(key).await?),
        }
    }

    pub async fn has_queued(&self, peer: &str) -> Result<bool, StoreError> {
        match self {
            Outbox::Embedded(s) => {
                let peer = peer.to_string();
                blocking(s, move |s| s.has_queued(&peer)).await
            }
            Outbox::Postgres(p) => Ok(p.has_queued(peer).await?),
        }
    }

    pub async fn enqueue(
        &self,
        push: Push,
        journal: Option<JournalEntry>,
    ) -> Result<Enqueued, StoreError> {
        match self {
            Outbox::Embedded(s) => blocking(s, move |s| s.enqueue(push, journal)).await,
            Outbox::Postgres(p) => Ok(p.enqueue(push, journal).await?),
        }
    }

    pub async fn record_delivered(
        &self,
        peer: &str,
        idem: Option<&str>,
        journal: Option<JournalEntry>,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        match self {
            Outbox::Embedded(s) => {
                let (peer, idem) = (peer.to_string(), idem.map(str::to_string));
                blocking(s, move |s| {
                    s.record_delivered(&peer, idem.as_deref(), journal.as_ref(), now_ms)
                })
                .await
            }
            Outbox::Postgres(p) => Ok(p
                .record_delivered(peer, idem, journal.as_ref(), now_ms)
                .await?),
        }
    }

    pub async fn take_head(&self, peer: &str) -> Result<Taken, StoreError> {
        match self {
            Outbox::Embedded(s) => {
                let peer = peer.to_string();
                let head = blocking(s, move |s| s.head(&peer)).await?;
                Ok(match head {
                    None => Taken::Empty,
                    Some(push) => Taken::Head(Head {
                        push,
                        hold: Hold::Embedded,
                    }),
                })
            }
            Outbox::Postgres(p) => Ok(match p.take_head(peer).await? {
                PgTaken::Empty => Taken::Empty,
                PgTaken::Busy => Taken::Busy,
                PgTaken::Head(push, h) => Taken::Head(Head {
                    push,
                    hold: Hold::Postgres(h),
                }),
            }),
        }
    }

    /// The peer accepted the head.
    pub async fn delivered(&self, head: Head, now_ms: u64) -> Result<(), StoreError> {
        match (self, head.hold) {
            (Outbox::Postgres(p), Hold::Postgres(h)) => {
                Ok(p.delivered(&head.push, h, now_ms).await?)
            }
            (Outbox::Embedded(s), _) => {
                let push = head.push;
                blocking(s, move |s| s.delivered(&push, now_ms)).await
            }
            (Outbox::Postgres(_), Hold::Embedded) => Err(StoreError::MixedHead),
        }
    }

    /// A failed attempt: `head.push` carries the new attempts, next try and error.
    pub async fn reschedule(&self, head: Head) -> Result<(), StoreError> {
        match (self, head.hold) {
            (Outbox::Postgres(p), Hold::Postgres(h)) => Ok(p.reschedule(&head.push, h).await?),
            (Outbox::Embedded(s), _) => {
                let push = head.push;
                blocking(s, move |s| s.reschedule(&push)).await
            }
            (Outbox::Postgres(_), Hold::Embedded) => Err(StoreError::MixedHead),
        }
    }

    /// The head goes to the dead-letter list.
    pub async fn dead_letter(&self, head: Head, reason: &str) -> Result<(), StoreError> {
        match (self, head.hold) {
            (Outbox::Postgres(p), Hold::Postgres(h)) => {
                Ok(p.dead_letter(&head.push, h, reason).await?)
            }
            (Outbox::Embedded(s), _) => {
                let (push, reason) = (head.push, reason.to_string());
                blocking(s, move |s| s.dead_letter(&push, &reason)).await
            }
            (Outbox::Postgres(_), Hold::Embedded) => Err(StoreError::MixedHead),
        }
    }

    /// Lets go of a head that is not due yet.
    pub async fn release(&self, head: Head) -> Result<(), StoreError> {
        match (self, head.hold) {
            (Outbox::Postgres(p), Hold::Postgres(h)) => Ok(p.release(h).await?),
            (_, _) => Ok(()),
        }
    }

    pub async fn expire(&self, peer: &str, now_ms: u64) -> Result<Vec<Push>, StoreError> {
        match self {
            Outbox::Embedded(s) => {
                let peer = peer.to_string();
                blocking(s, move |s| s.expire(&peer, now_ms)).await
            }
            Outbox::Postgres(p) => Ok(p.expire(peer, now_ms).await?),
        }
    }

    pub async fn stats(&self, peer: &str) -> Result<PeerStats, StoreError> {
        match self {
            Outbox::Embedded(s) => {
                let peer = peer.to_string();
                blocking(s, move |s| s.stats(&peer)).await
            }
            Outbox::Postgres(p) => Ok(p.stats(peer).await?),
        }
    }

    pub async fn list(&self) -> Result<(Vec<Push>, Vec<Push>), StoreError> {
        match self {
            Outbox::Embedded(s) => blocking(s, |s| s.list()).await,
            Outbox::Postgres(p) => Ok(p.list().await?),
        }
    }

    pub async fn retry(&self, id: u64, now_ms: u64) -> Result<Option<String>, StoreError> {
        match self {
            Outbox::Embedded(s) => blocking(s, move |s| s.retry(id, now_ms)).await,
            Outbox::Postgres(p) => Ok(p.retry(id, now_ms).await?),
        }
    }

    pub async fn drop_push(&self, id: u64) -> Result<bool, StoreError> {
        match self {
            Outbox::Embedded(s) => blocking(s, move |s| s.drop_push(id)).await,
            Outbox::Postgres(p) => Ok(p.drop_push(id).await?),
        }
    }

    pub async fn journal(
        &self,
        peer: &str,
        from: &str,
        to: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        match self {
            Outbox::Embedded(s) => {
                let (peer, from, to) = (peer.to_string(), from.to_string(), to.to_string());
                blocking(s, move |s| s.journal(&peer, &from, &to, offset, limit)).await
            }
            Outbox::Postgres(p) => Ok(p.journal(peer, from, to, offset, limit).await?),
        }
    }

    pub async fn prune(&self, oldest_date: &str, oldest_ms: u64) -> Result<u64, StoreError> {
        match self {
            Outbox::Embedded(s) => {
                let d = oldest_date.to_string();
                blocking(s, move |s| s.prune(&d, oldest_ms)).await
            }
            Outbox::Postgres(p) => Ok(p.prune(oldest_date, oldest_ms).await?),
        }
    }
}
