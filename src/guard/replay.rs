//! Replay protection: a request whose (`peer`, `userid`, `ticketNo`) — or JWT `jti` — was
//! already accepted within its window is refused.
//!
//! One cache for the whole process (every listener shares it), bounded in memory, and
//! journaled to `replay.log` in the state directory so a restart does not reopen the
//! window. Keys are stored as truncated SHA-256 digests: no user id reaches the disk.
//! Each record is written to the kernel before the request goes on, so it survives the
//! process being killed; a power cut may lose the last few seconds of records, which the
//! freshness window bounds.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

const RECORD: usize = 24;
const FILE_NAME: &str = "replay.log";

/// A fingerprint of what identifies one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplayKey([u8; 16]);

impl ReplayKey {
    /// From the peer and the request's identifying fields, in a fixed order.
    pub fn new(peer: &str, kind: &str, parts: &[&str]) -> ReplayKey {
        let mut h = Sha256::new();
        for p in [peer, kind].iter().chain(parts) {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p.as_bytes());
        }
        let digest = h.finalize();
        ReplayKey(digest.first_chunk::<16>().copied().unwrap_or_default())
    }
}

/// One journal record: the key, then its expiry (little-endian unix seconds).
fn record(key: &ReplayKey, expiry: u64) -> [u8; RECORD] {
    let mut rec = [0u8; RECORD];
    for (d, s) in rec
        .iter_mut()
        .zip(key.0.iter().chain(&expiry.to_le_bytes()))
    {
        *d = *s;
    }
    rec
}

/// A journal record read back; `None` for one of the wrong length.
fn parse_record(rec: &[u8]) -> Option<(ReplayKey, u64)> {
    let (k, rest) = rec.split_first_chunk::<16>()?;
    let e = rest.first_chunk::<8>()?;
    Some((ReplayKey(*k), u64::from_le_bytes(*e)))
}

impl ReplayKey {
    /// Lower-case hex, for a key in a shared store.
    pub fn to_hex(&self) -> String {
        use std::fmt::Write;
        self.0.iter().fold(String::with_capacity(32), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

/// The request was seen before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("request already accepted")]
pub struct Replayed;

#[derive(Default)]
struct Inner {
    /// Key → expiry (unix seconds).
    seen: HashMap<ReplayKey, u64>,
    /// Insertion order, for eviction when full.
    order: VecDeque<(ReplayKey, u64)>,
    journal: Option<File>,
    /// Records in the journal file, to decide when to compact it.
    journal_records: usize,
}

pub struct ReplayCache {
    inner: Mutex<Inner>,
    capacity: usize,
    path: Option<PathBuf>,
}

impl ReplayCache {
    /// A cache that forgets on restart (tests, or no state directory).
    pub fn in_memory(capacity: usize) -> ReplayCache {
        ReplayCache {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
            path: None,
        }
    }

    /// Opens (or creates) the journal in `dir`, keeping entries still unexpired at `now`.
    pub fn open(dir: &Path, capacity: usize, now: u64) -> io::Result<ReplayCache> {
        crate::state_dir::create(dir)?;
        let path = dir.join(FILE_NAME);
        let mut entries = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes)?;
                // A record cut short by a crash is ignored.
                for (k, expiry) in bytes.chunks_exact(RECORD).filter_map(parse_record) {
                    if expiry > now {
                        entries.push((k, expiry));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let cache = ReplayCache {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
            path: Some(path),
        };
        {
            let mut inner = cache.lock();
            for (k, e) in entries {
                cache.remember(&mut inner, k, e, now);
            }
            cache.rewrite(&mut inner)?;
        }
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `key` until `expiry`, or refuses it if it is already there and unexpired.
    pub fn check_and_insert(&self, key: ReplayKey, now: u64, expiry: u64) -> Result<(), Replayed> {
        let mut inner = self.lock();
        if let Some(&e) = inner.seen.get(&key) {
            if e > now {
                return Err(Replayed);
            }
        }
        self.remember(&mut inner, key, expiry, now);
        if let Some(j) = inner.journal.as_mut() {
            if let Err(e) = j.write_all(&record(&key, expiry)) {
                tracing::error!(error = %e, "replay journal write failed; protection continues in memory");
            }
            inner.journal_records += 1;
        }
        if inner.journal_records > 2 * self.capacity {
            if let Err(e) = self.rewrite(&mut inner) {
                tracing::error!(error = %e, "replay journal compaction failed");
            }
        }
        Ok(())
    }

    /// Records `key` like [`ReplayCache::check_and_insert`], held by a guard: unless
    /// [`Reservation::keep`] is called, dropping the guard forgets the key — on a refusal
    /// after this stage, a request that never reached the application, or a panic — so
    /// the peer's retry is not refused as a replay of something that never happened.
    pub fn reserve(
        self: &std::sync::Arc<Self>,
        key: ReplayKey,
        now: u64,
        expiry: u64,
    ) -> Result<Reservation, Replayed> {
        self.check_and_insert(key, now, expiry)?;
        Ok(Reservation {
            cache: std::sync::Arc::clone(self),
            key,
            kept: false,
        })
    }

    /// Forgets `key` — for a request that never reached the application, so the peer's
    /// retry is not refused as a replay.
    pub fn forget(&self, key: ReplayKey) {
        let mut inner = self.lock();
        inner.seen.remove(&key);
        // The journal keeps the record; on restart the key returns until it expires,
        // which errs on the side of refusing.
    }

    fn remember(&self, inner: &mut Inner, key: ReplayKey, expiry: u64, now: u64) {
        while inner.seen.len() >= self.capacity {
            // Expired entries first; else the oldest (the freshness window still bounds
            // how old a replay of it could be).
            let Some((k, e)) = inner.order.pop_front() else {
                break;
            };
            if inner.seen.get(&k) == Some(&e) {
                if e > now {
                    tracing::warn!("replay cache full; evicting an unexpired entry");
                }
                inner.seen.remove(&k);
            }
        }
        inner.seen.insert(key, expiry);
        inner.order.push_back((key, expiry));
        // Drop stale order entries opportunistically so the queue tracks the map.
        while let Some(&(k, e)) = inner.order.front() {
            if inner.seen.get(&k) == Some(&e) && e > now {
                break;
            }
            if inner.seen.get(&k) == Some(&e) {
                inner.seen.remove(&k);
            }
            inner.order.pop_front();
        }
    }

    /// Rewrites the journal with just the live entries (atomic rename).
    fn rewrite(&self, inner: &mut Inner) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let tmp = path.with_extension("log.tmp");
        {
            let mut f = crate::state_dir::create_file(&tmp)?;
            let mut buf = Vec::with_capacity(inner.seen.len() * RECORD);
            for (k, e) in &inner.order {
                if inner.seen.get(k) == Some(e) {
                    buf.extend_from_slice(&record(k, *e));
                }
            }
            f.write_all(&buf)?;
            f.sync_all()?;
            inner.journal_records = buf.len() / RECORD;
        }
        fs::rename(&tmp, path)?;
        inner.journal = Some(OpenOptions::new().append(true).open(path)?);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.lock().seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A replay record that is forgotten again unless kept; see [`ReplayCache::reserve`].
#[must_use = "dropping a reservation forgets the key"]
pub struct Reservation {
    cache: std::sync::Arc<ReplayCache>,
    key: ReplayKey,
    kept: bool,
}

impl Reservation {
    /// The request reached the application (or may have): its key stays until it expires.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.kept {
            self.cache.forget(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: &str) -> ReplayKey {
        ReplayKey::new("bsk", "ticket", &["9054233544", t])
    }

    #[test]
    fn second_use_within_window_is_refused() {
        let c = ReplayCache::in_memory(10);
        assert_eq!(c.check_and_insert(key("1"), 100, 200), Ok(()));
        assert_eq!(c.check_and_insert(key("1"), 150, 250), Err(Replayed));
        assert_eq!(c.check_and_insert(key("2"), 150, 250), Ok(()));
        // After expiry the key may be used again (the freshness window refuses it anyway).
        assert_eq!(c.check_and_insert(key("1"), 201, 300), Ok(()));
    }

    /// A record held until `expiry` refuses the key through the millisecond before it
    /// and frees it at that second, in memory and after a restart, read at a manual clock.
    #[test]
    fn a_record_expires_exactly_at_its_expiry() {
        use crate::clock::Clock;
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual(1_669_975_402_882);
        let expiry = clock.unix_secs() + 660;
        let c = ReplayCache::open(dir.path(), 10, clock.unix_secs()).unwrap();
        assert_eq!(
            c.check_and_insert(key("1"), clock.unix_secs(), expiry),
            Ok(())
        );
        clock.set_ms(expiry * 1000 - 1);
        let again = |c: &ReplayCache| c.check_and_insert(key("1"), clock.unix_secs(), expiry + 660);
        assert_eq!(again(&c), Err(Replayed));
        clock.advance(Duration::from_millis(1));
        assert_eq!(again(&c), Ok(()), "free at its expiry");
        // The new record, until expiry + 660, survives a restart a second before it ...
        drop(c);
        clock.set_ms((expiry + 659) * 1000);
        let c = ReplayCache::open(dir.path(), 10, clock.unix_secs()).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(again(&c), Err(Replayed));
        drop(c);
        // ... and not one at it.
        clock.advance(Duration::from_secs(1));
        let c = ReplayCache::open(dir.path(), 10, clock.unix_secs()).unwrap();
        assert!(c.is_empty());
    }

    #[test]
    fn keys_differ_by_peer_and_field_boundaries() {
        assert_ne!(
            ReplayKey::new("bsk", "t", &["12", "3"]),
            ReplayKey::new("bsk", "t", &["1", "23"])
        );
        assert_ne!(
            ReplayKey::new("bsk", "t", &["1"]),
            ReplayKey::new("wbsedcl", "t", &["1"])
        );
    }

    #[test]
    fn memory_is_bounded() {
        let c = ReplayCache::in_memory(100);
        for i in 0..10_000 {
            c.check_and_insert(key(&i.to_string()), 0, 1_000).unwrap();
        }
        assert!(c.len() <= 100);
    }

    #[test]
    fn survives_restart_and_drops_expired() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = ReplayCache::open(dir.path(), 100, 100).unwrap();
            c.check_and_insert(key("live"), 100, 1_000).unwrap();
            c.check_and_insert(key("short"), 100, 150).unwrap();
        }
        let c = ReplayCache::open(dir.path(), 100, 200).unwrap();
        assert_eq!(c.check_and_insert(key("live"), 200, 1_000), Err(Replayed));
        assert_eq!(c.check_and_insert(key("short"), 200, 1_000), Ok(()));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn torn_last_record_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = ReplayCache::open(dir.path(), 100, 100).unwrap();
            c.check_and_insert(key("a"), 100, 1_000).unwrap();
        }
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE_NAME))
            .unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        drop(f);
        let c = ReplayCache::open(dir.path(), 100, 200).unwrap();
        assert_eq!(c.check_and_insert(key("a"), 200, 1_000), Err(Replayed));
    }

    #[test]
    fn a_reservation_is_forgotten_unless_kept_even_on_panic() {
        let c = std::sync::Arc::new(ReplayCache::in_memory(10));
        let r = c.reserve(key("kept"), 0, 100).unwrap();
        r.keep();
        assert!(c.reserve(key("kept"), 1, 100).is_err());
        drop(c.reserve(key("dropped"), 0, 100).unwrap());
        assert!(c.reserve(key("dropped"), 1, 100).is_ok());
        let c2 = c.clone();
        let panicked = std::panic::catch_unwind(move || {
            let _r = c2.reserve(key("panic"), 0, 100).unwrap();
            panic!("a bug after the replay stage");
        });
        assert!(panicked.is_err());
        assert!(
            c.reserve(key("panic"), 1, 100).is_ok(),
            "nothing remembered"
        );
    }

    #[test]
    fn forgotten_key_can_be_retried() {
        let c = ReplayCache::in_memory(10);
        c.check_and_insert(key("x"), 0, 100).unwrap();
        c.forget(key("x"));
        assert_eq!(c.check_and_insert(key("x"), 1, 100), Ok(()));
    }
}
