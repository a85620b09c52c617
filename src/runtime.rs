//! The shared, immutable state a running sidecar needs per request: validated settings
//! plus the limiters, route tables and upstream pools built from them once.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::{Peer, Route, Settings};
use crate::forward::Forwarder;
use crate::guard::ip::AllowList;
use crate::guard::rate::{Limiter, PerIpLimiter};
use crate::guard::replay::ReplayCache;
use crate::metrics::Metrics;
use crate::tls::TlsState;

/// A route with its own limiter.
pub struct RouteRt {
    pub cfg: Arc<Route>,
    pub limiter: Option<Arc<Limiter>>,
}

/// A listener's routes by exact path.
pub struct ListenerRt {
    pub name: String,
    pub addr: SocketAddr,
    pub routes: HashMap<String, RouteRt>,
    /// Checked before a byte is read, when every route on this listener checks addresses.
    pub accept_allow: Option<AllowList>,
    /// HTTPS: the current certificate, carried across config reloads.
    pub tls: Option<Arc<TlsState>>,
    /// Who may push on the egress routes (`callers`, `caller_token`).
    pub callers: Arc<crate::guard::caller::Callers>,
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
    /// The wall clock every time-based decision on the request path reads.
    pub clock: crate::clock::Clock,
    request_ids: RequestIds,
}

impl Runtime {
    /// Builds the runtime; fails only when the replay journal in the state directory
    /// cannot be opened, or a listener's certificate does not load.
    pub fn new(settings: Settings, metrics: Metrics) -> io::Result<Arc<Runtime>> {
        Self::build(settings, metrics, None)
    }

    /// The runtime for a reloaded config. What did not change carries over from `prev`
    /// (see [`crate::reload`]): the replay cache, rate-limit buckets, certificates.
    pub fn reloaded(settings: Settings, prev: &Runtime) -> io::Result<Arc<Runtime>> {
        Self::build(settings, prev.metrics.clone(), Some(prev))
    }

    fn build(
        settings: Settings,
        metrics: Metrics,
        prev: Option<&Runtime>,
    ) -> io::Result<Arc<Runtime>> {
        use crate::reload::carry;
        let limits = &settings.limits;
        let per_ip = limits
            .per_ip_rate
            .map(|spec| carry::per_ip(prev, spec, limits.max_tracked_ips));
        // With a fleet, the local peer and route buckets are only the fallback while Redis
        // is unreachable (`on_redis_down: local`): each replica's share of the rate.
        let local = |spec: crate::guard::rate::RateSpec| match &settings.redis {
            Some(r) => spec.divided(r.replicas),
            None => spec,
        };
        let peer_limiters = settings
            .peers
            .iter()
            .filter_map(|(name, p): (&String, &Arc<Peer>)| {
                p.rate
                    .map(|r| (name.clone(), carry::peer_limiter(prev, name, local(r))))
            })
            .collect();
        let fleet = match &settings.redis {
            None => None,
            Some(r) => Some(match prev.and_then(|p| p.fleet.clone()) {
                Some(f) if f.settings().url == r.url && f.settings().prefix == r.prefix => f,
                _ => Arc::new(
                    crate::fleet::Fleet::new(r.clone())
                        .map_err(|e| io::Error::other(format!("state.backend.redis: {e}")))?,
                ),
            }),
        };
        let tls = carry::tls(prev, &settings, &metrics)?;
        let forwarder = Forwarder::new(
            settings
                .listeners
                .iter()
                .flat_map(|l| l.routes.iter().filter_map(|r| r.upstream())),
            limits.upstream_connect_timeout,
            limits.max_upstream_response,
            limits.max_in_flight,
        );
        let listeners = settings
            .listeners
            .iter()
            .zip(tls)
            .map(|(l, tls)| ListenerRt {
                name: l.name.clone(),
                addr: l.addr,
                accept_allow: l.accept_allowlist(),
                tls,
                callers: l.callers.clone(),
                routes: l
                    .routes
                    .iter()
                    .map(|r| {
                        (
                            r.path.clone(),
                            RouteRt {
                                cfg: r.clone(),
                                limiter: r.rate.map(|spec| {
                                    carry::route_limiter(prev, &l.name, &r.path, local(spec))
                                }),
                            },
                        )
                    })
                    .collect(),
            })
            .collect();
        let wants_replay = settings.redis.is_none()
            && settings
                .listeners
                .iter()
                .flat_map(|l| &l.routes)
                .any(|r| r.replay);
        let clock = prev.map_or_else(crate::clock::Clock::system, |p| p.clock.clone());
        let replay = if let Some(kept) = carry::replay(prev, &settings).filter(|_| wants_replay) {
            Some(kept)
        } else if wants_replay {
            let now = clock.unix_secs();
            Some(Arc::new(
                ReplayCache::open(&settings.state_dir, settings.limits.max_replay_entries, now)
                    .map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("replay journal in {}: {e}", settings.state_dir.display()),
                        )
                    })?,
            ))
        } else {
            None
        };
        // Egress: the outbox store (shared with a previous runtime after a reload), peer
        // clients, and the delivery tasks (started here when running inside tokio).
        let egress = crate::egress::Egress::new(&settings, clock.clone())
            .map_err(|e| io::Error::other(e.to_string()))?
            .map(Arc::new);
        if let (Some(e), Ok(_)) = (&egress, tokio::runtime::Handle::try_current()) {
            e.start(&settings, &metrics);
        }
        Ok(Arc::new(Runtime {
            egress,
            metrics,
            replay,
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

    pub fn next_request_id(&self) -> String {
        self.request_ids.next()
    }
}

/// Request ids: a random per-process prefix and a counter — unique, cheap, and not a
/// clock reading a caller could use.
struct RequestIds {
    prefix: u32,
    counter: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let mut b = [0u8; 4];
        let _ = getrandom::getrandom(&mut b);
        RequestIds {
            prefix: u32::from_le_bytes(b),
            counter: AtomicU64::new(1),
        }
    }

    fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}-{:010x}", self.prefix, n)
    }
}
