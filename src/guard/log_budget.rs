//! How many log lines a sender nobody trusts can make the sidecar write. A refused
//! connection (an address off the allowlist, a failed TLS handshake, a bad PROXY header)
//! costs its sender one `connect`; a line per refusal would let a flood of them fill the
//! disk and spend the sidecar's CPU on formatting. So such lines share one budget — a
//! burst, then a steady rate — and the lines over it are counted, not written: the next
//! line written says how many were left out (`suppressed`), so the log still accounts
//! for every refusal. The metrics count every refusal regardless.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, DefaultClock};

use crate::guard::rate::{Limiter, RateSpec};

/// Lines per second for refusals of unauthenticated connections, process-wide.
pub const REFUSALS_PER_SECOND: u32 = 10;
/// Lines written at once before the rate applies.
pub const REFUSAL_BURST: u32 = 20;

/// One budget of log lines, shared by every thread that writes such lines: a bucket
/// like a peer's or a route's, and the count of lines it left out.
pub struct LogBudget<C: Clock = DefaultClock> {
    bucket: Limiter<C>,
    suppressed: AtomicU64,
}

impl LogBudget {
    /// The budget for refused connections: [`REFUSAL_BURST`], then
    /// [`REFUSALS_PER_SECOND`].
    pub fn refusals() -> Self {
        LogBudget::with_clock(REFUSALS_PER_SECOND, REFUSAL_BURST, DefaultClock::default())
    }
}

impl<C: Clock> LogBudget<C> {
    /// `per_second` lines a second after a burst of `burst` (each at least 1).
    pub fn with_clock(per_second: u32, burst: u32, clock: C) -> Self {
        let at_least_1 = |n| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        LogBudget {
            bucket: Limiter::with_clock(
                RateSpec::new(at_least_1(per_second), at_least_1(burst)),
                clock,
            ),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be written now, `n` being the lines left out since the
    /// last one written; `None` when this line is to be left out (and is counted).
    pub fn admit(&self) -> Option<u64> {
        if self.bucket.check().is_ok() {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate_and_every_line_left_out_is_reported() {
        let clock = FakeRelativeClock::default();
        let budget = LogBudget::with_clock(10, 3, clock.clone());
        let written: Vec<Option<u64>> = (0..10).map(|_| budget.admit()).collect();
        assert_eq!(written[..3], [Some(0), Some(0), Some(0)]);
        assert!(written[3..].iter().all(Option::is_none));
        // A tenth of a second later, one line: it reports the seven left out.
        clock.advance(Duration::from_millis(100));
        assert_eq!(budget.admit(), Some(7));
        assert_eq!(budget.admit(), None);
        clock.advance(Duration::from_millis(100));
        assert_eq!(budget.admit(), Some(1));
        // Quiet for a while: the burst is back, and nothing is owed.
        clock.advance(Duration::from_secs(1));
        assert_eq!(budget.admit(), Some(0));
        assert_eq!(budget.admit(), Some(0));
    }

    #[test]
    fn threads_sharing_a_budget_lose_no_count() {
        let budget = std::sync::Arc::new(LogBudget::with_clock(1, 5, FakeRelativeClock::default()));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = budget.clone();
                std::thread::spawn(move || (0..1000).filter(|_| b.admit().is_some()).count())
            })
            .collect();
        let written: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(written, 5);
        assert_eq!(budget.suppressed.load(Ordering::Relaxed), 4000 - 5);
    }
}
