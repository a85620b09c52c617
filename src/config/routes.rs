//! Listeners and their routes: each route validated in named steps (direction and peer,
//! target, envelope, response, bounds, schema, freshness), every problem at its field path.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::Method;

use super::egress::route_target;
use super::ops::ListenerOps;
use super::raw::RawDuration;
use super::raw::{OneOf, RawListener, RawMethod, RawQuery, RawResponse, RawResponseMode, RawRoute};
use super::settings::{
    FreshOn, Limits, ListenerSettings, Peer, ResponseMode, Route, DEFAULT_FRESH_WINDOW,
};
use super::values::{parse_bytes, parse_duration, rate, secret, socket_addr};
use super::Check;
use crate::envelope::{self, Layer, Stack};
use crate::guard::caller::Callers;
use crate::guard::fresh::Window;
use crate::guard::schema::{Api, Mode as SchemaMode};

/// What routes are checked against.
pub(super) struct Known<'a> {
    /// The peers that validated.
    pub peers: &'a BTreeMap<String, Arc<Peer>>,
    /// Peers that did not: a route naming one is not reported again.
    pub broken: &'a HashSet<String>,
    /// What a route's bounds default to.
    pub limits: &'a Limits,
    /// Resolves relative paths.
    pub base: &'a Path,
}

/// `listeners`: at least one, names and addresses unique.
pub(super) fn listeners(
    check: &mut Check<'_>,
    raw: Vec<RawListener>,
    known: &Known<'_>,
) -> Vec<ListenerSettings> {
    if raw.is_empty() {
        check.err("listeners", "configure at least one listener");
    }
    let mut listeners = Vec::new();
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    for (li, rl) in raw.into_iter().enumerate() {
        let lp = format!("listeners[{li}]");
        if !names.insert(rl.name.clone()) {
            check.err(
                format!("{lp}.name"),
                format!("listener name `{}` is used twice", rl.name),
            );
        }
        let addr = socket_addr(check, &format!("{lp}.listen"), &rl.listen);
        if let Some(a) = addr {
            // Port 0 asks the OS for a free port: two of those never collide.
            if a.port() != 0 && !addrs.insert(a) {
                check.err(
                    format!("{lp}.listen"),
                    format!("{a} is used by another listener"),
                );
            }
        }
        if let Some(l) = listener(check, &lp, rl, addr, known) {
            listeners.push(l);
        }
    }
    listeners
}

/// `listeners[i]`: its routes, callers and operations keys; `None` without an address.
fn listener(
    check: &mut Check<'_>,
    lp: &str,
    rl: RawListener,
    addr: Option<SocketAddr>,
    known: &Known<'_>,
) -> Option<ListenerSettings> {
    let egress = rl.routes.iter().any(|r| r.to.is_some());
    let callers = callers(check, lp, &rl, egress, known.base);
    let mut seen = HashSet::new();
    let mut routes = Vec::new();
    for (ri, rr) in rl.routes.into_iter().enumerate() {
        let rp = format!("{lp}.routes[{ri}]");
        if let Some(r) = route(check, &rp, rr, &mut seen, known) {
            routes.push(Arc::new(r));
        }
    }
    let ops = super::ops::listener(
        check,
        lp,
        rl.tls,
        rl.trusted_proxies,
        rl.proxy_protocol,
        known.base,
    );
    bound_peers_need_client_certificates(check, lp, &ops, &routes);
    Some(ListenerSettings {
        name: rl.name,
        addr: addr?,
        routes,
        tls: ops.tls,
        trusted_proxies: ops.trusted_proxies,
        proxy_protocol: ops.proxy_protocol,
        callers: Arc::new(callers),
    })
}

/// A certificate bound to a peer needs a listener that asks for certificates.
fn bound_peers_need_client_certificates(
    check: &mut Check<'_>,
    lp: &str,
    ops: &ListenerOps,
    routes: &[Arc<Route>],
) {
    if ops.tls.as_ref().is_some_and(|t| t.client_ca.is_some()) {
        return;
    }
    for r in routes.iter().filter(|r| !r.target.is_egress()) {
        if r.peer.client_cert.is_some() {
            check.err(
                format!("{lp}.tls.client_ca"),
                format!(
                    "route {} is from peer `{}`, which binds a client certificate (tls_client): this listener must require client certificates",
                    r.path, r.peer.name
                ),
            );
        }
    }
}

/// A listener's `callers` and `caller_token`: only where it has egress routes.
fn callers(
    check: &mut Check<'_>,
    lp: &str,
    rl: &RawListener,
    egress: bool,
    base: &Path,
) -> Callers {
    let mut callers = Callers::default();
    if !egress {
        for (field, set) in [
            ("callers", rl.callers.is_some()),
            ("caller_token", rl.caller_token.is_some()),
        ] {
            if set {
                check.err(
                    format!("{lp}.{field}"),
                    "only a listener with egress routes (`to:`) has callers",
                );
            }
        }
        return callers;
    }
    if let Some(entries) = &rl.callers {
        callers.nets.clear();
        for (i, e) in entries.iter().enumerate() {
            match Callers::parse_entry(e) {
                Ok(net) => callers.nets.push(net),
                Err(msg) => check.err(format!("{lp}.callers[{i}]"), msg),
            }
        }
        if entries.is_empty() {
            check.err(
                format!("{lp}.callers"),
                "list at least one address or block",
            );
        }
    }
    callers.token = rl
        .caller_token
        .as_ref()
        .and_then(|t| secret(check, &format!("{lp}.caller_token"), t, base));
    callers
}

/// `listeners[i].routes[j]`; `None` when a part it cannot do without is wrong. `seen`:
/// the paths of the listener's routes so far.
fn route(
    check: &mut Check<'_>,
    rp: &str,
    mut rr: RawRoute,
    seen: &mut HashSet<String>,
    known: &Known<'_>,
) -> Option<Route> {
    if !rr.path.starts_with('/') {
        check.err(format!("{rp}.path"), "path must start with /");
    }
    let method = match &rr.method {
        None => Some(Method::POST),
        Some(m) => check
            .known(format!("{rp}.method"), m)
            .map(RawMethod::method),
    };
    if !seen.insert(rr.path.clone()) {
        check.err(
            format!("{rp}.path"),
            format!("path `{}` is configured twice on this listener", rr.path),
        );
    }
    let (peer, egress) = route_peer(check, rp, &rr, known);
    let target = route_target(
        check,
        rp,
        &rr,
        egress,
        peer.as_ref().map(|p| p.url.as_ref()),
    );
    let layers = layers(check, rp, &rr.envelope, peer.as_deref());
    let ip_check = rr.ip_check.unwrap_or(!egress) && !egress;
    if let Some(p) = peer.as_ref().filter(|p| ip_check && p.allow.is_none()) {
        check.err(
            format!("{rp}.ip_check"),
            format!(
                "peer `{}` has no `allow` list; add one, or set `ip_check: false` on this route to accept any address",
                p.name
            ),
        );
    }
    let response = response_mode(check, rp, rr.response.take());
    let (max_body, body_timeout, upstream_timeout) = bounds(check, rp, &rr, known.limits);
    let rate = rate(check, &format!("{rp}.rate"), rr.rate);
    let schema = schema(check, rp, &rr);
    let fresh = freshness(check, rp, &rr, schema.map(|(api, _)| api), known.limits);
    let forward_headers = forward_headers(check, rp, rr.forward_headers.as_deref());
    let query = rr
        .query
        .as_ref()
        .and_then(|q| check.known(format!("{rp}.query"), q));
    // Freshness and replay judge what a peer sent; an egress route has no such input.
    let (window, replay) = if egress {
        (None, false)
    } else {
        (fresh.window, fresh.replay)
    };
    Some(Route {
        path: rr.path,
        method: method?,
        peer: peer?,
        layers: layers?,
        ip_check,
        target: target?,
        response,
        max_body,
        body_timeout,
        upstream_timeout,
        rate,
        fresh: window,
        replay,
        fresh_on: fresh.on,
        schema,
        forward_headers,
        pass_query: query == Some(RawQuery::Pass),
    })
}

/// The route's direction, `from` (ingress) or `to` (egress), and the peer it names.
fn route_peer(
    check: &mut Check<'_>,
    rp: &str,
    rr: &RawRoute,
    known: &Known<'_>,
) -> (Option<Arc<Peer>>, bool) {
    let (name, field, egress) = match (&rr.from, &rr.to) {
        (Some(f), None) => (Some(f), "from", false),
        (None, Some(t)) => (Some(t), "to", true),
        (Some(_), Some(_)) => {
            check.err(
                format!("{rp}.to"),
                "a route has either `from` (ingress) or `to` (egress), not both",
            );
            (None, "from", false)
        }
        (None, None) => {
            check.err(
                format!("{rp}.from"),
                "missing: write `from: PEER` (ingress) or `to: PEER` (egress)",
            );
            (None, "from", false)
        }
    };
    let peer = name.and_then(|n| match known.peers.get(n) {
        Some(p) => Some(p.clone()),
        None if known.broken.contains(n) => None,
        None => {
            check.err(format!("{rp}.{field}"), format!("no peer named `{n}`"));
            None
        }
    });
    (peer, egress)
}

/// `envelope`: known layers, in an order the peer's keys can open. `None` when they are
/// not (always reported here, or, without a peer, at `from`/`to`).
fn layers(
    check: &mut Check<'_>,
    rp: &str,
    raw: &[OneOf<Layer>],
    peer: Option<&Peer>,
) -> Option<Stack> {
    let layers: Vec<Layer> = raw
        .iter()
        .enumerate()
        .filter_map(|(i, l)| check.known(format!("{rp}.envelope[{i}]"), l))
        .collect();
    if layers.len() != raw.len() {
        return None;
    }
    if let Some(p) = peer {
        for problem in envelope::validate_stack(&layers, &p.keys) {
            check.err(format!("{rp}.envelope"), problem);
        }
    }
    Stack::new(&layers).ok()
}

/// `response`: `pass` (default), or `seal` with optional fields around `encData`.
fn response_mode(check: &mut Check<'_>, rp: &str, raw: Option<RawResponse>) -> ResponseMode {
    let Some(r) = raw else {
        return ResponseMode::Pass;
    };
    match check.known(format!("{rp}.response.mode"), &r.mode) {
        Some(RawResponseMode::Pass) if r.wrap.is_some() => {
            check.err(format!("{rp}.response.wrap"), "wrap needs mode: seal");
            ResponseMode::Pass
        }
        Some(RawResponseMode::Pass) | None => ResponseMode::Pass,
        Some(RawResponseMode::Seal) => {
            if r.wrap.as_ref().is_some_and(|w| w.contains_key("encData")) {
                check.err(
                    format!("{rp}.response.wrap"),
                    "encData is added by the sidecar; remove it",
                );
            }
            ResponseMode::Seal { wrap: r.wrap }
        }
    }
}

/// `max_body`, `body_timeout`, `upstream_timeout`: the route's own, or the limits'.
fn bounds(
    check: &mut Check<'_>,
    rp: &str,
    rr: &RawRoute,
    limits: &Limits,
) -> (usize, Duration, Duration) {
    let max_body = match &rr.max_body {
        None => limits.max_body,
        Some(b) => check
            .ok(format!("{rp}.max_body"), parse_bytes(b))
            .unwrap_or(0),
    };
    let mut duration = |field: &str, raw: &Option<RawDuration>, default: Duration| match raw {
        None => default,
        Some(d) => check
            .ok(format!("{rp}.{field}"), parse_duration(d))
            .unwrap_or(Duration::ZERO),
    };
    let body_timeout = duration("body_timeout", &rr.body_timeout, limits.body_read_timeout);
    let upstream_timeout = duration(
        "upstream_timeout",
        &rr.upstream_timeout,
        limits.upstream_response_timeout,
    );
    (max_body, body_timeout, upstream_timeout)
}

/// `schema` and `schema_mode` (enforce by default; only with a schema).
fn schema(check: &mut Check<'_>, rp: &str, rr: &RawRoute) -> Option<(Api, SchemaMode)> {
    let api = rr
        .schema
        .as_ref()
        .and_then(|s| check.known(format!("{rp}.schema"), s));
    let mode = rr
        .schema_mode
        .as_ref()
        .and_then(|m| check.known(format!("{rp}.schema_mode"), m))
        .unwrap_or(SchemaMode::Enforce);
    if rr.schema_mode.is_some() && rr.schema.is_none() {
        check.err(format!("{rp}.schema_mode"), "schema_mode needs a schema");
    }
    api.map(|api| (api, mode))
}

/// What `fresh` and `replay` validate to.
struct Freshness {
    window: Option<Window>,
    replay: bool,
    on: FreshOn,
}

/// `fresh` and `replay`. Every ingress route is protected unless it says `fresh: off`: a
/// JWT route by the token's `iat`/`exp` (each token once), any other by its `ticketNo`
/// (or an API-2 record's `appSubTime`, whose ticket may be days older).
fn freshness(
    check: &mut Check<'_>,
    rp: &str,
    rr: &RawRoute,
    api: Option<Api>,
    limits: &Limits,
) -> Freshness {
    let (default_age, on) = match api {
        Some(Api::Api2) => (Duration::from_secs(24 * 3600), FreshOn::AppSubTime),
        _ => (DEFAULT_FRESH_WINDOW, FreshOn::Ticket),
    };
    let max_age = match &rr.fresh {
        None => Some(default_age),
        Some(RawDuration::Text(t)) if t.trim() == "off" => None,
        Some(d) => match parse_duration(d) {
            Ok(max_age) if !max_age.is_zero() => Some(max_age),
            Ok(_) => {
                check.err(
                    format!("{rp}.fresh"),
                    "window must be longer than 0s (or `off`)",
                );
                None
            }
            Err(e) => {
                check.err(format!("{rp}.fresh"), e);
                None
            }
        },
    };
    let window = max_age.map(|max_age| Window {
        max_age,
        leeway: limits.clock_leeway,
    });
    let replay = rr.replay.unwrap_or(window.is_some());
    if replay && window.is_none() {
        check.err(
            format!("{rp}.replay"),
            "replay protection needs a `fresh` window to bound it",
        );
    }
    Freshness { window, replay, on }
}

/// Headers the sidecar writes itself or that carry credentials — with the hop-by-hop
/// ones (`forward::HOP_BY_HOP`), a route cannot ask for the client's copy of these.
const NEVER_FORWARDED: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "expect",
    "authorization",
    "proxy-authorization",
    "x-passcode",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
    "x-request-id",
    "x-bsk-peer",
    "x-sidecar-token",
];

fn forward_headers(
    check: &mut Check<'_>,
    rp: &str,
    raw: Option<&[String]>,
) -> Vec<http::HeaderName> {
    let mut out = Vec::new();
    for (i, name) in raw.unwrap_or_default().iter().enumerate() {
        let path = format!("{rp}.forward_headers[{i}]");
        match http::HeaderName::from_bytes(name.trim().as_bytes()) {
            // CGI, PHP and WSGI read `X_A` as `X-A`: an underscore name is a spoofing tool.
            Ok(h) if h.as_str().contains('_') => check.err(
                path,
                format!("`{name}` has an underscore, which CGI/PHP read as `-`; not forwarded"),
            ),
            Ok(h)
                if NEVER_FORWARDED.contains(&h.as_str())
                    || crate::forward::is_hop_by_hop(h.as_str().as_bytes()) =>
            {
                check.err(
                    path,
                    format!(
                    "`{name}` is set by the sidecar or carries credentials; it is never forwarded"
                ),
                )
            }
            Ok(h) => out.push(h),
            Err(_) => check.err(path, format!("`{name}` is not a header name")),
        }
    }
    out
}
