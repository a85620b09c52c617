//! An egress route, after the route, rate and body stages: the application's own JSON
//! (bounded like any payload) handed to [`crate::egress::push`], which seals it for the
//! peer and delivers it by the route's mode. (On an egress route the peer's bucket limits
//! what goes *to* the peer: that is charged in `crate::egress`.)

use bytes::Bytes;

use super::access::Trace;
use super::Ctx;
use crate::config::Remote;
use crate::egress::Egress;
use crate::error::Reject;
use crate::forward::Answer;
use crate::guard::fields::Ids;

pub(super) async fn push(
    cx: &Ctx<'_>,
    egress: &Egress,
    remote: &Remote,
    body: Bytes,
    trace: &mut Trace<'_>,
) -> Result<Answer, Reject> {
    let rt = cx.rt;
    rt.settings.limits.json.check(&body)?;
    let ids = Ids::parse(&body);
    trace.userid = ids.userid;
    trace.ticket_no = ids.ticket_no;
    let cfg = &cx.route.cfg;
    let (resp, outcome) =
        crate::egress::push(egress, &rt.metrics, cfg, remote, body, cx.request_id).await?;
    trace.upstream_status = outcome.peer_status;
    Ok(Answer::from(resp))
}
