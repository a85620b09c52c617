//! Stage 1, the in-flight cap: a saturated sidecar answers 503 before doing any work.

use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::IntGauge;

/// Counts requests inside the pipeline; a guard releases the slot on every exit path.
pub struct InFlight {
    count: AtomicUsize,
}

impl InFlight {
    pub const fn new() -> Self {
        InFlight {
            count: AtomicUsize::new(0),
        }
    }

    /// Takes a slot (and counts it in `gauge`), or `None` when `max` are taken. Dropping
    /// the slot — on return, error or panic — gives both back.
    pub(super) fn enter<'a>(&'a self, max: usize, gauge: &'a IntGauge) -> Option<Slot<'a>> {
        if self.count.fetch_add(1, Ordering::Relaxed) >= max {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        gauge.inc();
        Some(Slot {
            in_flight: self,
            gauge,
        })
    }
}

impl Default for InFlight {
    fn default() -> Self {
        Self::new()
    }
}

pub(super) struct Slot<'a> {
    in_flight: &'a InFlight,
    gauge: &'a IntGauge,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.gauge.dec();
        self.in_flight.count.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_and_given_back_with_the_gauge() {
        let gauge = IntGauge::new("g", "g").unwrap();
        let in_flight = InFlight::new();
        let a = in_flight.enter(2, &gauge).unwrap();
        let b = in_flight.enter(2, &gauge).unwrap();
        assert!(in_flight.enter(2, &gauge).is_none());
        assert_eq!(gauge.get(), 2);
        drop(a);
        assert_eq!(gauge.get(), 1);
        assert!(in_flight.enter(2, &gauge).is_some());
        drop(b);
        assert_eq!(gauge.get(), 0);
    }
}
