//! The admin listener: `/` the status page for a person ([`crate::status`]), `/metrics`
//! for Prometheus, `/healthz` (the process is up) and
//! `/readyz` (listeners are serving and not draining), and the outbox's operator
//! endpoints (`/outbox`, see [`crate::egress::ops`]). Loopback by default.
//!
//! Every request passes [`AdminAccess::check`] first (no `Origin`, a `Host` naming this
//! listener or loopback, and the `admin.token` except for the health probes), and at most
//! `admin.max_connections` connections are served at once.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::error::{json_response, Reject};
use crate::guard::admin_access::{AdminAccess, Refusal};
use crate::runtime::Runtime;
use crate::status::History;

pub async fn serve(
    rt: Arc<Runtime>,
    listener: TcpListener,
    ready: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) {
    if let Ok(addr) = listener.local_addr() {
        let access = &rt.settings.admin_access;
        tracing::info!(
            %addr,
            token = access.token.is_some(),
            metrics = access.metrics.name(),
            "admin listening"
        );
        if access.token.is_none() {
            tracing::warn!("admin.token is not configured: the /outbox endpoints answer 403");
        }
    }
    // The status page's recent figures: counters sampled while the admin listener runs.
    let history = Arc::new(History::default());
    let sampler = tokio::spawn(crate::status::run_sampler(
        rt.metrics.clone(),
        history.clone(),
    ));
    let slots = Arc::new(Semaphore::new(rt.settings.admin_access.max_connections));
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            _ = stop.changed() => {
                sampler.abort();
                break;
            }
        };
        // Over the cap, the connection is closed unanswered: operators need a handful.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("admin connection refused: admin.max_connections reached");
            continue;
        };
        // The names this connection may use in `Host`: as configured and as accepted.
        let mut names = Vec::with_capacity(2);
        names.extend(rt.settings.admin);
        names.extend(stream.local_addr().ok());
        let rt = rt.clone();
        let ready = ready.clone();
        let history = history.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let names: Arc<[std::net::SocketAddr]> = names.into();
            let svc = service_fn(move |req| {
                let rt = rt.clone();
                let ready = ready.clone();
                let names = names.clone();
                let history = history.clone();
                async move {
                    let access = &rt.settings.admin_access;
                    if let Err(refusal) = access.check(&names, req.uri().path(), req.headers()) {
                        return Ok::<_, Infallible>(refused(access, refusal));
                    }
                    // The outbox's operator endpoints (a running sidecar holds the store).
                    let store = rt.egress.as_ref().map(|e| &e.store);
                    let path = req.uri().path();
                    if let Some(r) =
                        crate::egress::ops::admin(store, req.method(), path, &rt.clock).await
                    {
                        return Ok::<_, Infallible>(r);
                    }
                    Ok::<_, Infallible>(answer(&rt, &history, &ready, &req))
                }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The JSON answer to a refused admin request (a 401 asks the browser for the token).
fn refused(access: &AdminAccess, refusal: Refusal) -> Response<Full<Bytes>> {
    tracing::info!(
        reason = refusal.reason(),
        token = access.token.is_some(),
        "admin request refused"
    );
    Reject::Admin(refusal).to_response("")
}

fn answer(
    rt: &Runtime,
    history: &History,
    ready: &AtomicBool,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Reject::MethodNotAllowed { allow: "GET" }.to_response("");
    }
    match req.uri().path() {
        "/" => {
            let mut r = Response::new(Full::new(Bytes::from(crate::status::page(rt, history))));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            if let Ok(csp) = HeaderValue::from_str(&crate::status::content_security_policy()) {
                h.insert(header::CONTENT_SECURITY_POLICY, csp);
            }
            r
        }
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(rt.metrics.render())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/healthz" => json_response(StatusCode::OK, Bytes::from_static(br#"{"status":"ok"}"#)),
        "/readyz" if ready.load(Ordering::Relaxed) => {
            json_response(StatusCode::OK, Bytes::from_static(br#"{"status":"ready"}"#))
        }
        "/readyz" => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from_static(br#"{"status":"draining"}"#),
        ),
        _ => Reject::NotFound.to_response(""),
    }
}
