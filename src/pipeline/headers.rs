//! Stage: what of the client's request head the sidecar reads, and what of it reaches the
//! application — by allowlist, since no envelope protects a header or a query string.
//!
//! Refused before the body is read: a `Content-Encoding` other than `identity` (415; the
//! envelope is read as sent and must not reach the application as plain), a second `Host`,
//! a `Transfer-Encoding` other than `chunked`, a repeated `X-Passcode` (400).
//!
//! Forwarded: the sidecar's own `Host`, `Content-Type`, `Content-Length`, `X-Request-Id`,
//! `X-BSK-Peer`, `X-Forwarded-For`; of the client's, only [`DEFAULT_FORWARDED`] and the
//! route's `forward_headers`. The query string only with `query: pass`. So
//! `X_BSK_Peer` (which CGI/PHP read as the sidecar's `HTTP_X_BSK_PEER`), `X-Real-IP`,
//! `X-Original-URL`, `X-HTTP-Method-Override`, `Cookie` and the rest never arrive.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri};

use crate::config::{Route, Upstream};
use crate::error::{tag_request_id, Reject};

/// The sidecar's own headers, named once (a name built from a `&str` is copied each time).
const X_BSK_PEER: HeaderName = HeaderName::from_static("x-bsk-peer");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The passcode header some peers send the passcode in (read by the `bearer` layer).
pub(super) const X_PASSCODE: HeaderName = HeaderName::from_static("x-passcode");

/// Client headers every route forwards.
pub const DEFAULT_FORWARDED: [HeaderName; 3] =
    [header::ACCEPT, header::ACCEPT_LANGUAGE, header::USER_AGENT];

/// Refuses request heads the sidecar cannot read unambiguously.
pub(super) fn check_request(headers: &HeaderMap) -> Result<(), Reject> {
    for v in headers.get_all(header::CONTENT_ENCODING) {
        let identity = v.to_str().is_ok_and(|v| {
            v.split(',')
                .all(|c| c.trim().eq_ignore_ascii_case("identity"))
        });
        if !identity {
            return Err(Reject::UnsupportedEncoding);
        }
    }
    if headers.get_all(header::HOST).iter().count() > 1 {
        return Err(Reject::BadHeader("send one Host header"));
    }
    for v in headers.get_all(header::TRANSFER_ENCODING) {
        if !v.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(Reject::BadHeader("Transfer-Encoding must be chunked"));
        }
    }
    if headers.get_all(X_PASSCODE).iter().count() > 1 {
        return Err(Reject::BadHeader("send one X-Passcode header"));
    }
    Ok(())
}

/// Header names listed in `Connection`: they describe this hop only.
pub(super) fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

fn forwarded(cfg: &Route, name: &HeaderName) -> bool {
    DEFAULT_FORWARDED.contains(name) || cfg.forward_headers.contains(name)
}

/// The request the application receives: the opened JSON and the allowed headers.
pub(super) fn upstream_request(
    cfg: &Route,
    upstream: &Upstream,
    parts: &http::request::Parts,
    client: IpAddr,
    request_id: &str,
    body: Bytes,
) -> Result<Request<Bytes>, Reject> {
    // The upstream's own path, shared rather than parsed again, unless the client's
    // query string is passed on.
    let query = parts
        .uri
        .query()
        .filter(|_| cfg.pass_query && upstream.path_and_query.query().is_none());
    let uri = match query {
        None => Uri::from(upstream.path_and_query.clone()),
        Some(q) => format!("{}?{q}", upstream.path_and_query)
            .parse::<Uri>()
            .map_err(|_| Reject::Internal)?,
    };
    let len = body.len();
    let mut req = Request::builder()
        .method(cfg.method.clone())
        .uri(uri)
        .body(body)
        .map_err(|_| Reject::Internal)?;
    let hop = connection_listed(&parts.headers);
    let headers = req.headers_mut();
    // The sidecar's six and the default three of the client's, without regrowing.
    headers.reserve(6 + DEFAULT_FORWARDED.len());
    for (name, value) in &parts.headers {
        if forwarded(cfg, name) && !hop.iter().any(|h| h == name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(header::HOST, upstream.host.clone());
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    tag_request_id(headers, request_id);
    headers.insert(X_BSK_PEER, cfg.peer.header.clone());
    headers.insert(X_FORWARDED_FOR, address_value(client)?);
    Ok(req)
}

/// The client's address as a header value. Each worker thread keeps the last one it
/// wrote: a sidecar's callers are a few addresses (the portal's), so most requests reuse
/// it rather than format an address and copy it into a new value.
fn address_value(client: IpAddr) -> Result<HeaderValue, Reject> {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<Option<(IpAddr, HeaderValue)>> = const { RefCell::new(None) };
    }
    let client = crate::guard::ip::canonical(client);
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((ip, value)) = last.as_ref() {
            if *ip == client {
                return Ok(value.clone());
            }
        }
        let value = format_address(client)?;
        *last = Some((client, value.clone()));
        Ok(value)
    })
}

/// `client` as header text, written on the stack rather than into a `String` first.
fn format_address(client: IpAddr) -> Result<HeaderValue, Reject> {
    use std::io::Write;
    // The longest text form of an IPv6 address is 45 bytes.
    let mut text = std::io::Cursor::new([0u8; 48]);
    write!(text, "{client}").map_err(|_| Reject::Internal)?;
    let len = usize::try_from(text.position()).map_err(|_| Reject::Internal)?;
    let bytes = text.get_ref().get(..len).ok_or(Reject::Internal)?;
    HeaderValue::from_bytes(bytes).map_err(|_| Reject::Internal)
}

/// Response headers that describe the application's hop, not the answer (and its
/// length, which the answer sent on is framed anew with).
pub(super) fn is_hop_by_hop(name: &HeaderName) -> bool {
    crate::forward::is_hop_by_hop(name.as_str()) || name == http::header::CONTENT_LENGTH
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn ambiguous_heads_are_refused() {
        assert!(check_request(&head(&[("host", "a"), ("content-encoding", "identity")])).is_ok());
        assert!(matches!(
            check_request(&head(&[("content-encoding", "gzip")])),
            Err(Reject::UnsupportedEncoding)
        ));
        assert!(matches!(
            check_request(&head(&[("content-encoding", "identity, br")])),
            Err(Reject::UnsupportedEncoding)
        ));
        assert!(matches!(
            check_request(&head(&[("host", "a"), ("host", "b")])),
            Err(Reject::BadHeader(_))
        ));
        assert!(check_request(&head(&[("transfer-encoding", "chunked")])).is_ok());
        assert!(matches!(
            check_request(&head(&[("transfer-encoding", "gzip, chunked")])),
            Err(Reject::BadHeader(_))
        ));
        assert!(matches!(
            check_request(&head(&[("x-passcode", "1"), ("x-passcode", "2")])),
            Err(Reject::BadHeader(_))
        ));
    }

    #[test]
    fn connection_names_hop_headers() {
        let h = head(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "Foo"),
        ]);
        assert_eq!(connection_listed(&h), ["keep-alive", "x-secret", "foo"]);
    }

    #[test]
    fn the_client_address_is_written_as_text() {
        let cases = [
            ("192.0.2.7", "192.0.2.7"),
            ("::ffff:198.51.100.1", "198.51.100.1"),
            ("198.51.100.1", "198.51.100.1"),
            (
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe",
            ),
        ];
        // Twice in a row and in turn: the thread's last value serves only its own address.
        for _ in 0..2 {
            for (ip, text) in cases {
                for _ in 0..2 {
                    let v = address_value(ip.parse().unwrap()).unwrap();
                    assert_eq!(v.to_str().unwrap(), text, "for {ip}");
                }
            }
        }
    }
}
