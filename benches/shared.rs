//! Criterion bench: what a request's writes to state both connection workers share cost
//! while both workers answer requests at once. Each step stands in for a request: a few
//! microseconds of other work, then the writes. Both workers run their steps at the same
//! time; the figure is the time of one step on one worker.
//!
//! - `work alone`: the floor;
//! - request metrics (the request's latency, its upstream's, the `forwarded` count):
//!   `one family` both workers write, as before `metrics::PerWorker`, and `per worker`,
//!   a route's series as the pipeline reaches them (`RouteSeries` over `Metrics`), each
//!   worker writing copies of its own;
//! - the per-address limit, both workers' requests from one address as in the load
//!   test: `check` as it is, and `table counted twice`, the check after counting the
//!   table twice, as each request did before (`PerIpLimiter::tracked`: every part of the
//!   table locked in turn);
//! - the in-flight cap's slot (`limits.max_in_flight`), taken and given back;
//! - a route's and a peer's limits (one bucket each, shared by every request of the
//!   route or the peer).
//!
//! Run with `cargo bench --bench shared`; the whole run takes about a minute.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bsk_sidecar::guard::rate::{Limiter, PerIpLimiter, RateSpec};
use bsk_sidecar::metrics::{InFlight, Metrics, RouteLabels, RouteSeries};
use bsk_sidecar::workers::Workers;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use prometheus::{Histogram, HistogramOpts, IntCounter, Opts};

/// The sidecar binary's allocator, so these figures are the product's.
#[global_allocator]
static GLOBAL: bsk_sidecar::allocator::Chosen = bsk_sidecar::allocator::CHOSEN;

/// The sidecar's latency buckets (`src/metrics.rs`).
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

const LABELS: RouteLabels<'static> = RouteLabels {
    listener: "public",
    route: "/bsk/status",
    peer: "bsk",
};

/// The rest of a request, as far as the cache is concerned: a few microseconds of
/// arithmetic on registers (`black_box` keeps the compiler from folding the loop).
fn other_work(seed: u64) -> u64 {
    let mut x = seed;
    for i in 0..2_000u64 {
        x = black_box(x)
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(i);
    }
    x
}

type Step = Arc<dyn Fn(u64) + Send + Sync>;

/// Runs `iters` steps on each of the two workers at once; the time until both are done.
fn on_both(workers: &Workers, iters: u64, step: &Step) -> Duration {
    let (done, finished) = mpsc::channel();
    let start = Instant::now();
    for _ in 0..2 {
        let (step, done) = (step.clone(), done.clone());
        workers.spawn(move || async move {
            for i in 0..iters {
                step(i);
            }
            let _ = done.send(());
        });
    }
    for _ in 0..2 {
        finished.recv().expect("a worker finished its steps");
    }
    start.elapsed()
}

fn shared_benches(c: &mut Criterion) {
    let workers = Workers::start(2).expect("two workers start");
    let alone: Step = Arc::new(|i| {
        black_box(other_work(i));
    });

    let latency = |name: &str| {
        let opts = HistogramOpts::new(name, "bench").buckets(BUCKETS.to_vec());
        Histogram::with_opts(opts).expect("valid histogram")
    };
    let (request, upstream) = (latency("request"), latency("upstream"));
    let forwarded = IntCounter::with_opts(Opts::new("forwarded", "bench")).expect("valid counter");
    let one_family: Step = Arc::new(move |i| {
        black_box(other_work(i));
        request.observe(0.0003);
        forwarded.inc();
        upstream.observe(0.0002);
    });

    let metrics = Metrics::new();
    let series = RouteSeries::default();
    let per_worker: Step = Arc::new(move |i| {
        black_box(other_work(i));
        series.request_seconds(&metrics, LABELS).observe(0.0003);
        series.forwarded(&metrics, LABELS).inc();
        series.upstream_seconds(&metrics, LABELS).observe(0.0002);
    });

    // Limits far above what the steps reach: every check takes a token.
    let unlimited = RateSpec::new(NonZeroU32::MAX, NonZeroU32::MAX);
    let client = IpAddr::from([127, 0, 0, 1]);
    let limiter = Arc::new(PerIpLimiter::new(unlimited, 100_000));
    let check: Step = Arc::new({
        let limiter = limiter.clone();
        move |i| {
            black_box(other_work(i));
            black_box(limiter.check(client)).expect("a token");
        }
    });
    let counted_twice: Step = Arc::new(move |i| {
        black_box(other_work(i));
        black_box(limiter.tracked() + limiter.tracked());
        black_box(limiter.check(client)).expect("a token");
    });

    let in_flight = InFlight::new();
    let slot: Step = Arc::new(move |i| {
        black_box(other_work(i));
        black_box(in_flight.enter(1024)).expect("a slot");
    });

    let (route, peer) = (Limiter::new(unlimited), Limiter::new(unlimited));
    let buckets: Step = Arc::new(move |i| {
        black_box(other_work(i));
        black_box(route.check()).expect("a route token");
        black_box(peer.check()).expect("a peer token");
    });

    let mut g = c.benchmark_group("a request's shared writes on two workers");
    g.measurement_time(Duration::from_secs(4));
    for (name, step) in [
        ("work alone", &alone),
        ("metrics: one family", &one_family),
        ("metrics: per worker", &per_worker),
        ("per-address limit: table counted twice", &counted_twice),
        ("per-address limit: check", &check),
        ("in-flight slot", &slot),
        ("route and peer limits", &buckets),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| on_both(&workers, iters, step))
        });
    }
    g.finish();
}

criterion_group!(benches, shared_benches);
criterion_main!(benches);
