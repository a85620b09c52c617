//! One part's table of held keys: open addressing with linear probing, one `u64` a slot —
//! 48 bits of the key and 16 of its expiry, counted from the table's base — where
//! hashbrown took 13 bytes (a 12-byte entry and its control byte). It grows by a half or
//! a third at a time, not by doubling, so a busy window's table is at most 15 bytes a
//! held key where hashbrown's took up to 30 (BENCHMARKS.md, the forty-eighth round). Its
//! slots are in segments of 8 KiB, which the allocator hands from one part that outgrew
//! them to the next part that grows (the forty-ninth round).
//!
//! An expiry is kept to the second up to 9 hours past the base (a config's windows
//! usually end within the hour), and rounded up to a multiple of 64 s beyond that: such
//! a key is held up to 63 s longer, never shorter. One more than 24 days past the base is
//! kept beside the slots, in a map of whole expiries.

use std::collections::HashMap;
use std::hash::BuildHasher;

use foldhash::fast::RandomState;

/// The bits of a key a slot keeps (see [`Key`]).
const KEY_BITS: u32 = 48;
/// The most a slot's expiry code may be. Codes to [`EXACT`] are seconds past the base
/// plus one, so that no entry is all zeros (the empty slot); codes past it count steps of
/// [`STEP`] seconds beyond.
const MOST_CODE: u64 = u16::MAX as u64;
const EXACT: u64 = 1 << 15;
const STEP: u64 = 64;
/// Seconds before `now` a new base is set, so a request whose clock reads a little
/// earlier than the one that set it still finds its expiry within reach.
const BASE_SLACK: u64 = 60;
/// A base is moved (every entry placed again) only if the expiry that asked for it then
/// lies this far (six days) inside the reach, so entries of a horizon near the reach's
/// do not move it at every insert; the others are kept beside the slots.
const MOVE_MARGIN: u64 = (MOST_CODE - EXACT) * STEP / 4;
/// The smallest table, in slots: one segment.
const SMALLEST: usize = SEGMENT * LINE;
/// Slots a line holds: one cache line's worth. A key's probe starts at the first slot of
/// its line, so a lookup mostly reads that one line.
const LINE: usize = 8;

/// Lines a segment holds (8 KiB): see [`Lines`].
const SEGMENT: usize = 128;

#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([u64; LINE]);

/// A table's lines, in segments of [`SEGMENT`] lines, one allocation each. The parts
/// grow at about the same pace, so the segments one part frees as it grows are what the
/// next part to grow asks the allocator for; a table in one allocation left each part's
/// outgrown tables unused in the allocator, a quarter of the memory the tables took
/// (BENCHMARKS.md, the forty-ninth round).
#[derive(Default)]
struct Lines(Vec<Box<[Line; SEGMENT]>>);

impl Lines {
    /// At least `n` empty lines: whole segments.
    fn new(n: usize) -> Lines {
        Lines(
            (0..n.div_ceil(SEGMENT))
                .map(|_| Box::new([Line::default(); SEGMENT]))
                .collect(),
        )
    }

    fn len(&self) -> usize {
        self.0.len() * SEGMENT
    }

    fn get(&self, i: usize) -> Option<&Line> {
        self.0.get(i / SEGMENT)?.get(i % SEGMENT)
    }

    fn get_mut(&mut self, i: usize) -> Option<&mut Line> {
        self.0.get_mut(i / SEGMENT)?.get_mut(i % SEGMENT)
    }

    fn iter(&self) -> impl Iterator<Item = &Line> + '_ {
        self.0.iter().flat_map(|s| s.iter())
    }
}

/// A key as a part keeps it: 48 bits of the tag's digest (the bits that chose the part
/// are not among them, so they count too: 54 bits tell two keys apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Key(u64);

impl Key {
    /// The key whose low 48 bits are `bits`' (the others are dropped).
    pub(super) fn new(bits: u64) -> Key {
        Key(bits & ((1 << KEY_BITS) - 1))
    }

    pub(super) fn bits(self) -> u64 {
        self.0
    }
}

/// Where a key is, or would go, in the slots.
enum Probe {
    Held(usize),
    Vacant(usize),
    /// No slots (a table not yet grown), or none free.
    Full,
}

pub(super) struct Table {
    /// The slots, a line at a time. `0`: empty; else the key's bits above 16 bits of
    /// expiry code (see [`code`]).
    lines: Lines,
    /// Entries in the slots.
    len: usize,
    /// What the slots' expiry codes count from (unix seconds).
    base: u64,
    /// No entry expires before this (the earliest expiry recorded since the last
    /// rebuild or sweep, which may have been forgotten since).
    earliest: u64,
    /// The entries whose expiry the slots cannot reach from their base: key → expiry.
    far: HashMap<u64, u64, RandomState>,
    /// Where a key's probe starts: a keyed hash, whose random seed per process keeps a
    /// peer that grinds digests from choosing which keys crowd together.
    hasher: RandomState,
}

impl Default for Table {
    fn default() -> Table {
        let hasher = RandomState::default();
        Table {
            lines: Lines::default(),
            len: 0,
            base: 0,
            earliest: u64::MAX,
            far: HashMap::with_hasher(hasher.clone()),
            hasher,
        }
    }
}

impl Table {
    /// Entries held.
    pub(super) fn len(&self) -> usize {
        self.len + self.far.len()
    }

    /// Entries the slots take before the table grows: four in five slots, past which a
    /// probe for a new key runs long.
    pub(super) fn capacity(&self) -> usize {
        self.slot_count() / 5 * 4
    }

    /// The slots have room for another entry.
    pub(super) fn has_room(&self) -> bool {
        self.len < self.capacity()
    }

    /// Some entry may have expired at `now`.
    pub(super) fn may_hold_expired(&self, now: u64) -> bool {
        self.earliest <= now
    }

    /// The expiry held for `key`, expired or not.
    pub(super) fn get(&self, key: Key) -> Option<u64> {
        match self.probe(key) {
            Probe::Held(i) => Some(self.expiry(self.slot(i))),
            Probe::Vacant(_) | Probe::Full => self.far.get(&key.0).copied(),
        }
    }

    /// Records `key` until `expiry`, unless `refuse` and it is held unexpired at `now`
    /// (`false` then, and nothing changes). The usual case, room in the slots and the
    /// expiry within their reach, probes once.
    pub(super) fn record(&mut self, key: Key, expiry: u64, now: u64, refuse: bool) -> bool {
        if let (Some(code), true) = (self.code(expiry), self.has_room()) {
            match self.probe(key) {
                Probe::Held(i) => {
                    if refuse && self.expiry(self.slot(i)) > now {
                        return false;
                    }
                    self.put(i, key, code, expiry);
                    return true;
                }
                Probe::Vacant(i) if self.far.is_empty() => {
                    self.put(i, key, code, expiry);
                    self.len += 1;
                    return true;
                }
                Probe::Vacant(_) | Probe::Full => {}
            }
        }
        if refuse && self.get(key).is_some_and(|e| e > now) {
            return false;
        }
        self.insert(key, expiry, now);
        true
    }

    /// Records `key` until `expiry`, growing the slots when they are full, and moving
    /// their base when `expiry` is out of its reach and a move brings it in.
    pub(super) fn insert(&mut self, key: Key, expiry: u64, now: u64) {
        if !self.far.is_empty() {
            self.far.remove(&key.0);
        }
        let held = matches!(self.probe(key), Probe::Held(_));
        if !held && !self.has_room() {
            self.rebuild(grown(self.slot_count()), self.base.max(base_at(now)));
        }
        if self.code(expiry).is_none() {
            let base = base_at(now.min(expiry));
            let reached = code(base, expiry.saturating_add(MOVE_MARGIN)).is_some();
            if reached && base != self.base {
                self.rebuild(self.slot_count(), base);
            }
        }
        match (self.code(expiry), self.probe(key)) {
            (Some(code), Probe::Held(i)) => self.put(i, key, code, expiry),
            (Some(code), Probe::Vacant(i)) => {
                self.put(i, key, code, expiry);
                self.len += 1;
            }
            (None, probe) => {
                if let Probe::Held(i) = probe {
                    self.delete(i);
                }
                self.keep_beside(key, expiry);
            }
            (Some(_), Probe::Full) => {
                self.keep_beside(key, expiry);
            }
        }
    }

    /// Forgets `key`; whether it was held.
    pub(super) fn remove(&mut self, key: Key) -> bool {
        if let Probe::Held(i) = self.probe(key) {
            self.delete(i);
            return true;
        }
        !self.far.is_empty() && self.far.remove(&key.0).is_some()
    }

    /// Keeps the entries whose expiry `keep` approves, in place; the slots' base moves up
    /// to `now`. One pass over the slots, in probe order from a slot empty before it
    /// (which no probe passes): an entry after a slot this pass emptied, in the same run
    /// of held slots, moves back to the first empty slot its probe now meets, so every
    /// probe still finds its key before an empty slot. The others are not hashed again.
    pub(super) fn retain(&mut self, now: u64, mut keep: impl FnMut(u64) -> bool) {
        let (old, base) = (self.base, self.base.max(base_at(now)));
        self.far.retain(|_, e| *e >= base && keep(*e));
        self.base = base;
        let mut earliest = self.far.values().copied().min().unwrap_or(u64::MAX);
        let n = self.slot_count();
        // The slots are never all held (see `capacity`).
        let start = (0..n).find(|&i| self.slot(i) == 0).unwrap_or(0);
        let mut beside = Vec::new();
        let mut emptied = false;
        let mut j = start;
        for _ in 0..n {
            j = Table::next(j, n);
            // Not yet written by this pass: empty here, it was empty before.
            let s = self.slot(j);
            if s == 0 {
                emptied = false;
                continue;
            }
            let expiry = expiry_of(old, s & MOST_CODE);
            if expiry < base || !keep(expiry) {
                self.set(j, 0);
                self.len = self.len.saturating_sub(1);
                emptied = true;
                continue;
            }
            earliest = earliest.min(expiry);
            let mut slot = s;
            if base != old {
                // Within reach: the base only moved up.
                let Some(c) = code(base, expiry) else {
                    self.set(j, 0);
                    self.len = self.len.saturating_sub(1);
                    emptied = true;
                    beside.push((s >> 16, expiry));
                    continue;
                };
                slot = s & !MOST_CODE | c;
                self.set(j, slot);
            }
            if emptied {
                let mut p = self.home(s >> 16, n);
                while p != j {
                    if self.slot(p) == 0 {
                        self.set(p, slot);
                        self.set(j, 0);
                        break;
                    }
                    p = Table::next(p, n);
                }
            }
        }
        self.far.extend(beside);
        self.earliest = earliest;
    }

    /// Every entry: its key and expiry (taken with `for_each`, which walks the lines
    /// and the map beside them in plain loops; `next` a step at a time is slower).
    pub(super) fn iter(&self) -> impl Iterator<Item = (Key, u64)> + '_ {
        let slots = (self.slots())
            .filter(|&s| s != 0)
            .map(|s| (Key(s >> 16), self.expiry(s)));
        slots.chain(self.far.iter().map(|(&k, &e)| (Key(k), e)))
    }

    /// Slots, held or empty.
    pub(super) fn slot_count(&self) -> usize {
        self.lines.len() * LINE
    }

    fn slots(&self) -> impl Iterator<Item = u64> + '_ {
        self.lines.iter().flat_map(|l| l.0)
    }

    fn keep_beside(&mut self, key: Key, expiry: u64) {
        self.earliest = self.earliest.min(expiry);
        self.far.insert(key.0, expiry);
    }

    /// `expiry`'s code, when the slots reach it from their base.
    fn code(&self, expiry: u64) -> Option<u64> {
        code(self.base, expiry)
    }

    /// The expiry a slot holds.
    fn expiry(&self, slot: u64) -> u64 {
        expiry_of(self.base, slot & MOST_CODE)
    }

    fn slot(&self, i: usize) -> u64 {
        let line = self.lines.get(i / LINE);
        line.and_then(|l| l.0.get(i % LINE)).copied().unwrap_or(0)
    }

    fn set(&mut self, i: usize, slot: u64) {
        let line = self.lines.get_mut(i / LINE);
        if let Some(s) = line.and_then(|l| l.0.get_mut(i % LINE)) {
            *s = slot;
        }
    }

    /// Writes `key` with `expiry` (as `code`) into slot `i`.
    fn put(&mut self, i: usize, key: Key, code: u64, expiry: u64) {
        self.earliest = self.earliest.min(expiry);
        self.set(i, key.0 << 16 | code);
    }

    /// Where `key`'s probe starts among `n` slots: the first of a line.
    fn home(&self, key: u64, n: usize) -> usize {
        self.home_line(key, n / LINE) * LINE
    }

    /// The line `key`'s probe starts at, among `lines`.
    fn home_line(&self, key: u64, lines: usize) -> usize {
        let h = self.hasher.hash_one(key);
        ((u128::from(h) * lines as u128) >> 64) as usize
    }

    fn next(i: usize, n: usize) -> usize {
        if i + 1 >= n {
            0
        } else {
            i + 1
        }
    }

    /// Looks for `key` from its home slot on, a line at a time, up to the first empty
    /// slot.
    fn probe(&self, key: Key) -> Probe {
        let lines = self.lines.len();
        if lines == 0 {
            return Probe::Full;
        }
        let mut at = self.home_line(key.0, lines);
        for _ in 0..lines {
            let Some(line) = self.lines.get(at) else {
                break;
            };
            for (k, &s) in line.0.iter().enumerate() {
                if s == 0 {
                    return Probe::Vacant(at * LINE + k);
                }
                if s >> 16 == key.0 {
                    return Probe::Held(at * LINE + k);
                }
            }
            at = Table::next(at, lines);
        }
        Probe::Full
    }

    /// Empties slot `i`, moving back the entries after it whose probe passed it, so
    /// that every probe still finds its key before an empty slot.
    fn delete(&mut self, mut i: usize) {
        let n = self.slot_count();
        let mut j = i;
        for _ in 0..n {
            j = Table::next(j, n);
            let s = self.slot(j);
            if s == 0 {
                break;
            }
            let home = self.home(s >> 16, n);
            // The entry at `j` stays unless its home lies outside (i, j], cyclically.
            let stays = if i <= j {
                i < home && home <= j
            } else {
                i < home || home <= j
            };
            if !stays {
                self.set(i, s);
                i = j;
            }
        }
        self.set(i, 0);
        self.len = self.len.saturating_sub(1);
    }

    /// Places every entry again, in `size` slots counting from `base`: those expired
    /// before the base go (no clock within its slack finds them unexpired), and those
    /// out of its reach, or past the slots' room, are kept beside.
    fn rebuild(&mut self, size: usize, base: u64) {
        let hasher = self.hasher.clone();
        let fresh = Table {
            lines: Lines::new(size / LINE),
            len: 0,
            base,
            earliest: u64::MAX,
            far: HashMap::with_hasher(hasher.clone()),
            hasher,
        };
        let old = std::mem::replace(self, fresh);
        old.iter().for_each(|(key, expiry)| self.place(key, expiry));
    }

    /// Places an entry of a rebuild (no key twice).
    fn place(&mut self, key: Key, expiry: u64) {
        if expiry < self.base {
            return;
        }
        if let (Some(code), true) = (self.code(expiry), self.has_room()) {
            if let Probe::Vacant(i) = self.probe(key) {
                self.put(i, key, code, expiry);
                self.len += 1;
                return;
            }
        }
        self.keep_beside(key, expiry);
    }
}

/// `expiry`'s code counting from `base`, when it reaches that far: the seconds past it
/// plus one, or from [`EXACT`] seconds past it on, the expiry rounded up to a multiple of
/// [`STEP`], as steps past the first such multiple there. Multiples of a step whatever
/// the base, so an expiry rounded once is not rounded again when the base moves.
fn code(base: u64, expiry: u64) -> Option<u64> {
    let past = expiry.checked_sub(base)?;
    let code = if past < EXACT {
        past + 1
    } else {
        let first = base.saturating_add(EXACT).div_ceil(STEP);
        (EXACT + 1).saturating_add(expiry.div_ceil(STEP).saturating_sub(first))
    };
    (code <= MOST_CODE).then_some(code)
}

/// The expiry `code` stands for, counting from `base` (see [`code`]).
fn expiry_of(base: u64, code: u64) -> u64 {
    match code.checked_sub(EXACT + 1) {
        None => base.saturating_add(code).saturating_sub(1),
        Some(steps) => {
            let first = base.saturating_add(EXACT).div_ceil(STEP);
            first.saturating_add(steps).saturating_mul(STEP)
        }
    }
}

/// The base a table moved at `now` counts from.
fn base_at(now: u64) -> u64 {
    now.saturating_sub(BASE_SLACK)
}

/// The slots a table of `n` grows to: the next power of two or one and a half times
/// one, in whole segments.
/// Finer steps (every class, a fifth at a time) left less room unused but placed every
/// entry again five times over while the table filled, which tripled the time a check
/// took (BENCHMARKS.md, the forty-eighth round).
fn grown(n: usize) -> usize {
    if n < 2 * SMALLEST {
        // Whole segments: one, then two.
        return if n < SMALLEST { SMALLEST } else { 2 * SMALLEST };
    }
    let power = 1 << (usize::BITS - 1 - n.leading_zeros());
    if n == power {
        power / 2 * 3
    } else {
        power * 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> Key {
        Key::new(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    #[test]
    fn sizes_step_through_the_allocator_classes() {
        let mut n = 0;
        let mut sizes = Vec::new();
        for _ in 0..10 {
            n = grown(n);
            sizes.push(n);
        }
        let k = 1024;
        assert_eq!(
            sizes,
            [
                k,
                2 * k,
                3 * k,
                4 * k,
                6 * k,
                8 * k,
                12 * k,
                16 * k,
                24 * k,
                32 * k
            ]
        );
        assert!(sizes.iter().all(|n| n % (SEGMENT * LINE) == 0));
        assert_eq!(grown(3 << 20), 4 << 20);
    }

    #[test]
    fn lines_come_in_whole_segments() {
        for (asked, segments) in [(0, 0), (1, 1), (128, 1), (129, 2), (256, 2), (768, 6)] {
            let mut lines = Lines::new(asked);
            let n = segments * SEGMENT;
            assert_eq!((lines.len(), lines.0.len()), (n, segments), "{asked}");
            // Every line is its own, and there are no more.
            for i in 0..n {
                lines.get_mut(i).unwrap().0[0] = i as u64;
            }
            let held: Vec<u64> = lines.iter().map(|l| l.0[0]).collect();
            assert_eq!(held, (0..n as u64).collect::<Vec<_>>());
            assert!(lines.get(n).is_none());
        }
    }

    #[test]
    fn holds_finds_and_forgets_across_growth() {
        let mut t = Table::default();
        let now = 1_700_000_000;
        for i in 0..50_000 {
            assert!(t.record(key(i), now + 600 + i % 7, now, true));
        }
        assert_eq!(t.len(), 50_000);
        assert!(
            t.slot_count() <= 50_000 * 5 / 4 * 3 / 2,
            "{}",
            t.slot_count()
        );
        for i in 0..50_000 {
            assert_eq!(t.get(key(i)), Some(now + 600 + i % 7), "{i}");
            assert!(!t.record(key(i), now + 900, now, true), "{i} refused");
        }
        // Forget every other key: the rest are still found past the gaps.
        for i in (0..50_000).step_by(2) {
            assert!(t.remove(key(i)));
        }
        assert!(!t.remove(key(0)));
        assert_eq!(t.len(), 25_000);
        for i in 0..50_000 {
            assert_eq!(t.get(key(i)).is_some(), i % 2 == 1, "{i}");
        }
    }

    #[test]
    fn an_expired_key_is_recorded_again_and_expiry_is_exact() {
        let mut t = Table::default();
        let now = 1_000_000;
        assert!(t.record(key(1), now + 10, now, true));
        assert!(!t.record(key(1), now + 20, now + 9, true));
        assert!(t.record(key(1), now + 20, now + 10, true));
        assert_eq!(t.get(key(1)), Some(now + 20));
    }

    #[test]
    fn expiries_past_the_reach_are_kept_beside_and_still_refuse() {
        let mut t = Table::default();
        let now = 1_000_000;
        let far = now + 30 * 86_400;
        assert!(t.record(key(1), far, now, true));
        assert!(t.record(key(2), now + 60, now, true));
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(key(1)), Some(far));
        assert!(!t.record(key(1), far, now + 86_400, true));
        // A nearer expiry for the same key moves it into the slots, held once.
        t.insert(key(1), now + 120, now);
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(key(1)), Some(now + 120));
        assert!(t.remove(key(2)) && t.remove(key(1)));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn expiries_to_nine_hours_are_exact_and_later_ones_rounded_up_by_under_a_minute() {
        let mut t = Table::default();
        let now = 1_000_000;
        t.insert(key(0), now, now);
        let base = t.base;
        for (i, past) in [0, 1, EXACT - 2, EXACT - 1].into_iter().enumerate() {
            t.insert(key(i as u64 + 1), base + past, now);
            assert_eq!(t.get(key(i as u64 + 1)), Some(base + past), "{past}");
        }
        for (i, past) in [EXACT, EXACT + 1, 3 * 86_400, 24 * 86_400]
            .into_iter()
            .enumerate()
        {
            let k = key(100 + i as u64);
            t.insert(k, base + past, now);
            let held = t.get(k).unwrap();
            assert!(
                (base + past..base + past + STEP).contains(&held),
                "{past}: {held}"
            );
        }
        assert!(t.far.is_empty());
    }

    #[test]
    fn the_base_moves_with_the_clock() {
        let mut t = Table::default();
        let mut now = 1_000_000;
        let month = 30 * 86_400;
        for m in 0..5 {
            for i in 0..100 {
                assert!(t.record(key(m * 1000 + i), now + 300, now, true));
            }
            now += month;
        }
        // Every month's keys fitted in the slots (none beside), to the second: the base
        // moved to each month's first, and the expired ones went as it moved past them.
        assert!(t.far.is_empty());
        assert_eq!(t.len(), 100);
        for i in 0..100 {
            assert_eq!(t.get(key(4000 + i)), Some(now - month + 300));
        }
    }

    #[test]
    fn retain_keeps_what_it_approves_and_finds_it_after() {
        let mut t = Table::default();
        for i in 0..40_000 {
            t.insert(key(i), 100 + i * 7 % 1000, 0);
        }
        t.retain(600, |e| e > 600);
        let kept = |i: u64| 100 + i * 7 % 1000 > 600;
        assert_eq!(t.len(), (0..40_000).filter(|&i| kept(i)).count());
        for i in 0..40_000 {
            let held = t.get(key(i));
            assert_eq!(held, kept(i).then_some(100 + i * 7 % 1000), "{i}");
        }
    }

    /// Crowded tables (four entries in five slots), a sixteenth or half of their entries
    /// dropped in place: every entry kept is still found, wherever its probe had run
    /// (across the table's end too).
    #[test]
    fn retain_in_place_finds_every_entry_kept_in_crowded_tables() {
        // One allocation, then segments: probes run across segments' ends too.
        for (trials, n, slots) in [(400u64, 810, 1024), (40, 6_550, 8_192)] {
            crowded_retain(trials, n, slots);
        }
    }

    fn crowded_retain(trials: u64, n: u64, slots: usize) {
        for trial in 0..trials {
            let mut t = Table::default();
            let keys: Vec<Key> = (0..n).map(|i| key(trial * 10_000 + i)).collect();
            for (i, k) in (0..).zip(&keys) {
                t.insert(*k, 1000 + i, 0);
            }
            assert_eq!(t.slot_count(), slots);
            // The earliest sixteenth, or every other one.
            let dropped = |e: u64| match trial % 2 {
                0 => e < 1000 + n / 16,
                _ => e % 2 == 0,
            };
            t.retain(0, |e| !dropped(e));
            for (i, k) in (0..).zip(&keys) {
                let e = 1000 + i;
                assert_eq!(t.get(*k), (!dropped(e)).then_some(e), "trial {trial}, {i}");
            }
        }
    }

    #[test]
    fn a_rounded_expiry_stays_put_as_the_base_moves() {
        let mut t = Table::default();
        let now = 1_000_000;
        t.insert(key(1), now + 3 * 86_400 + 5, now);
        let held = t.get(key(1)).unwrap();
        for hour in 1..30 {
            t.retain(now + hour * 3600, |_| true);
            assert_eq!(t.get(key(1)), Some(held), "{hour}");
        }
    }
}
