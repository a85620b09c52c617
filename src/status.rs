//! The status page: `GET /` on the admin listener, an HTML page for a person (like
//! HAProxy's stats page). No external assets, readable without JavaScript, reloading
//! itself every 10 s where JavaScript runs. Behind `admin.token` like every admin page
//! (HTTP Basic with the token as password opens it in a browser).
//!
//! Since-start figures come from the Prometheus counters; "last 5 minutes" from
//! [`History`], which samples those counters every [`SAMPLE_EVERY`] and also notes when
//! each route's upstream last answered and last failed.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::runtime::Runtime;

/// How often [`run_sampler`] takes a sample.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// The recent window shown beside the since-start figures.
pub const WINDOW: Duration = Duration::from_secs(300);
/// How often the page reloads itself where JavaScript runs.
const RELOAD_MS: u32 = 10_000;
/// The page's one script; its hash is the only script the CSP allows.
const SCRIPT: &str = "setTimeout(function(){location.reload()},10000);";

/// (listener, route) — the labels every per-route figure carries.
type RouteKey = (String, String);
/// Per route: requests by outcome, refusals by reason.
type RouteCounts = BTreeMap<RouteKey, (BTreeMap<String, u64>, BTreeMap<String, u64>)>;

/// Counters at one moment.
#[derive(Clone, Default)]
struct Sample {
    /// (listener, route, outcome) → requests.
    requests: BTreeMap<(String, String, String), u64>,
    /// (listener, route, reason) → refusals.
    refusals: BTreeMap<(String, String, String), u64>,
    /// (listener, route) → (upstream round trips, their total seconds).
    upstream: BTreeMap<RouteKey, (u64, f64)>,
}

/// When a route's upstream last answered and last failed (by our clock, to within
/// [`SAMPLE_EVERY`]).
#[derive(Clone, Copy, Default)]
struct Seen {
    ok: Option<SystemTime>,
    failed: Option<SystemTime>,
}

/// Samples of the last [`WINDOW`] and what they showed about upstreams. Held by the admin
/// listener for the life of the process, so it survives config reloads.
pub struct History {
    /// Stamps the samples' wall-clock times.
    clock: Clock,
    started: SystemTime,
    samples: Mutex<VecDeque<(Instant, Sample)>>,
    seen: Mutex<BTreeMap<RouteKey, Seen>>,
}

impl Default for History {
    /// Made as the process starts serving, when every counter is zero: that is the first
    /// baseline, so requests answered before the sampler's first tick (the listeners'
    /// workers start at once) are in the recent figures too.
    fn default() -> Self {
        let clock = Clock::system();
        History {
            started: clock.now(),
            clock,
            samples: Mutex::new(VecDeque::from([(Instant::now(), Sample::default())])),
            seen: Mutex::new(BTreeMap::new()),
        }
    }
}

fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> &'a str {
    m.get_label()
        .iter()
        .find(|l| l.name() == name)
        .map_or("", |l| l.value())
}

fn families(c: &dyn Collector) -> Vec<MetricFamily> {
    c.collect()
}

fn sample(metrics: &Metrics) -> Sample {
    let mut s = Sample::default();
    for f in families(&metrics.requests) {
        for m in f.get_metric() {
            let key = (
                label(m, "listener").to_owned(),
                label(m, "route").to_owned(),
                label(m, "outcome").to_owned(),
            );
            *s.requests.entry(key).or_default() += m.get_counter().get_value() as u64;
        }
    }
    for f in families(&metrics.rejections) {
        for m in f.get_metric() {
            let key = (
                label(m, "listener").to_owned(),
                label(m, "route").to_owned(),
                label(m, "reason").to_owned(),
            );
            *s.refusals.entry(key).or_default() += m.get_counter().get_value() as u64;
        }
    }
    for f in families(&metrics.upstream_seconds) {
        for m in f.get_metric() {
            let h = m.get_histogram();
            let key = (
                label(m, "listener").to_owned(),
                label(m, "route").to_owned(),
            );
            let e = s.upstream.entry(key).or_default();
            e.0 += h.get_sample_count();
            e.1 += h.get_sample_sum();
        }
    }
    s
}

impl History {
    /// Takes a sample now; keeps one sample at least [`WINDOW`] old as the baseline.
    pub fn sample(&self, metrics: &Metrics) {
        let now = sample(metrics);
        let at = Instant::now();
        let wall = self.clock.now();
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let start = Sample::default();
        {
            // The first sample is compared with the counters at zero.
            let last = samples.back().map_or(&start, |(_, s)| s);
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            for ((listener, route, outcome), n) in &now.requests {
                let before = last
                    .requests
                    .get(&(listener.clone(), route.clone(), outcome.clone()))
                    .copied()
                    .unwrap_or(0);
                if *n > before {
                    let s = seen.entry((listener.clone(), route.clone())).or_default();
                    match outcome.as_str() {
                        "forwarded" => s.ok = Some(wall),
                        "upstream_error" => s.failed = Some(wall),
                        _ => {}
                    }
                }
            }
        }
        samples.push_back((at, now));
        // Drop samples while the next one is still old enough to be the baseline.
        while samples
            .get(1)
            .is_some_and(|(t, _)| at.duration_since(*t) >= WINDOW)
        {
            samples.pop_front();
        }
    }

    /// The oldest sample within (or just past) the window, and how long ago it was taken.
    fn baseline(&self) -> Option<(Duration, Sample)> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples
            .front()
            .map(|(t, s)| (t.elapsed().min(WINDOW), s.clone()))
    }
}

/// Samples `metrics` into `history` every [`SAMPLE_EVERY`] until aborted.
pub async fn run_sampler(metrics: Metrics, history: std::sync::Arc<History>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tick.tick().await;
        history.sample(&metrics);
    }
}

/// `&`, `<`, `>`, `"` and `'` escaped for HTML text and attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `2026-11-30T21:40:00Z (3m ago)` / `(in 89d)`.
fn when(unix_secs: i64, now: i64) -> String {
    if unix_secs < 0 {
        return "—".into();
    }
    let stamp = crate::calendar::rfc3339(unix_secs);
    let rel = if unix_secs <= now {
        format!(
            "{} ago",
            short(Duration::from_secs((now - unix_secs).unsigned_abs()))
        )
    } else {
        format!(
            "in {}",
            short(Duration::from_secs((unix_secs - now).unsigned_abs()))
        )
    };
    format!("{stamp} ({rel})")
}

/// `3d 4h`, `5m 2s`, `12s`.
fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s / 60 % 60),
        _ => format!("{}d {}h", s / 86_400, s / 3600 % 24),
    }
}

fn reasons(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "—".into();
    }
    map.iter()
        .map(|(r, n)| format!("{} {n}", esc(r)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Per route: (outcome → n, reason → n) from `now` minus `base`.
fn per_route(now: &Sample, base: Option<&Sample>) -> RouteCounts {
    let mut out = RouteCounts::new();
    for (k, n) in &now.requests {
        let before = base.and_then(|b| b.requests.get(k)).copied().unwrap_or(0);
        let e = out.entry((k.0.clone(), k.1.clone())).or_default();
        let d = n.saturating_sub(before);
        if d > 0 {
            *e.0.entry(k.2.clone()).or_default() += d;
        }
    }
    for (k, n) in &now.refusals {
        let before = base.and_then(|b| b.refusals.get(k)).copied().unwrap_or(0);
        let e = out.entry((k.0.clone(), k.1.clone())).or_default();
        let d = n.saturating_sub(before);
        if d > 0 {
            *e.1.entry(k.2.clone()).or_default() += d;
        }
    }
    out
}

fn counts(outcomes: &BTreeMap<String, u64>) -> String {
    let total: u64 = outcomes.values().sum();
    let get = |k: &str| outcomes.get(k).copied().unwrap_or(0);
    format!(
        "{total} ({} forwarded, {} refused, {} upstream errors)",
        get("forwarded"),
        get("rejected"),
        get("upstream_error")
    )
}

fn gauge_by(vec: &dyn Collector, name: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for f in families(vec) {
        for m in f.get_metric() {
            let v = if m.get_gauge().get_value() != 0.0 {
                m.get_gauge().get_value()
            } else {
                m.get_counter().get_value()
            };
            *out.entry(label(m, name).to_owned()).or_default() += v;
        }
    }
    out
}

/// The `Content-Security-Policy` of the page: nothing external, only its own script.
pub fn content_security_policy() -> String {
    use base64::Engine;
    use sha2::Digest;
    let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(SCRIPT));
    format!(
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{hash}'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// The page for `rt`, as of now.
pub fn page(rt: &Runtime, history: &History) -> String {
    let m = &rt.metrics;
    // A sample now, so that what just happened shows (last success, last failure).
    history.sample(m);
    let now = sample(m);
    let base = history.baseline();
    let (window, base_sample) = match &base {
        Some((d, s)) => (*d, Some(s)),
        None => (Duration::ZERO, None),
    };
    let seen = history
        .seen
        .lock()
        .map(|s| s.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    let wall = rt.clock.now();
    let view = View {
        window,
        wall_secs: unix(wall),
        now: &now,
        base: base_sample,
        seen: &seen,
    };

    let mut h = String::with_capacity(16 * 1024);
    h.push_str(HEAD);
    let uptime = wall.duration_since(history.started).unwrap_or_default();
    let _ = write!(
        h,
        "<h1>bsk-sidecar {}</h1><p>Up {} (since {}). Config loaded at {}. \
         <span class=\"muted\">Recent figures cover the last {} (counters sampled every {}s); \
         this page reloads every {}s where JavaScript runs.</span></p>",
        esc(env!("CARGO_PKG_VERSION")),
        short(uptime),
        esc(&when(unix(history.started), view.wall_secs)),
        esc(&when(m.ops.config_loaded.get(), view.wall_secs)),
        short(window),
        SAMPLE_EVERY.as_secs(),
        RELOAD_MS / 1000,
    );
    listeners_section(&mut h, rt, &view);
    outbox_section(&mut h, m);
    dns_section(&mut h, rt, view.wall_secs);
    let _ = write!(
        h,
        "<h2>Replay cache</h2><p>{}</p>",
        match &rt.replay {
            Some(r) => format!("{} entries", r.len()),
            None => "off (no route asks for replay protection)".into(),
        }
    );
    let _ = write!(h, "<script>{SCRIPT}</script></body></html>");
    h
}

/// What every section of one rendering reads: the recent window, the wall clock, the
/// sample taken now and the baseline it is compared with, each route's last outcomes.
struct View<'a> {
    window: Duration,
    wall_secs: i64,
    now: &'a Sample,
    base: Option<&'a Sample>,
    seen: &'a BTreeMap<RouteKey, Seen>,
}

/// The document head and its inline style (the CSP allows inline style, no other source).
const HEAD: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
     <meta name=\"viewport\" content=\"width=device-width\">\
     <title>bsk-sidecar status</title><style>\
     body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
     h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ccc}\
     table{border-collapse:collapse;margin:.4em 0}\
     th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}\
     th{background:#f3f3f3}.bad{color:#a00;font-weight:bold}.muted{color:#777}\
     </style></head><body>";

/// Each listener's routes: requests and refusals recent and since start, the upstream.
fn listeners_section(h: &mut String, rt: &Runtime, v: &View<'_>) {
    let (window, wall_secs) = (v.window, v.wall_secs);
    let recent = per_route(v.now, v.base);
    let total = per_route(v.now, None);
    h.push_str("<h2>Listeners and routes</h2>");
    let expiry = gauge_by(&rt.metrics.ops.tls_cert_expiry, "listener");
    for l in &rt.listeners {
        let cert = match expiry.get(&l.name) {
            Some(t) => format!("; certificate expires {}", esc(&when(*t as i64, wall_secs))),
            None if l.tls.is_some() => "; certificate expiry unknown".into(),
            None => String::new(),
        };
        let _ = write!(
            h,
            "<h3>{} on {}{}{}</h3><table><tr><th>route</th><th>requests, last {}</th>\
             <th>refusals by reason, last {}</th><th>requests since start</th>\
             <th>refusals by reason since start</th><th>upstream</th></tr>",
            esc(&l.name),
            esc(&l.addr.to_string()),
            if l.tls.is_some() { " (HTTPS)" } else { "" },
            cert,
            short(window),
            short(window),
        );
        let mut paths: Vec<&String> = l.routes.values().map(|r| &r.cfg.path).collect();
        paths.sort();
        let mut names: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        // Requests that matched no route are counted under `unmatched`.
        if total.contains_key(&(l.name.clone(), "unmatched".to_owned())) {
            names.push("unmatched".into());
        }
        for route in names {
            let key = (l.name.clone(), route.clone());
            let empty = (BTreeMap::new(), BTreeMap::new());
            let r = recent.get(&key).unwrap_or(&empty);
            let t = total.get(&key).unwrap_or(&empty);
            let upstream = upstream_cell(&key, v.now, v.base, v.seen.get(&key), wall_secs);
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&route),
                counts(&r.0),
                reasons(&r.1),
                counts(&t.0),
                reasons(&t.1),
                upstream
            );
        }
        h.push_str("</table>");
    }
}

/// Each peer's outbox: queued, oldest, dead letters. Absent without egress.
fn outbox_section(h: &mut String, m: &Metrics) {
    let depth = gauge_by(&m.outbox_depth, "peer");
    if !depth.is_empty() {
        let oldest = gauge_by(&m.outbox_oldest_age, "peer");
        let dead = gauge_by(&m.outbox_dead_depth, "peer");
        let dead_total = gauge_by(&m.outbox_dead_letters, "peer");
        h.push_str(
            "<h2>Outbox</h2><table><tr><th>peer</th><th>queued</th><th>oldest queued</th>\
             <th>dead letters now</th><th>dead-lettered since start</th></tr>",
        );
        for (peer, n) in &depth {
            let age = oldest.get(peer).copied().unwrap_or(0.0);
            let dead_now = dead.get(peer).copied().unwrap_or(0.0);
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td{}>{}</td><td>{}</td></tr>",
                esc(peer),
                *n as u64,
                if age > 0.0 {
                    short(Duration::from_secs_f64(age))
                } else {
                    "—".into()
                },
                if dead_now > 0.0 { " class=\"bad\"" } else { "" },
                dead_now as u64,
                dead_total.get(peer).copied().unwrap_or(0.0) as u64,
            );
        }
        h.push_str("</table>");
    }
}

/// The allowlisted DNS names, the addresses each resolved to and when.
fn dns_section(h: &mut String, rt: &Runtime, wall_secs: i64) {
    let names = &rt.names;
    if !names.is_empty() {
        h.push_str(
            "<h2>Allowlisted DNS names</h2><table><tr><th>name</th><th>addresses now</th>\
             <th>last resolved</th></tr>",
        );
        for cell in names.iter() {
            let name = cell.name();
            let addrs: Vec<String> = cell.addresses().iter().map(|a| a.to_string()).collect();
            let last = cell
                .last_success()
                .map(|t| when(unix(t), wall_secs))
                .unwrap_or_else(|| "never".into());
            let _ = write!(
                h,
                "<tr><td>{}</td><td{}>{}</td><td>{}</td></tr>",
                esc(name),
                if addrs.is_empty() {
                    " class=\"bad\""
                } else {
                    ""
                },
                if addrs.is_empty() {
                    "none".into()
                } else {
                    esc(&addrs.join(", "))
                },
                esc(&last)
            );
        }
        h.push_str("</table>");
    }
}

/// Last success and failure of a route's upstream, and its mean latency.
fn upstream_cell(
    key: &RouteKey,
    now: &Sample,
    base: Option<&Sample>,
    seen: Option<&Seen>,
    wall_secs: i64,
) -> String {
    let Some((count, sum)) = now.upstream.get(key) else {
        return "<span class=\"muted\">no calls yet</span>".into();
    };
    let (c0, s0) = base
        .and_then(|b| b.upstream.get(key))
        .copied()
        .unwrap_or((0, 0.0));
    let mean = |n: u64, s: f64| {
        if n == 0 {
            "—".to_owned()
        } else {
            format!("{:.1} ms", s / n as f64 * 1000.0)
        }
    };
    let seen = seen.copied().unwrap_or_default();
    let at = |t: Option<SystemTime>| {
        t.map(|t| when(unix(t), wall_secs))
            .unwrap_or_else(|| "—".into())
    };
    format!(
        "mean {} recently, {} since start; last success {}; last failure <span{}>{}</span>",
        mean(count.saturating_sub(c0), sum - s0),
        mean(*count, *sum),
        esc(&at(seen.ok)),
        if seen.failed.is_some() {
            " class=\"bad\""
        } else {
            ""
        },
        esc(&at(seen.failed)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_answered_before_the_first_sample_are_in_the_recent_figures() {
        let metrics = Metrics::new();
        let history = History::default();
        // The listeners' workers serve before the sampler's first tick.
        metrics
            .requests
            .with_label_values(&["public", "/bsk/landing", "bsk", "forwarded"])
            .inc_by(3);
        history.sample(&metrics);
        let (_, base) = history.baseline().unwrap();
        assert!(
            base.requests.is_empty(),
            "the baseline is the counters at zero"
        );
        let key = (
            "public".to_owned(),
            "/bsk/landing".to_owned(),
            "forwarded".to_owned(),
        );
        assert_eq!(sample(&metrics).requests.get(&key), Some(&3));
    }
}
