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

use super::ip::canonical;
use crate::config::Settings;
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
    pub fn new(name: &str) -> Arc<DnsName> {
        Arc::new(DnsName {
            name: name.trim_end_matches('.').to_ascii_lowercase(),
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

    /// Takes over what `other` (the same name in the previous config) knows, so a
    /// reload does not leave the name empty until it resolves again.
    pub fn seed_from(&self, other: &DnsName) {
        if other.name == self.name && !std::ptr::eq(self, other) {
            self.addrs.store(other.addrs.load_full());
            // Copied out first: never two of these locks held at once.
            let state = *other.lock();
            *self.lock() = state;
        }
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
#[error("DNS resolver: {0}")]
pub struct DnsError(String);

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
                .map_err(|e| DnsError(format!("system configuration: {e}")))?
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
        let mut addrs: Vec<IpAddr> = found.iter().map(canonical).collect();
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            return Err("no A or AAAA records".into());
        }
        Ok(addrs)
    }
}

/// Every allowlisted name in the config, grouped by name (two peers may list the same).
pub fn names_of(settings: &Settings) -> BTreeMap<String, Vec<Arc<DnsName>>> {
    let mut out: BTreeMap<String, Vec<Arc<DnsName>>> = BTreeMap::new();
    for p in settings.peers.values() {
        if let Some(allow) = &p.allow {
            for n in allow.names() {
                out.entry(n.name().to_string()).or_default().push(n.clone());
            }
        }
    }
    out
}

/// Gives the names of `next` what the same names in `prev` already know.
pub fn carry_over(prev: &Settings, next: &Settings) {
    let old = names_of(prev);
    for (name, entries) in names_of(next) {
        if let Some(from) = old.get(&name).and_then(|v| v.first()) {
            for e in entries {
                e.seed_from(from);
            }
        }
    }
}

/// Resolves the names that are due (all of them with `force`), updating addresses,
/// metrics and the log. Returns how many names failed.
pub async fn refresh(
    settings: &Settings,
    resolver: &Resolver,
    metrics: &Metrics,
    force: bool,
) -> usize {
    let now = Instant::now();
    let mut failed = 0;
    let names = names_of(settings);
    // All due names at once: a dead resolver delays start-up by one timeout, not one per name.
    let mut lookups = tokio::task::JoinSet::new();
    for (name, entries) in &names {
        let due = entries
            .first()
            .is_some_and(|first| force || first.due(now, settings.dns.refresh));
        if due {
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
        let Some(entries) = names.get(&name) else {
            continue;
        };
        let Some(first) = entries.first() else {
            continue;
        };
        let m = &metrics.ops;
        // Both outcomes exist from the first lookup, so `increase()` sees the first failure.
        m.dns_resolutions.with_label_values(&[&name, "ok"]);
        m.dns_resolutions.with_label_values(&[&name, "error"]);
        match result {
            Ok(addrs) => {
                let changed = *first.addresses() != addrs;
                let at = SystemTime::now();
                let addrs = Arc::new(addrs);
                for e in entries {
                    e.addrs.store(addrs.clone());
                    *e.lock() = State {
                        last_attempt: Some(now),
                        last_ok: true,
                        last_success: Some(at),
                    };
                }
                m.dns_resolutions.with_label_values(&[&name, "ok"]).inc();
                m.dns_addresses
                    .with_label_values(&[&name])
                    .set(addrs.len() as i64);
                m.dns_last_success.with_label_values(&[&name]).set(unix(at));
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
            Err(error) => {
                failed += 1;
                for e in entries {
                    let mut st = e.lock();
                    st.last_attempt = Some(now);
                    st.last_ok = false;
                }
                m.dns_resolutions.with_label_values(&[&name, "error"]).inc();
                let kept = first
                    .addresses()
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                let last = first
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
        }
    }
    failed
}

/// Keeps the current runtime's names resolved: each is looked up again when due. A new
/// runtime (after a reload) gets a new resolver when its `dns:` block changed.
pub async fn run_refresher(live: Arc<crate::reload::Live>) {
    let mut resolver: Option<(DnsSettings, Resolver)> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let rt = live.load();
        if resolver.as_ref().map(|(s, _)| s) != Some(&rt.settings.dns) {
            match Resolver::new(&rt.settings.dns) {
                Ok(r) => resolver = Some((rt.settings.dns.clone(), r)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot set up the DNS resolver");
                    continue;
                }
            }
        }
        if let Some((_, r)) = &resolver {
            refresh(&rt.settings, r, &rt.metrics, false).await;
        }
    }
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
    fn a_name_allows_nobody_until_resolved_and_seeds_across_reloads() {
        let old = DnsName::new("Bsk.Example.");
        assert_eq!(old.name(), "bsk.example");
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        assert!(!old.contains(ip));
        old.addrs.store(Arc::new(vec![ip]));
        let new = DnsName::new("bsk.example");
        new.seed_from(&old);
        assert!(new.contains(ip));
        let other = DnsName::new("other.example");
        other.seed_from(&old);
        assert!(!other.contains(ip));
        // Seeding from itself is a no-op, not a deadlock.
        new.seed_from(&new);
        assert!(new.contains(ip));
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
