//! Stages 2 and 3: the route (exact path, then method — 404 / 405; everything later is
//! per route), who may use it, and the allowlist.
//!
//! An egress route admits only its listener's `callers` (403 `caller_denied`); an ingress
//! route on mTLS only its peer's bound certificate (403 `client_cert_denied`); then the
//! peer's own networks (unless the route sets `ip_check: false`), even when the listener
//! already checked the union of its peers' lists at accept.

use http::Method;

use super::access::Trace;
use super::Ctx;
use crate::error::Reject;
use crate::guard::caller::TOKEN_HEADER;
use crate::guard::client_cert::PresentedCert;
use crate::pipeline::{Fields, Target};
use crate::runtime::{ListenerRt, RouteRt};

/// The route for the request's path and method.
pub(super) fn select<'a>(
    lst: &'a ListenerRt,
    method: &Method,
    target: &Target,
    trace: &mut Trace<'a>,
) -> Result<&'a RouteRt, Reject> {
    let route = lst.routes.get(target.path()).ok_or(Reject::NotFound)?;
    let cfg = &route.cfg;
    trace.route = Some(route);
    if *method != cfg.method {
        return Err(Reject::MethodNotAllowed {
            allow: method_str(&cfg.method),
        });
    }
    Ok(route)
}

/// Whether `client` may use `route`: callers, client certificate, allowlist.
pub(super) fn admit(
    cx: &Ctx<'_>,
    fields: &Fields,
    presented: Option<&PresentedCert>,
) -> Result<(), Reject> {
    let (cfg, client) = (&cx.route.cfg, cx.client);
    // Callers: only the listener's application may make the sidecar sign for a peer.
    if cfg.target.is_egress() {
        cx.lst.callers.check(client, fields.get(&TOKEN_HEADER))?;
    }
    // Client certificate: on mTLS, only the certificate bound to this peer (`tls_client`).
    if let (Some(binding), false) = (&cfg.peer.client_cert, cfg.target.is_egress()) {
        binding.check(presented)?;
    }
    // Allowlist: the peer's own networks.
    if cfg.ip_check {
        let allowed = (cfg.peer.allow.as_ref()).is_some_and(|a| a.contains(client, &cx.rt.names));
        if !allowed {
            return Err(Reject::IpDenied);
        }
    }
    Ok(())
}

fn method_str(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::PUT => "PUT",
        _ => "POST",
    }
}
