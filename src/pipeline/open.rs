//! Stages 6 and 7, the envelope: the route's layers, outermost first (passcode, JWT,
//! AES); every JSON a layer hands on passes the one payload validator (UTF-8, one object
//! or array, no repeated key, numbers an f64 holds, within `limits.json`) before anything
//! builds a tree from it.

use bytes::Bytes;
use http::header;

use crate::config::Route;
use crate::envelope::{self, Incoming, Layer, Opened};
use crate::error::Reject;
use crate::guard::bounds::JsonBounds;
use crate::pipeline::Fields;

/// Opens `body` with the route's layers and the peer's keys, as of `now`.
pub(super) fn open(
    cfg: &Route,
    fields: &Fields,
    body: &Bytes,
    now: u64,
    bounds: &JsonBounds,
) -> Result<Opened, Reject> {
    // Each field is read only for the layer that reads it: `form` the content type,
    // `bearer` the `Authorization` and `X-Passcode` fields.
    let has = |layer| cfg.layers.contains(&layer);
    let (form, bearer) = (has(Layer::Form), has(Layer::Bearer));
    let sealed = Incoming {
        content_type: form.then(|| fields.text(&header::CONTENT_TYPE)).flatten(),
        authorization: bearer
            .then(|| fields.text(&header::AUTHORIZATION))
            .flatten(),
        passcode_header: (bearer.then(|| fields.text(&super::headers::X_PASSCODE))).flatten(),
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
