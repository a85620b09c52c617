//! The admin listener: `/metrics` for Prometheus, `/healthz` (the process is up) and
//! `/readyz` (listeners are serving and not draining), and the outbox's operator
//! endpoints (`/outbox`, see [`crate::egress::ops`]). Loopback by default.

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
use tokio::sync::watch;

use crate::error::{error_body, json_response};
use crate::runtime::Runtime;

pub async fn serve(
    rt: Arc<Runtime>,
    listener: TcpListener,
    ready: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin listening");
    }
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            _ = stop.changed() => break,
        };
        let rt = rt.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let rt = rt.clone();
                let ready = ready.clone();
                async move {
                    // The outbox's operator endpoints (a running sidecar holds the store).
                    let store = rt.egress.as_ref().map(|e| &e.store);
                    let path = req.uri().path();
                    if let Some(r) = crate::egress::ops::admin(store, req.method(), path).await {
                        return Ok::<_, Infallible>(r);
                    }
                    Ok::<_, Infallible>(answer(&rt, &ready, &req))
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

fn answer(rt: &Runtime, ready: &AtomicBool, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            error_body(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET",
                "method_not_allowed",
                "",
            ),
        );
    }
    match req.uri().path() {
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
        _ => json_response(
            StatusCode::NOT_FOUND,
            error_body(StatusCode::NOT_FOUND, "no such admin path", "not_found", ""),
        ),
    }
}
