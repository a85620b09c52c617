//! DNS names in allowlists: a department with a dynamic public IP is allowed by name
//! (spec: "the DNS need to be whitelisted").
//!
//! Each name is resolved (A and AAAA) before the listeners serve and again every
//! `dns.refresh`; a request is checked against the addresses of the last successful
//! resolution. A failed lookup keeps those addresses — an outage of the resolver does
//! not lock a department out, and is retried sooner — and says so in the log and in
//! `bsk_sidecar_dns_resolutions_total{outcome="error"}`. Until a name has resolved once
//! it allows nobody.
//!
//! The resolver is the system's (`/etc/resolv.conf`, hosts file) unless `dns.servers`
//! names the servers to ask.
//!
//! The runtime holds one [`Names`] table (one cell per name, carried over a reload so a
//! name never starts empty again); the background task that calls [`refresh`] lives
//! beside the server (`crate::background`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;

use crate::clock::Clock;
use crate::metrics::Metrics;

/// The `dns:` block, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsSettings {
    /// Servers to ask (UDP, then TCP when an answer is truncated); empty: the system's.
    pub servers: Vec<SocketAddr>,
    /// How often each name is resolved again.
    pub refresh: Duration,
    /// Per-query timeout.
    pub timeout: Duration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            servers: Vec::new(),
            refresh: Duration::from_secs(60),
            timeout: Duration::from_secs(2),
        }
    }
}

/// Whether `s` is a host name an allowlist may hold (`bsk.wb.gov.in`): LDH labels of 1–63
/// characters, at most 253 in all, and a last label that is not all digits (so a
/// mistyped address like `10.0.0.300` is refused rather than looked up).
pub fn is_host_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = s.split('.').collect();
    let ldh = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    labels.iter().all(ldh)
        && labels
            .last()
            .is_some_and(|l| !l.bytes().all(|b| b.is_ascii_digit()))
}

/// `Bsk.Example.` → `bsk.example`: how a name is written in the table.
pub fn canonical_name(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// One allowlisted name and the addresses it last resolved to.
pub struct DnsName {
    name: String,
    addrs: ArcSwap<Vec<IpAddr>>,
    state: Mutex<State>,
}

#[derive(Clone, Copy, Default)]
struct State {
    last_attempt: Option<Instant>,
    last_ok: bool,
    last_success: Option<SystemTime>,
}

impl DnsName {
    /// A name that has not resolved yet (it allows nobody until it has).
    fn new(name: &str) -> Arc<DnsName> {
        Arc::new(DnsName {
            name: canonical_name(name),
            addrs: ArcSwap::from_pointee(Vec::new()),
            state: Mutex::new(State::default()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `ip` is one of the current addresses.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.addrs.load().contains(&ip)
    }

    /// The current addresses.
    pub fn addresses(&self) -> Arc<Vec<IpAddr>> {
        self.addrs.load_full()
    }

    /// When the last successful resolution was.
    pub fn last_success(&self) -> Option<SystemTime> {
        self.lock().last_success
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Due for a lookup: never tried, `refresh` after a success, `retry` after a failure.
    fn due(&self, now: Instant, refresh: Duration) -> bool {
        let st = self.lock();
        match st.last_attempt {
            None => true,
            Some(t) => {
                let wait = if st.last_ok {
                    refresh
                } else {
                    refresh.min(Duration::from_secs(10))
                };
                now.duration_since(t) >= wait
            }
        }
    }
}

impl fmt::Debug for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DnsName({})", self.name)
    }
}

impl PartialEq for DnsName {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for DnsName {}

/// Why the resolver could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("DNS resolver: system configuration (/etc/resolv.conf): {0}")]
pub struct DnsError(#[from] hickory_resolver::ResolveError);

/// Looks names up: the system's resolver or the configured servers.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
    timeout: Duration,
}

impl Resolver {
    pub fn new(s: &DnsSettings) -> Result<Resolver, DnsError> {
        let mut opts = ResolverOpts::default();
        opts.timeout = s.timeout;
        opts.attempts = 2;
        // Our own refresh interval decides how long an answer is used.
        opts.cache_size = 0;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let inner = if s.servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(DnsError)?
                .with_options(opts)
                .build()
        } else {
            opts.use_hosts_file = ResolveHosts::Never;
            let mut config = ResolverConfig::new();
            for addr in &s.servers {
                config.add_name_server(NameServerConfig::new(*addr, Protocol::Udp));
                config.add_name_server(NameServerConfig::new(*addr, Protocol::Tcp));
            }
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                .with_options(opts)
                .build()
        };
        Ok(Resolver {
            inner,
            timeout: s.timeout,
        })
    }

    /// A and AAAA records of `name`, sorted and without duplicates.
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, String> {
        // The trailing dot: never expanded with the host's search domains.
        let fqdn = format!("{name}.");
        // Both families, each with its retries, within one bound.
        let bound = self.timeout * 5;
        let found = tokio::time::timeout(bound, self.inner.lookup_ip(fqdn))
            .await
            .map_err(|_| format!("no answer within {}s", bound.as_secs()))?
            .map_err(|e| e.to_string())?;
        let mut addrs: Vec<IpAddr> = found.iter().map(|a| a.to_canonical()).collect();
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            return Err("no A or AAAA records".into());
        }
        Ok(addrs)
    }
}

/// The allowlisted names of one runtime, each with the addresses it last resolved to.
#[derive(Debug, Default)]
pub struct Names {
    cells: BTreeMap<String, Arc<DnsName>>,
}

impl Names {
    /// A table for `names`; a name `prev` already has keeps its cell (and so what it
    /// knows), so a reload never leaves a name empty until it resolves again.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>, prev: Option<&Names>) -> Names {
        let mut cells = BTreeMap::new();
        for name in names {
            let name = canonical_name(name);
            let cell = prev
                .and_then(|p| p.cells.get(&name).cloned())
                .unwrap_or_else(|| DnsName::new(&name));
            cells.insert(name, cell);
        }
        Names { cells }
    }

    /// Whether `ip` is a current address of `name` (written as [`canonical_name`]).
    pub fn contains(&self, name: &str, ip: IpAddr) -> bool {
        self.cells.get(name).is_some_and(|c| c.contains(ip))
    }

    /// Every name, in order.
    pub fn iter(&self) -> impl Iterator<Item = &DnsName> {
        self.cells.values().map(|c| &**c)
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Sets `name`'s addresses as a successful lookup would.
    #[cfg(test)]
    pub(crate) fn set_for_test(&self, name: &str, addrs: Vec<IpAddr>) {
        if let Some(c) = self.cells.get(name) {
            c.addrs.store(Arc::new(addrs));
        }
    }
}

/// Resolves the names that are due (all of them with `force`), updating addresses,
/// metrics and the log. Returns how many names failed.
pub async fn refresh(
    names: &Names,
    every: Duration,
    resolver: &Resolver,
    metrics: &Metrics,
    clock: &Clock,
    force: bool,
) -> usize {
    let now = Instant::now();
    let mut failed = 0;
    // All due names at once: a dead resolver delays start-up by one timeout, not one per name.
    let mut lookups = tokio::task::JoinSet::new();
    for (name, cell) in &names.cells {
        if force || cell.due(now, every) {
            let (r, name) = (resolver.clone(), name.clone());
            lookups.spawn(async move {
                let result = r.lookup(&name).await;
                (name, result)
            });
        }
    }
    while let Some(joined) = lookups.join_next().await {
        let Ok((name, result)) = joined else {
            continue;
        };
        let Some(cell) = names.cells.get(&name) else {
            continue;
        };
        let m = &metrics.ops;
        // Both outcomes exist from the first lookup, so `increase()` sees the first failure.
        m.dns_resolutions.with_label_values(&[&name, "ok"]);
        m.dns_resolutions.with_label_values(&[&name, "error"]);
        match result {
            Ok(addrs) => resolved(cell, addrs, now, clock.now(), metrics),
            Err(error) => {
                failed += 1;
                lookup_failed(cell, &error, now, metrics);
            }
        }
    }
    failed
}

/// A successful lookup: the new addresses, the metrics, and a log line when they changed.
fn resolved(cell: &DnsName, addrs: Vec<IpAddr>, now: Instant, at: SystemTime, metrics: &Metrics) {
    let name = cell.name();
    let changed = *cell.addresses() != addrs;
    let addrs = Arc::new(addrs);
    cell.addrs.store(addrs.clone());
    *cell.lock() = State {
        last_attempt: Some(now),
        last_ok: true,
        last_success: Some(at),
    };
    let m = &metrics.ops;
    m.dns_resolutions.with_label_values(&[name, "ok"]).inc();
    m.dns_addresses
        .with_label_values(&[name])
        .set(addrs.len() as i64);
    m.dns_last_success.with_label_values(&[name]).set(unix(at));
    let list = addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if changed {
        tracing::info!(name = %name, addresses = %list, "allowlist name resolved");
    } else {
        tracing::debug!(name = %name, addresses = %list, "allowlist name unchanged");
    }
}

/// A failed lookup keeps the last good addresses, and says so.
fn lookup_failed(cell: &DnsName, error: &str, now: Instant, metrics: &Metrics) {
    let name = cell.name();
    {
        let mut st = cell.lock();
        st.last_attempt = Some(now);
        st.last_ok = false;
    }
    metrics
        .ops
        .dns_resolutions
        .with_label_values(&[name, "error"])
        .inc();
    let kept = cell
        .addresses()
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let last = cell
        .last_success()
        .map(|t| format!("{}s ago", t.elapsed().map(|d| d.as_secs()).unwrap_or(0)))
        .unwrap_or_else(|| "never".into());
    tracing::warn!(
        name = %name,
        error = %error,
        kept = %kept,
        last_success = %last,
        "allowlist name lookup failed; keeping the last good addresses"
    );
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_and_not_addresses() {
        for ok in ["bsk.wb.gov.in", "localhost", "a-b.example.", "x1.y2"] {
            assert!(is_host_name(ok), "{ok}");
        }
        for bad in [
            "bsk..wb",
            "10.0.0.300",
            "-a.example",
            "a_b.example",
            "10.0.0.0/33",
            "",
            ".",
            "例え.jp",
        ] {
            assert!(!is_host_name(bad), "{bad}");
        }
        assert!(!is_host_name(&format!("{}.in", "a".repeat(64))));
    }

    #[test]
    fn a_name_allows_nobody_until_resolved_and_carries_across_reloads() {
        let old = Names::new(["Bsk.Example."], None);
        assert_eq!(
            old.iter().map(DnsName::name).collect::<Vec<_>>(),
            ["bsk.example"]
        );
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        assert!(!old.contains("bsk.example", ip));
        old.set_for_test("bsk.example", vec![ip]);
        assert!(old.contains("bsk.example", ip));
        // The next config's table keeps what the same name knew; a new name starts empty.
        let new = Names::new(["bsk.example", "other.example"], Some(&old));
        assert!(new.contains("bsk.example", ip));
        assert!(!new.contains("other.example", ip));
        // A name the next config drops is gone from its table.
        let dropped = Names::new(["other.example"], Some(&old));
        assert!(!dropped.contains("bsk.example", ip));
    }

    #[test]
    fn due_after_refresh_or_sooner_after_failure() {
        let n = DnsName::new("a.example");
        let t0 = Instant::now();
        assert!(n.due(t0, Duration::from_secs(60)));
        n.lock().last_attempt = Some(t0);
        n.lock().last_ok = true;
        assert!(!n.due(t0 + Duration::from_secs(30), Duration::from_secs(60)));
        assert!(n.due(t0 + Duration::from_secs(60), Duration::from_secs(60)));
        n.lock().last_ok = false;
        assert!(n.due(t0 + Duration::from_secs(10), Duration::from_secs(60)));
    }
}
