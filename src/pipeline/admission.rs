//! Stage 1, the in-flight cap: a saturated sidecar answers 503 before doing any work.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts requests inside the pipeline; a guard releases the slot on every exit path. The
/// count is also the `bsk_sidecar_in_flight_requests` gauge, read when it is scraped
/// ([`crate::metrics::Metrics::in_flight`]): a request updates one count shared by the
/// workers, not a count and a gauge.
pub struct InFlight {
    count: AtomicUsize,
}

impl InFlight {
    pub const fn new() -> Self {
        InFlight {
            count: AtomicUsize::new(0),
        }
    }

    /// Takes a slot, or `None` when `max` are taken. Dropping the slot — on return, error
    /// or panic — gives it back.
    pub(crate) fn enter(&self, max: usize) -> Option<Slot<'_>> {
        if self.count.fetch_add(1, Ordering::Relaxed) >= max {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot { in_flight: self })
    }

    /// Requests inside the pipeline now.
    pub fn now(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

impl Default for InFlight {
    fn default() -> Self {
        Self::new()
    }
}

pub(crate) struct Slot<'a> {
    in_flight: &'a InFlight,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.in_flight.count.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_and_given_back() {
        let in_flight = InFlight::new();
        let a = in_flight.enter(2).unwrap();
        let b = in_flight.enter(2).unwrap();
        assert!(in_flight.enter(2).is_none());
        assert_eq!(in_flight.now(), 2);
        drop(a);
        assert_eq!(in_flight.now(), 1);
        assert!(in_flight.enter(2).is_some());
        drop(b);
        assert_eq!(in_flight.now(), 0);
    }
}
