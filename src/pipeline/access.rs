//! After the last stage: the access log line and the request metrics, for an answer and
//! for a refusal alike. Metrics carry the public reason only — they are readable by more
//! people than logs, and the precise AES failure would make them a padding oracle.

use std::net::IpAddr;
use std::time::Instant;

use crate::error::{Fault, Reject};
use crate::forward::Answer;
use crate::guard::fields::Id;
use crate::runtime::{ListenerRt, RequestId, RouteRt, Runtime};

/// What the log line and metrics learn about a request as it goes (the route borrowed
/// from the runtime the request is served by).
#[derive(Default)]
pub(super) struct Trace<'a> {
    /// The route, once it is known: its and its peer's names, its metric series, its
    /// names as its access lines write them.
    pub(super) route: Option<&'a RouteRt>,
    pub(super) userid: Option<Id>,
    pub(super) ticket_no: Option<Id>,
    pub(super) upstream_status: Option<u16>,
}

/// The access log line and the request metrics, then the response.
pub(super) fn finish(
    rt: &Runtime,
    lst: &ListenerRt,
    client: IpAddr,
    request_id: &RequestId,
    trace: &Trace<'_>,
    start: Instant,
    result: Result<Answer, Reject>,
) -> Answer {
    let labels = lst.labels(trace.route);
    let (route_label, peer_label) = (labels.route, labels.peer);
    let elapsed = start.elapsed();
    // To the microsecond: written as digits, not through the float formatter (`logfmt`).
    // (Whole microseconds as a `u64`: a `u128` made a float through a library call.)
    let latency_ms = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX) as f64 / 1000.0;
    // Set with the route's names; without a route, the listener's own "unmatched" series.
    let series = trace.route.map_or(&lst.unmatched, |r| &r.series);
    series
        .request_seconds(&rt.metrics, labels)
        .observe(elapsed.as_secs_f64());
    match result {
        Ok(resp) => {
            series.forwarded(&rt.metrics, labels).inc();
            crate::logfmt::Forwarded {
                request_id: request_id.as_bytes(),
                listener: &lst.name,
                route: route_label,
                peer: peer_label,
                status: resp.status.as_u16(),
                upstream_status: trace.upstream_status,
                latency_ms,
                userid: trace.userid.as_ref().map(|id| id.as_bytes()),
                ticket_no: trace.ticket_no.as_ref().map(|id| id.as_bytes()),
                names: trace.route.map(|r| &r.access_names),
            }
            .log();
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
            let resp = Answer::from(reject.to_response(request_id));
            macro_rules! log_reject {
                ($level:ident) => {
                    tracing::$level!(
                        target: "bsk_sidecar::access",
                        request_id = %request_id,
                        listener = %lst.name,
                        route = route_label,
                        peer = peer_label,
                        client = %client,
                        status = resp.status.as_u16(),
                        reason = reject.reason(),
                        detail = %reject,
                        latency_ms,
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
