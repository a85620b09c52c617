//! The ingress pipeline: the one place the order of checks is decided.
//!
//! Cheapest rejection first, and nothing reaches the upstream unless every stage passed:
//!
//! 1. in-flight cap — a saturated sidecar answers 503 before doing any work;
//! 2. route — exact path, then method (404 / 405); everything later is per route;
//!    an egress route then admits only its listener's `callers` (403 `caller_denied`),
//!    an ingress route on mTLS only its peer's bound certificate (403 `client_cert_denied`);
//! 3. allowlist — the peer's networks (unless the route sets `ip_check: false`);
//! 4. rate limits — per client address, per peer, per route (429 with `Retry-After`);
//! 5. body — content type fits the envelope, size limit (413), read deadline (408);
//! 6. envelope — the route's layers, outermost first (passcode, JWT, AES);
//! 7. JSON bounds — depth, values, string length, before anything builds a tree;
//! 8. freshness and replay — only on authenticated content, so a forger cannot fill the
//!    replay cache; a request seen before answers 409;
//! 9. schema — the API's field table (enforce: 400 with the fields; warn: forward);
//! 10. forward — the opened JSON bytes, unchanged, with clean headers (502 / 504);
//! 11. respond — the application's answer as is, or sealed for the caller.
//!
//! (Accept-time checks — listener allowlist and connection caps, then the PROXY header
//! and the TLS handshake — run in [`crate::server`] before HTTP is parsed at all. The
//! `client` every stage sees is the socket's peer, or the address a trusted proxy named:
//! see [`crate::guard::proxy`].)

use std::convert::Infallible;
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use futures_util::FutureExt;
use prometheus::IntGauge;

use crate::config::{Remote, ResponseMode, Target};
use crate::envelope::{self, BodyShape, Failure, Incoming as Sealed, Layer};
use crate::error::{Fault, RateScope, Reject};
use crate::guard::client_cert::PresentedCert;
use crate::guard::schema::{self, Mode as SchemaMode};
use crate::runtime::{ListenerRt, RouteRt, Runtime};

mod headers;
mod replay;

pub use headers::DEFAULT_FORWARDED;

/// What the log line and metrics learn about a request as it goes.
#[derive(Default)]
struct Trace {
    route: Option<String>,
    peer: Option<String>,
    userid: Option<String>,
    ticket_no: Option<String>,
    upstream_status: Option<u16>,
}

/// Counts requests inside the pipeline; a guard releases the slot on every exit path.
pub struct InFlight {
    count: AtomicUsize,
}

impl InFlight {
    pub const fn new() -> Self {
        InFlight {
            count: AtomicUsize::new(0),
        }
    }

    /// Takes a slot (and counts it in `gauge`), or `None` when `max` are taken. Dropping
    /// the slot — on return, error or panic — gives both back.
    fn enter<'a>(&'a self, max: usize, gauge: &'a IntGauge) -> Option<Slot<'a>> {
        if self.count.fetch_add(1, Ordering::Relaxed) >= max {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        gauge.inc();
        Some(Slot {
            in_flight: self,
            gauge,
        })
    }
}

impl Default for InFlight {
    fn default() -> Self {
        Self::new()
    }
}

struct Slot<'a> {
    in_flight: &'a InFlight,
    gauge: &'a IntGauge,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.gauge.dec();
        self.in_flight.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one request on listener `listener` from `client`. Never fails: every error
/// becomes its JSON answer here — a panic too (a bug: the caller gets a JSON 500, the log
/// a line without the payload, and the in-flight count, gauges and replay record unwind).
pub async fn handle(
    rt: Arc<Runtime>,
    in_flight: Arc<InFlight>,
    listener: usize,
    client: IpAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let start = Instant::now();
    let request_id = rt.next_request_id();
    let Some(lst) = rt.listeners.get(listener) else {
        return Ok(Reject::Internal.to_response(&request_id));
    };
    let mut trace = Trace::default();

    let result = match in_flight.enter(rt.settings.limits.max_in_flight, &rt.metrics.in_flight) {
        None => Err(Reject::Overloaded),
        Some(_slot) => {
            let stages = AssertUnwindSafe(run(&rt, lst, client, req, &request_id, &mut trace));
            match stages.catch_unwind().await {
                Ok(r) => r,
                Err(_) => {
                    tracing::error!(
                        target: "bsk_sidecar::access",
                        request_id = %request_id,
                        listener = %lst.name,
                        "request task panicked; answered 500, nothing of it kept"
                    );
                    Err(Reject::Internal)
                }
            }
        }
    };
    Ok(finish(&rt, lst, client, &request_id, &trace, start, result))
}

/// The access log line and the request metrics, then the response.
fn finish(
    rt: &Runtime,
    lst: &ListenerRt,
    client: IpAddr,
    request_id: &str,
    trace: &Trace,
    start: Instant,
    result: Result<Response<Full<Bytes>>, Reject>,
) -> Response<Full<Bytes>> {
    let route_label = trace.route.as_deref().unwrap_or("unmatched");
    let peer_label = trace.peer.as_deref().unwrap_or("none");
    let elapsed = start.elapsed();
    rt.metrics
        .request_seconds
        .with_label_values(&[&lst.name, route_label])
        .observe(elapsed.as_secs_f64());
    match result {
        Ok(resp) => {
            rt.metrics
                .requests
                .with_label_values(&[&lst.name, route_label, peer_label, "forwarded"])
                .inc();
            tracing::info!(
                target: "bsk_sidecar::access",
                request_id = %request_id,
                listener = %lst.name,
                route = route_label,
                peer = peer_label,
                status = resp.status().as_u16(),
                upstream_status = trace.upstream_status,
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                userid = trace.userid.as_deref(),
                ticket_no = trace.ticket_no.as_deref(),
                "forwarded"
            );
            resp
        }
        Err(reject) => {
            let outcome = match reject.fault() {
                Fault::Upstream => "upstream_error",
                Fault::Downstream | Fault::Internal => "rejected",
            };
            rt.metrics
                .requests
                .with_label_values(&[&lst.name, route_label, peer_label, outcome])
                .inc();
            // The public reason: metrics are readable by more people than logs, and the
            // precise AES failure would make them a padding oracle.
            rt.metrics
                .rejections
                .with_label_values(&[&lst.name, route_label, reject.public_reason()])
                .inc();
            let resp = reject.to_response(request_id);
            macro_rules! log_reject {
                ($level:ident) => {
                    tracing::$level!(
                        target: "bsk_sidecar::access",
                        request_id = %request_id,
                        listener = %lst.name,
                        route = route_label,
                        peer = peer_label,
                        client = %client,
                        status = resp.status().as_u16(),
                        reason = reject.reason(),
                        detail = %reject,
                        latency_ms = elapsed.as_secs_f64() * 1000.0,
                        userid = trace.userid.as_deref(),
                        ticket_no = trace.ticket_no.as_deref(),
                        "rejected"
                    )
                };
            }
            match reject.fault() {
                Fault::Downstream => log_reject!(info),
                Fault::Upstream | Fault::Internal => log_reject!(warn),
            }
            resp
        }
    }
}

/// The stages, in order. Each `?` is a place a request can be refused.
async fn run(
    rt: &Runtime,
    lst: &ListenerRt,
    client: IpAddr,
    req: Request<Incoming>,
    request_id: &str,
    trace: &mut Trace,
) -> Result<Response<Full<Bytes>>, Reject> {
    // Route: exact path match, then the method.
    let route = lst.routes.get(req.uri().path()).ok_or(Reject::NotFound)?;
    let cfg = &route.cfg;
    trace.route = Some(cfg.path.clone());
    trace.peer = Some(cfg.peer.name.clone());
    if req.method() != cfg.method {
        return Err(Reject::MethodNotAllowed {
            allow: method_str(&cfg.method),
        });
    }

    // Callers: only the listener's application may make the sidecar sign for a peer.
    if cfg.target.is_egress() {
        let token = req.headers().get(crate::guard::caller::TOKEN_HEADER);
        lst.callers.check(client, token.map(|v| v.as_bytes()))?;
    }

    // Client certificate: on mTLS, only the certificate bound to this peer (`tls_client`).
    if let (Some(binding), false) = (&cfg.peer.client_cert, cfg.target.is_egress()) {
        let presented = req.extensions().get::<Arc<PresentedCert>>();
        binding.check(presented.map(|c| &**c))?;
    }

    // Allowlist: the peer's own networks, even when the listener checked a union at accept.
    if cfg.ip_check {
        let allowed = cfg.peer.allow.as_ref().is_some_and(|a| a.contains(client));
        if !allowed {
            return Err(Reject::IpDenied);
        }
    }

    // Rate limits before authentication: per client address (prefix), then per route. The
    // peer's own budget is charged only once the envelope proves the sender is that peer.
    rate_limit_unauthenticated(rt, lst, route, client).await?;

    // Head: ambiguous or compressed requests are refused before the body is read.
    headers::check_request(req.headers())?;

    // Body: content type, size, deadline.
    let (parts, body) = req.into_parts();
    let content_type = parts.headers.get(header::CONTENT_TYPE);
    if cfg.target.is_egress() {
        check_plain_json_type(content_type)?;
    } else {
        check_content_type(&cfg.layers, content_type)?;
    }
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > cfg.max_body as u64 {
            return Err(Reject::BodyTooLarge);
        }
    }
    let body =
        match tokio::time::timeout(cfg.body_timeout, Limited::new(body, cfg.max_body).collect())
            .await
        {
            Err(_) => return Err(Reject::BodyTimeout),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(Reject::BodyTooLarge)
            }
            Ok(Err(_)) => return Err(Reject::BodyUnreadable),
            Ok(Ok(c)) => c.to_bytes(),
        };

    // Egress: the local application's plain JSON, sealed and sent to the peer instead of
    // opened (crate::egress).
    if let Target::Remote(remote) = &cfg.target {
        return egress_push(rt, cfg, remote, body, request_id, trace).await;
    }

    // Envelope: the route's layers, outermost first; every JSON a layer hands on passes
    // the one payload validator (UTF-8, one object or array, no repeated key, bounded).
    let header_str = |name: &HeaderName| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let sealed = Sealed {
        content_type: header_str(&header::CONTENT_TYPE),
        authorization: header_str(&header::AUTHORIZATION),
        passcode_header: parts
            .headers
            .get("x-passcode")
            .and_then(|v| v.to_str().ok()),
        body: &body,
    };
    let now = rt.clock.unix_secs();
    let opened = envelope::open_checked(
        &cfg.layers,
        &cfg.peer.keys,
        &sealed,
        now,
        &rt.settings.limits.json,
    )?;
    let shape = opened.shape;

    // Authenticated: now the peer's own budget is spent.
    rate_limit_peer(rt, cfg).await?;

    let ids = ids_of(&opened.plain);
    trace.userid = ids.userid.clone();
    trace.ticket_no = ids.ticket_no.clone();

    // Lifetime, freshness and replay: on what the peer really signed or encrypted.
    replay::check_lifetime(cfg, &opened, now, rt.settings.limits.clock_leeway)?;
    let reservation = match replay::admit(cfg, &opened, &ids, now)? {
        Some((key, expiry)) => Some(replay::hold(rt, key, now, expiry).await?),
        None => None,
    };

    // Schema: the API's field table, never rewriting the payload.
    if let Some((api, mode)) = cfg.schema {
        if let Err(problems) = schema::check(api, &opened.plain) {
            for p in &problems {
                rt.metrics
                    .schema_violations
                    .with_label_values(&[&lst.name, &cfg.path, p.field, mode_name(mode)])
                    .inc();
            }
            match mode {
                // Dropping the reservation forgets the replay record: a corrected retry of
                // the same ticket is not a replay.
                SchemaMode::Enforce => {
                    return Err(Reject::Schema {
                        api: api.name(),
                        problems,
                    });
                }
                SchemaMode::Warn => {
                    let fields: Vec<&str> = problems.iter().map(|p| p.field).collect();
                    tracing::warn!(request_id, route = %cfg.path, api = api.name(), fields = ?fields, "payload does not match the schema; forwarded (warn mode)");
                }
            }
        }
    }
    let plain = Bytes::from(opened.plain);

    // API-7 routes are answered from the egress journal, then sealed like any answer.
    let upstream = match &cfg.target {
        Target::Upstream(u) => u,
        Target::Journal => {
            let egress = rt.egress.as_ref().ok_or(Reject::Internal)?;
            let answer = crate::egress::serve_journal(egress, cfg, &plain).await?;
            if let Some(r) = reservation {
                r.keep();
            }
            trace.upstream_status = Some(answer.status().as_u16());
            return respond(cfg, shape, answer, request_id, &rt.clock);
        }
        Target::Remote(_) => return Err(Reject::Internal),
    };

    // Forward: the opened bytes unchanged, with the allowed headers only.
    let upstream_req = headers::upstream_request(cfg, upstream, &parts, client, request_id, plain)?;
    let up_start = Instant::now();
    let sent = rt
        .forwarder
        .send(upstream, upstream_req, cfg.upstream_timeout)
        .await;
    rt.metrics
        .upstream_seconds
        .with_label_values(&[&lst.name, &cfg.path])
        .observe(up_start.elapsed().as_secs_f64());
    let upstream_resp = sent.map_err(|e| {
        tracing::debug!(request_id, error = %e, "upstream failed");
        Reject::from(e)
    });
    // Never delivered: the peer's retry must not be refused as a replay. Anything else
    // (an answer, a timeout) may have reached the application: the record stays.
    if let Some(r) = reservation {
        if !matches!(upstream_resp, Err(Reject::UpstreamUnavailable)) {
            r.keep();
        }
    }
    let upstream_resp = upstream_resp?;
    trace.upstream_status = Some(upstream_resp.status().as_u16());

    // Respond: as the application answered, or sealed for the caller.
    respond(cfg, shape, upstream_resp, request_id, &rt.clock)
}

/// An egress route's request: the application's JSON (bounded like any payload) handed
/// to [`crate::egress::push`] for its route's delivery mode.
async fn egress_push(
    rt: &Runtime,
    cfg: &crate::config::Route,
    remote: &Remote,
    body: Bytes,
    request_id: &str,
    trace: &mut Trace,
) -> Result<Response<Full<Bytes>>, Reject> {
    let egress = rt.egress.as_ref().ok_or(Reject::Internal)?;
    rt.settings.limits.json.check(&body)?;
    let ids = ids_of(&body);
    trace.userid = ids.userid;
    trace.ticket_no = ids.ticket_no;
    let (resp, outcome) =
        crate::egress::push(egress, &rt.metrics, cfg, remote, body, request_id).await?;
    trace.upstream_status = outcome.peer_status;
    Ok(resp)
}

/// The application talks plain JSON to an egress route (a missing type is tolerated).
fn check_plain_json_type(ct: Option<&HeaderValue>) -> Result<(), Reject> {
    match mime_of(ct)? {
        None => Ok(()),
        Some(mime) if matches!(mime.as_str(), "application/json" | "text/plain") => Ok(()),
        Some(_) => Err(Reject::UnsupportedMediaType),
    }
}

/// The media type of a `Content-Type` header, lower-cased, without parameters.
// Not the `mime` crate: only the essence is compared against short allowlists, and a
// header it would refuse to parse must still pass on routes that take any type.
fn mime_of(ct: Option<&HeaderValue>) -> Result<Option<String>, Reject> {
    let Some(ct) = ct else { return Ok(None) };
    let mime = ct
        .to_str()
        .map_err(|_| Reject::UnsupportedMediaType)?
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    Ok(Some(mime))
}

fn mode_name(mode: SchemaMode) -> &'static str {
    match mode {
        SchemaMode::Enforce => "enforce",
        SchemaMode::Warn => "warn",
    }
}

/// The limits that apply before the sender is known: its address (keyed by prefix, so
/// one IPv6 /64 cannot mint fresh buckets; always this replica's own) and the route.
async fn rate_limit_unauthenticated(
    rt: &Runtime,
    lst: &ListenerRt,
    route: &RouteRt,
    client: IpAddr,
) -> Result<(), Reject> {
    if let Some(l) = &rt.per_ip {
        let (v4, v6) = rt.settings.limits.per_ip_prefix;
        l.check(crate::guard::ip::prefix_of(client, v4, v6))
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
async fn rate_limit_peer(rt: &Runtime, cfg: &crate::config::Route) -> Result<(), Reject> {
    if let Some(spec) = cfg.peer.rate {
        let local = rt.peer_limiters.get(&cfg.peer.name).map(|l| &**l);
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
    spec: crate::guard::rate::RateSpec,
    local: Option<&crate::guard::rate::Limiter>,
    scope: RateScope,
) -> Result<(), Reject> {
    let refused = |retry_after| Reject::RateLimited { scope, retry_after };
    let local_check = || local.map_or(Ok(()), |l| l.check().map_err(refused));
    let Some(fleet) = &rt.fleet else {
        return local_check();
    };
    match fleet.check_rate(&rt.metrics, &name(), spec).await {
        Ok(crate::fleet::Verdict::Admit) => Ok(()),
        Ok(crate::fleet::Verdict::Wait(d)) => Err(refused(d)),
        Err(_) => match fleet.settings().on_down {
            crate::fleet::OnRedisDown::Local => local_check(),
            crate::fleet::OnRedisDown::Open => Ok(()),
            crate::fleet::OnRedisDown::Closed => {
                Err(Reject::StateUnavailable("rate_store_unavailable"))
            }
        },
    }
}

fn method_str(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::PUT => "PUT",
        _ => "POST",
    }
}

/// Form envelopes come urlencoded or as JSON; token envelopes as JSON. A missing content
/// type is tolerated (many legacy senders omit it) and the layer decides from the body.
fn check_content_type(layers: &[Layer], ct: Option<&HeaderValue>) -> Result<(), Reject> {
    let Some(mime) = mime_of(ct)? else {
        return Ok(());
    };
    let ok = match layers.first() {
        Some(Layer::Form) => matches!(
            mime.as_str(),
            "application/x-www-form-urlencoded" | "application/json"
        ),
        Some(Layer::Token) => matches!(mime.as_str(), "application/json" | "text/plain"),
        Some(Layer::Aes) | Some(Layer::Jwt) => {
            matches!(
                mime.as_str(),
                "text/plain" | "application/json" | "application/octet-stream"
            )
        }
        Some(Layer::Bearer | Layer::Passcode) | None => true,
    };
    if ok {
        Ok(())
    } else {
        Err(Reject::UnsupportedMediaType)
    }
}

/// The identifying fields of an opened payload (any documented spelling), as written.
#[derive(Debug, Default, PartialEq, Eq)]
struct PayloadIds {
    userid: Option<String>,
    ticket_no: Option<String>,
    app_sub_time: Option<String>,
    application_status: Option<String>,
}

fn ids_of(plain: &[u8]) -> PayloadIds {
    use crate::guard::fields::{self, Object};
    use serde_json::value::RawValue;
    let clean = |v: &RawValue| {
        let s = v.get().trim_matches('"').trim();
        // Only short digit strings: an id, never a free-text field smuggled into the log.
        (!s.is_empty() && s.len() <= 24 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.to_string())
    };
    let Some(obj) = Object::parse(plain) else {
        return PayloadIds::default();
    };
    // A field given twice (under one spelling or two) leaves every id unknown.
    let id = |names: &[&str]| obj.one(names).map(|v| v.and_then(clean));
    let ids = || {
        Ok::<_, fields::Ambiguous>(PayloadIds {
            userid: id(fields::USERID)?,
            ticket_no: id(fields::TICKET_NO)?,
            app_sub_time: id(fields::APP_SUB_TIME)?,
            application_status: id(fields::APPLICATION_STATUS)?,
        })
    };
    ids().unwrap_or_default()
}

fn respond(
    cfg: &crate::config::Route,
    shape: BodyShape,
    upstream: Response<Bytes>,
    request_id: &str,
    clock: &crate::clock::Clock,
) -> Result<Response<Full<Bytes>>, Reject> {
    let (parts, body) = upstream.into_parts();
    let extra_hop = headers::connection_listed(&parts.headers);
    let (body, content_type) = match &cfg.response {
        ResponseMode::Pass => (body, None),
        ResponseMode::Seal { wrap } => {
            let (b, ct) = seal_response(cfg, shape, &body, wrap.as_ref(), clock)?;
            (b, Some(ct))
        }
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = parts.status;
    let headers = resp.headers_mut();
    for (name, value) in &parts.headers {
        if !headers::is_hop_by_hop(name) && !extra_hop.iter().any(|h| h == name.as_str()) {
            if content_type.is_some() && name == header::CONTENT_TYPE {
                continue;
            }
            headers.append(name.clone(), value.clone());
        }
    }
    if let Some(ct) = content_type {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", v);
    }
    Ok(resp)
}

/// Seals the application's JSON answer with the route's layers. With `wrap`, the inner
/// layers' output goes in `encData` of a JSON object carrying the wrap fields.
fn seal_response(
    cfg: &crate::config::Route,
    shape: BodyShape,
    body: &Bytes,
    wrap: Option<&serde_json::Map<String, serde_json::Value>>,
    clock: &crate::clock::Clock,
) -> Result<(Bytes, &'static str), Reject> {
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
        return Err(Reject::UpstreamBadResponse);
    }
    let keys = &cfg.peer.keys;
    // `jwt.sign_exp`: a peer that requires `exp` gets it in what we seal for it.
    let now = clock.unix_secs();
    let times = cfg.peer.sign_exp.map(|ttl| (now, now + ttl.as_secs()));
    let sealing_failed = |e: Failure| {
        tracing::error!(error = %e, "sealing the response failed");
        Reject::Internal
    };
    let outer_framing = matches!(
        cfg.layers.first(),
        Some(Layer::Form | Layer::Token | Layer::Bearer)
    );
    if let Some(wrap) = wrap {
        let inner = if outer_framing {
            cfg.layers.get(1..).unwrap_or_default()
        } else {
            &cfg.layers
        };
        let sealed = envelope::seal_timed(inner, keys, body, BodyShape::Json, times)
            .map_err(sealing_failed)?;
        let enc = String::from_utf8(sealed.body).map_err(|_| Reject::Internal)?;
        let mut obj = wrap.clone();
        obj.insert("encData".into(), serde_json::Value::String(enc));
        return Ok((
            Bytes::from(serde_json::Value::Object(obj).to_string()),
            "application/json",
        ));
    }
    if cfg.layers.first() == Some(&Layer::Bearer) {
        // A bearer token cannot travel in a response header the caller reads; send it as JSON.
        let inner = cfg.layers.get(1..).unwrap_or_default();
        let sealed = envelope::seal_timed(inner, keys, body, BodyShape::Json, times)
            .map_err(sealing_failed)?;
        let token = String::from_utf8(sealed.body).map_err(|_| Reject::Internal)?;
        let v = serde_json::json!({ "token": token });
        return Ok((Bytes::from(v.to_string()), "application/json"));
    }
    let sealed =
        envelope::seal_timed(&cfg.layers, keys, body, shape, times).map_err(sealing_failed)?;
    Ok((Bytes::from(sealed.body), sealed.content_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_keep_17_digit_ticket_exactly_and_accept_aliases() {
        let ids = ids_of(br#"{"userId":"8527419636","ticketno":20221202153322882,"name":"X"}"#);
        assert_eq!(ids.userid.as_deref(), Some("8527419636"));
        assert_eq!(ids.ticket_no.as_deref(), Some("20221202153322882"));
        let ids = ids_of(
            br#"{"userid":9054233544,"tokenNo":"20220811130723"," appSubTime ":20220811052025,"applicationStatus":3}"#,
        );
        assert_eq!(ids.userid.as_deref(), Some("9054233544"));
        assert_eq!(ids.ticket_no.as_deref(), Some("20220811130723"));
        assert_eq!(ids.app_sub_time.as_deref(), Some("20220811052025"));
        assert_eq!(ids.application_status.as_deref(), Some("3"));
    }

    #[test]
    fn ids_never_carry_free_text() {
        let ids = ids_of(br#"{"userid":"Anupam Ghosh","ticketNo":"x\ny"}"#);
        assert_eq!(ids, PayloadIds::default());
    }

    #[test]
    fn content_type_must_fit_the_envelope() {
        let form = [Layer::Form, Layer::Aes];
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert!(check_content_type(
            &form,
            Some(&v("application/x-www-form-urlencoded; charset=UTF-8"))
        )
        .is_ok());
        assert!(check_content_type(&form, Some(&v("application/json"))).is_ok());
        assert!(check_content_type(&form, None).is_ok());
        assert!(check_content_type(&form, Some(&v("multipart/form-data; boundary=x"))).is_err());
        let token = [Layer::Token, Layer::Jwt];
        assert!(check_content_type(&token, Some(&v("application/x-www-form-urlencoded"))).is_err());
    }
}
