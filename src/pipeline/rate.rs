//! Stage 4, rate limits. Before authentication only what an unknown sender may spend: its
//! address's bucket (keyed by prefix, always this replica's own) and the route's. The
//! peer's own budget is charged only once the envelope proves the sender is that peer —
//! so nothing an unauthenticated sender does spends what belongs to an authenticated one.

use super::Ctx;
use crate::error::{RateScope, Reject};
use crate::fleet::{OnRedisDown, Verdict};
use crate::guard::ip::prefix_of;
use crate::guard::rate::{Limiter, RateSpec};
use crate::runtime::{RouteRt, Runtime};

/// The limits that apply before the sender is known: its address (keyed by prefix, so
/// one IPv6 /64 cannot mint fresh buckets; always this replica's own) and the route.
pub(super) async fn before_auth(cx: &Ctx<'_>) -> Result<(), Reject> {
    let (rt, lst, route) = (cx.rt, cx.lst, cx.route);
    if let Some(l) = &rt.per_ip {
        let (v4, v6) = rt.settings.limits.per_ip_prefix;
        l.check(prefix_of(cx.client, v4, v6))
            .map_err(|retry_after| Reject::RateLimited {
                scope: RateScope::ClientIp,
                retry_after,
            })?;
    }
    if let Some(spec) = route.cfg.rate {
        let name = || format!("route:{}:{}", lst.name, route.cfg.path);
        limit(rt, name, spec, route.limiter.as_deref(), RateScope::Route).await?;
    }
    Ok(())
}

/// The peer's own budget, spent only by requests that proved to be that peer. (On an
/// egress route the peer's bucket limits what goes *to* it: crate::egress.)
pub(super) async fn peer(rt: &Runtime, route: &RouteRt) -> Result<(), Reject> {
    let cfg = &route.cfg;
    if let Some(spec) = cfg.peer.rate {
        let local = route.peer_limiter.as_deref();
        let name = || format!("peer:{}", cfg.peer.name);
        limit(rt, name, spec, local, RateScope::Peer).await?;
    }
    Ok(())
}

/// One bucket: the fleet's on Redis when configured, else (or while Redis is down, with
/// `on_redis_down: local`) this process's.
async fn limit(
    rt: &Runtime,
    name: impl FnOnce() -> String,
    spec: RateSpec,
    local: Option<&Limiter>,
    scope: RateScope,
) -> Result<(), Reject> {
    let refused = |retry_after| Reject::RateLimited { scope, retry_after };
    let local_check = || local.map_or(Ok(()), |l| l.check().map_err(refused));
    let Some(fleet) = &rt.fleet else {
        return local_check();
    };
    // Boxed: the Redis exchange's future is several KiB, and every request's future
    // would otherwise keep room for it.
    match Box::pin(fleet.check_rate(&rt.metrics, &name(), spec)).await {
        Ok(Verdict::Admit) => Ok(()),
        Ok(Verdict::Wait(d)) => Err(refused(d)),
        Err(_) => match fleet.settings().on_down {
            OnRedisDown::Local => local_check(),
            OnRedisDown::Open => Ok(()),
            OnRedisDown::Closed => Err(Reject::StateUnavailable("rate_store_unavailable")),
        },
    }
}
