//! Every way a request can be refused or fail, and the one function that turns it into
//! the JSON answer the caller sees.
//!
//! Callers get a short, generic message; the precise cause goes to the log line and to
//! the `reason` label of `bsk_sidecar_rejections_total` (see [`Reject::reason`]).

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::envelope::{Failure, TokenProblem};
use crate::forward::ForwardError;
use crate::guard::admin_access::{Refusal, CHALLENGE};
use crate::guard::bounds::TooComplex;
use crate::guard::fresh::Stale;
use crate::guard::payload::Invalid;
use crate::guard::schema::Problem;

pub use crate::forward::X_REQUEST_ID;

/// Names the request in `headers` (`X-Request-Id`), as every answer and every forwarded
/// request carries it. The sidecar's own ids are hex; one that is no header value (an id
/// from elsewhere) is left out rather than failing the message.
pub fn tag_request_id(headers: &mut http::HeaderMap, request_id: &str) {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(X_REQUEST_ID, v);
    }
}

/// Whose fault a failed request was: decides the log level and the metric outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The caller sent something we refuse.
    Downstream,
    /// The legacy application could not be reached or misbehaved.
    Upstream,
    /// The sidecar itself (overload, misconfiguration).
    Internal,
}

/// Which limit a caller ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateScope {
    ClientIp,
    Peer,
    Route,
}

impl RateScope {
    pub fn name(self) -> &'static str {
        match self {
            RateScope::ClientIp => "rate_limited_ip",
            RateScope::Peer => "rate_limited_peer",
            RateScope::Route => "rate_limited_route",
        }
    }
}

/// A request the pipeline refused or could not complete.
#[derive(Debug, thiserror::Error)]
pub enum Reject {
    /// No route has this path.
    #[error("no route for this path")]
    NotFound,
    /// A route has this path, but not for this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed { allow: &'static str },
    /// The client address is not on the peer's allowlist.
    #[error("client address not allowed")]
    IpDenied,
    /// Egress: the caller is not the listener's application (`callers`, `caller_token`).
    #[error("egress caller refused: {0}")]
    CallerDenied(#[from] crate::guard::caller::CallerDenied),
    /// mTLS: the client certificate is not the one bound to the route's peer.
    #[error("client certificate refused: {0}")]
    CertDenied(#[from] crate::guard::client_cert::CertDenied),
    /// A token bucket is empty.
    #[error("rate limited ({})", .scope.name())]
    RateLimited {
        scope: RateScope,
        retry_after: Duration,
    },
    /// Too many requests in flight across the whole sidecar.
    #[error("too many requests in flight")]
    Overloaded,
    /// The body is larger than the route allows.
    #[error("request body too large")]
    BodyTooLarge,
    /// The body did not arrive within the route's read timeout.
    #[error("request body read timed out")]
    BodyTimeout,
    /// The body broke off or was malformed at the HTTP level.
    #[error("request body could not be read")]
    BodyUnreadable,
    /// The content type does not fit the route's envelope.
    #[error("unsupported content type")]
    UnsupportedMediaType,
    /// A `Content-Encoding` other than `identity`: the envelope is read as sent, never
    /// decompressed, and a compressed body must not reach the application as plain.
    #[error("unsupported content encoding")]
    UnsupportedEncoding,
    /// A header the sidecar must read unambiguously is repeated or malformed (a second
    /// `Host`, a repeated `X-Passcode`, a `Transfer-Encoding` other than `chunked`).
    #[error("bad header: {0}")]
    BadHeader(&'static str),
    /// An envelope layer refused the request.
    #[error("{0}")]
    Envelope(#[from] Failure),
    /// `ticketNo` / `iat` outside the route's window, or missing.
    #[error("not fresh: {0}")]
    Stale(#[from] Stale),
    /// The opened JSON is nested too deep, too large, or has too long a string.
    #[error("{0}")]
    TooComplex(#[from] TooComplex),
    /// The payload does not match the route's API table (`schema_mode: enforce`).
    #[error("payload does not match {api}: {}", .problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Schema {
        api: &'static str,
        problems: Vec<Problem>,
    },
    /// The same request was already accepted within its window.
    #[error("replayed request")]
    Replayed,
    /// The upstream refused the connection or broke it.
    #[error("upstream unavailable")]
    UpstreamUnavailable,
    /// The upstream did not answer within the response timeout.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The upstream answered something a sealing route cannot seal.
    #[error("upstream answer could not be sealed")]
    UpstreamBadResponse,
    /// Egress: the application's body is not a JSON document.
    #[error("request body is not JSON")]
    NotJson,
    /// The request's own fields are unusable (e.g. an API-7 pull without dates), or the
    /// request is not well-formed HTTP/1.1.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request head is over `limits.max_header_bytes` or has over 100 fields.
    #[error("request head too large")]
    HeadTooLarge,
    /// The request target is over 65,534 bytes.
    #[error("request target too long")]
    UriTooLong,
    /// Egress: the remote peer refused the connection, failed TLS, or broke it.
    #[error("remote peer unavailable")]
    PeerUnavailable,
    /// Egress: the remote peer did not answer within the route's timeout.
    #[error("remote peer timed out")]
    PeerTimeout,
    /// Egress: the remote peer's answer could not be opened with the route's layers.
    #[error("remote peer's answer could not be opened")]
    PeerBadResponse,
    /// Egress: the same push is being delivered by another request right now.
    #[error("the same push is in progress")]
    PushInProgress,
    /// Egress: the durable outbox could not be written; nothing was accepted.
    #[error("outbox store unavailable")]
    StoreUnavailable,
    /// The shared state backend (Redis) is unreachable and the route fails closed: the
    /// reason names what could not be checked (`replay_store_unavailable`,
    /// `rate_store_unavailable`).
    #[error("shared state unavailable ({0})")]
    StateUnavailable(&'static str),
    /// A bug or an impossible state; details only in the log.
    #[error("internal error")]
    Internal,
    /// The admin listener refused the request (token, `Origin`, `Host`).
    #[error("admin request refused: {0}")]
    Admin(#[from] Refusal),
}

impl Reject {
    /// The bounded `reason` label: precise, for metrics and logs only.
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::NotFound => "not_found",
            Reject::MethodNotAllowed { .. } => "method_not_allowed",
            Reject::IpDenied => "ip_denied",
            Reject::CallerDenied(_) => "caller_denied",
            Reject::CertDenied(_) => "client_cert_denied",
            Reject::RateLimited { scope, .. } => scope.name(),
            Reject::Overloaded => "overloaded",
            Reject::BodyTooLarge => "body_too_large",
            Reject::BodyTimeout => "body_timeout",
            Reject::BodyUnreadable => "body_unreadable",
            Reject::UnsupportedMediaType => "unsupported_media_type",
            Reject::UnsupportedEncoding => "unsupported_encoding",
            Reject::BadHeader(_) => "bad_header",
            Reject::Envelope(f) => f.reason(),
            Reject::Stale(s) => s.reason(),
            Reject::TooComplex(_) => "json_too_complex",
            Reject::Schema { .. } => "schema_violation",
            Reject::Replayed => "replayed",
            Reject::UpstreamUnavailable => "upstream_unavailable",
            Reject::UpstreamTimeout => "upstream_timeout",
            Reject::UpstreamBadResponse => "upstream_bad_response",
            Reject::NotJson => "not_json",
            Reject::BadRequest(_) => "bad_request",
            Reject::HeadTooLarge => "header_too_large",
            Reject::UriTooLong => "uri_too_long",
            Reject::PeerUnavailable => "peer_unavailable",
            Reject::PeerTimeout => "peer_timeout",
            Reject::PeerBadResponse => "peer_bad_response",
            Reject::PushInProgress => "push_in_progress",
            Reject::StoreUnavailable => "store_unavailable",
            Reject::StateUnavailable(reason) => reason,
            Reject::Internal => "internal",
            Reject::Admin(r) => r.reason(),
        }
    }

    /// The `reason` the caller sees — and the `reason` label of
    /// `bsk_sidecar_rejections_total`, which anyone who can read metrics sees too.
    /// Identical for every undecryptable envelope, so a padding oracle learns nothing; the
    /// precise [`Reject::reason`] goes to the log line only.
    pub fn public_reason(&self) -> &'static str {
        match self {
            Reject::Envelope(Failure::Undecryptable(_)) => "bad_envelope",
            other => other.reason(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Reject::NotFound => StatusCode::NOT_FOUND,
            Reject::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Reject::IpDenied => StatusCode::FORBIDDEN,
            Reject::CallerDenied(_) => StatusCode::FORBIDDEN,
            Reject::CertDenied(_) => StatusCode::FORBIDDEN,
            Reject::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Reject::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Reject::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reject::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Reject::BodyUnreadable => StatusCode::BAD_REQUEST,
            Reject::UnsupportedMediaType | Reject::UnsupportedEncoding => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Reject::BadHeader(_) => StatusCode::BAD_REQUEST,
            Reject::Envelope(f) => match f {
                Failure::Undecryptable(_) | Failure::InvalidPayload(_) => StatusCode::BAD_REQUEST,
                Failure::WrongAgid
                | Failure::BadPasscode
                | Failure::MalformedToken
                | Failure::BadToken(_) => StatusCode::UNAUTHORIZED,
                Failure::Misconfigured(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Reject::Stale(_) | Reject::TooComplex(_) | Reject::Schema { .. } => {
                StatusCode::BAD_REQUEST
            }
            Reject::Replayed => StatusCode::CONFLICT,
            Reject::UpstreamUnavailable | Reject::UpstreamBadResponse => StatusCode::BAD_GATEWAY,
            Reject::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Reject::NotJson | Reject::BadRequest(_) => StatusCode::BAD_REQUEST,
            Reject::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reject::UriTooLong => StatusCode::URI_TOO_LONG,
            Reject::PeerUnavailable | Reject::PeerBadResponse => StatusCode::BAD_GATEWAY,
            Reject::PeerTimeout => StatusCode::GATEWAY_TIMEOUT,
            Reject::PushInProgress => StatusCode::CONFLICT,
            Reject::StoreUnavailable | Reject::StateUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Reject::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Reject::Admin(r) => r.status(),
        }
    }

    /// Plain English a department engineer can act on, never naming an AES step.
    pub fn public_message(&self) -> &'static str {
        match self {
            Reject::NotFound => "no route for this path",
            Reject::MethodNotAllowed { .. } => "method not allowed on this path",
            Reject::IpDenied => "source address not allowed",
            Reject::CallerDenied(_) => "caller not allowed on this egress listener",
            Reject::CertDenied(_) => "client certificate not allowed for this peer",
            Reject::RateLimited { .. } => "too many requests; retry later",
            Reject::Overloaded => "server busy; retry later",
            Reject::BodyTooLarge => "request body too large",
            Reject::BodyTimeout => "request body not received in time",
            Reject::BodyUnreadable => "request body could not be read",
            Reject::UnsupportedMediaType => "content type not accepted on this path",
            Reject::UnsupportedEncoding => "send the body uncompressed (Content-Encoding: identity)",
            Reject::BadHeader(why) => why,
            Reject::Envelope(f) => match f {
                Failure::Undecryptable(_) => "request could not be decrypted",
                Failure::WrongAgid => "agId not accepted on this path",
                Failure::BadPasscode => "passcode rejected",
                Failure::MalformedToken => "token missing or malformed",
                Failure::BadToken(TokenProblem::LifetimeTooLong) => {
                    "token lives longer than this peer allows; sign a shorter exp"
                }
                Failure::BadToken(_) => "token rejected",
                Failure::InvalidPayload(Invalid::TooComplex(_)) => "JSON too complex",
                Failure::InvalidPayload(_) => {
                    "signed payload is not one well-formed JSON object (UTF-8, no repeated keys, numbers in range)"
                }
                Failure::Misconfigured(_) => "route misconfigured",
            },
            Reject::Stale(Stale::MissingTimestamp) => "request carries no ticketNo or iat",
            Reject::Stale(Stale::BadTicket) => "ticketNo is not a YYYYMMDDHHmmSS timestamp",
            Reject::Stale(Stale::TooOld) => "request is too old; send a fresh one",
            Reject::Stale(Stale::FutureDated) => "request is dated in the future; check the clock",
            Reject::Replayed => "this request was already accepted; send a new ticketNo",
            Reject::TooComplex(TooComplex::Depth(_)) => "JSON nested too deeply",
            Reject::TooComplex(TooComplex::Values(_)) => "JSON has too many values",
            Reject::TooComplex(TooComplex::String(_)) => "JSON string too long",
            Reject::Schema { .. } => "payload does not match the API's field table; see fields",
            Reject::UpstreamUnavailable => "application unavailable",
            Reject::UpstreamTimeout => "application did not answer in time",
            Reject::UpstreamBadResponse => "application answer could not be sealed",
            Reject::NotJson => "request body is not a JSON document",
            Reject::BadRequest(why) => why,
            Reject::HeadTooLarge => "request head too large or with too many fields",
            Reject::UriTooLong => "request target too long",
            Reject::PeerUnavailable => "remote peer unavailable",
            Reject::PeerTimeout => "remote peer did not answer in time",
            Reject::PeerBadResponse => "remote peer's answer could not be opened",
            Reject::PushInProgress => "the same push is being delivered; retry later",
            Reject::StoreUnavailable => "outbox unavailable; nothing was accepted, retry later",
            Reject::StateUnavailable(_) => "shared state unavailable; nothing was accepted, retry later",
            Reject::Internal => "internal error",
            Reject::Admin(r) => r.message(),
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            Reject::UpstreamUnavailable
            | Reject::UpstreamTimeout
            | Reject::UpstreamBadResponse
            | Reject::PeerUnavailable
            | Reject::PeerTimeout
            | Reject::PeerBadResponse => Fault::Upstream,
            Reject::StoreUnavailable | Reject::StateUnavailable(_) => Fault::Internal,
            Reject::Overloaded | Reject::Internal | Reject::Envelope(Failure::Misconfigured(_)) => {
                Fault::Internal
            }
            _ => Fault::Downstream,
        }
    }

    /// The one mapping from a failure to what goes on the wire.
    pub fn to_response(&self, request_id: &str) -> Response<Full<Bytes>> {
        let status = self.status();
        let mut body = error_body(
            status,
            self.public_message(),
            self.public_reason(),
            request_id,
        );
        if let Reject::Schema { problems, .. } = self {
            // Field names come from the spec's tables, never from the payload.
            let fields: Vec<serde_json::Value> = problems
                .iter()
                .map(|p| serde_json::json!({"field": p.field, "problem": p.what}))
                .collect();
            let without_brace = body.strip_suffix(b"}").unwrap_or(&body);
            let mut text = String::from_utf8_lossy(without_brace).into_owned();
            text.push_str(",\"fields\":");
            text.push_str(&serde_json::Value::Array(fields).to_string());
            text.push('}');
            body = Bytes::from(text);
        }
        let mut resp = json_response(status, body);
        let headers = resp.headers_mut();
        match self {
            Reject::RateLimited { retry_after, .. } => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            Reject::Overloaded => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Reject::MethodNotAllowed { allow } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            // A browser asks for the token (HTTP Basic, the token as password).
            Reject::Admin(Refusal::Unauthorized) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(CHALLENGE),
                );
            }
            _ => {}
        }
        tag_request_id(headers, request_id);
        resp
    }
}

/// `{"statusCode", "message", "reason", "requestId"}` — the spec's own error shape.
pub fn error_body(status: StatusCode, message: &str, reason: &str, request_id: &str) -> Bytes {
    // Written by hand to keep the spec's field order; strings are JSON-escaped.
    let esc = |s: &str| serde_json::Value::from(s).to_string();
    Bytes::from(format!(
        r#"{{"statusCode":{},"message":{},"reason":{},"requestId":{}}}"#,
        status.as_u16(),
        esc(message),
        esc(reason),
        esc(request_id)
    ))
}

pub fn json_response(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

impl From<ForwardError> for Reject {
    fn from(e: ForwardError) -> Reject {
        match e {
            ForwardError::Timeout => Reject::UpstreamTimeout,
            ForwardError::TooLarge { .. } => Reject::UpstreamBadResponse,
            _ => Reject::UpstreamUnavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Undecryptable;
    use http_body_util::BodyExt;

    async fn body_of(r: Response<Full<Bytes>>) -> serde_json::Value {
        let b = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&b).unwrap()
    }

    /// Pins the status and public reason of every rejection: changing one is a contract change.
    #[test]
    fn status_and_public_reason_are_pinned() {
        let cases: Vec<(Reject, u16, &str)> = vec![
            (Reject::NotFound, 404, "not_found"),
            (
                Reject::MethodNotAllowed { allow: "POST" },
                405,
                "method_not_allowed",
            ),
            (Reject::IpDenied, 403, "ip_denied"),
            (Reject::Admin(Refusal::Unauthorized), 401, "unauthorized"),
            (
                Reject::Admin(Refusal::NoToken),
                403,
                "admin_token_not_configured",
            ),
            (Reject::Admin(Refusal::CrossOrigin), 403, "cross_origin"),
            (Reject::Admin(Refusal::BadHost), 403, "bad_host"),
            (
                Reject::CallerDenied(crate::guard::caller::CallerDenied::Token),
                403,
                "caller_denied",
            ),
            (
                Reject::CertDenied(crate::guard::client_cert::CertDenied::Name),
                403,
                "client_cert_denied",
            ),
            (
                Reject::RateLimited {
                    scope: RateScope::ClientIp,
                    retry_after: Duration::from_millis(1500),
                },
                429,
                "rate_limited_ip",
            ),
            (Reject::Overloaded, 503, "overloaded"),
            (Reject::BodyTooLarge, 413, "body_too_large"),
            (Reject::BodyTimeout, 408, "body_timeout"),
            (Reject::UnsupportedMediaType, 415, "unsupported_media_type"),
            (Reject::UnsupportedEncoding, 415, "unsupported_encoding"),
            (Reject::BadHeader("Host repeated"), 400, "bad_header"),
            (Reject::HeadTooLarge, 431, "header_too_large"),
            (Reject::UriTooLong, 414, "uri_too_long"),
            (
                Reject::Envelope(Failure::InvalidPayload(Invalid::DuplicateKey)),
                400,
                "invalid_json",
            ),
            (
                Reject::Envelope(Failure::BadToken(TokenProblem::LifetimeTooLong)),
                401,
                "lifetime_too_long",
            ),
            (
                Reject::Envelope(Failure::Undecryptable(
                    crate::envelope::Undecryptable::BadPadding,
                )),
                400,
                "bad_envelope",
            ),
            (Reject::Envelope(Failure::BadPasscode), 401, "bad_passcode"),
            (Reject::Envelope(Failure::WrongAgid), 401, "wrong_agid"),
            (
                Reject::Envelope(Failure::MalformedToken),
                401,
                "malformed_token",
            ),
            (Reject::Stale(Stale::TooOld), 400, "stale"),
            (Reject::Stale(Stale::FutureDated), 400, "future_dated"),
            (Reject::Replayed, 409, "replayed"),
            (
                Reject::TooComplex(TooComplex::Depth(32)),
                400,
                "json_too_complex",
            ),
            (Reject::UpstreamUnavailable, 502, "upstream_unavailable"),
            (Reject::UpstreamTimeout, 504, "upstream_timeout"),
            (Reject::Internal, 500, "internal"),
            (Reject::NotJson, 400, "not_json"),
            (Reject::BadRequest("fromDate missing"), 400, "bad_request"),
            (Reject::PeerUnavailable, 502, "peer_unavailable"),
            (Reject::PeerTimeout, 504, "peer_timeout"),
            (Reject::PeerBadResponse, 502, "peer_bad_response"),
            (Reject::PushInProgress, 409, "push_in_progress"),
            (Reject::StoreUnavailable, 503, "store_unavailable"),
            (
                Reject::StateUnavailable("replay_store_unavailable"),
                503,
                "replay_store_unavailable",
            ),
        ];
        for (r, status, reason) in cases {
            assert_eq!(r.status().as_u16(), status, "{r:?}");
            assert_eq!(r.public_reason(), reason, "{r:?}");
        }
    }

    #[tokio::test]
    async fn every_undecryptable_cause_answers_identically() {
        let causes = [
            Undecryptable::MalformedForm,
            Undecryptable::BadBase64,
            Undecryptable::BadLength,
            Undecryptable::BadPadding,
            Undecryptable::NotUtf8,
            Undecryptable::NotJson,
        ];
        let mut seen = Vec::new();
        for c in causes {
            let r = Reject::Envelope(Failure::Undecryptable(c)).to_response("req-1");
            let status = r.status();
            let mut headers: Vec<_> = r
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect();
            headers.sort();
            let body = r.into_body().collect().await.unwrap().to_bytes();
            seen.push((status, headers, body));
        }
        assert!(
            seen.windows(2).all(|w| w[0] == w[1]),
            "responses differ: {seen:?}"
        );
        assert_eq!(seen[0].0, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn schema_violation_lists_the_failing_fields() {
        let r = Reject::Schema {
            api: "api3",
            problems: vec![
                Problem {
                    field: "userid",
                    what: "not a 10-digit mobile number",
                },
                Problem {
                    field: "applicationNo",
                    what: "missing",
                },
            ],
        }
        .to_response("r1");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let v = body_of(r).await;
        assert_eq!(v["reason"], "schema_violation");
        assert_eq!(v["fields"][0]["field"], "userid");
        assert_eq!(v["fields"][1]["problem"], "missing");
        assert_eq!(v["requestId"], "r1");
    }

    #[tokio::test]
    async fn rate_limit_carries_retry_after_rounded_up() {
        let r = Reject::RateLimited {
            scope: RateScope::Peer,
            retry_after: Duration::from_millis(1500),
        }
        .to_response("abc");
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        assert_eq!(r.headers()["x-request-id"], "abc");
        let v = body_of(r).await;
        assert_eq!(v["statusCode"], 429);
        assert_eq!(v["reason"], "rate_limited_peer");
        assert_eq!(v["requestId"], "abc");
        assert!(v["message"].as_str().unwrap().contains("too many"));
    }
}
