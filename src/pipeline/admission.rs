//! Stage 1, the in-flight cap: a saturated sidecar answers 503 before doing any work.

use crate::metrics::Slot;
use crate::runtime::Runtime;

/// A slot inside the pipeline, or `None` when `limits.max_in_flight` requests hold one.
/// The count is kept with the metrics ([`crate::metrics::InFlight`]), so it lasts across
/// reloads and is the in-flight gauge itself.
pub(super) fn admit(rt: &Runtime) -> Option<Slot<'_>> {
    rt.metrics.in_flight.enter(rt.settings.limits.max_in_flight)
}
