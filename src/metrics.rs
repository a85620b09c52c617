//! Every metric the sidecar exports, registered in one place.
//!
//! Names follow `bsk_sidecar_<subsystem>_<name>_<unit|total>`; labels are bounded
//! (listener, route, peer, outcome, reason) — never an address, user id or token.

use std::collections::btree_map::{BTreeMap, Entry};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Metric, MetricFamily};
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
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
    pub requests: PerWorker<IntCounterVec>,
    /// Refusals by route and precise reason.
    pub rejections: IntCounterVec,
    /// Whole-request latency by route.
    pub request_seconds: PerWorker<HistogramVec>,
    /// Upstream round trip by route.
    pub upstream_seconds: PerWorker<HistogramVec>,
    /// Calls to a shared state backend (Redis, PostgreSQL), by operation.
    pub backend_seconds: HistogramVec,
    /// Failed calls to a shared state backend, by operation.
    pub backend_errors: IntCounterVec,
    /// Requests currently inside the pipeline: the in-flight cap's own count, which the
    /// scrape reads (`bsk_sidecar_in_flight_requests`). Kept here, with the metrics, so
    /// it lasts across config reloads as they do.
    pub in_flight: Arc<InFlight>,
    /// Open downstream connections by listener.
    pub connections: IntGaugeVec,
    /// Of those, idle keep-alive connections held without HTTP buffers, by listener.
    pub connections_parked: IntGaugeVec,
    /// Connections closed at accept, by listener and reason.
    pub connections_refused: IntCounterVec,
    /// Egress pushes waiting in the durable outbox, by peer.
    pub outbox_depth: IntGaugeVec,
    /// Age of the oldest queued push, by peer (0 when none).
    pub outbox_oldest_age: prometheus::GaugeVec,
    /// Pushes written to the outbox, by peer.
    pub outbox_enqueued: IntCounterVec,
    /// Delivery attempts from the outbox, by peer and outcome (`delivered`, `retry`, `dead`).
    pub outbox_attempts: IntCounterVec,
    /// Pushes delivered (2xx) from the outbox or directly, by peer and delivery mode.
    pub outbox_deliveries: IntCounterVec,
    /// Pushes moved to the dead-letter list, by peer and reason.
    pub outbox_dead_letters: IntCounterVec,
    /// Pushes currently in the dead-letter list, by peer.
    pub outbox_dead_depth: IntGaugeVec,
    /// TLS, DNS allowlist and config reload: what an operator watches over months.
    pub ops: OpsMetrics,
    /// Payload fields failing a route's schema, by field (spec names only) and mode.
    pub schema_violations: IntCounterVec,
}

impl Metrics {
    // Longer than most functions on purpose: it is the catalogue, one entry per metric,
    // read top to bottom.
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = Register(&registry);
        let route = &["listener", "route"];
        let backend = &["backend", "op"];
        let per_peer = &["peer"];
        Metrics {
            requests: r.per_worker(
                "bsk_sidecar_requests_total",
                "Requests handled, by route, peer and outcome.",
                &["listener", "route", "peer", "outcome"],
                counter_vec,
            ),
            rejections: r.counters(
                "bsk_sidecar_rejections_total",
                "Requests refused, by route and reason.",
                &["listener", "route", "reason"],
            ),
            request_seconds: r.per_worker(
                "bsk_sidecar_request_duration_seconds",
                "Time from request head to response, by route.",
                route,
                latency_vec,
            ),
            upstream_seconds: r.per_worker(
                "bsk_sidecar_upstream_duration_seconds",
                "Time the upstream application took to answer, by route.",
                route,
                latency_vec,
            ),
            backend_seconds: r.latency(
                "bsk_sidecar_backend_duration_seconds",
                "Time a call to the shared state backend took, by operation.",
                backend,
            ),
            backend_errors: r.counters(
                "bsk_sidecar_backend_errors_total",
                "Calls to the shared state backend that failed or timed out, by operation.",
                backend,
            ),
            in_flight: r
                .add(InFlightGauge {
                    gauge: r.gauge_unregistered(
                        "bsk_sidecar_in_flight_requests",
                        "Requests currently inside the pipeline.",
                    ),
                    in_flight: Arc::new(InFlight::new()),
                })
                .in_flight,
            connections: r.gauges(
                "bsk_sidecar_connections_open",
                "Open downstream connections, by listener.",
                &["listener"],
            ),
            connections_parked: r.gauges(
                "bsk_sidecar_connections_parked",
                "Plain-HTTP connections waiting for a request (their first, or the next on a kept connection) held without HTTP buffers, by listener.",
                &["listener"],
            ),
            connections_refused: r.counters(
                "bsk_sidecar_connections_refused_total",
                "Connections closed at accept, by listener and reason.",
                &["listener", "reason"],
            ),
            schema_violations: r.counters(
                "bsk_sidecar_schema_violations_total",
                "Payload fields that failed a route's schema, by field and mode.",
                &["listener", "route", "field", "mode"],
            ),
            outbox_depth: r.gauges(
                "bsk_sidecar_outbox_queue_depth",
                "Egress pushes waiting in the durable outbox, by peer.",
                per_peer,
            ),
            outbox_oldest_age: r.float_gauges(
                "bsk_sidecar_outbox_oldest_age_seconds",
                "Age of the oldest queued push, by peer (0 when the queue is empty).",
                per_peer,
            ),
            outbox_enqueued: r.counters(
                "bsk_sidecar_outbox_enqueued_total",
                "Pushes written durably to the outbox, by peer.",
                per_peer,
            ),
            outbox_attempts: r.counters(
                "bsk_sidecar_outbox_attempts_total",
                "Delivery attempts from the outbox, by peer and outcome.",
                &["peer", "outcome"],
            ),
            outbox_deliveries: r.counters(
                "bsk_sidecar_outbox_deliveries_total",
                "Pushes the peer accepted (2xx), by peer and delivery mode.",
                &["peer", "delivery"],
            ),
            outbox_dead_letters: r.counters(
                "bsk_sidecar_outbox_dead_letters_total",
                "Pushes moved to the dead-letter list, by peer and reason.",
                &["peer", "reason"],
            ),
            outbox_dead_depth: r.gauges(
                "bsk_sidecar_outbox_dead_letter_depth",
                "Pushes currently in the dead-letter list, by peer.",
                per_peer,
            ),
            ops: OpsMetrics::new(r),
            registry,
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

/// Operations: certificate reloads and expiry, DNS allowlist names, config reloads.
#[derive(Clone)]
pub struct OpsMetrics {
    /// Certificate reload attempts by listener and outcome (`ok`, `error`).
    pub tls_reloads: IntCounterVec,
    /// The serving certificate's `notAfter`, unix seconds, by listener.
    pub tls_cert_expiry: IntGaugeVec,
    /// Allowlist name lookups by name and outcome (`ok`, `error`).
    pub dns_resolutions: IntCounterVec,
    /// Addresses a name currently allows, by name.
    pub dns_addresses: IntGaugeVec,
    /// When a name last resolved, unix seconds, by name.
    pub dns_last_success: IntGaugeVec,
    /// Config reloads by outcome (`ok`, `error`).
    pub config_reloads: IntCounterVec,
    /// When the running config was loaded, unix seconds.
    pub config_loaded: IntGauge,
}

impl OpsMetrics {
    fn new(r: Register<'_>) -> Self {
        let config_reloads = r.counters(
            "bsk_sidecar_config_reloads_total",
            "Configuration reloads (SIGHUP), by outcome.",
            &["outcome"],
        );
        // Both outcomes exist from the start, so `increase()` sees the first failure.
        for outcome in ["ok", "error"] {
            config_reloads.with_label_values(&[outcome]);
        }
        OpsMetrics {
            tls_reloads: r.counters(
                "bsk_sidecar_tls_reloads_total",
                "TLS certificate reload attempts, by listener and outcome.",
                &["listener", "outcome"],
            ),
            tls_cert_expiry: r.gauges(
                "bsk_sidecar_tls_cert_expiry_timestamp_seconds",
                "notAfter of the certificate a listener serves, in unix seconds.",
                &["listener"],
            ),
            dns_resolutions: r.counters(
                "bsk_sidecar_dns_resolutions_total",
                "Lookups of allowlisted DNS names, by name and outcome.",
                &["name", "outcome"],
            ),
            dns_addresses: r.gauges(
                "bsk_sidecar_dns_addresses",
                "Addresses an allowlisted DNS name currently allows.",
                &["name"],
            ),
            dns_last_success: r.gauges(
                "bsk_sidecar_dns_last_success_timestamp_seconds",
                "When an allowlisted DNS name last resolved, in unix seconds.",
                &["name"],
            ),
            config_reloads,
            config_loaded: r.gauge(
                "bsk_sidecar_config_last_load_timestamp_seconds",
                "When the running configuration was loaded (start or last successful reload).",
            ),
        }
    }
}

/// Counts requests inside the pipeline, for its in-flight cap (`crate::pipeline`, stage
/// 1); a guard releases the slot on every exit path. The count is also the
/// `bsk_sidecar_in_flight_requests` gauge, read when it is scraped ([`Metrics::in_flight`]):
/// a request updates one count shared by the workers, not a count and a gauge.
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
    pub fn enter(&self, max: usize) -> Option<Slot<'_>> {
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

pub struct Slot<'a> {
    in_flight: &'a InFlight,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.in_flight.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `bsk_sidecar_in_flight_requests`, set from the in-flight count when scraped.
#[derive(Clone)]
struct InFlightGauge {
    gauge: IntGauge,
    in_flight: Arc<InFlight>,
}

impl Collector for InFlightGauge {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = i64::try_from(self.in_flight.now()).unwrap_or(i64::MAX);
        self.gauge.set(now);
        self.gauge.collect()
    }
}

/// Creates a metric and registers it. The set is fixed and registered once at start-up:
/// a failure here (an invalid name, a name registered twice) is a bug every test hits,
/// never something input can cause — hence the only `expect`s outside tests.
#[derive(Clone, Copy)]
struct Register<'a>(&'a Registry);

#[allow(clippy::expect_used)]
impl Register<'_> {
    fn add<C: prometheus::core::Collector + Clone + 'static>(self, c: C) -> C {
        self.0
            .register(Box::new(c.clone()))
            .expect("metric registered once");
        c
    }

    fn counters(self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(counter_vec(name, help, labels))
    }

    fn gauges(self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn float_gauges(self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.add(GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn gauge(self, name: &str, help: &str) -> IntGauge {
        self.add(self.gauge_unregistered(name, help))
    }

    /// A gauge for a collector of its own to register.
    fn gauge_unregistered(self, name: &str, help: &str) -> IntGauge {
        IntGauge::new(name, help).expect("valid metric")
    }

    /// A histogram with the [`LATENCY_BUCKETS`].
    fn latency(self, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
        self.add(latency_vec(name, help, labels))
    }

    /// A family each connection worker keeps a copy of ([`PerWorker`]), every copy made
    /// by `make` with these names.
    fn per_worker<V: Collector + Merge + 'static>(
        self,
        name: &str,
        help: &str,
        labels: &[&str],
        make: fn(&str, &str, &[&str]) -> V,
    ) -> PerWorker<V> {
        let (name, help) = (name.to_owned(), help.to_owned());
        let labels: Vec<String> = labels.iter().map(|l| (*l).to_owned()).collect();
        self.add(PerWorker::new(move || {
            let names: Vec<&str> = labels.iter().map(String::as_str).collect();
            make(&name, &help, &names)
        }))
    }
}

/// Counters, unregistered (see [`Register`] for the `expect`).
#[allow(clippy::expect_used)]
fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

/// Histograms with the [`LATENCY_BUCKETS`], unregistered (see [`Register`]).
#[allow(clippy::expect_used)]
fn latency_vec(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    HistogramVec::new(opts, labels).expect("valid metric")
}

/// A metric family every answered request updates, kept as one copy per connection worker
/// ([`crate::workers::slot`]) and added together when scraped: a request's counts go to
/// lines only its own worker writes. One family shared by the workers passed each of its
/// lines (a histogram's count, sum and bucket; a counter) from core to core at every
/// request, the other core having written it since.
///
/// A worker's copy is made on its first use; the scrape shows each series once, with the
/// sum of the copies that have it.
pub struct PerWorker<V> {
    inner: Arc<Copies<V>>,
}

struct Copies<V> {
    /// Made at once: the copy of every thread that is no worker, and the family's
    /// description.
    first: V,
    /// The workers' copies, by slot (slot 0 is `first`).
    rest: [OnceLock<V>; crate::workers::SLOTS],
    make: Box<dyn Fn() -> V + Send + Sync>,
}

impl<V> Clone for PerWorker<V> {
    fn clone(&self) -> Self {
        PerWorker {
            inner: self.inner.clone(),
        }
    }
}

impl<V: Collector> PerWorker<V> {
    /// The first copy is made at once, so a family `make` cannot make fails at start-up
    /// (see [`Register`]); the workers' copies are made the same way.
    fn new(make: impl Fn() -> V + Send + Sync + 'static) -> Self {
        PerWorker {
            inner: Arc::new(Copies {
                first: make(),
                rest: std::array::from_fn(|_| OnceLock::new()),
                make: Box::new(make),
            }),
        }
    }

    /// The calling thread's copy.
    pub fn mine(&self) -> &V {
        let c = &*self.inner;
        match crate::workers::slot() {
            0 => &c.first,
            slot => c
                .rest
                .get(slot)
                .map_or(&c.first, |v| v.get_or_init(&c.make)),
        }
    }

    fn copies(&self) -> impl Iterator<Item = &V> {
        let c = &*self.inner;
        std::iter::once(&c.first).chain(c.rest.iter().filter_map(OnceLock::get))
    }
}

impl PerWorker<IntCounterVec> {
    /// The calling thread's copy of the series with these label values.
    pub fn with_label_values(&self, values: &[&str]) -> IntCounter {
        self.mine().with_label_values(values)
    }
}

impl PerWorker<HistogramVec> {
    /// The calling thread's copy of the series with these label values.
    pub fn with_label_values(&self, values: &[&str]) -> Histogram {
        self.mine().with_label_values(values)
    }
}

/// How two copies of one series add up.
trait Merge {
    fn merge(into: &mut Metric, from: &Metric);
}

impl Merge for IntCounterVec {
    fn merge(into: &mut Metric, from: &Metric) {
        let mut c = into.get_counter().clone();
        c.set_value(c.get_value() + from.get_counter().get_value());
        into.set_counter(c);
    }
}

impl Merge for HistogramVec {
    fn merge(into: &mut Metric, from: &Metric) {
        let (a, b) = (into.get_histogram(), from.get_histogram());
        let mut h = a.clone();
        h.set_sample_count(a.get_sample_count() + b.get_sample_count());
        h.set_sample_sum(a.get_sample_sum() + b.get_sample_sum());
        // The copies share their buckets, so the same index is the same bound.
        let buckets = (a.get_bucket().iter().zip(b.get_bucket()))
            .map(|(x, y)| {
                let mut sum = x.clone();
                sum.set_cumulative_count(x.cumulative_count() + y.cumulative_count());
                sum
            })
            .collect();
        h.set_bucket(buckets);
        into.set_histogram(h);
    }
}

impl<V: Collector + Merge + 'static> Collector for PerWorker<V> {
    fn desc(&self) -> Vec<&Desc> {
        self.inner.first.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut family: Option<MetricFamily> = None;
        // By label values, in order, as a scrape reads best.
        let mut series: BTreeMap<Vec<String>, Metric> = BTreeMap::new();
        for copy in self.copies() {
            for mut f in copy.collect() {
                for m in f.take_metric() {
                    let key = m.get_label().iter().map(|l| l.value().to_owned()).collect();
                    match series.entry(key) {
                        Entry::Vacant(e) => {
                            e.insert(m);
                        }
                        Entry::Occupied(mut e) => V::merge(e.get_mut(), &m),
                    }
                }
                family.get_or_insert(f);
            }
        }
        family
            .map(|mut f| {
                f.set_metric(series.into_values().collect());
                f
            })
            .into_iter()
            .collect()
    }
}

/// One route's series of the metrics every answered request updates, looked up by their
/// label values on first use and kept: a lookup hashes the values and takes the vector's
/// lock, once per request per metric otherwise. Kept per worker, as the families are
/// ([`PerWorker`]). A series still appears on its first use, as before.
#[derive(Default)]
pub struct RouteSeries {
    slots: [SlotSeries; crate::workers::SLOTS],
}

/// One worker's copies of a route's series.
#[derive(Default)]
struct SlotSeries {
    request_seconds: OnceLock<Histogram>,
    forwarded: OnceLock<IntCounter>,
    upstream_seconds: OnceLock<Histogram>,
}

/// The labels of a route's series.
#[derive(Clone, Copy)]
pub struct RouteLabels<'a> {
    pub listener: &'a str,
    pub route: &'a str,
    pub peer: &'a str,
}

impl RouteSeries {
    /// The calling worker's copies; `slots` has one for every slot.
    fn mine(&self) -> &SlotSeries {
        let [first, ..] = &self.slots;
        self.slots.get(crate::workers::slot()).unwrap_or(first)
    }

    /// `bsk_sidecar_request_duration_seconds` of the route.
    pub fn request_seconds(&self, m: &Metrics, l: RouteLabels<'_>) -> &Histogram {
        (self.mine().request_seconds)
            .get_or_init(|| m.request_seconds.with_label_values(&[l.listener, l.route]))
    }

    /// `bsk_sidecar_requests_total` of the route's peer with the outcome `forwarded`.
    pub fn forwarded(&self, m: &Metrics, l: RouteLabels<'_>) -> &IntCounter {
        self.mine().forwarded.get_or_init(|| {
            m.requests
                .with_label_values(&[l.listener, l.route, l.peer, "forwarded"])
        })
    }

    /// `bsk_sidecar_upstream_duration_seconds` of the route.
    pub fn upstream_seconds(&self, m: &Metrics, l: RouteLabels<'_>) -> &Histogram {
        (self.mine().upstream_seconds)
            .get_or_init(|| m.upstream_seconds.with_label_values(&[l.listener, l.route]))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_series_is_its_labelled_series_and_appears_on_first_use() {
        let m = Metrics::new();
        let series = RouteSeries::default();
        let labels = RouteLabels {
            listener: "public",
            route: "/bsk/status",
            peer: "bsk",
        };
        let text = || String::from_utf8(m.render()).unwrap();
        assert!(!text().contains("bsk_sidecar_upstream_duration_seconds_count"));
        series.forwarded(&m, labels).inc();
        series.forwarded(&m, labels).inc();
        series.request_seconds(&m, labels).observe(0.5);
        series.upstream_seconds(&m, labels).observe(0.25);
        let forwarded = ["public", "/bsk/status", "bsk", "forwarded"];
        assert_eq!(m.requests.with_label_values(&forwarded).get(), 2);
        let route = ["public", "/bsk/status"];
        let seconds = m.request_seconds.with_label_values(&route);
        assert_eq!(seconds.get_sample_count(), 1);
        assert_eq!(seconds.get_sample_sum(), 0.5);
        let upstream = m.upstream_seconds.with_label_values(&route);
        assert_eq!(upstream.get_sample_sum(), 0.25);
        assert!(text().contains(
            r#"bsk_sidecar_upstream_duration_seconds_count{listener="public",route="/bsk/status"} 1"#
        ));
    }

    /// Each worker counts into a copy of its own; the scrape, and anything reading the
    /// family, sees one series with the copies added up.
    #[test]
    fn the_workers_copies_are_added_up_when_scraped() {
        let m = Metrics::new();
        let series = Arc::new(RouteSeries::default());
        let workers = crate::workers::Workers::start(3).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for n in 1..=6u32 {
            let (m, series, tx) = (m.clone(), series.clone(), tx.clone());
            workers.spawn(move || async move {
                let labels = RouteLabels {
                    listener: "public",
                    route: "/bsk/status",
                    peer: "bsk",
                };
                series.forwarded(&m, labels).inc();
                series
                    .request_seconds(&m, labels)
                    .observe(0.001 * f64::from(n));
                tx.send(crate::workers::slot()).unwrap();
            });
        }
        let slots: std::collections::BTreeSet<usize> = (0..6).map(|_| rx.recv().unwrap()).collect();
        assert_eq!(slots.len(), 3, "three workers counted");
        // A thread that is no worker counts into the first copy.
        m.requests
            .with_label_values(&["public", "/bsk/status", "bsk", "forwarded"])
            .inc();
        let text = String::from_utf8(m.render()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let forwarded = r#"bsk_sidecar_requests_total{listener="public",outcome="forwarded",peer="bsk",route="/bsk/status"}"#;
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.starts_with(forwarded))
                .collect::<Vec<_>>(),
            [&format!("{forwarded} 7")],
            "one series, the copies added up"
        );
        let count = r#"bsk_sidecar_request_duration_seconds_count{listener="public",route="/bsk/status"} 6"#;
        assert!(lines.contains(&count), "{text}");
        // 1..=6 ms: two at or under 2.5 ms, five at or under 5 ms, all six under 10 ms.
        for (le, n) in [
            ("0.001", 1),
            ("0.0025", 2),
            ("0.005", 5),
            ("0.01", 6),
            ("+Inf", 6),
        ] {
            let bucket = format!(
                r#"bsk_sidecar_request_duration_seconds_bucket{{listener="public",route="/bsk/status",le="{le}"}} {n}"#
            );
            assert!(lines.contains(&bucket.as_str()), "{bucket} in {text}");
        }
        let sum = families(&m.request_seconds)[0].get_metric()[0]
            .get_histogram()
            .get_sample_sum();
        assert!((sum - 0.021).abs() < 1e-9, "sum {sum}");
    }

    fn families(c: &dyn Collector) -> Vec<MetricFamily> {
        c.collect()
    }

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

    /// The in-flight gauge is the cap's count as it is when scraped, across clones of the
    /// metrics (a config reload carries them).
    #[test]
    fn the_in_flight_gauge_reads_the_count_when_scraped() {
        let m = Metrics::new();
        let carried = m.clone();
        let gauge = || {
            let text = String::from_utf8(m.render()).unwrap();
            let line = text
                .lines()
                .find(|l| l.starts_with("bsk_sidecar_in_flight_requests "));
            line.expect("the gauge is exported").to_owned()
        };
        assert_eq!(gauge(), "bsk_sidecar_in_flight_requests 0");
        let a = carried.in_flight.enter(8).expect("a slot");
        let b = carried.in_flight.enter(8).expect("a slot");
        assert_eq!(gauge(), "bsk_sidecar_in_flight_requests 2");
        drop(a);
        assert_eq!(gauge(), "bsk_sidecar_in_flight_requests 1");
        drop(b);
        assert_eq!(gauge(), "bsk_sidecar_in_flight_requests 0");
    }
}
