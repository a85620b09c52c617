//! One round trip to a peer: seal the application's JSON in the peer's layers, POST it to
//! the peer's `url` + the route's `remote`, and open the peer's answer for the
//! application. Used by direct sends and by the outbox's delivery task alike.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::client::{Outgoing, PeerClients, SendError};
use crate::clock::Clock;
use crate::config::{Peer, Reply};
use crate::envelope::{self, BodyShape, Failure, Incoming, Layer, Stack};

/// Why a round trip failed before the peer answered.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The push could not be sealed (a key missing for a layer, or not JSON).
    #[error("sealing for the peer failed: {0}")]
    Seal(Failure),
    #[error(transparent)]
    Send(#[from] SendError),
}

impl ExchangeError {
    /// True when the peer never got the request or its answer was lost: worth retrying.
    pub fn retryable(&self) -> bool {
        matches!(self, ExchangeError::Send(_))
    }
}

/// A 2xx answer that `reply: open` required to be sealed was not.
#[derive(Debug, thiserror::Error)]
#[error("the peer's answer did not open with the route's layers")]
pub struct Unopened;

/// Seals `plain` for `peer` and sends it; returns the peer's answer as received.
pub async fn send(
    clients: &PeerClients,
    peer: &Peer,
    layers: &[Layer],
    remote: &str,
    plain: &[u8],
    request_id: &str,
    timeout: Duration,
) -> Result<Response<Bytes>, ExchangeError> {
    let shape = if layers.first() == Some(&Layer::Form) {
        BodyShape::Form
    } else {
        BodyShape::Json
    };
    let now = clients.clock.unix_secs();
    let times = peer.sign_exp.map(|ttl| (now, now + ttl.as_secs()));
    let sealed = envelope::seal_timed(layers, &peer.keys, plain, shape, times)
        .map_err(ExchangeError::Seal)?;
    let out = Outgoing {
        remote,
        content_type: sealed.content_type,
        authorization: sealed.authorization.as_deref(),
        body: Bytes::from(sealed.body),
    };
    Ok(clients.post(&peer.name, out, request_id, timeout).await?)
}

/// The peer's answer made readable for the application: opened with the route's layers
/// (or, for a reply that carries only the inner layers — `{"encData":…}`,
/// `{"token":…}` — with those), else unchanged when `reply` allows.
/// `Err(Unopened)` when `reply: open` and a 2xx answer does not open.
pub fn open_reply(
    layers: &[Layer],
    peer: &Peer,
    reply: Reply,
    resp: Response<Bytes>,
    clock: &Clock,
) -> Result<Response<Bytes>, Unopened> {
    if reply == Reply::Pass {
        return Ok(resp);
    }
    // Answers never carry the passcode back (`envelope::passcode`): open them without it.
    let layers = layers.strip_suffix(&[Layer::Passcode]).unwrap_or(layers);
    let (mut parts, body) = resp.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let now = clock.unix_secs();
    let attempt = |stack: &[Layer]| {
        let req = Incoming {
            content_type: content_type.as_deref(),
            authorization: None,
            passcode_header: None,
            body: &body,
        };
        envelope::open(&Stack::new(stack).ok()?, &peer.keys, &req, now).ok()
    };
    let mut opened = attempt(layers);
    if opened.is_none()
        && layers.len() > 1
        && matches!(
            layers.first(),
            Some(Layer::Form | Layer::Token | Layer::Bearer)
        )
    {
        opened = attempt(layers.get(1..).unwrap_or_default());
    }
    match opened {
        Some(o) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(Response::from_parts(parts, Bytes::from(o.plain)))
        }
        None if reply == Reply::Open && parts.status.is_success() => Err(Unopened),
        None => Ok(Response::from_parts(parts, body)),
    }
}

/// Whether the peer's status means "never going to work as sent": dead-letter now
/// instead of holding the queue. Credentials (401/403), timeouts (408), `425` and
/// throttling (429) are worth retrying; so is every 5xx.
pub fn permanent(status: StatusCode) -> bool {
    status.is_client_error() && !matches!(status.as_u16(), 401 | 403 | 408 | 425 | 429)
}
