//! Stage 11, respond: the application's answer as it is (without its hop-by-hop headers,
//! which the forwarder never hands on), or sealed for the caller with the route's own layers
//! (`response.mode: seal`).

use bytes::Bytes;
use http::header;

use crate::config::{ResponseMode, Route};
use crate::envelope::{self, BodyShape, Failure, Layer};
use crate::error::{Reject, X_REQUEST_ID};
use crate::forward::Answer;
use crate::runtime::RequestId;

/// The client's answer to `upstream`, the application's (or the journal's) answer;
/// `now` (unix seconds, the request's instant) stamps a sealed answer's `iat`/`exp`.
pub(super) fn respond(
    cfg: &Route,
    shape: BodyShape,
    mut answer: Answer,
    request_id: &RequestId,
    now: u64,
) -> Result<Answer, Reject> {
    // The application's own headers stay, in place (the forwarder kept none of its hop);
    // `set` replaces every value the application gave.
    if let ResponseMode::Seal { wrap } = &cfg.response {
        let (body, ct) = seal_response(cfg, shape, &answer.body, wrap.as_ref(), now)?;
        answer.body = body;
        answer.set(&header::CONTENT_TYPE, ct.as_bytes());
    }
    answer.set_own(&X_REQUEST_ID, request_id.as_bytes());
    Ok(answer)
}

/// Seals the application's JSON answer with the route's layers. With `wrap`, the inner
/// layers' output goes in `encData` of a JSON object carrying the wrap fields.
fn seal_response(
    cfg: &Route,
    shape: BodyShape,
    body: &Bytes,
    wrap: Option<&serde_json::Map<String, serde_json::Value>>,
    now: u64,
) -> Result<(Bytes, &'static str), Reject> {
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
        return Err(Reject::UpstreamBadResponse);
    }
    let keys = &cfg.peer.keys;
    // `jwt.sign_exp`: a peer that requires `exp` gets it in what we seal for it.
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
