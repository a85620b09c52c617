//! Replay protection: a request whose (`peer`, `userid`, `ticketNo`) — or JWT `jti` — was
//! already accepted within its window is refused.
//!
//! One cache for the whole process (every listener shares it), bounded in memory, and
//! journaled to `replay.log` in the state directory so a restart does not reopen the
//! window. Keys are stored as truncated SHA-256 digests: no user id reaches the disk.
//! The journal and a shared store get 16 bytes of the digest; the table in memory tells
//! keys apart by 54 bits of it (8 bytes an entry with its expiry, see [`table`]): two
//! different requests share them by chance once in 2^54 / (entries held), once in 30
//! billion requests at 600,000 held — a retry refused as a replay, never a replay let
//! through.
//! Each record is written to the kernel before the request goes on, so it survives the
//! process being killed; a power cut may lose the last few seconds of records, which the
//! freshness window bounds.
//! The journal's compaction and a large full cache's eviction each run on a thread of
//! their own, so no request waits for either.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};

use crossbeam_utils::CachePadded;
use sha2::{Digest, Sha256};

mod table;

use table::{Key, Table};

const RECORD: usize = 24;
const FILE_NAME: &str = "replay.log";

/// A fingerprint of what identifies one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplayKey([u8; 16]);

impl ReplayKey {
    /// From the peer and the request's identifying fields, in a fixed order. The parts
    /// are text or bytes (an id held as ASCII bytes is hashed as it is held).
    pub fn new<P: AsRef<[u8]> + ?Sized>(peer: &str, kind: &str, parts: &[&P]) -> ReplayKey {
        let mut h = Sha256::new();
        let heads = [peer.as_bytes(), kind.as_bytes()];
        for p in heads.into_iter().chain(parts.iter().map(|p| p.as_ref())) {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        let digest = h.finalize();
        ReplayKey(digest.first_chunk::<16>().copied().unwrap_or_default())
    }
}

/// What the table in memory keeps of a key: its first 8 bytes (see the module's note).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tag([u8; 8]);

impl ReplayKey {
    fn tag(&self) -> Tag {
        Tag(self.0.first_chunk::<8>().copied().unwrap_or_default())
    }
}

impl Tag {
    /// The part that holds it: its last byte's, the digest's bytes being spread evenly.
    fn part(self) -> usize {
        let [.., last] = self.0;
        usize::from(last) % SHARDS
    }

    /// What its part keeps of it: its first six bytes.
    fn key(self) -> Key {
        Key::new(u64::from_le_bytes(self.0))
    }

    /// The tag its part's `key` stands for, as a compaction writes it: the six bytes
    /// kept, a zero, and the part's number, which picks the same part on a restart.
    fn of(key: Key, part: usize) -> Tag {
        let mut bytes = key.bits().to_le_bytes();
        if let Some(last) = bytes.last_mut() {
            *last = u8::try_from(part).unwrap_or(0);
        }
        Tag(bytes)
    }
}

/// One journal record: 16 bytes of key, then its expiry (little-endian unix seconds). A
/// record rewritten from memory has the tag its part stands for (see [`Tag::of`]), then
/// zeros.
fn record(key: &[u8], expiry: u64) -> [u8; RECORD] {
    let mut rec = [0u8; RECORD];
    let (k, e) = rec.split_at_mut(16);
    for (d, s) in k.iter_mut().zip(key) {
        *d = *s;
    }
    for (d, s) in e.iter_mut().zip(&expiry.to_le_bytes()) {
        *d = *s;
    }
    rec
}

/// A journal record read back, as the table keeps it; `None` for one of the wrong length.
fn parse_record(rec: &[u8]) -> Option<(Tag, u64)> {
    let (k, rest) = rec.split_first_chunk::<16>()?;
    let e = rest.first_chunk::<8>()?;
    Some((ReplayKey(*k).tag(), u64::from_le_bytes(*e)))
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

/// How many parts the table in memory is split into, each behind its own lock. A part
/// grows on its own, so growing never holds two copies of the whole table at
/// once — a single table holding a busy window's keys, 3.4 MiB at 136,000 of them, briefly
/// held 5.1 MiB while it doubled, and kept the copies it had outgrown until the
/// allocator let them go.
const SHARDS: usize = 64;

/// A cache at least this large evicts beside the requests, on a thread of its own (see
/// [`ReplayCache::make_room`]); a smaller one in the insert that finds it full, where an
/// eviction takes about a millisecond at this size.
const EVICT_BESIDE: usize = 65_536;

/// How far a part's size may drift from what the cache's count holds of it before the
/// part brings the count up to date: the count, shared by every worker, is written once
/// per this many inserts into a part, not at each one. Less for a small cache (see
/// [`Count`]).
const COUNT_STEP: usize = 64;

/// The cache's count of its entries, as the parts last told it (see [`Shard::recount`]).
struct Count {
    total: AtomicUsize,
    /// A part tells the count once its size is this far from what it last told:
    /// [`COUNT_STEP`], or a sixteenth of a part's share of a small cache, so the slack
    /// stays a sixteenth of the capacity and the quick path is not lost to it.
    step: usize,
}

impl Count {
    fn new(capacity: usize) -> Count {
        Count {
            total: AtomicUsize::new(0),
            step: (capacity / (SHARDS * 16)).clamp(1, COUNT_STEP),
        }
    }

    /// Whether a new entry surely fits: the count, plus what the parts may not have told
    /// it yet, is below the capacity.
    fn has_room(&self, capacity: usize) -> bool {
        self.total.load(Ordering::Relaxed) + SHARDS * self.step < capacity
    }
}

/// One part of the table in memory.
#[derive(Default)]
struct Shard {
    /// Key → expiry (unix seconds), 8 bytes an entry and no order queue beside it.
    /// Expired entries are swept out when the part is about to grow or the cache is
    /// full, not one by one.
    seen: Table,
    /// Records inserted since the part's last sweep, so a sweep that frees little is not
    /// repeated at every insert.
    since_sweep: usize,
    /// How many of this part's entries the cache's count includes.
    counted: usize,
}

impl Shard {
    /// Brings the cache's count up to date with this part once they are the count's step
    /// apart (`exact`: whenever they differ).
    fn recount(&mut self, count: &Count, exact: bool) {
        let len = self.seen.len();
        let apart = len.abs_diff(self.counted);
        if apart >= count.step || (exact && apart > 0) {
            if len > self.counted {
                count.total.fetch_add(apart, Ordering::Relaxed);
            } else {
                count.total.fetch_sub(apart, Ordering::Relaxed);
            }
            self.counted = len;
        }
    }
}

type ShardGuard<'a> = std::sync::MutexGuard<'a, Shard>;

fn lock_part(part: &Mutex<Shard>) -> ShardGuard<'_> {
    part.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether [`ReplayCache::store`] refuses a key it holds unexpired (a request), or
/// records it again (a journal read back on start: its last record wins).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Refuse {
    Unexpired,
    Never,
}

pub struct ReplayCache {
    /// The parts: the first, and the others (never empty, so no lookup can miss). This
    /// and the other fields two workers write are each on a cache line of their own, so
    /// a worker writing one part (or the count) does not take a neighbour's line from the
    /// other worker.
    first: CachePadded<Mutex<Shard>>,
    rest: Box<[CachePadded<Mutex<Shard>>]>,
    /// Entries held, over every part, as the parts last told it (see [`Shard::recount`]):
    /// the capacity is the whole cache's.
    count: CachePadded<Count>,
    /// Records in the journal file, to decide when to compact it.
    journal_records: CachePadded<AtomicUsize>,
    /// Records being gathered into one journal write: one batch per connection worker,
    /// indexed like the upstream pool's idle connections (`crate::workers::current()`:
    /// 0 for any other thread, which is also where a worker past the last falls back).
    batches: Box<[CachePadded<Mutex<Batch>>]>,
    /// Appended to outside the parts' locks, so one worker's write does not hold up
    /// another's lookup; a compaction takes it whole only to put the new file in the old
    /// one's place, so no record lands in a file being replaced.
    journal: RwLock<Option<File>>,
    /// While a compaction writes the new journal: the records appended to the old one
    /// meanwhile, which it adds to the new file before the swap (`None` otherwise).
    tail: Mutex<Option<Vec<u8>>>,
    /// A compaction is under way (one at a time).
    compacting: AtomicBool,
    /// An eviction is under way beside the requests (one at a time).
    evicting: AtomicBool,
    /// The cache itself, for the threads a compaction and an eviction run on.
    me: Weak<ReplayCache>,
    /// Tests: the next compaction says so here once its file is written, or the next
    /// eviction beside the requests before it starts, then waits to be let go on
    /// (`true`: it panics there).
    #[cfg(test)]
    pause: Mutex<Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<bool>)>>,
    capacity: usize,
    path: Option<PathBuf>,
}

/// The journals a compaction is rewriting, in this process: a cache opened on one of them
/// waits until its compaction has put the new file in place (a reload back to a state
/// directory, while the cache it left there still compacts).
static COMPACTING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static COMPACTED: Condvar = Condvar::new();

fn lock_compacting() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    COMPACTING.lock().unwrap_or_else(|p| p.into_inner())
}

impl ReplayCache {
    fn new(
        capacity: usize,
        batches: Box<[CachePadded<Mutex<Batch>>]>,
        path: Option<PathBuf>,
        me: Weak<ReplayCache>,
    ) -> Self {
        ReplayCache {
            first: CachePadded::default(),
            rest: (1..SHARDS).map(|_| CachePadded::default()).collect(),
            count: CachePadded::new(Count::new(capacity.max(1))),
            journal_records: CachePadded::default(),
            batches,
            journal: RwLock::new(None),
            tail: Mutex::new(None),
            compacting: AtomicBool::new(false),
            evicting: AtomicBool::new(false),
            me,
            #[cfg(test)]
            pause: Mutex::new(None),
            capacity: capacity.max(1),
            path,
        }
    }

    /// A cache that forgets on restart (tests, or no state directory).
    pub fn in_memory(capacity: usize) -> Arc<ReplayCache> {
        // Nothing to write, so nothing to gather.
        Arc::new_cyclic(|me| ReplayCache::new(capacity, Box::default(), None, me.clone()))
    }

    /// Opens (or creates) the journal in `dir`, keeping entries still unexpired at `now`;
    /// `workers`: how many connection workers will write to it (each gathers its own
    /// batches).
    pub fn open(
        dir: &Path,
        capacity: usize,
        workers: usize,
        now: u64,
    ) -> io::Result<Arc<ReplayCache>> {
        crate::state_dir::create(dir)?;
        let path = dir.join(FILE_NAME);
        let mut compacting = lock_compacting();
        while compacting.contains(&path) {
            compacting = COMPACTED
                .wait(compacting)
                .unwrap_or_else(|p| p.into_inner());
        }
        drop(compacting);
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
        let batches = (0..=workers).map(|_| CachePadded::default()).collect();
        let cache =
            Arc::new_cyclic(|me| ReplayCache::new(capacity, batches, Some(path), me.clone()));
        for (k, e) in entries {
            // A key the journal holds twice keeps its last record's expiry.
            let _ = cache.store(k, e, now, Refuse::Never);
        }
        cache.rewrite()?;
        Ok(cache)
    }

    /// The part that holds `key`.
    fn shard(&self, key: Tag) -> ShardGuard<'_> {
        let i = key.part();
        // Part 0 is `first`; part `i` past it is `rest[i - 1]`.
        lock_part(self.rest.get(i.wrapping_sub(1)).unwrap_or(&self.first))
    }

    /// Every part, in order, unlocked.
    fn parts(&self) -> impl Iterator<Item = &Mutex<Shard>> {
        std::iter::once(&*self.first).chain(self.rest.iter().map(|p| &**p))
    }

    /// Every part, locked in order (the only place more than one is held).
    fn lock_all(&self) -> Vec<ShardGuard<'_>> {
        self.parts().map(lock_part).collect()
    }

    /// Records `key` until `expiry`, or refuses it if it is already there and unexpired.
    /// The record is in the journal (written to the kernel) when this returns.
    pub fn check_and_insert(&self, key: ReplayKey, now: u64, expiry: u64) -> Result<(), Replayed> {
        self.store(key.tag(), expiry, now, Refuse::Unexpired)?;
        self.append(&record(&key.0, expiry));
        Ok(())
    }

    /// Appends whole records to the journal, outside the map's lock (`O_APPEND`:
    /// concurrent appends do not mix), and starts a compaction of the journal when it has
    /// grown to twice the cache's capacity.
    fn append(&self, records: &[u8]) {
        if self.path.is_none() {
            return;
        }
        {
            let journal = self.journal.read().unwrap_or_else(|p| p.into_inner());
            if let Some(mut j) = journal.as_ref() {
                if let Err(e) = j.write_all(records) {
                    tracing::error!(error = %e, "replay journal write failed; protection continues in memory");
                }
            }
            // Under the journal's read lock: a compaction puts its file in place under
            // the write lock, so each record written to the file it replaces is in its
            // tail, or in what it read of the table. The tail's lock only while one runs:
            // a write that finds none under way wrote a key stored before the part that
            // holds it was read (the part's lock orders the two), so it is in the new file.
            if self.compacting.load(Ordering::Acquire) {
                if let Some(tail) = self.lock_tail().as_mut() {
                    tail.extend_from_slice(records);
                }
            }
        }
        let added = records.len() / RECORD;
        let journaled = self.journal_records.fetch_add(added, Ordering::Relaxed) + added;
        if journaled > 2 * self.capacity && !self.compacting.swap(true, Ordering::AcqRel) {
            self.start_compaction();
        }
    }

    fn lock_tail(&self) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Compacts the journal on a thread of its own, so no request waits for it: the write
    /// of every entry held and its `fsync`, with every part locked, held a check up for
    /// 67–85 ms at a million entries (the benchmark host's disk, `load-replay`).
    fn start_compaction(&self) {
        if let Some(path) = &self.path {
            lock_compacting().push(path.clone());
        }
        // Marked over however the thread ends, a panic included: another compaction may
        // start, and an open of this journal must not wait forever.
        let started = self.beside("bsk-replay-comp", ReplayCache::compaction_done, |cache| {
            if let Err(e) = cache.compact() {
                tracing::error!(error = %e, "replay journal compaction failed; the journal keeps growing until the next one");
                cache.after_failed_compaction();
            }
        });
        if let Err(e) = started {
            tracing::error!(error = %e, "replay journal compaction not started");
            self.after_failed_compaction();
            self.compaction_done();
        }
    }

    /// Runs `work` on a thread of its own (named `name`), then `done` however the thread
    /// ends, a panic included.
    fn beside(
        &self,
        name: &str,
        done: fn(&ReplayCache),
        work: impl FnOnce(&ReplayCache) + Send + 'static,
    ) -> io::Result<()> {
        let cache = (self.me.upgrade()).ok_or_else(|| io::Error::other("the cache is going"))?;
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _done = OnEnd(|| done(&cache));
                work(&cache);
            })
            .map(drop)
    }

    /// The compaction is over: another may start, and a cache waiting to open the journal
    /// may read it.
    fn compaction_done(&self) {
        self.compacting.store(false, Ordering::Release);
        let mut compacting = lock_compacting();
        if let Some(i) = (self.path.as_ref()).and_then(|p| compacting.iter().position(|c| c == p)) {
            compacting.swap_remove(i);
        }
        COMPACTED.notify_all();
    }

    /// Tried again once another capacity's worth of records is written, not at each one.
    fn after_failed_compaction(&self) {
        self.journal_records.store(self.capacity, Ordering::Relaxed);
    }

    /// Rewrites the journal with the entries the table holds, while requests go on: the
    /// parts are read one at a time (each locked only while its entries are copied), the
    /// new file is written and synced with no lock held, and the records appended to the
    /// old journal meanwhile (its tail) are added to it when it takes the old one's
    /// place, with the journal locked for that moment only.
    fn compact(&self) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        *self.lock_tail() = Some(Vec::new());
        let written = self.write_entries(path);
        #[cfg(test)]
        self.hold_here();
        let mut journal = self.journal.write().unwrap_or_else(|p| p.into_inner());
        let tail = self.lock_tail().take().unwrap_or_default();
        let (mut file, tmp, entries) = written?;
        let placed = file.write_all(&tail).and_then(|()| fs::rename(&tmp, path));
        if let Err(e) = placed {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.journal_records
            .store(entries + tail.len() / RECORD, Ordering::Relaxed);
        let old = journal.replace(file);
        drop(journal);
        // Closed with no lock held: the replaced file's last close frees its blocks,
        // which took 13–17 ms for 54 MB.
        drop(old);
        Ok(())
    }

    /// Tests: holds the thread here when the test asked to (see `pause`).
    #[cfg(test)]
    fn hold_here(&self) {
        let pause = self.pause.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((reached, release)) = pause {
            let _ = reached.send(());
            if release.recv() == Ok(true) {
                panic!("the test's panic in a compaction or an eviction");
            }
        }
    }

    /// Writes every entry the table holds to a new file beside the journal and syncs it;
    /// returns it (open for appending), its path and how many records it holds.
    fn write_entries(&self, path: &Path) -> io::Result<(File, PathBuf, usize)> {
        let tmp = path.with_extension("log.tmp");
        drop(crate::state_dir::create_file(&tmp)?);
        let mut file = OpenOptions::new().append(true).open(&tmp)?;
        let mut entries = 0;
        let mut buf = Vec::new();
        for (i, part) in self.parts().enumerate() {
            buf.clear();
            {
                let part = lock_part(part);
                buf.reserve(part.seen.len() * RECORD);
                for (k, e) in part.seen.iter() {
                    buf.extend_from_slice(&record(&Tag::of(k, i).0, e));
                }
            }
            entries += buf.len() / RECORD;
            if let Err(e) = file.write_all(&buf) {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        }
        if let Err(e) = file.sync_all() {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok((file, tmp, entries))
    }
    /// Records `key` like [`ReplayCache::check_and_insert`], held by a guard: unless
    /// [`Reservation::keep`] is called, dropping the guard forgets the key — on a refusal
    /// after this stage, a request that never reached the application, or a panic — so
    /// the peer's retry is not refused as a replay of something that never happened.
    ///
    /// The journal record is written together with those of the other requests that
    /// reach this stage on the same connection worker in the same turn of its scheduler:
    /// one write for the batch, and every request of it waits for that write, so a
    /// record is still in the kernel before its request goes on. The wait also sends the
    /// batch's requests on to the application together (`pipeline::run` makes every
    /// other request wait for its turn's end for that): without it (and the write) the
    /// application spent 11–18% more CPU a request and the sidecar no less
    /// (BENCHMARKS.md, the forty-sixth round), so a journal that needs no wait is no gain.
    pub async fn reserve(
        &self,
        key: ReplayKey,
        now: u64,
        expiry: u64,
    ) -> Result<Reservation<'_>, Replayed> {
        self.store(key.tag(), expiry, now, Refuse::Unexpired)?;
        // Made first: a request dropped while its batch is gathered forgets its key.
        let reservation = Reservation {
            cache: self,
            key,
            kept: false,
        };
        if self.path.is_some() {
            self.append_batched(&record(&key.0, expiry)).await;
        }
        Ok(reservation)
    }

    /// Adds `rec` to this worker's batch and returns once the batch is written. The
    /// first request of a batch gathers it: it lets every other ready task of the
    /// worker run once (they add their records), then writes the batch.
    async fn append_batched(&self, rec: &[u8]) {
        let Some(slot) = self
            .batches
            .get(crate::workers::current())
            .or_else(|| self.batches.first())
        else {
            self.append(rec);
            return;
        };
        let (mine, gather) = {
            let mut b = lock_batch(slot);
            b.records.extend_from_slice(rec);
            let gather = !b.gathering;
            b.gathering = true;
            (b.started, gather)
        };
        if gather {
            let mut gathering = Gathering {
                cache: self,
                slot,
                done: false,
            };
            tokio::task::yield_now().await;
            gathering.write();
        } else {
            std::future::poll_fn(|cx| {
                let mut b = lock_batch(slot);
                if b.written > mine {
                    return std::task::Poll::Ready(());
                }
                b.waiters.push(cx.waker().clone());
                std::task::Poll::Pending
            })
            .await;
        }
    }

    /// Forgets `key` — for a request that never reached the application, so the peer's
    /// retry is not refused as a replay.
    pub fn forget(&self, key: ReplayKey) {
        let tag = key.tag();
        let mut part = self.shard(tag);
        if part.seen.remove(tag.key()) {
            part.recount(&self.count, false);
        }
        // The journal keeps the record; on restart the key returns until it expires,
        // which errs on the side of refusing.
    }

    /// Records `key` until `expiry` in its part (making room first when it is new), or
    /// refuses it as `refuse` says.
    fn store(&self, tag: Tag, expiry: u64, now: u64, refuse: Refuse) -> Result<(), Replayed> {
        let key = tag.key();
        let mut part = self.shard(tag);
        // The usual case: room in the part and in the cache, so nothing is swept or
        // evicted first, and one lookup finds the key or its slot.
        if part.seen.has_room() && self.count.has_room(self.capacity) {
            if !part
                .seen
                .record(key, expiry, now, refuse == Refuse::Unexpired)
            {
                return Err(Replayed);
            }
            part.since_sweep += 1;
            part.recount(&self.count, false);
            return Ok(());
        }
        let present = match part.seen.get(key) {
            Some(e) if e > now && refuse == Refuse::Unexpired => return Err(Replayed),
            Some(_) => true,
            None => false,
        };
        if !present {
            if !self.count.has_room(self.capacity) {
                // Near the capacity the count is made exact, and room is made over every
                // part when the cache is full; so this part is let go first, then looked
                // at again: another request may have recorded the key in between.
                drop(part);
                self.make_room(now);
                part = self.shard(tag);
                let seen = part.seen.get(key).is_some_and(|e| e > now);
                if seen && refuse == Refuse::Unexpired {
                    return Err(Replayed);
                }
            }
            self.sweep_before_growing(&mut part, now);
        }
        part.seen.insert(key, expiry, now);
        part.since_sweep += 1;
        part.recount(&self.count, true);
        Ok(())
    }

    /// Counts the entries exactly, and evicts when the cache is full. A large cache
    /// evicts on a thread of its own, the inserts going on meanwhile: the eviction sweeps
    /// and sorts every entry's expiry, which held every request up for 16–18 ms at a
    /// million entries when done here with every part locked. The inserts may take the
    /// cache past its capacity by a sixteenth of it while it runs; past that, an insert
    /// evicts here.
    fn make_room(&self, now: u64) {
        let beside = self.capacity >= EVICT_BESIDE;
        let past = self.capacity + self.capacity / 16;
        // While an eviction runs, an insert that surely stays below the bound neither
        // counts nor locks anything more.
        if beside
            && self.evicting.load(Ordering::Acquire)
            && self.count.total.load(Ordering::Relaxed) + SHARDS * self.count.step < past
        {
            return;
        }
        let mut all = self.lock_all();
        for part in all.iter_mut() {
            part.recount(&self.count, true);
        }
        let total = self.count.total.load(Ordering::Relaxed);
        if total < self.capacity {
            return;
        }
        if beside && total < past {
            drop(all);
            if self.evicting.swap(true, Ordering::AcqRel) || self.start_eviction(now) {
                return;
            }
            all = self.lock_all();
        }
        self.evict(Some(&mut all), now);
    }

    /// Starts an eviction on a thread of its own; `false` (and none under way) when it
    /// cannot start.
    fn start_eviction(&self, now: u64) -> bool {
        let started = self.beside(
            "bsk-replay-full",
            ReplayCache::eviction_done,
            move |cache| {
                #[cfg(test)]
                cache.hold_here();
                cache.evict(None, now);
            },
        );
        if let Err(e) = started {
            tracing::error!(error = %e, "replay cache eviction not started; evicting in the request");
            self.eviction_done();
            return false;
        }
        true
    }

    fn eviction_done(&self) {
        self.evicting.store(false, Ordering::Release);
    }

    /// Runs `f` on every part: on those already locked (`held`), else on each in turn,
    /// locked while `f` runs.
    fn each_part(&self, held: Option<&mut [ShardGuard<'_>]>, mut f: impl FnMut(&mut Shard)) {
        match held {
            Some(all) => all.iter_mut().for_each(|part| f(part)),
            None => self.parts().for_each(|part| f(&mut lock_part(part))),
        }
    }

    /// Before a new entry: when the part is about to grow and some entry may have
    /// expired, sweep out its expired entries — unless its last sweep was so recent that
    /// this one would free little, in which case it grows.
    fn sweep_before_growing(&self, part: &mut Shard, now: u64) {
        let len = part.seen.len();
        if part.seen.has_room() || !part.seen.may_hold_expired(now) || part.since_sweep < len / 8 {
            return;
        }
        part.since_sweep = 0;
        part.seen.retain(now, |e| e > now);
        part.recount(&self.count, false);
    }

    /// The cache is full: sweep out every expired entry, and when it is still full of
    /// unexpired ones, the earliest to expire go (a sixteenth of the capacity at once,
    /// so this is not repeated at every insert); the freshness window bounds how old a
    /// replay of them could be.
    ///
    /// The parts are those `held` locked, or else each is locked in turn while it is
    /// swept, and again while it is cut (an eviction beside the requests): an entry
    /// inserted in between is judged by the same cut.
    fn evict(&self, mut held: Option<&mut [ShardGuard<'_>]>, now: u64) {
        // Made before any part is locked: growing it under a part's lock held an insert
        // into that part up for 2–4 ms at a million entries.
        let mut expiries: Vec<u32> = Vec::with_capacity(
            (self.count.total.load(Ordering::Relaxed) + 2 * SHARDS * self.count.step)
                .max(self.capacity + self.capacity / 16),
        );
        self.each_part(held.as_deref_mut(), |part| {
            part.since_sweep = 0;
            part.seen.retain(now, |e| e > now);
            part.recount(&self.count, true);
            let held = part.seen.iter();
            held.for_each(|(_, e)| expiries.push(u32::try_from(e).unwrap_or(u32::MAX)));
        });
        let len = expiries.len();
        if len < self.capacity {
            return;
        }
        tracing::warn!("replay cache full; evicting the unexpired entries nearest their expiry");
        let evict = (len + 1 - self.capacity).max(self.capacity / 16).min(len);
        let (_, &mut cut, _) = expiries.select_nth_unstable(evict.saturating_sub(1));
        // Everything expiring before `cut` goes, then entries at `cut` until `evict`.
        let mut at_cut = evict.saturating_sub(expiries.iter().filter(|&&e| e < cut).count());
        self.each_part(held, |part| {
            part.seen.retain(now, |e| {
                match u32::try_from(e).unwrap_or(u32::MAX).cmp(&cut) {
                    std::cmp::Ordering::Less => false,
                    std::cmp::Ordering::Equal if at_cut > 0 => {
                        at_cut -= 1;
                        false
                    }
                    _ => true,
                }
            });
            part.recount(&self.count, true);
        });
    }

    /// Rewrites the journal with the entries held, at start (atomic rename), before any
    /// request can append to it.
    fn rewrite(&self) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let (file, tmp, entries) = self.write_entries(path)?;
        if let Err(e) = fs::rename(&tmp, path) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.journal_records.store(entries, Ordering::Relaxed);
        *self.journal.write().unwrap_or_else(|p| p.into_inner()) = Some(file);
        Ok(())
    }

    /// Entries held (exactly: every part is looked at).
    pub fn len(&self) -> usize {
        self.lock_all().iter().map(|part| part.seen.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Runs its closure when dropped: at the end of a thread beside the requests
/// ([`ReplayCache::beside`]), however it ends, a panic included.
struct OnEnd<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnEnd<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// One worker's journal batch.
#[derive(Default)]
struct Batch {
    /// Records of the batch being gathered.
    records: Vec<u8>,
    /// A request is gathering the batch (and will write it).
    gathering: bool,
    /// Number of the batch being gathered; batches written so far (in order: a batch is
    /// written with its slot locked).
    started: u64,
    written: u64,
    /// Requests waiting for their batch to be written.
    waiters: Vec<std::task::Waker>,
}

fn lock_batch(slot: &Mutex<Batch>) -> std::sync::MutexGuard<'_, Batch> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

/// The gathering request's duty to write its batch: done after its yield, or when it is
/// dropped first (its request cancelled), so the batch's other requests never wait
/// forever.
struct Gathering<'a> {
    cache: &'a ReplayCache,
    slot: &'a Mutex<Batch>,
    done: bool,
}

impl Gathering<'_> {
    fn write(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let mut b = lock_batch(self.slot);
        // Written with the slot locked: batches of one slot complete in order.
        self.cache.append(&b.records);
        b.records.clear();
        b.gathering = false;
        b.started += 1;
        b.written = b.started;
        for w in b.waiters.drain(..) {
            w.wake();
        }
    }
}

impl Drop for Gathering<'_> {
    fn drop(&mut self) {
        self.write();
    }
}

/// A replay record that is forgotten again unless kept; see [`ReplayCache::reserve`].
/// It borrows the cache: a count taken on a cache both connection workers share is a
/// cache line moved between their cores, twice a request.
#[must_use = "dropping a reservation forgets the key"]
pub struct Reservation<'a> {
    cache: &'a ReplayCache,
    key: ReplayKey,
    kept: bool,
}

impl Reservation<'_> {
    /// Whether its request waited for its turn's journal write (see
    /// [`ReplayCache::reserve`]): every request of a journaled cache does.
    pub fn waited_for_its_turn(&self) -> bool {
        self.cache.path.is_some()
    }

    /// The request reached the application (or may have): its key stays until it expires.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation<'_> {
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
        let c = ReplayCache::open(dir.path(), 10, 1, clock.unix_secs()).unwrap();
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
        let c = ReplayCache::open(dir.path(), 10, 1, clock.unix_secs()).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(again(&c), Err(Replayed));
        drop(c);
        // ... and not one at it.
        clock.advance(Duration::from_secs(1));
        let c = ReplayCache::open(dir.path(), 10, 1, clock.unix_secs()).unwrap();
        assert!(c.is_empty());
    }

    /// The key is the first 16 bytes of SHA-256 over each part after its length (eight
    /// bytes, little-endian): the stream the journal's records were made from, so a key
    /// recorded before a restart (or by an earlier build) is the same key after it.
    #[test]
    fn a_key_is_the_digest_of_its_parts_each_after_its_length() {
        let long = "x".repeat(300);
        for parts in [
            vec![],
            vec!["9054233544", "20220811130723"],
            vec!["/p", &long],
        ] {
            let mut stream = Vec::new();
            for p in ["bsk", "ticket"].iter().chain(&parts) {
                stream.extend_from_slice(&(p.len() as u64).to_le_bytes());
                stream.extend_from_slice(p.as_bytes());
            }
            let digest = Sha256::digest(&stream);
            assert_eq!(
                ReplayKey::new("bsk", "ticket", &parts).0,
                digest[..16],
                "{parts:?}"
            );
        }
        // A fixed vector (computed apart from this code), so the stream itself cannot
        // drift with the test.
        assert_eq!(
            ReplayKey::new("bsk", "sig", &["/bsk/status", "abc"]).to_hex(),
            "ace9c4afdf50fef91802af02fedc30b5"
        );
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

    /// The most the whole cache's size may be above its count.
    const COUNT_SLACK: usize = SHARDS * COUNT_STEP;

    /// The parts tell the shared count of their entries in steps, not at each insert;
    /// the capacity still holds exactly, far above the steps' slack as below it.
    #[test]
    fn the_capacity_holds_however_far_the_parts_count_lags() {
        for capacity in [COUNT_SLACK / 2, 3 * COUNT_SLACK] {
            let c = ReplayCache::in_memory(capacity);
            for i in 0..4 * capacity {
                c.check_and_insert(key(&i.to_string()), 0, 1_000).unwrap();
                if i % 997 == 0 {
                    assert!(c.len() <= capacity, "{} held at {i}", c.len());
                }
            }
            assert!(c.len() <= capacity);
            // Eviction frees a sixteenth at a time, so the cache stays nearly full.
            assert!(c.len() >= capacity - capacity / 16, "{}", c.len());
            // Forgetting brings the count down with the entries.
            let held = c.len();
            for i in 0..4 * capacity {
                c.forget(key(&i.to_string()));
            }
            assert!(
                c.is_empty(),
                "{held} held, {} after forgetting all",
                c.len()
            );
            // The count is off by less than the slack, the direction the quick path allows.
            assert!(c.count.total.load(Ordering::Relaxed) < COUNT_SLACK);
        }
    }

    /// A full cache of unexpired entries lets go of the one nearest its expiry, not the
    /// newest and not at random.
    #[test]
    fn a_full_cache_evicts_the_entry_nearest_its_expiry() {
        let c = ReplayCache::in_memory(4);
        for (t, expiry) in [("a", 50), ("b", 10), ("c", 40), ("d", 30)] {
            c.check_and_insert(key(t), 0, expiry).unwrap();
        }
        c.check_and_insert(key("e"), 0, 60).unwrap();
        assert_eq!(c.len(), 4);
        assert_eq!(c.check_and_insert(key("b"), 1, 70), Ok(()), "b was evicted");
        // b's return evicted d (expiry 30), the nearest then; a, c and e are still held.
        for t in ["a", "c", "e"] {
            assert_eq!(c.check_and_insert(key(t), 1, 70), Err(Replayed), "{t}");
        }
        assert_eq!(c.check_and_insert(key("d"), 1, 70), Ok(()), "d was evicted");
    }

    /// A large full cache evicts on a thread of its own: inserts go on meanwhile (held
    /// here before it starts), past the capacity by at most a sixteenth of it; then the
    /// entries nearest their expiry go, as in a small cache.
    #[test]
    fn a_large_full_cache_evicts_beside_the_inserts() {
        use std::time::Duration;
        let capacity = EVICT_BESIDE;
        let c = ReplayCache::in_memory(capacity);
        let keys: Vec<ReplayKey> = (0..capacity).map(|i| key(&format!("full-{i}"))).collect();
        for (k, e) in keys.iter().zip(10_000..) {
            c.check_and_insert(*k, 0, e).unwrap();
        }
        assert_eq!(c.len(), capacity);
        let (started, release) = hold_next(&c);
        // One past a sixteenth more than the cache holds: the last ones find it that far
        // past its capacity and evict in the insert.
        let late: Vec<ReplayKey> = (0..capacity / 16 + 1)
            .map(|i| key(&format!("late-{i}")))
            .collect();
        let (done, inserted) = std::sync::mpsc::channel();
        let (on_thread, on_keys) = (c.clone(), late.clone());
        std::thread::spawn(move || {
            let mut most = 0;
            for (k, e) in on_keys.iter().zip(100_000..) {
                on_thread.check_and_insert(*k, 0, e).unwrap();
                most = most.max(on_thread.count.total.load(Ordering::Relaxed));
            }
            done.send(most).unwrap();
        });
        started
            .recv_timeout(Duration::from_secs(30))
            .expect("an eviction starts beside the inserts");
        let most = (inserted.recv_timeout(Duration::from_secs(30)))
            .expect("inserts answered while the eviction is held");
        assert!(most > capacity, "inserts went on past the capacity: {most}");
        assert!(most <= capacity + capacity / 16, "and no further: {most}");
        release.send(false).unwrap();
        let waited = std::time::Instant::now();
        while c.evicting.load(Ordering::Acquire) {
            let within = waited.elapsed() < Duration::from_secs(30);
            assert!(within, "the eviction ends");
            std::thread::yield_now();
        }
        let held = c.len();
        assert!(held < capacity, "{held} held after the eviction");
        // The first keys, nearest their expiry, went; the last of the full cache and
        // every late one are held.
        assert_eq!(c.check_and_insert(keys[0], 0, 200_000), Ok(()));
        for k in keys.iter().rev().take(100).chain(&late) {
            assert_eq!(c.check_and_insert(*k, 0, 200_000), Err(Replayed));
        }
    }

    /// Expired entries are swept out before the table grows: a second window's worth of
    /// keys, as many in each part as the first, takes the room of the first, expired one,
    /// and memory stays at one window.
    #[test]
    fn expired_entries_make_room_before_the_table_grows() {
        let c = ReplayCache::in_memory(1_000_000);
        // More keys than a part's smallest table takes, so that parts grow.
        let old: Vec<ReplayKey> = (0..80_000).map(|i| key(&format!("old{i}"))).collect();
        for k in &old {
            c.check_and_insert(*k, 0, 100).unwrap();
        }
        let room = |c: &ReplayCache| -> usize {
            c.lock_all().iter().map(|part| part.seen.capacity()).sum()
        };
        let held = room(&c);
        // The new window: for each part, as many new keys as it holds old ones.
        let mut wanted = [0usize; SHARDS];
        for k in &old {
            wanted[k.tag().part()] += 1;
        }
        let new: Vec<ReplayKey> = (0..)
            .map(|i| key(&format!("new{i}")))
            .filter(|k| {
                let w = &mut wanted[k.tag().part()];
                let take = *w > 0;
                *w = w.saturating_sub(1);
                take
            })
            .take(old.len())
            .collect();
        for k in &new {
            c.check_and_insert(*k, 200, 300).unwrap();
        }
        assert_eq!(c.len(), 80_000, "only the unexpired window is held");
        assert!(room(&c) <= held, "the table did not grow");
        let last = new.last().copied().unwrap();
        assert_eq!(c.check_and_insert(last, 201, 300), Err(Replayed));
    }

    #[test]
    fn survives_restart_and_drops_expired() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = ReplayCache::open(dir.path(), 100, 1, 100).unwrap();
            c.check_and_insert(key("live"), 100, 1_000).unwrap();
            c.check_and_insert(key("short"), 100, 150).unwrap();
        }
        let c = ReplayCache::open(dir.path(), 100, 1, 200).unwrap();
        assert_eq!(c.check_and_insert(key("live"), 200, 1_000), Err(Replayed));
        assert_eq!(c.check_and_insert(key("short"), 200, 1_000), Ok(()));
        assert_eq!(c.len(), 2);
    }

    /// A key forgotten and recorded again is in the journal twice: read back, its last
    /// record's expiry holds, as when it was written.
    #[test]
    fn a_key_journaled_twice_keeps_its_last_expiry_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = ReplayCache::open(dir.path(), 100, 1, 100).unwrap();
            c.check_and_insert(key("k"), 100, 1_000).unwrap();
            c.forget(key("k"));
            c.check_and_insert(key("k"), 100, 500).unwrap();
        }
        let c = ReplayCache::open(dir.path(), 100, 1, 200).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c.check_and_insert(key("k"), 499, 2_000), Err(Replayed));
        assert_eq!(c.check_and_insert(key("k"), 500, 2_000), Ok(()));
    }

    /// Workers appending outside the map's lock while compactions replace the file: every
    /// key the cache holds is still in the journal after a restart.
    #[test]
    fn no_record_is_lost_to_a_compaction_under_concurrent_appends() {
        let dir = tempfile::tempdir().unwrap();
        let c = ReplayCache::open(dir.path(), 64, 1, 100).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..1_000 {
                        let k = key(&format!("{t}-{i}"));
                        c.check_and_insert(k, 100, 1_000 + i).unwrap();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let tags = held_tags(&c);
        assert_eq!(tags.len(), 64);
        let keys: Vec<ReplayKey> = (0..4)
            .flat_map(|t| (0..1_000).map(move |i| key(&format!("{t}-{i}"))))
            .filter(|k| tags.contains(&kept(k)))
            .collect();
        assert_eq!(keys.len(), 64);
        drop(c);
        let c = ReplayCache::open(dir.path(), 10_000, 1, 200).unwrap();
        for k in keys {
            assert_eq!(c.check_and_insert(k, 200, 2_000), Err(Replayed));
        }
    }

    /// Holds `c`'s next compaction once its file is written, or its next eviction beside
    /// the requests before it starts: it says so on the first channel, then waits for
    /// the second (`true`: it panics there).
    fn hold_next(
        c: &ReplayCache,
    ) -> (std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<bool>) {
        let (reached, written) = std::sync::mpsc::channel();
        let (release, paused) = std::sync::mpsc::channel();
        *c.pause.lock().unwrap() = Some((reached, paused));
        (written, release)
    }

    /// Checks `keys` (expiring from `first_expiry` on), which start a compaction, holds
    /// it once its file is written, lets it go on (`panics`: to its panic) and waits
    /// for its end.
    fn compaction_through(c: &ReplayCache, keys: &[ReplayKey], first_expiry: u64, panics: bool) {
        let (written, release) = hold_next(c);
        for (k, e) in keys.iter().zip(first_expiry..) {
            c.check_and_insert(*k, 100, e).unwrap();
        }
        written
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the compaction writes its file");
        release.send(panics).unwrap();
        wait_compaction_over(c);
    }

    /// What the table keeps of `k`, as [`held_tags`] gives it back.
    fn kept(k: &ReplayKey) -> Tag {
        let t = k.tag();
        Tag::of(t.key(), t.part())
    }

    /// The tags of every key the table holds.
    fn held_tags(c: &ReplayCache) -> Vec<Tag> {
        (c.lock_all().iter().enumerate())
            .flat_map(|(i, part)| {
                part.seen
                    .iter()
                    .map(|(k, _)| Tag::of(k, i))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn wait_compaction_over(c: &ReplayCache) {
        let waited = std::time::Instant::now();
        while c.compacting.load(Ordering::Acquire) {
            let within = waited.elapsed() < std::time::Duration::from_secs(30);
            assert!(within, "the compaction ends");
            std::thread::yield_now();
        }
    }

    /// A compaction writes the new journal while checks go on (held here, after its
    /// write, until the checks made meanwhile are done), and the records those checks
    /// appended to the old journal are in the new one: after a restart every key still
    /// held is refused.
    #[test]
    fn checks_go_on_while_the_journal_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let journal_records = || {
            let len = fs::metadata(dir.path().join(FILE_NAME)).unwrap().len();
            usize::try_from(len).unwrap() / RECORD
        };
        let c = ReplayCache::open(dir.path(), 50, 1, 100).unwrap();
        let (written, release) = hold_next(&c);
        // Earliest to expire, so the full cache evicts these first.
        let before: Vec<ReplayKey> = (0..101).map(|i| key(&format!("before-{i}"))).collect();
        for (k, e) in before.iter().zip(2_000..) {
            c.check_and_insert(*k, 100, e).unwrap();
        }
        assert!(
            c.compacting.load(Ordering::Acquire),
            "101 records, past twice the capacity, start a compaction"
        );
        written
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the compaction writes its file");
        let during: Vec<ReplayKey> = (0..20).map(|i| key(&format!("during-{i}"))).collect();
        let (done, checked) = std::sync::mpsc::channel();
        let (on_thread, keys) = (c.clone(), during.clone());
        std::thread::spawn(move || {
            for (k, e) in keys.iter().zip(3_000..) {
                on_thread.check_and_insert(*k, 100, e).unwrap();
            }
            done.send(()).unwrap();
        });
        checked
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("checks answered while the compaction is under way");
        assert!(
            c.compacting.load(Ordering::Acquire),
            "the compaction is still held"
        );
        assert_eq!(
            journal_records(),
            121,
            "the old journal still takes every record"
        );
        release.send(false).unwrap();
        wait_compaction_over(&c);
        let after: Vec<ReplayKey> = (0..5).map(|i| key(&format!("after-{i}"))).collect();
        for (k, e) in after.iter().zip(4_000..) {
            c.check_and_insert(*k, 100, e).unwrap();
        }
        let held = held_tags(&c);
        // What the table held (at most its capacity), the 20 of the tail, and 5 after.
        assert!(
            journal_records() <= 50 + 20 + 5,
            "the journal was compacted"
        );
        let still_held: Vec<ReplayKey> = (before.iter().chain(&during).chain(&after))
            .filter(|k| held.contains(&kept(k)))
            .copied()
            .collect();
        assert!(during.iter().chain(&after).all(|k| still_held.contains(k)));
        drop(c);
        let c = ReplayCache::open(dir.path(), 10_000, 1, 200).unwrap();
        for k in still_held {
            assert_eq!(c.check_and_insert(k, 200, 5_000), Err(Replayed));
        }
    }

    /// A compaction that panics leaves the journal as it was, and neither another
    /// compaction nor an open of the journal waits for it.
    #[test]
    fn a_compaction_that_panics_stops_nothing() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let c = ReplayCache::open(dir.path(), 50, 1, 100).unwrap();
        let keys: Vec<ReplayKey> = (0..101).map(|i| key(&i.to_string())).collect();
        compaction_through(&c, &keys, 2_000, true);
        // Another starts at the next write, the journal being as long as it was.
        let more: Vec<ReplayKey> = (0..60).map(|i| key(&format!("more-{i}"))).collect();
        compaction_through(&c, &more, 3_000, false);
        let held = held_tags(&c);
        drop(c);
        let (opened, open) = std::sync::mpsc::channel();
        let path = dir.path().to_owned();
        std::thread::spawn(move || opened.send(ReplayCache::open(&path, 10_000, 1, 200)));
        let c = (open.recv_timeout(Duration::from_secs(30)))
            .expect("the journal opens")
            .unwrap();
        let mut refused = 0;
        for k in keys.iter().chain(&more).filter(|k| held.contains(&kept(k))) {
            assert_eq!(c.check_and_insert(*k, 200, 5_000), Err(Replayed));
            refused += 1;
        }
        assert_eq!(refused, held.len());
    }

    #[test]
    fn torn_last_record_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = ReplayCache::open(dir.path(), 100, 1, 100).unwrap();
            c.check_and_insert(key("a"), 100, 1_000).unwrap();
        }
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE_NAME))
            .unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        drop(f);
        let c = ReplayCache::open(dir.path(), 100, 1, 200).unwrap();
        assert_eq!(c.check_and_insert(key("a"), 200, 1_000), Err(Replayed));
    }

    /// An in-memory cache's reservation, which never waits for a journal.
    fn reserve_now(c: &ReplayCache, k: ReplayKey, now: u64) -> Result<Reservation<'_>, Replayed> {
        use futures_util::FutureExt;
        c.reserve(k, now, 100)
            .now_or_never()
            .expect("no journal to wait for")
    }

    #[test]
    fn a_reservation_is_forgotten_unless_kept_even_on_panic() {
        let c = std::sync::Arc::new(ReplayCache::in_memory(10));
        let r = reserve_now(&c, key("kept"), 0).unwrap();
        r.keep();
        assert!(reserve_now(&c, key("kept"), 1).is_err());
        drop(reserve_now(&c, key("dropped"), 0).unwrap());
        assert!(reserve_now(&c, key("dropped"), 1).is_ok());
        let c2 = c.clone();
        let panicked = std::panic::catch_unwind(move || {
            let _r = reserve_now(&c2, key("panic"), 0).unwrap();
            panic!("a bug after the replay stage");
        });
        assert!(panicked.is_err());
        assert!(
            reserve_now(&c, key("panic"), 1).is_ok(),
            "nothing remembered"
        );
    }

    /// Requests that reach the replay stage in one turn of a worker's scheduler share one
    /// journal write, and each returns only once it is written: after a restart every
    /// one of them is refused.
    #[tokio::test(flavor = "current_thread")]
    async fn requests_of_one_turn_share_one_journal_write() {
        let dir = tempfile::tempdir().unwrap();
        let c = std::sync::Arc::new(ReplayCache::open(dir.path(), 100, 1, 10).unwrap());
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move {
                    c.reserve(key(&format!("t{i}")), 10, 1_000)
                        .await
                        .unwrap()
                        .keep();
                    // The record is in the file by now.
                    let len = std::fs::metadata(c.path.as_ref().unwrap()).unwrap().len();
                    assert!(len >= RECORD as u64 * (i + 1), "task {i}: {len} bytes");
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            lock_batch(&c.batches[0]).started,
            1,
            "one write for the eight"
        );
        drop(c);
        let c = ReplayCache::open(dir.path(), 100, 1, 20).unwrap();
        for i in 0..8 {
            assert_eq!(
                c.check_and_insert(key(&format!("t{i}")), 20, 1_000),
                Err(Replayed)
            );
        }
    }

    /// The request gathering a batch is cancelled before it writes: the batch is written
    /// as it is dropped, so the request waiting on it goes on, its record in the file.
    #[tokio::test(flavor = "current_thread")]
    async fn a_cancelled_gatherer_still_writes_its_batch() {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        let dir = tempfile::tempdir().unwrap();
        let c = std::sync::Arc::new(ReplayCache::open(dir.path(), 100, 1, 10).unwrap());
        let mut cx = Context::from_waker(Waker::noop());
        let mut first = Box::pin(c.reserve(key("first"), 10, 1_000));
        let mut second = Box::pin(c.reserve(key("second"), 10, 1_000));
        assert!(first.as_mut().poll(&mut cx).is_pending(), "gathering");
        assert!(
            second.as_mut().poll(&mut cx).is_pending(),
            "waiting on the batch"
        );
        drop(first);
        let Poll::Ready(Ok(r)) = second.as_mut().poll(&mut cx) else {
            panic!("the batch was not written");
        };
        r.keep();
        // The cancelled request's key is forgotten in memory; both records are in the
        // journal (which errs on the side of refusing after a restart).
        assert_eq!(c.check_and_insert(key("first"), 11, 1_000), Ok(()));
        assert_eq!(c.check_and_insert(key("second"), 11, 1_000), Err(Replayed));
        drop(second);
        drop(c);
        let c = ReplayCache::open(dir.path(), 100, 1, 20).unwrap();
        assert_eq!(c.check_and_insert(key("second"), 20, 1_000), Err(Replayed));
    }

    /// A journal of whole 16-byte keys — as appended, and as earlier versions compacted
    /// it, 8 bytes and zeros — still refuses its keys after a restart, as does one
    /// compacted from the 54 bits the table keeps.
    #[test]
    fn what_the_table_keeps_and_whole_keys_in_the_journal_refuse_alike() {
        let dir = tempfile::tempdir().unwrap();
        let whole: Vec<u8> = (0..3)
            .flat_map(|i| record(&key(&format!("w{i}")).0, 1_000))
            .collect();
        std::fs::write(dir.path().join(FILE_NAME), &whole).unwrap();
        // Opening compacts: the file now holds 8-byte keys padded with zeros.
        drop(ReplayCache::open(dir.path(), 100, 1, 100).unwrap());
        let rewritten = std::fs::read(dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(rewritten.len(), whole.len());
        assert_ne!(rewritten, whole);
        let c = ReplayCache::open(dir.path(), 100, 1, 200).unwrap();
        for i in 0..3 {
            assert_eq!(
                c.check_and_insert(key(&format!("w{i}")), 200, 1_000),
                Err(Replayed),
                "w{i}"
            );
        }
        assert_eq!(c.check_and_insert(key("new"), 200, 1_000), Ok(()));
    }

    #[test]
    fn forgotten_key_can_be_retried() {
        let c = ReplayCache::in_memory(10);
        c.check_and_insert(key("x"), 0, 100).unwrap();
        c.forget(key("x"));
        assert_eq!(c.check_and_insert(key("x"), 1, 100), Ok(()));
    }
}
