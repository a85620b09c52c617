//! Every metric the sidecar exports, registered in one place.
//!
//! Names follow `bsk_sidecar_<subsystem>_<name>_<unit|total>`; labels are bounded
//! (listener, route, peer, outcome, reason) — never an address, user id or token.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Latency buckets in seconds: 100 µs to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by route, peer and outcome (`forwarded`, `rejected`, `upstream_error`).
    pub requests: IntCounterVec,
    /// Refusals by route and precise reason.
    pub rejections: IntCounterVec,
    /// Whole-request latency by route.
    pub request_seconds: HistogramVec,
    /// Upstream round trip by route.
    pub upstream_seconds: HistogramVec,
    /// Requests currently inside the pipeline.
    pub in_flight: IntGauge,
    /// Open downstream connections by listener.
    pub connections: IntGaugeVec,
    /// Connections closed at accept, by listener and reason.
    pub connections_refused: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "bsk_sidecar_requests_total",
                "Requests handled, by route, peer and outcome.",
            ),
            &["listener", "route", "peer", "outcome"],
        )
        .expect("valid metric");
        let rejections = IntCounterVec::new(
            Opts::new(
                "bsk_sidecar_rejections_total",
                "Requests refused, by route and reason.",
            ),
            &["listener", "route", "reason"],
        )
        .expect("valid metric");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "bsk_sidecar_request_duration_seconds",
                "Time from request head to response, by route.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["listener", "route"],
        )
        .expect("valid metric");
        let upstream_seconds = HistogramVec::new(
            HistogramOpts::new(
                "bsk_sidecar_upstream_duration_seconds",
                "Time the upstream application took to answer, by route.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["listener", "route"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::new(
            "bsk_sidecar_in_flight_requests",
            "Requests currently inside the pipeline.",
        )
        .expect("valid metric");
        let connections = IntGaugeVec::new(
            Opts::new(
                "bsk_sidecar_connections_open",
                "Open downstream connections, by listener.",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "bsk_sidecar_connections_refused_total",
                "Connections closed at accept, by listener and reason.",
            ),
            &["listener", "reason"],
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rejections.clone()),
            Box::new(request_seconds.clone()),
            Box::new(upstream_seconds.clone()),
            Box::new(in_flight.clone()),
            Box::new(connections.clone()),
            Box::new(connections_refused.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Metrics {
            registry,
            requests,
            rejections,
            request_seconds,
            upstream_seconds,
            in_flight,
            connections,
            connections_refused,
        }
    }

    /// The text exposition format Prometheus scrapes.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
