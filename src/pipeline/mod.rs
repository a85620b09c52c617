//! The ingress pipeline: the one place the order of checks is decided. Cheapest
//! rejection first, and nothing reaches the upstream unless every stage passed. One
//! stage, one file:
//!
//! 1. `admission` — the in-flight cap: a saturated sidecar answers 503 before any work;
//! 2. `route` — exact path, then method (404 / 405), then who may use the route
//!    (egress `callers`, an mTLS peer's bound certificate): everything later is per route;
//! 3. `route` — the allowlist: the peer's networks, so a stranger costs nothing more;
//! 4. `rate` — per client address and per route (429 with `Retry-After`); the peer's
//!    own budget only after stage 6 proved who is sending;
//! 5. `headers`, `body` — an ambiguous or compressed head is refused; the body's
//!    content type fits the envelope, its size the limit (413), its arrival the deadline
//!    (408) — before any crypto is spent on it;
//! 6. `open` — the envelope's layers, outermost first (passcode, JWT, AES) — and
//! 7. the payload validator on every JSON a layer hands on (bounds before any tree);
//! 8. `replay` — token lifetime, freshness and replay, only on authenticated content,
//!    so a forger cannot fill the replay cache (a request seen before answers 409);
//! 9. `schema` — the API's field table (enforce: 400 naming the fields; warn: forward);
//! 10. `forward` — the opened bytes, unchanged, with allowlisted headers (502 / 504),
//!     or the API-7 answer from the journal; an egress route goes to `egress` instead;
//! 11. `respond` — the application's answer as is, or sealed for the caller;
//!
//! and `access` writes the log line and the metrics for every outcome.
//!
//! (Accept-time checks — listener allowlist and connection caps, then the PROXY header
//! and the TLS handshake — run in `crate::server` before HTTP is parsed at all. The
//! `client` every stage sees is the socket's peer, or the address a trusted proxy named:
//! see [`crate::guard::proxy`].)
//!
//! The pipeline is generic over the request body, so a stage — or the whole pipeline —
//! runs in a test on an in-memory body, without sockets.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;
use hyper::body::Body;

use crate::egress::Egress;
use crate::error::Reject;
use crate::forward::Answer;
use crate::metrics::RouteLabels;
use crate::runtime::{Application, Destination, ListenerRt, RequestId, RouteRt, Runtime};

mod access;
mod admission;
mod body;
mod egress;
mod forward;
mod headers;
mod open;
mod rate;
mod replay;
pub mod request;
mod respond;
mod route;
mod schema;

pub use headers::DEFAULT_FORWARDED;
pub use request::{Fields, Request, Target};

/// Where an ingress route's opened request goes.
enum Ingress<'a> {
    Upstream(&'a Application),
    Journal(&'a Egress),
}

/// What every stage of one request may read.
struct Ctx<'a> {
    rt: &'a Runtime,
    lst: &'a ListenerRt,
    route: &'a RouteRt,
    client: IpAddr,
    request_id: &'a RequestId,
}

impl Ctx<'_> {
    /// The labels of the route's metric series.
    fn labels(&self) -> RouteLabels<'_> {
        self.lst.labels(Some(self.route))
    }
}

/// Serves one request on listener `listener` from `client`. Never fails: every error
/// becomes its JSON answer here — a panic too (a bug: the caller gets a JSON 500, the log
/// a line without the payload, and the in-flight count, gauges and replay record unwind).
pub async fn handle<B>(
    rt: &Runtime,
    listener: usize,
    client: IpAddr,
    req: Request<B>,
) -> Result<Answer, Infallible>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let start = Instant::now();
    let request_id = rt.next_request_id();
    let Some(lst) = rt.listeners.get(listener) else {
        return Ok(Answer::from(Reject::Internal.to_response(&request_id)));
    };
    let mut trace = access::Trace::default();

    let result = match admission::admit(rt) {
        None => Err(Reject::Overloaded),
        Some(_slot) => {
            let stages = std::pin::pin!(run(rt, lst, client, req, &request_id, &mut trace));
            match caught(stages).await {
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
    Ok(access::finish(
        rt,
        lst,
        client,
        &request_id,
        &trace,
        start,
        result,
    ))
}

/// `future`, each poll of it inside `catch_unwind`: a panic ends it, as the panic's
/// payload. Polled where the caller pinned it: a catching wrapper that owns the future
/// (`FutureExt::catch_unwind`) had the request's stages — its largest state — copied into
/// it, and copied again where it was awaited.
fn caught<F: Future>(
    mut future: Pin<&mut F>,
) -> impl Future<Output = std::thread::Result<F::Output>> + '_ {
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    })
}

/// The stages, in order. Each `?` is a place a request can be refused.
async fn run<'a, B>(
    rt: &'a Runtime,
    lst: &'a ListenerRt,
    client: IpAddr,
    req: Request<B>,
    request_id: &RequestId,
    trace: &mut access::Trace<'a>,
) -> Result<Answer, Reject>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Request {
        method,
        target,
        fields,
        client_cert,
        body,
    } = req;
    let route = route::select(lst, &method, &target, trace)?;
    let cx = Ctx {
        rt,
        lst,
        route,
        client,
        request_id,
    };
    route::admit(&cx, &fields, client_cert.as_deref())?;
    rate::before_auth(&cx).await?;
    headers::check_request(&fields)?;
    let cfg = &route.cfg;
    let body = body::read(cfg, &fields, body).await?;
    let ingress = match &route.destination {
        // The egress and journal paths are boxed: their futures are large, and an
        // ingress request's future would otherwise carry room for them.
        Destination::Remote(remote, egress) => {
            return Box::pin(egress::push(&cx, egress, remote, body, trace)).await
        }
        Destination::Upstream(app) => Ingress::Upstream(app),
        Destination::Journal(egress) => Ingress::Journal(egress),
    };

    let now = rt.clock.unix_secs();
    let mut opened = open::open(cfg, &fields, &body, now, &rt.settings.limits.json)?;
    rate::peer(rt, route).await?;
    // A reservation dropped by a later refusal is forgotten: a corrected retry of the same
    // ticket is not a replay.
    let held = replay::check(rt, cfg, &opened, now).await;
    // The log line names the ids, a refused replay's too.
    trace.userid = opened.ids.userid.take();
    trace.ticket_no = opened.ids.ticket_no.take();
    let held = held?;
    schema::check(&cx, &opened.plain)?;

    let shape = opened.shape;
    let plain = opened.plain.as_slice();
    let answer = match ingress {
        Ingress::Upstream(app) => {
            // The requests a worker handles in one turn go to the application together:
            // its worker is woken once for them, not once each. A request whose replay
            // record waited for its turn's journal write already does; any other waits
            // for the end of the turn here. At 256 connections on a route without replay
            // protection this took 13–14% off the application's CPU a request and 3–5%
            // off the sidecar's (BENCHMARKS.md, the forty-sixth round).
            if !held.as_ref().is_some_and(replay::Held::waited_for_its_turn) {
                tokio::task::yield_now().await;
            }
            forward::to_upstream(&cx, app, &target, &fields, plain, held, trace).await?
        }
        Ingress::Journal(egress) => {
            Box::pin(forward::to_journal(&cx, egress, plain, held, trace)).await?
        }
    };
    respond::respond(cfg, shape, answer, request_id, now)
}

#[cfg(test)]
mod tests {
    //! The whole pipeline on in-memory requests: no socket, no upstream. (The upstream's
    //! address is a closed port: a request that got that far would answer 502.)

    use super::*;
    use crate::metrics::Metrics;
    use std::sync::Arc;

    /// A future that is pending `waits` times (waking itself), then panics or answers.
    struct Stages {
        waits: usize,
        panics: bool,
        dropped: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Future for Stages {
        type Output = u32;
        fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<u32> {
            if self.waits > 0 {
                self.waits -= 1;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            assert!(!self.panics, "a bug in a stage");
            Poll::Ready(7)
        }
    }

    impl Drop for Stages {
        fn drop(&mut self) {
            self.dropped
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_panic_on_a_later_poll_ends_the_stages_as_an_error_and_drops_them() {
        for (panics, waits) in [(false, 0), (false, 3), (true, 0), (true, 3)] {
            let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
            {
                let stages = std::pin::pin!(Stages {
                    waits,
                    panics,
                    dropped: dropped.clone(),
                });
                let out = caught(stages).await;
                assert_eq!(out.is_err(), panics, "panics {panics}, waits {waits}");
                if !panics {
                    assert_eq!(out.ok(), Some(7));
                }
            }
            assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
        }
    }

    fn runtime(dir: &std::path::Path) -> Arc<Runtime> {
        let yaml = format!(
            r#"
admin: {{ listen: 127.0.0.1:0 }}
state: {{ dir: "{}" }}
peers:
  bsk:
    agid: BSK
    passcode: "376423"
    jwt: {{ secret: "jwt-secret-for-tests-0123456789abcdef", algorithms: [HS256] }}
    allow: [127.0.0.2/32]
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - path: /bsk/status
        from: bsk
        envelope: [token, jwt]
        upstream: http://127.0.0.1:9/status
        max_body: 1KiB
"#,
            dir.display()
        );
        let settings = crate::config::from_yaml(&yaml, "test.yaml", dir).unwrap();
        Runtime::new(settings, Metrics::new()).unwrap()
    }

    async fn send(rt: &Arc<Runtime>, client: &str, path: &str, body: Vec<u8>) -> (u16, String) {
        let req = http::Request::post(path)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .unwrap();
        let client = client.parse().unwrap();
        let resp = (handle(rt, 0, client, req.into()).await).unwrap();
        let status = resp.status.as_u16();
        let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        (status, v["reason"].as_str().unwrap_or_default().to_string())
    }

    #[test]
    fn a_routes_fixed_fields_name_its_application_and_peer() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let route = rt.listeners[0].routes.get(&b"/bsk/status"[..]).unwrap();
        let Destination::Upstream(app) = &route.destination else {
            panic!("the route goes to its application");
        };
        let expected: &[u8] =
            b"host: 127.0.0.1:9\r\ncontent-type: application/json\r\nx-bsk-peer: bsk\r\n";
        assert_eq!(app.fixed.as_bytes(), expected);
    }

    #[tokio::test]
    async fn each_stage_refuses_in_order_without_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let token = br#"{"passcode":"376423","token":"not.a.jwt"}"#.to_vec();
        // Route: an unknown path is 404 whoever asks.
        let (status, _) = send(&rt, "127.0.0.3", "/nowhere", token.clone()).await;
        assert_eq!(status, 404);
        // Allowlist before anything is read.
        let (status, reason) = send(&rt, "127.0.0.3", "/bsk/status", token.clone()).await;
        assert_eq!((status, reason.as_str()), (403, "ip_denied"));
        // Body limit before any crypto.
        let (status, _) = send(&rt, "127.0.0.2", "/bsk/status", vec![b' '; 2048]).await;
        assert_eq!(status, 413);
        // The envelope: a token that is not a JWT never reaches the (closed) upstream.
        let (status, _) = send(&rt, "127.0.0.2", "/bsk/status", token).await;
        assert_eq!(status, 401);
        let refused = rt
            .metrics
            .requests
            .with_label_values(&["public", "/bsk/status", "bsk", "rejected"])
            .get();
        assert_eq!(refused, 3);
        // Timed under their route's series, and the 404 under the listener's "unmatched".
        let timed = |route: &str| {
            (rt.metrics.request_seconds)
                .with_label_values(&["public", route])
                .get_sample_count()
        };
        assert_eq!((timed("/bsk/status"), timed("unmatched")), (3, 1));
        let unmatched = ["public", "unmatched", "none", "rejected"];
        assert_eq!(rt.metrics.requests.with_label_values(&unmatched).get(), 1);
    }
}
