//! Stage 10, forward: the opened bytes, unchanged, to the application with the allowed
//! headers only (502 / 504) — or, on an API-7 route, the answer from the egress journal.
//!
//! The replay record is kept once the request may have reached the application; a
//! request never delivered (connection refused) forgets it, so the peer's retry is not
//! refused as a replay.

use std::time::Instant;

use super::access::Trace;
use super::headers;
use super::replay::Held;
use super::Ctx;
use crate::egress::Egress;
use crate::error::Reject;
use crate::forward::Answer;
use crate::pipeline::{Fields, Target};
use crate::runtime::Application;

/// Sends `plain` to the application and reads its whole answer.
pub(super) async fn to_upstream(
    cx: &Ctx<'_>,
    app: &Application,
    target: &Target,
    fields: &Fields,
    plain: &[u8],
    held: Option<Held<'_>>,
    trace: &mut Trace<'_>,
) -> Result<Answer, Reject> {
    let cfg = &cx.route.cfg;
    let (client, id, len) = (cx.client, cx.request_id, plain.len());
    let head = headers::upstream_request(cfg, app, target, fields, client, id, len);
    let started = Instant::now();
    let deadline = crate::forward::deadline_after(started, cfg.upstream_timeout);
    let sent = cx
        .rt
        .forwarder
        .send(&app.upstream, &head, plain, deadline)
        .await;
    cx.route
        .series
        .upstream_seconds(&cx.rt.metrics, cx.labels())
        .observe(started.elapsed().as_secs_f64());
    // Anything but "never delivered" (an answer, a timeout, a connection that broke after
    // the request was written) may have reached the application: the record stays.
    if let Some(r) = held {
        if sent.as_ref().map_or_else(|e| e.maybe_delivered(), |_| true) {
            r.keep();
        }
    }
    let answer = sent.map_err(|e| {
        tracing::debug!(request_id = %cx.request_id, error = %e, "upstream failed");
        Reject::from(e)
    })?;
    trace.upstream_status = Some(answer.status.as_u16());
    Ok(answer)
}

/// The API-7 answer from the egress journal.
pub(super) async fn to_journal(
    cx: &Ctx<'_>,
    egress: &Egress,
    plain: &[u8],
    held: Option<Held<'_>>,
    trace: &mut Trace<'_>,
) -> Result<Answer, Reject> {
    let answer = crate::egress::serve_journal(egress, &cx.route.cfg, plain).await?;
    if let Some(r) = held {
        r.keep();
    }
    trace.upstream_status = Some(answer.status().as_u16());
    Ok(Answer::from(answer))
}
