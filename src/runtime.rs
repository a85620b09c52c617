//! The shared, immutable state a running sidecar needs per request: validated settings
//! (plain values) plus the live objects built from them — limiters, route tables,
//! upstream pools, DNS cells, TLS state, the replay cache, the shared-state backend and
//! the egress store.
//!
//! `Runtime::build` is the only place those live objects are created, and the only
//! place that decides what a new runtime takes over from the previous one after a
//! reload (`carry`): the replay cache (while `state.dir` is the same), rate-limit
//! buckets whose rate did not change, TLS certificates whose files did not change (they
//! are re-read), and the addresses of DNS names already resolved.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::config::{Peer, Remote, Route, Settings, Target, Upstream};
use crate::egress::Egress;
use crate::forward::{FixedFields, Forwarder};
use crate::guard::dns::Names;
use crate::guard::ip::AllowList;
use crate::guard::rate::{Limiter, PerIpLimiter, RateSpec};
use crate::guard::replay::ReplayCache;
use crate::logfmt::RouteNames;
use crate::metrics::{Metrics, RouteLabels, RouteSeries};
use crate::tls::TlsState;
use crate::words::hex_digits;
use crate::workers::SLOTS;

/// A route with its own limiter and its destination.
pub struct RouteRt {
    pub cfg: Arc<Route>,
    pub limiter: Option<Arc<Limiter>>,
    pub destination: Destination,
    /// The route's request metrics, kept from their first use.
    pub series: RouteSeries,
    /// The route's names as its access lines write them, kept from the first line.
    pub access_names: RouteNames,
    /// The local bucket of the route's peer (`peers.<name>.rate`), found once here.
    pub peer_limiter: Option<Arc<Limiter>>,
}

/// Where a route's requests go, with what that needs already built — so the pipeline
/// never re-checks at request time what building the runtime proved.
pub enum Destination {
    /// Ingress: the opened JSON goes to the application.
    Upstream(Application),
    /// Ingress: API-7 pulls are answered from the egress journal.
    Journal(Arc<Egress>),
    /// Egress: the application's JSON is sealed and pushed to the peer.
    Remote(Remote, Arc<Egress>),
}

/// A route's application, with the fields every request the route sends it carries
/// (`Host`, `Content-Type`, `X-BSK-Peer`), encoded once here.
pub struct Application {
    pub upstream: Upstream,
    pub fixed: FixedFields,
}

impl Destination {
    fn new(route: &Route, egress: Option<&Arc<Egress>>) -> Result<Self, BuildError> {
        let egress = || {
            egress
                .cloned()
                .ok_or_else(|| BuildError::NoEgress(route.path.clone()))
        };
        Ok(match &route.target {
            Target::Upstream(u) => Destination::Upstream(Application {
                upstream: u.clone(),
                fixed: u.fixed_fields(&route.peer.header),
            }),
            Target::Journal => Destination::Journal(egress()?),
            Target::Remote(r) => Destination::Remote(r.clone(), egress()?),
        })
    }
}

/// A listener's routes by exact path. Hashed with foldhash, not the default SipHash:
/// every request's path is looked up, and the table holds only what the config names, so
/// no sender can add to it or make it collide.
/// A listener's routes by path (the bytes a request's target names).
pub type Routes = HashMap<Box<[u8]>, RouteRt, foldhash::fast::RandomState>;

/// A listener's routes by exact path.
pub struct ListenerRt {
    pub name: String,
    pub addr: SocketAddr,
    pub routes: Routes,
    /// Checked before a byte is read, when every route on this listener checks addresses.
    pub accept_allow: Option<AllowList>,
    /// HTTPS: the current certificate, carried across config reloads.
    pub tls: Option<Arc<TlsState>>,
    /// Who may push on the egress routes (`callers`, `caller_token`).
    pub callers: Arc<crate::guard::caller::Callers>,
    /// Load balancers whose `X-Forwarded-For` or PROXY header names the client.
    pub trusted_proxies: Option<AllowList>,
    /// Trusted proxies open each connection with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// The metric series of requests that matched no route (`route="unmatched"`).
    pub unmatched: RouteSeries,
}

impl ListenerRt {
    /// The labels of a request's metric series and access line: the listener's, and
    /// `route`'s path and peer (`unmatched` and `none` before a route is known).
    pub fn labels<'a>(&'a self, route: Option<&'a RouteRt>) -> RouteLabels<'a> {
        RouteLabels {
            listener: &self.name,
            route: route.map_or("unmatched", |r| r.cfg.path.as_str()),
            peer: route.map_or("none", |r| r.cfg.peer.name.as_str()),
        }
    }
}

pub struct Runtime {
    pub settings: Settings,
    pub metrics: Metrics,
    pub forwarder: Forwarder,
    pub per_ip: Option<Arc<PerIpLimiter>>,
    pub peer_limiters: HashMap<String, Arc<Limiter>>,
    pub listeners: Vec<ListenerRt>,
    /// Shared by every listener; `None` when no route asks for replay protection, or
    /// when the fleet's Redis holds it.
    pub replay: Option<Arc<ReplayCache>>,
    /// `state.backend.redis`: replay cache and peer/route limits shared by replicas.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
    /// Egress routes and the API-7 journal; `None` when no route needs them.
    pub egress: Option<Arc<crate::egress::Egress>>,
    /// The allowlisted DNS names and the addresses each last resolved to.
    pub names: Names,
    /// The wall clock every time-based decision on the request path reads.
    pub clock: crate::clock::Clock,
    request_ids: RequestIds,
}

/// Why a runtime could not be built; the config itself was valid.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("replay journal in {}: {source}", dir.display())]
    Replay {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("listener {listener}: {source}")]
    Tls {
        listener: String,
        source: crate::tls::TlsError,
    },
    #[error("state.backend.redis: {0}")]
    Fleet(#[from] crate::fleet::FleetError),
    #[error(transparent)]
    Egress(#[from] crate::egress::EgressError),
    /// A journal or egress route without the egress store: a bug in `Egress::new`.
    #[error("route {0} needs the egress store, which was not set up")]
    NoEgress(String),
}

impl Runtime {
    /// Builds the runtime; fails only when the replay journal in the state directory
    /// cannot be opened, or a listener's certificate does not load.
    pub fn new(settings: Settings, metrics: Metrics) -> Result<Arc<Runtime>, BuildError> {
        Self::build(settings, metrics, None)
    }

    /// The runtime for a reloaded config. What did not change carries over from `prev`
    /// (`carry`): the replay cache, rate-limit buckets, certificates, DNS addresses.
    pub fn reloaded(settings: Settings, prev: &Runtime) -> Result<Arc<Runtime>, BuildError> {
        Self::build(settings, prev.metrics.clone(), Some(prev))
    }

    fn build(
        settings: Settings,
        metrics: Metrics,
        prev: Option<&Runtime>,
    ) -> Result<Arc<Runtime>, BuildError> {
        let limits = &settings.limits;
        let per_ip = limits
            .per_ip_rate
            .map(|spec| carry::per_ip(prev, spec, limits.max_tracked_ips));
        let peer_limiters = settings
            .peers
            .iter()
            .filter_map(|(name, p): (&String, &Arc<Peer>)| {
                let spec = local_share(&settings, p.rate?);
                Some((name.clone(), carry::peer_limiter(prev, name, spec)))
            })
            .collect();
        let fleet = match &settings.redis {
            None => None,
            Some(r) => Some(match prev.and_then(|p| p.fleet.clone()) {
                Some(f) if f.settings().url == r.url && f.settings().prefix == r.prefix => f,
                _ => Arc::new(crate::fleet::Fleet::new(r.clone())?),
            }),
        };
        let forwarder = Forwarder::new(
            settings
                .listeners
                .iter()
                .flat_map(|l| l.routes.iter().filter_map(|r| r.upstream())),
            limits.upstream_connect_timeout,
            limits.max_upstream_response,
            limits.max_in_flight,
            crate::workers::count(limits.workers),
        );
        let clock = prev.map_or_else(crate::clock::Clock::system, |p| p.clock.clone());
        // Egress: the outbox store (shared with a previous runtime after a reload), peer
        // clients, and the delivery tasks (started here when running inside tokio).
        let egress = crate::egress::Egress::new(&settings, clock.clone())?.map(Arc::new);
        if let (Some(e), Ok(_)) = (&egress, tokio::runtime::Handle::try_current()) {
            e.start(&settings, &metrics);
        }
        let listeners = listeners(&settings, &metrics, &peer_limiters, egress.as_ref(), prev)?;
        let names = Names::new(
            settings
                .peers
                .values()
                .filter_map(|p| p.allow.as_ref())
                .flat_map(|a| a.names())
                .map(String::as_str),
            prev.map(|p| &p.names),
        );
        Ok(Arc::new(Runtime {
            replay: replay_cache(&settings, prev, &clock)?,
            egress,
            names,
            metrics,
            fleet,
            forwarder,
            per_ip,
            peer_limiters,
            listeners,
            request_ids: RequestIds::new(),
            settings,
            clock,
        }))
    }

    pub fn next_request_id(&self) -> RequestId {
        self.request_ids.next()
    }
}

/// A peer's or route's local bucket: with a fleet, only the fallback while Redis is
/// unreachable (`on_redis_down: local`), so each replica gets its share of the rate.
fn local_share(settings: &Settings, spec: RateSpec) -> RateSpec {
    match &settings.redis {
        Some(r) => spec.divided(r.replicas),
        None => spec,
    }
}

/// Each listener's routes, TLS state and accept-time allowlist.
fn listeners(
    settings: &Settings,
    metrics: &Metrics,
    peer_limiters: &HashMap<String, Arc<Limiter>>,
    egress: Option<&Arc<Egress>>,
    prev: Option<&Runtime>,
) -> Result<Vec<ListenerRt>, BuildError> {
    let tls = carry::tls(prev, settings, metrics)?;
    let mut out = Vec::with_capacity(settings.listeners.len());
    for (l, tls) in settings.listeners.iter().zip(tls) {
        let mut routes = Routes::with_capacity_and_hasher(l.routes.len(), Default::default());
        for r in &l.routes {
            let limiter = r.rate.map(|spec| {
                carry::route_limiter(prev, &l.name, &r.path, local_share(settings, spec))
            });
            let route = RouteRt {
                cfg: r.clone(),
                limiter,
                destination: Destination::new(r, egress)?,
                series: RouteSeries::default(),
                access_names: RouteNames::default(),
                peer_limiter: peer_limiters.get(&r.peer.name).cloned(),
            };
            routes.insert(r.path.as_bytes().into(), route);
        }
        out.push(ListenerRt {
            name: l.name.clone(),
            addr: l.addr,
            accept_allow: l.accept_allowlist(),
            tls,
            callers: l.callers.clone(),
            trusted_proxies: l.trusted_proxies.clone(),
            proxy_protocol: l.proxy_protocol,
            routes,
            unmatched: RouteSeries::default(),
        });
    }
    Ok(out)
}

/// The embedded replay cache, when a route refuses replays and no fleet holds them: the
/// previous runtime's while `state.dir` is the same, else opened from its journal.
fn replay_cache(
    settings: &Settings,
    prev: Option<&Runtime>,
    clock: &crate::clock::Clock,
) -> Result<Option<Arc<ReplayCache>>, BuildError> {
    let wanted = settings.redis.is_none()
        && (settings.listeners.iter())
            .flat_map(|l| &l.routes)
            .any(|r| r.replay);
    if !wanted {
        return Ok(None);
    }
    if let Some(kept) = carry::replay(prev, settings) {
        return Ok(Some(kept));
    }
    let now = clock.unix_secs();
    let workers = crate::workers::count(settings.limits.workers);
    let cache = ReplayCache::open(
        &settings.state_dir,
        settings.limits.max_replay_entries,
        workers,
        now,
    )
    .map_err(|source| BuildError::Replay {
        dir: settings.state_dir.clone(),
        source,
    })?;
    Ok(Some(cache))
}

/// Request ids: a random per-process prefix and a number — unique, cheap, and not a
/// clock reading a caller could use.
struct RequestIds {
    prefix: u32,
    /// One count per thread slot ([`crate::workers::slot`]), each on a cache line of its
    /// own: each worker counts its own requests, and no request passes a shared counter's
    /// line between the cores. A slot's numbers are `count * SLOTS + slot`, so no two
    /// slots give the same one.
    counts: Box<[CachePadded<AtomicU64>]>,
}

impl RequestIds {
    fn new() -> Self {
        let mut b = [0u8; 4];
        let _ = getrandom::getrandom(&mut b);
        RequestIds {
            prefix: u32::from_le_bytes(b),
            counts: (0..SLOTS)
                .map(|_| CachePadded::new(AtomicU64::new(1)))
                .collect(),
        }
    }

    fn next(&self) -> RequestId {
        let slot = crate::workers::slot();
        let count = (self.counts.get(slot)).map_or(0, |c| c.fetch_add(1, Ordering::Relaxed));
        let n = count.wrapping_mul(SLOTS as u64).wrapping_add(slot as u64);
        request_id(self.prefix, n)
    }
}

/// `{prefix:08x}-{n:010x}`: one per request, so without the formatting machinery, and
/// into the id itself, so without an allocation. The count's sixteen hex digits are
/// written eight at a time, then the leading zeros past the tenth digit taken out.
fn request_id(prefix: u32, n: u64) -> RequestId {
    let [p0, p1, p2, p3, p4, p5, p6, p7] = hex_digits(prefix);
    let [h0, h1, h2, h3, h4, h5, h6, h7] = hex_digits((n >> 32) as u32);
    let [l0, l1, l2, l3, l4, l5, l6, l7] = hex_digits(n as u32);
    let mut text = [
        p0, p1, p2, p3, p4, p5, p6, p7, b'-', h0, h1, h2, h3, h4, h5, h6, h7, l0, l1, l2, l3, l4,
        l5, l6, l7,
    ];
    // At least ten digits: at most six of the sixteen are leading zeros to drop.
    let zeros = (n.leading_zeros() / 4).min(6) as usize;
    text.copy_within(9 + zeros.., 9);
    RequestId::new(text.get(..text.len() - zeros).unwrap_or_default()).unwrap_or(RequestId::EMPTY)
}

/// One request's id (see [`Runtime::next_request_id`]): eight hex digits, a dash and at
/// most sixteen more (a `u64` counter).
pub type RequestId = crate::guard::fields::ShortText<25>;

/// What a new runtime takes over from the previous one.
mod carry {
    use std::sync::Arc;

    use super::{BuildError, Runtime};
    use crate::config::Settings;
    use crate::guard::rate::{Limiter, PerIpLimiter, RateSpec};
    use crate::guard::replay::ReplayCache;
    use crate::metrics::Metrics;
    use crate::tls::TlsState;

    /// The per-address buckets, when the rate and the table size are unchanged.
    pub fn per_ip(prev: Option<&Runtime>, spec: RateSpec, capacity: usize) -> Arc<PerIpLimiter> {
        prev.filter(|p| {
            p.settings.limits.per_ip_rate == Some(spec)
                && p.settings.limits.max_tracked_ips == capacity
        })
        .and_then(|p| p.per_ip.clone())
        .unwrap_or_else(|| Arc::new(PerIpLimiter::new(spec, capacity)))
    }

    /// A peer's bucket, when its rate is unchanged.
    pub fn peer_limiter(prev: Option<&Runtime>, peer: &str, spec: RateSpec) -> Arc<Limiter> {
        prev.filter(|p| p.settings.peers.get(peer).and_then(|o| o.rate) == Some(spec))
            .and_then(|p| p.peer_limiters.get(peer).cloned())
            .unwrap_or_else(|| Arc::new(Limiter::new(spec)))
    }

    /// A route's bucket, when its rate is unchanged.
    pub fn route_limiter(
        prev: Option<&Runtime>,
        listener: &str,
        path: &str,
        spec: RateSpec,
    ) -> Arc<Limiter> {
        prev.and_then(|p| p.listeners.iter().find(|l| l.name == listener))
            .and_then(|l| l.routes.get(path.as_bytes()))
            .filter(|r| r.cfg.rate == Some(spec))
            .and_then(|r| r.limiter.clone())
            .unwrap_or_else(|| Arc::new(Limiter::new(spec)))
    }

    /// The replay cache: one per state directory for the life of the process, so a
    /// reload never reopens a replay window.
    pub fn replay(prev: Option<&Runtime>, settings: &Settings) -> Option<Arc<ReplayCache>> {
        prev.filter(|p| p.settings.state_dir == settings.state_dir)
            .and_then(|p| p.replay.clone())
    }

    /// Each listener's TLS state, in listener order: the running one re-read (keeping
    /// the last good certificate) when its files are the same, else loaded anew — and
    /// then it must load.
    pub fn tls(
        prev: Option<&Runtime>,
        settings: &Settings,
        metrics: &Metrics,
    ) -> Result<Vec<Option<Arc<TlsState>>>, BuildError> {
        let mut out = Vec::with_capacity(settings.listeners.len());
        for l in &settings.listeners {
            let Some(ts) = &l.tls else {
                out.push(None);
                continue;
            };
            let running = prev
                .and_then(|p| p.listeners.iter().find(|o| o.name == l.name))
                .and_then(|o| o.tls.clone())
                .filter(|st| st.settings() == ts);
            let state = match running {
                Some(st) => {
                    st.reload("SIGHUP");
                    st
                }
                None => TlsState::new(&l.name, ts.clone(), metrics.clone()).map_err(|source| {
                    BuildError::Tls {
                        listener: l.name.clone(),
                        source,
                    }
                })?,
            };
            out.push(Some(state));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_read_as_zero_padded_hex() {
        let cases = [
            (0u32, 0u64),
            (0xdead_beef, 1),
            (7, 0xff_ffff_ffff),
            (u32::MAX, 0x100_0000_0000),
            (1, u64::MAX - 1),
            (0x0123_4567, 0xff_ffff_fffe),
            (0x89ab_cdef, 0x0a_0b0c_0d0e),
        ];
        for (prefix, n) in cases {
            assert_eq!(
                request_id(prefix, n).as_str(),
                format!("{prefix:08x}-{n:010x}")
            );
        }
    }

    /// Every worker counts on its own, and no two threads (workers or not) are given
    /// the same id.
    #[test]
    fn request_ids_never_repeat_across_workers() {
        let ids = Arc::new(RequestIds::new());
        let workers = crate::workers::Workers::start(3).expect("workers start");
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..3 {
            let (ids, tx) = (ids.clone(), tx.clone());
            workers.spawn(move || async move {
                let mine: Vec<String> = (0..1000).map(|_| ids.next().as_str().to_owned()).collect();
                tx.send(mine).expect("the test waits");
            });
        }
        let mut all: Vec<String> = (0..1000).map(|_| ids.next().as_str().to_owned()).collect();
        for _ in 0..3 {
            all.extend(
                rx.recv_timeout(std::time::Duration::from_secs(10))
                    .expect("a worker's ids"),
            );
        }
        let prefix = format!("{:08x}-", ids.prefix);
        assert!(all.iter().all(|id| id.starts_with(&prefix)), "{all:?}");
        let distinct: std::collections::HashSet<&String> = all.iter().collect();
        assert_eq!(distinct.len(), 4000, "an id was given twice");
    }
}
