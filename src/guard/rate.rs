//! Token-bucket rate limits (governor's GCRA): per client address, per peer, per route.
//!
//! The per-address table is bounded. When it is full, the first thing dropped is any
//! address whose bucket has refilled completely — forgetting it hands it nothing it would
//! not have had anyway. If every tracked address is still active, new addresses share a
//! single overflow bucket, so a flood from many distinct sources is throttled as one
//! source instead of each getting a fresh full bucket.
//!
//! ```
//! use std::num::NonZeroU32;
//! use bsk_sidecar::guard::rate::{Limiter, RateSpec};
//! let spec = RateSpec::new(NonZeroU32::new(1).unwrap(), NonZeroU32::new(2).unwrap());
//! let limiter = Limiter::new(spec);
//! assert!(limiter.check().is_ok());
//! assert!(limiter.check().is_ok());
//! assert!(limiter.check().is_err()); // burst of 2 spent
//! ```

use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_utils::CachePadded;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};

/// A sustained rate with a burst allowance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateSpec {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl RateSpec {
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        RateSpec { per_second, burst }
    }

    /// This rate shared by `n` replicas: each one's share, at least 1/s and a burst of 1.
    pub fn divided(self, n: u32) -> RateSpec {
        let share = |v: NonZeroU32| NonZeroU32::new(v.get() / n.max(1)).unwrap_or(NonZeroU32::MIN);
        RateSpec::new(share(self.per_second), share(self.burst))
    }

    fn quota(self) -> Quota {
        Quota::per_second(self.per_second).allow_burst(self.burst)
    }
}

impl fmt::Display for RateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s burst {}", self.per_second, self.burst)
    }
}

/// One shared bucket (a peer, a route, or the overflow bucket).
pub struct Limiter<C: Clock = DefaultClock> {
    inner: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
}

impl Limiter<DefaultClock> {
    pub fn new(spec: RateSpec) -> Self {
        Limiter::with_clock(spec, DefaultClock::default())
    }
}

impl<C: Clock> Limiter<C> {
    pub fn with_clock(spec: RateSpec, clock: C) -> Self {
        Limiter {
            inner: RateLimiter::direct_with_clock(spec.quota(), clock),
        }
    }

    /// `Ok` when a token was taken; otherwise how long until one is available.
    pub fn check(&self) -> Result<(), Duration> {
        self.inner
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.inner.clock().now()))
    }
}

/// The per-address table's map: governor's DashMap store, its keys hashed with a fast
/// keyed hash (SipHash, the default, cost some 80 instructions a request). Its random
/// seed per process keeps a sender from choosing which addresses collide.
type AddrTable<K> = DashMapStateStore<K, foldhash::fast::RandomState>;

/// The per-address table: governor's DashMap store with a capacity and an overflow bucket.
pub struct BoundedStore<K: Hash + Eq + Clone> {
    map: Arc<AddrTable<K>>,
    overflow: InMemoryState,
    capacity: usize,
    /// Addresses the table holds, at least: counted up as each is added, set to the
    /// table's size when it is pruned. Written only then, so the line stays in both
    /// workers' caches for the read every request makes ([`PerIpLimiter::check`]).
    added: Arc<CachePadded<AtomicUsize>>,
}

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    /// A tracked address's own bucket: one lookup in its part of the table. The table
    /// is counted only for an address not tracked yet — counting locks every part of it
    /// in turn, lines that each worker's requests would otherwise all write.
    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(bucket) = self.map.get(key) {
            return StateStore::measure_and_replace(&*bucket, &NotKeyed::NonKey, f);
        }
        if self.map.len() < self.capacity {
            // Counted before it is added: the count is never below the table's size for
            // longer than an addition takes.
            self.added.fetch_add(1, Ordering::Relaxed);
            StateStore::measure_and_replace(&*self.map, key, f)
        } else {
            StateStore::measure_and_replace(&self.overflow, &NotKeyed::NonKey, f)
        }
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for BoundedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&*self.map, drop_below)
    }

    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&*self.map)
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Per-client-address limiter with bounded memory.
pub struct PerIpLimiter<C: Clock = DefaultClock> {
    inner: RateLimiter<IpAddr, BoundedStore<IpAddr>, C, NoOpMiddleware<C::Instant>>,
    /// The limiter's table, to tell whether an address is tracked.
    table: Arc<AddrTable<IpAddr>>,
    capacity: usize,
    /// When the table was last pruned (clock nanos), so a flood of new addresses does
    /// not make every request scan the table.
    last_prune: Mutex<Option<C::Instant>>,
    /// The table's count of addresses added ([`BoundedStore`]).
    added: Arc<CachePadded<AtomicUsize>>,
}

/// How far below the table's true size its count can be: by the additions under way
/// while a prune sets the count (one per thread at most). Below its capacity by more than
/// this, the table has room. (Were more threads than this adding at once as a prune
/// ended, a new address at a full table could go to the overflow bucket without a prune
/// first: throttled, as a full table throttles.)
const COUNT_SLACK: usize = 64;

/// Minimum spacing between prunes triggered by a full table.
const PRUNE_SPACING: Duration = Duration::from_millis(250);

impl PerIpLimiter<DefaultClock> {
    pub fn new(spec: RateSpec, capacity: usize) -> Self {
        PerIpLimiter::with_clock(spec, capacity, DefaultClock::default())
    }
}

impl<C: Clock> PerIpLimiter<C> {
    pub fn with_clock(spec: RateSpec, capacity: usize, clock: C) -> Self {
        let table: Arc<AddrTable<IpAddr>> = Arc::new(DashMap::with_hasher(Default::default()));
        let added = Arc::new(CachePadded::new(AtomicUsize::new(0)));
        let store = BoundedStore {
            map: table.clone(),
            overflow: InMemoryState::default(),
            capacity: capacity.max(1),
            added: added.clone(),
        };
        PerIpLimiter {
            inner: RateLimiter::new(spec.quota(), store, clock),
            table,
            capacity: capacity.max(1),
            last_prune: Mutex::new(None),
            added,
        }
    }

    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        // A new address may find the table full: then room is made first, if it is time.
        // Only a table near its capacity is looked at for that: otherwise the address's
        // bucket is looked up once, by the check itself.
        let near_full =
            (self.added.load(Ordering::Relaxed)).saturating_add(COUNT_SLACK) >= self.capacity;
        if near_full && !self.table.contains_key(&ip) && self.table.len() >= self.capacity {
            self.prune_if_due();
        }
        self.inner
            .check_key(&ip)
            .map_err(|not_until| not_until.wait_time_from(self.inner.clock().now()))
    }

    /// Forgets addresses whose bucket is full again. Safe at any time; also run
    /// periodically by the server.
    pub fn prune(&self) {
        self.inner.retain_recent();
        self.recount();
        self.inner.shrink_to_fit();
    }

    fn prune_if_due(&self) {
        let now = self.inner.clock().now();
        // Only one thread prunes; the others go on to the overflow bucket meanwhile.
        if let Ok(mut last) = self.last_prune.try_lock() {
            let due = match *last {
                None => true,
                Some(t) => Duration::from(now.duration_since(t)) >= PRUNE_SPACING,
            };
            if due {
                *last = Some(now);
                drop(last);
                self.inner.retain_recent();
                self.recount();
            }
        }
    }

    /// Sets the count of addresses added to the table's size, after a prune.
    fn recount(&self) {
        self.added.store(self.table.len(), Ordering::Relaxed);
    }

    /// Addresses currently tracked.
    pub fn tracked(&self) -> usize {
        self.inner.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn spec(per_second: u32, burst: u32) -> RateSpec {
        RateSpec::new(
            NonZeroU32::new(per_second).unwrap(),
            NonZeroU32::new(burst).unwrap(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_refusal_then_refill() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::with_clock(spec(2, 3), clock.clone());
        for _ in 0..3 {
            assert!(l.check().is_ok());
        }
        let wait = l.check().unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        clock.advance(Duration::from_millis(500));
        assert!(l.check().is_ok());
        assert!(l.check().is_err());
    }

    #[test]
    fn per_ip_buckets_are_independent() {
        let clock = FakeRelativeClock::default();
        let l = PerIpLimiter::with_clock(spec(1, 2), 100, clock);
        assert!(l.check(ip("127.0.0.2")).is_ok());
        assert!(l.check(ip("127.0.0.2")).is_ok());
        assert!(l.check(ip("127.0.0.2")).is_err());
        assert!(l.check(ip("127.0.0.3")).is_ok());
    }

    #[test]
    fn flood_of_new_addresses_stays_bounded_and_throttled() {
        let clock = FakeRelativeClock::default();
        let cap = 64;
        let l = PerIpLimiter::with_clock(spec(1, 2), cap, clock);
        let mut allowed = 0;
        for i in 0..10_000u32 {
            let a = IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
            if l.check(a).is_ok() {
                allowed += 1;
            }
        }
        assert!(l.tracked() <= cap, "table grew to {}", l.tracked());
        // The first `cap` addresses get their own burst of 2 (1 used each); the other
        // 9 936 share one overflow bucket of burst 2 — not 9 936 fresh buckets.
        assert_eq!(allowed, cap + 2);
    }

    #[test]
    fn tracked_address_keeps_its_state_when_table_is_full() {
        let clock = FakeRelativeClock::default();
        let l = PerIpLimiter::with_clock(spec(1, 1), 2, clock);
        assert!(l.check(ip("10.0.0.1")).is_ok());
        assert!(l.check(ip("10.0.0.2")).is_ok());
        // Table full; 10.0.0.1 is still tracked and still empty.
        assert!(l.check(ip("10.0.0.1")).is_err());
    }

    /// Far below its capacity the table is not looked at before an address's check; past
    /// the count's slack, a new address at a full table still finds the refilled
    /// addresses forgotten first.
    #[test]
    fn a_table_filled_past_its_count_slack_still_makes_room_first() {
        let clock = FakeRelativeClock::default();
        let cap = 3 * COUNT_SLACK;
        let l = PerIpLimiter::with_clock(spec(1, 1), cap, clock.clone());
        for i in 0..cap {
            let a = IpAddr::from((0x0a00_0000u32 + i as u32).to_be_bytes());
            assert!(l.check(a).is_ok(), "address {i}");
        }
        assert_eq!(l.tracked(), cap);
        // Full, every bucket spent: new addresses share the overflow bucket (a burst of 1).
        assert!(l.check(ip("10.1.0.1")).is_ok());
        assert!(l.check(ip("10.1.0.2")).is_err());
        clock.advance(Duration::from_secs(2));
        // Every bucket refilled: the table is pruned, and each new address has its own.
        assert!(l.check(ip("10.2.0.1")).is_ok());
        assert!(l.check(ip("10.2.0.2")).is_ok());
        assert_eq!(l.tracked(), 2);
    }

    #[test]
    fn refilled_addresses_are_forgotten_to_make_room() {
        let clock = FakeRelativeClock::default();
        let l = PerIpLimiter::with_clock(spec(1, 1), 2, clock.clone());
        assert!(l.check(ip("10.0.0.1")).is_ok());
        assert!(l.check(ip("10.0.0.2")).is_ok());
        clock.advance(Duration::from_secs(2));
        // Both buckets are full again: a new address gets its own bucket, not the overflow.
        assert!(l.check(ip("10.0.0.3")).is_ok());
        assert!(l.tracked() <= 2);
        assert!(l.check(ip("10.0.0.4")).is_ok());
    }
}
