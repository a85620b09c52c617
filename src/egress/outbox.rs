//! The durable outbox: pushes accepted for later delivery, the dead-letter list, the
//! idempotency keys of pushes queued or delivered, and the API-7 journal — one embedded
//! `redb` file (`outbox.redb` in `state.dir`), no server to run.
//!
//! Every change is one transaction committed with `fsync` before the caller learns of it,
//! so a push answered `202` survives `kill -9` and power loss. A file that cannot be read
//! stops start-up ([`StoreError`]) instead of starting empty. All calls block on disk:
//! async callers run them on the blocking pool (see [`super::blocking`]).
//!
//! One [`Store`] per file per process: [`Store::open`] hands out the same instance to
//! every runtime (a config reload builds a new one while the old still drains).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::Notify;

/// (peer, id) → [`Push`] as JSON: per-peer order is id order.
const OUTBOX: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("outbox");
/// id → [`Push`] as JSON, with `dead_reason` set.
const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("dead");
/// idempotency key → [`Seen`] as JSON.
const SEEN: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
/// (peer, `YYYY-MM-DD`, id) → the record's transactional fields (JSON object).
const JOURNAL: TableDefinition<(&str, &str, u64), &str> = TableDefinition::new("journal");
/// counters.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The file name inside `state.dir`.
pub const FILE_NAME: &str = "outbox.redb";

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file exists but is not a readable outbox (or the directory is not usable).
    #[error("outbox store {path} cannot be opened: {detail}. It is kept as it is: move it aside to start with an empty outbox (its queued pushes would then not be delivered)")]
    Unreadable { path: PathBuf, detail: String },
    /// Another process (a running sidecar) holds the file.
    #[error("outbox store {path} is in use by another process")]
    Locked { path: PathBuf },
    /// A read or write failed after opening.
    #[error("outbox store: {0}")]
    Db(#[source] Box<redb::Error>),
    /// A record could not be encoded for writing.
    #[error("outbox store: encoding a record: {0}")]
    Encode(#[source] serde_json::Error),
    /// The blocking task running a store call did not finish.
    #[error("outbox store task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// A stored entry is not what this version writes.
    #[error("outbox entry {0} cannot be read")]
    BadEntry(u64),
    /// The PostgreSQL store (`state.backend.postgres`) failed.
    #[error("outbox store: {0}")]
    Postgres(#[from] super::pg::PgError),
    /// A head taken from one kind of store was handed to another.
    #[error("outbox store: a queue head was finished on the wrong store")]
    MixedHead,
}

fn db<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(Box::new(e.into()))
}

pub use super::entry::{Enqueued, JournalEntry, PeerStats, Push, Seen};

pub struct Store {
    path: PathBuf,
    db: Database,
    wake: Mutex<HashMap<String, Arc<Notify>>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    sending: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<Store>>> {
    static R: OnceLock<Mutex<HashMap<PathBuf, Weak<Store>>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Marks a push as being sent right now; released on drop.
pub struct Sending {
    store: Arc<Store>,
    key: String,
}

impl Drop for Sending {
    fn drop(&mut self) {
        let mut s = self.store.sending.lock().unwrap_or_else(|p| p.into_inner());
        s.remove(&self.key);
    }
}

impl Store {
    /// Opens (creating when absent) the outbox in `dir`, or returns the instance this
    /// process already has open.
    pub fn open(dir: &Path) -> Result<Arc<Store>, StoreError> {
        let unreadable = |detail: String| StoreError::Unreadable {
            path: dir.join(FILE_NAME),
            detail,
        };
        crate::state_dir::create(dir).map_err(|e| unreadable(format!("state directory: {e}")))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| unreadable(format!("state directory: {e}")))?;
        let path = dir.join(FILE_NAME);
        let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = reg.get(&path).and_then(Weak::upgrade) {
            return Ok(s);
        }
        // Created 0600 before redb opens it: redb would create it with the umask's mode.
        crate::state_dir::ensure_private_file(&path).map_err(|e| StoreError::Unreadable {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked { path })
            }
            Err(e) => {
                return Err(StoreError::Unreadable {
                    path,
                    detail: e.to_string(),
                })
            }
        };
        let store = Arc::new(Store {
            path: path.clone(),
            db,
            wake: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            sending: Mutex::new(HashSet::new()),
        });
        // Create every table now, so readers never meet a missing one.
        let tx = store.db.begin_write().map_err(|e| StoreError::Unreadable {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        {
            let opened = (|| -> Result<(), redb::TableError> {
                tx.open_table(OUTBOX)?;
                tx.open_table(DEAD)?;
                tx.open_table(SEEN)?;
                tx.open_table(JOURNAL)?;
                tx.open_table(META)?;
                Ok(())
            })();
            opened.map_err(|e| StoreError::Unreadable {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        }
        tx.commit().map_err(|e| StoreError::Unreadable {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        reg.insert(path, Arc::downgrade(&store));
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The notifier a peer's delivery task waits on.
    pub fn waker(&self, peer: &str) -> Arc<Notify> {
        let mut w = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        w.entry(peer.to_string()).or_default().clone()
    }

    /// Held by whoever delivers a peer's queue, so two runtimes never send the same head.
    pub fn delivery_lock(&self, peer: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut l = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        l.entry(peer.to_string()).or_default().clone()
    }

    /// Claims an idempotency key for a synchronous send; `None` when another request holds it.
    pub fn claim(self: &Arc<Self>, key: &str) -> Option<Sending> {
        let mut s = self.sending.lock().unwrap_or_else(|p| p.into_inner());
        s.insert(key.to_string()).then(|| Sending {
            store: self.clone(),
            key: key.to_string(),
        })
    }

    fn next_id(meta: &mut redb::Table<'_, &str, u64>) -> Result<u64, StoreError> {
        let id = meta
            .get("next_id")
            .map_err(db)?
            .map(|v| v.value())
            .unwrap_or(1);
        meta.insert("next_id", id + 1).map_err(db)?;
        Ok(id)
    }

    /// What `key` has seen, if anything.
    pub fn seen(&self, key: &str) -> Result<Option<Seen>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(SEEN).map_err(db)?;
        let v = t.get(key).map_err(db)?;
        Ok(v.and_then(|v| serde_json::from_slice(v.value()).ok()))
    }

    /// Writes `push` (its `id` is assigned here) and its journal record in one durable
    /// transaction — unless its idempotency key was already queued or delivered.
    pub fn enqueue(
        &self,
        mut push: Push,
        journal: Option<JournalEntry>,
    ) -> Result<Enqueued, StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        let id = {
            let mut seen = tx.open_table(SEEN).map_err(db)?;
            if let Some(key) = &push.idem {
                let prior = seen
                    .get(key.as_str())
                    .map_err(db)?
                    .and_then(|v| serde_json::from_slice::<Seen>(v.value()).ok());
                if let Some(prior) = prior {
                    return Ok(Enqueued::Duplicate(prior));
                }
            }
            let mut meta = tx.open_table(META).map_err(db)?;
            let id = Self::next_id(&mut meta)?;
            push.id = id;
            if let Some(key) = &push.idem {
                let s = Seen {
                    id,
                    delivered: false,
                    at_ms: push.created_ms,
                };
                let v = serde_json::to_vec(&s).map_err(StoreError::Encode)?;
                seen.insert(key.as_str(), v.as_slice()).map_err(db)?;
            }
            if let Some(j) = &journal {
                let mut jt = tx.open_table(JOURNAL).map_err(db)?;
                jt.insert((push.peer.as_str(), j.date.as_str(), id), j.json.as_str())
                    .map_err(db)?;
                push.journal_date = Some(j.date.clone());
            }
            let v = serde_json::to_vec(&push).map_err(StoreError::Encode)?;
            let mut out = tx.open_table(OUTBOX).map_err(db)?;
            out.insert((push.peer.as_str(), id), v.as_slice())
                .map_err(db)?;
            id
        };
        tx.commit().map_err(db)?;
        Ok(Enqueued::New(id))
    }

    /// Records a push the peer accepted synchronously: its idempotency key as delivered
    /// and its journal record. Returns the id it was given.
    pub fn record_delivered(
        &self,
        peer: &str,
        idem: Option<&str>,
        journal: Option<&JournalEntry>,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        let id = {
            let mut meta = tx.open_table(META).map_err(db)?;
            let id = Self::next_id(&mut meta)?;
            if let Some(key) = idem {
                let mut seen = tx.open_table(SEEN).map_err(db)?;
                let s = Seen {
                    id,
                    delivered: true,
                    at_ms: now_ms,
                };
                let v = serde_json::to_vec(&s).map_err(StoreError::Encode)?;
                seen.insert(key, v.as_slice()).map_err(db)?;
            }
            if let Some(j) = journal {
                let mut jt = tx.open_table(JOURNAL).map_err(db)?;
                jt.insert((peer, j.date.as_str(), id), j.json.as_str())
                    .map_err(db)?;
            }
            id
        };
        tx.commit().map_err(db)?;
        Ok(id)
    }

    /// Is anything queued for `peer`? (A fallback push must not overtake it.)
    pub fn has_queued(&self, peer: &str) -> Result<bool, StoreError> {
        Ok(self.head(peer)?.is_some())
    }

    /// The oldest queued push for `peer`.
    pub fn head(&self, peer: &str) -> Result<Option<Push>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(OUTBOX).map_err(db)?;
        let mut range = t.range((peer, 0u64)..=(peer, u64::MAX)).map_err(db)?;
        match range.next() {
            None => Ok(None),
            Some(entry) => {
                let (k, v) = entry.map_err(db)?;
                let id = k.value().1;
                serde_json::from_slice(v.value())
                    .map(Some)
                    .map_err(|_| StoreError::BadEntry(id))
            }
        }
    }

    /// The peer accepted `push`: it leaves the queue and its key is marked delivered.
    pub fn delivered(&self, push: &Push, now_ms: u64) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        {
            let mut out = tx.open_table(OUTBOX).map_err(db)?;
            out.remove((push.peer.as_str(), push.id)).map_err(db)?;
            if let Some(key) = &push.idem {
                let mut seen = tx.open_table(SEEN).map_err(db)?;
                let s = Seen {
                    id: push.id,
                    delivered: true,
                    at_ms: now_ms,
                };
                let v = serde_json::to_vec(&s).map_err(StoreError::Encode)?;
                seen.insert(key.as_str(), v.as_slice()).map_err(db)?;
            }
        }
        tx.commit().map_err(db)
    }

    /// Stores the outcome of a failed attempt (attempts, next try, last error).
    pub fn reschedule(&self, push: &Push) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        {
            let mut out = tx.open_table(OUTBOX).map_err(db)?;
            // Dropped by an operator meanwhile: leave it gone.
            if out
                .get((push.peer.as_str(), push.id))
                .map_err(db)?
                .is_none()
            {
                return Ok(());
            }
            let v = serde_json::to_vec(push).map_err(StoreError::Encode)?;
            out.insert((push.peer.as_str(), push.id), v.as_slice())
                .map_err(db)?;
        }
        tx.commit().map_err(db)
    }

    /// Moves `push` to the dead-letter list with `reason`.
    pub fn dead_letter(&self, push: &Push, reason: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        {
            let mut out = tx.open_table(OUTBOX).map_err(db)?;
            if out
                .remove((push.peer.as_str(), push.id))
                .map_err(db)?
                .is_none()
            {
                return Ok(());
            }
            let mut dead = push.clone();
            dead.dead_reason = Some(reason.to_string());
            let v = serde_json::to_vec(&dead).map_err(StoreError::Encode)?;
            let mut d = tx.open_table(DEAD).map_err(db)?;
            d.insert(push.id, v.as_slice()).map_err(db)?;
        }
        tx.commit().map_err(db)
    }

    /// Moves every queued push of `peer` older than its `max_age` to the dead-letter list
    /// (not only the head: a push behind a stuck one expires on time too). Returns them.
    pub fn expire(&self, peer: &str, now_ms: u64) -> Result<Vec<Push>, StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        let mut expired = Vec::new();
        {
            let mut out = tx.open_table(OUTBOX).map_err(db)?;
            for entry in out.range((peer, 0u64)..=(peer, u64::MAX)).map_err(db)? {
                let (k, v) = entry.map_err(db)?;
                let p: Push = serde_json::from_slice(v.value())
                    .map_err(|_| StoreError::BadEntry(k.value().1))?;
                if now_ms >= p.queued_ms.saturating_add(p.max_age_ms) {
                    expired.push(p);
                }
            }
            let mut dead = tx.open_table(DEAD).map_err(db)?;
            for p in &mut expired {
                out.remove((peer, p.id)).map_err(db)?;
                p.dead_reason = Some("max_age".into());
                let v = serde_json::to_vec(&*p).map_err(StoreError::Encode)?;
                dead.insert(p.id, v.as_slice()).map_err(db)?;
            }
        }
        if expired.is_empty() {
            tx.abort().map_err(db)?;
        } else {
            tx.commit().map_err(db)?;
        }
        Ok(expired)
    }

    /// Every queued push (per peer in delivery order), then every dead letter.
    pub fn list(&self) -> Result<(Vec<Push>, Vec<Push>), StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let mut queued = Vec::new();
        for entry in tx.open_table(OUTBOX).map_err(db)?.iter().map_err(db)? {
            let (k, v) = entry.map_err(db)?;
            queued.push(
                serde_json::from_slice(v.value()).map_err(|_| StoreError::BadEntry(k.value().1))?,
            );
        }
        let mut dead = Vec::new();
        for entry in tx.open_table(DEAD).map_err(db)?.iter().map_err(db)? {
            let (k, v) = entry.map_err(db)?;
            dead.push(
                serde_json::from_slice(v.value()).map_err(|_| StoreError::BadEntry(k.value()))?,
            );
        }
        Ok((queued, dead))
    }

    /// Counts for one peer.
    pub fn stats(&self, peer: &str) -> Result<PeerStats, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(OUTBOX).map_err(db)?;
        let mut stats = PeerStats::default();
        for entry in t.range((peer, 0u64)..=(peer, u64::MAX)).map_err(db)? {
            let (k, v) = entry.map_err(db)?;
            let p: Push =
                serde_json::from_slice(v.value()).map_err(|_| StoreError::BadEntry(k.value().1))?;
            stats.queued += 1;
            stats.oldest_queued_ms = Some(
                stats
                    .oldest_queued_ms
                    .map_or(p.queued_ms, |o| o.min(p.queued_ms)),
            );
        }
        for entry in tx.open_table(DEAD).map_err(db)?.iter().map_err(db)? {
            let (k, v) = entry.map_err(db)?;
            let p: Push =
                serde_json::from_slice(v.value()).map_err(|_| StoreError::BadEntry(k.value()))?;
            if p.peer == peer {
                stats.dead += 1;
            }
        }
        Ok(stats)
    }

    /// Makes push `id` due now: a dead letter goes back to its queue with a fresh
    /// `max_age`; a queued one skips its backoff. Returns its peer, or `None` if unknown.
    pub fn retry(&self, id: u64, now_ms: u64) -> Result<Option<String>, StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        let peer = {
            let mut dead = tx.open_table(DEAD).map_err(db)?;
            let mut out = tx.open_table(OUTBOX).map_err(db)?;
            let revived = dead.remove(id).map_err(db)?.map(|v| v.value().to_vec());
            let found = match revived {
                Some(bytes) => Some(bytes),
                None => find_queued(&out, id)?,
            };
            match found {
                None => None,
                Some(bytes) => {
                    let mut p: Push =
                        serde_json::from_slice(&bytes).map_err(|_| StoreError::BadEntry(id))?;
                    if p.dead_reason.take().is_some() {
                        p.queued_ms = now_ms;
                        p.attempts = 0;
                    }
                    p.next_attempt_ms = 0;
                    let v = serde_json::to_vec(&p).map_err(StoreError::Encode)?;
                    out.insert((p.peer.as_str(), id), v.as_slice())
                        .map_err(db)?;
                    Some(p.peer)
                }
            }
        };
        tx.commit().map_err(db)?;
        Ok(peer)
    }

    /// Removes push `id` for good (queued or dead), with its journal record and its
    /// idempotency key — the application may push it again. Returns whether it existed.
    pub fn drop_push(&self, id: u64) -> Result<bool, StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        let existed = {
            let mut dead = tx.open_table(DEAD).map_err(db)?;
            let mut out = tx.open_table(OUTBOX).map_err(db)?;
            let found = match dead.remove(id).map_err(db)?.map(|v| v.value().to_vec()) {
                Some(b) => Some(b),
                None => find_queued(&out, id)?,
            };
            match found {
                None => false,
                Some(bytes) => {
                    let p: Push =
                        serde_json::from_slice(&bytes).map_err(|_| StoreError::BadEntry(id))?;
                    out.remove((p.peer.as_str(), id)).map_err(db)?;
                    if let Some(key) = &p.idem {
                        tx.open_table(SEEN)
                            .map_err(db)?
                            .remove(key.as_str())
                            .map_err(db)?;
                    }
                    if let Some(date) = &p.journal_date {
                        tx.open_table(JOURNAL)
                            .map_err(db)?
                            .remove((p.peer.as_str(), date.as_str(), id))
                            .map_err(db)?;
                    }
                    true
                }
            }
        };
        tx.commit().map_err(db)?;
        Ok(existed)
    }

    /// Journal records of `peer` dated `from..=to` (`YYYY-MM-DD`), in date then arrival
    /// order, skipping `offset`, at most `limit`.
    pub fn journal(
        &self,
        peer: &str,
        from: &str,
        to: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(JOURNAL).map_err(db)?;
        let mut out = Vec::new();
        for entry in t
            .range((peer, from, 0u64)..=(peer, to, u64::MAX))
            .map_err(db)?
            .skip(offset)
            .take(limit)
        {
            let (_, v) = entry.map_err(db)?;
            out.push(v.value().to_string());
        }
        Ok(out)
    }

    /// Forgets journal records dated before `oldest_date` and delivered idempotency keys
    /// recorded before `oldest_ms`. Returns how many records went.
    pub fn prune(&self, oldest_date: &str, oldest_ms: u64) -> Result<u64, StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        let mut removed = 0u64;
        {
            let mut j = tx.open_table(JOURNAL).map_err(db)?;
            j.retain(|(_, date, _), _| {
                let keep = date >= oldest_date;
                if !keep {
                    removed += 1;
                }
                keep
            })
            .map_err(db)?;
            let mut seen = tx.open_table(SEEN).map_err(db)?;
            seen.retain(|_, v| match serde_json::from_slice::<Seen>(v) {
                // A key of a push still queued stays: it guards against a second copy.
                Ok(s) => !s.delivered || s.at_ms >= oldest_ms,
                Err(_) => false,
            })
            .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(removed)
    }
}

fn find_queued(
    out: &redb::Table<'_, (&str, u64), &[u8]>,
    id: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    for entry in out.iter().map_err(db)? {
        let (k, v) = entry.map_err(db)?;
        if k.value().1 == id {
            return Ok(Some(v.value().to_vec()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(peer: &str, body: &str, idem: Option<&str>) -> Push {
        Push {
            id: 0,
            peer: peer.into(),
            route: "/push".into(),
            remote: "/push".into(),
            layers: vec!["token".into(), "jwt".into()],
            body: body.into(),
            created_ms: 1000,
            queued_ms: 1000,
            attempts: 0,
            next_attempt_ms: 0,
            last_error: None,
            max_age_ms: 60_000,
            backoff_initial_ms: 100,
            backoff_max_ms: 1000,
            timeout_ms: 1000,
            idem: idem.map(str::to_string),
            journal_date: None,
            dead_reason: None,
        }
    }

    #[test]
    fn queue_is_ordered_per_peer_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            for i in 0..3 {
                s.enqueue(push("bsk", &format!("{{\"n\":{i}}}"), None), None)
                    .unwrap();
            }
            s.enqueue(push("other", "{}", None), None).unwrap();
            assert_eq!(s.head("bsk").unwrap().unwrap().body, r#"{"n":0}"#);
            let h = s.head("bsk").unwrap().unwrap();
            s.delivered(&h, 2000).unwrap();
            assert_eq!(s.head("bsk").unwrap().unwrap().body, r#"{"n":1}"#);
        }
        // Dropped and reopened: what was committed is there.
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.stats("bsk").unwrap().queued, 2);
        assert_eq!(s.stats("other").unwrap().queued, 1);
    }

    #[test]
    fn the_same_push_is_never_queued_twice() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let first = s.enqueue(push("bsk", "{}", Some("k1")), None).unwrap();
        let Enqueued::New(id) = first else {
            panic!("{first:?}")
        };
        let again = s.enqueue(push("bsk", "{}", Some("k1")), None).unwrap();
        assert!(
            matches!(again, Enqueued::Duplicate(Seen { id: i, delivered: false, .. }) if i == id)
        );
        let h = s.head("bsk").unwrap().unwrap();
        s.delivered(&h, 5000).unwrap();
        let after = s.enqueue(push("bsk", "{}", Some("k1")), None).unwrap();
        assert!(matches!(
            after,
            Enqueued::Duplicate(Seen {
                delivered: true,
                ..
            })
        ));
        assert_eq!(s.stats("bsk").unwrap().queued, 0);
    }

    #[test]
    fn dead_letters_can_be_retried_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let j = JournalEntry {
            date: "2022-12-02".into(),
            json: r#"{"userid":1}"#.into(),
        };
        let Enqueued::New(id) = s.enqueue(push("bsk", "{}", Some("k")), Some(j)).unwrap() else {
            panic!()
        };
        let h = s.head("bsk").unwrap().unwrap();
        s.dead_letter(&h, "max_age").unwrap();
        assert_eq!(
            s.stats("bsk").unwrap(),
            PeerStats {
                queued: 0,
                oldest_queued_ms: None,
                dead: 1
            }
        );
        assert_eq!(s.retry(id, 9000).unwrap().as_deref(), Some("bsk"));
        let back = s.head("bsk").unwrap().unwrap();
        assert_eq!(
            (back.queued_ms, back.attempts, back.dead_reason),
            (9000, 0, None)
        );
        assert_eq!(
            s.journal("bsk", "2022-12-01", "2022-12-31", 0, 10)
                .unwrap()
                .len(),
            1
        );
        assert!(s.drop_push(id).unwrap());
        assert!(!s.drop_push(id).unwrap());
        assert_eq!(s.stats("bsk").unwrap().queued, 0);
        assert!(s
            .journal("bsk", "2022-12-01", "2022-12-31", 0, 10)
            .unwrap()
            .is_empty());
        assert!(s.seen("k").unwrap().is_none());
        assert_eq!(s.retry(424242, 0).unwrap(), None);
    }

    #[test]
    fn pushes_expire_wherever_they_are_in_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut long = push("bsk", "{}", None);
        long.max_age_ms = 1_000_000;
        s.enqueue(long, None).unwrap();
        let short = push("bsk", "{}", None); // max_age 60s from 1000 ms
        let Enqueued::New(id) = s.enqueue(short, None).unwrap() else {
            panic!()
        };
        assert!(s.expire("bsk", 60_999).unwrap().is_empty());
        let gone = s.expire("bsk", 61_000).unwrap();
        assert_eq!(gone.iter().map(|p| p.id).collect::<Vec<_>>(), vec![id]);
        let (queued, dead) = s.list().unwrap();
        assert_eq!((queued.len(), dead.len()), (1, 1));
        assert_eq!(dead[0].dead_reason.as_deref(), Some("max_age"));
    }

    #[test]
    fn journal_ranges_are_inclusive_and_paged() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        for (date, n) in [
            ("2022-12-01", 1),
            ("2022-12-02", 2),
            ("2022-12-02", 3),
            ("2022-12-03", 4),
        ] {
            let j = JournalEntry {
                date: date.into(),
                json: format!("{{\"n\":{n}}}"),
            };
            s.record_delivered("bsk", None, Some(&j), 0).unwrap();
        }
        s.record_delivered(
            "other",
            None,
            Some(&JournalEntry {
                date: "2022-12-02".into(),
                json: "{}".into(),
            }),
            0,
        )
        .unwrap();
        let got = s
            .journal("bsk", "2022-12-02", "2022-12-03", 0, 100)
            .unwrap();
        assert_eq!(got, vec![r#"{"n":2}"#, r#"{"n":3}"#, r#"{"n":4}"#]);
        let page = s.journal("bsk", "2022-12-01", "2022-12-03", 1, 2).unwrap();
        assert_eq!(page, vec![r#"{"n":2}"#, r#"{"n":3}"#]);
        assert_eq!(s.prune("2022-12-02", 0).unwrap(), 1);
        assert_eq!(
            s.journal("bsk", "2022-01-01", "2022-12-31", 0, 100)
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn a_corrupt_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        std::fs::write(&file, vec![0x5au8; 8192]).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Unreadable { .. }), "{err}");
        assert!(err.to_string().contains("move it aside"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), vec![0x5au8; 8192]);
    }
}
