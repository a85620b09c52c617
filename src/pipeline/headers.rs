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

use http::header::{self, HeaderName};

use crate::config::Route;
use crate::error::{Reject, X_REQUEST_ID};
use crate::forward::RequestHead;
use crate::pipeline::request::{text, Fields, Target};
use crate::runtime::{Application, RequestId};

/// The sidecar's own headers, named once (a name built from a `&str` is copied each time).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The passcode header some peers send the passcode in (read by the `bearer` layer).
pub(super) const X_PASSCODE: HeaderName = HeaderName::from_static("x-passcode");

/// Client headers every route forwards.
pub const DEFAULT_FORWARDED: [HeaderName; 3] =
    [header::ACCEPT, header::ACCEPT_LANGUAGE, header::USER_AGENT];

/// Refuses request heads the sidecar cannot read unambiguously.
pub(super) fn check_request(fields: &Fields) -> Result<(), Reject> {
    // One pass over the head; the verdicts are then given in a fixed order, whatever
    // order the fields came in.
    let (mut coded, mut hosts, mut framed, mut passcodes) = (false, 0, false, 0);
    let is = |name: &[u8], known: &HeaderName| name == known.as_str().as_bytes();
    for (name, v) in fields.iter() {
        if is(name, &header::CONTENT_ENCODING) {
            coded |= !text(v).is_some_and(|v| {
                v.split(',')
                    .all(|c| c.trim().eq_ignore_ascii_case("identity"))
            });
        } else if is(name, &header::HOST) {
            hosts += 1;
        } else if is(name, &header::TRANSFER_ENCODING) {
            framed |= !v.eq_ignore_ascii_case(b"chunked");
        } else if is(name, &X_PASSCODE) {
            passcodes += 1;
        }
    }
    if coded {
        return Err(Reject::UnsupportedEncoding);
    }
    if hosts > 1 {
        return Err(Reject::BadHeader("send one Host header"));
    }
    if framed {
        return Err(Reject::BadHeader("Transfer-Encoding must be chunked"));
    }
    if passcodes > 1 {
        return Err(Reject::BadHeader("send one X-Passcode header"));
    }
    Ok(())
}

/// Header names the client's `Connection` lists, as sent: they describe its hop only
/// ([`crate::forward::connection_listed`]).
pub(super) fn connection_listed(fields: &Fields) -> Vec<&[u8]> {
    crate::forward::connection_listed(fields.get_all(&header::CONNECTION))
}

/// The allowlisted name a client's field `name` (lower case) is forwarded under.
fn forwarded<'a>(cfg: &'a Route, name: &[u8]) -> Option<&'a HeaderName> {
    (DEFAULT_FORWARDED.iter())
        .chain(&cfg.forward_headers)
        .find(|h| name == h.as_str().as_bytes())
}

/// The head of the request the application receives (its body is the opened JSON, `len`
/// bytes): the allowed headers of the client's and the sidecar's own.
pub(super) fn upstream_request(
    cfg: &Route,
    app: &Application,
    target: &Target,
    fields: &Fields,
    client: IpAddr,
    request_id: &RequestId,
    len: usize,
) -> RequestHead {
    // The upstream's own path, with the client's query string only when it is passed on.
    let pass_query = cfg.pass_query && app.upstream.path_and_query.query().is_none();
    let query = target.query().filter(|_| pass_query);
    let mut head = RequestHead::new(&cfg.method, app.upstream.path_and_query.as_str(), query);
    // The client's allowed headers. (None of them is one the sidecar writes below: the
    // config refuses to forward those.)
    // What `Connection` lists is looked up once a forwarded field needs it.
    let mut hop = None;
    for (name, value) in fields.iter() {
        let Some(name) = forwarded(cfg, name) else {
            continue;
        };
        let listed = hop.get_or_insert_with(|| connection_listed(fields));
        if !listed
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name.as_str().as_bytes()))
        {
            head.field(name, value);
        }
    }
    head.fixed(&app.fixed);
    head.field_number(&header::CONTENT_LENGTH, len);
    head.field(&X_REQUEST_ID, request_id.as_bytes());
    head.field_address(&X_FORWARDED_FOR, crate::guard::ip::canonical(client));
    head
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn head(pairs: &[(&str, &str)]) -> Fields {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        Fields::from(&h)
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
        assert_eq!(connection_listed(&h), [&b"X-Secret"[..], b"Foo"]);
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
        for (ip, text) in cases {
            let mut head = RequestHead::new(&http::Method::POST, "/", None);
            head.field_address(
                &X_FORWARDED_FOR,
                crate::guard::ip::canonical(ip.parse().unwrap()),
            );
            let expected = format!("POST / HTTP/1.1\r\nx-forwarded-for: {text}\r\n");
            assert_eq!(head.as_bytes(), expected.as_bytes(), "for {ip}");
        }
    }
}
