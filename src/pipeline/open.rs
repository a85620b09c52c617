//! Stages 6 and 7, the envelope: the route's layers, outermost first (passcode, JWT,
//! AES); every JSON a layer hands on passes the one payload validator (UTF-8, one object
//! or array, no repeated key, numbers an f64 holds, within `limits.json`) before anything
//! builds a tree from it.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};

use crate::config::Route;
use crate::envelope::{self, Incoming, Opened};
use crate::error::Reject;
use crate::guard::bounds::JsonBounds;

/// Opens `body` with the route's layers and the peer's keys, as of `now`.
pub(super) fn open(
    cfg: &Route,
    headers: &HeaderMap,
    body: &Bytes,
    now: u64,
    bounds: &JsonBounds,
) -> Result<Opened, Reject> {
    let header_str = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let sealed = Incoming {
        content_type: header_str(&header::CONTENT_TYPE),
        authorization: header_str(&header::AUTHORIZATION),
        passcode_header: header_str(&super::headers::X_PASSCODE),
        body,
    };
    Ok(envelope::open_checked(
        &cfg.layers,
        &cfg.peer.keys,
        &sealed,
        now,
        bounds,
    )?)
}
