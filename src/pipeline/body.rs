//! Stage 5, the body: its content type must fit the route's envelope (415), its size the
//! route's limit (413, from `Content-Length` before a byte is read, else while reading),
//! and it must arrive before the route's deadline (408).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::header;
use http_body_util::{BodyExt, Limited};
use hyper::body::Body;

use crate::config::Route;
use crate::envelope::Layer;
use crate::error::Reject;
use crate::pipeline::request::{is_text, Fields};

/// Checks the head, then reads the whole body within the route's size and time limits.
pub(super) async fn read<B>(cfg: &Route, fields: &Fields, body: B) -> Result<Bytes, Reject>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let content_type = fields.get(&header::CONTENT_TYPE);
    if cfg.target.is_egress() {
        check_plain_json_type(content_type)?;
    } else {
        check_content_type(&cfg.layers, content_type)?;
    }
    // What the head declared (`Content-Length`, the body's framing: its reader knows it
    // already, so the field is not read again), refused before a byte is read; a chunked
    // body declares nothing and is limited as it is read.
    if body.size_hint().lower() > cfg.max_body as u64 {
        return Err(Reject::BodyTooLarge);
    }
    collect(body, cfg.max_body, cfg.body_timeout).await
}

async fn collect<B>(body: B, max: usize, deadline: Duration) -> Result<Bytes, Reject>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut gathered = std::pin::pin!(gather(Limited::new(body, max)));
    // A body that came with its head (nearly every one) is read at once, and no timer
    // is set for it; one still arriving is read within the deadline.
    let read = match (&mut gathered).now_or_never() {
        Some(read) => read,
        None => match tokio::time::timeout(deadline, gathered).await {
            Ok(read) => read,
            Err(_) => return Err(Reject::BodyTimeout),
        },
    };
    match read {
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Reject::BodyTooLarge),
        Err(_) => Err(Reject::BodyUnreadable),
        Ok(bytes) => Ok(bytes),
    }
}

/// The body's data: a body that came in one frame (nearly every one: it arrived with its
/// head) is that frame's bytes as they are; frames after it are joined in one buffer.
/// Trailers are dropped. (`BodyExt::collect` queues every frame first, which allocates
/// for the one frame too.)
async fn gather<B: Body<Data = Bytes>>(body: B) -> Result<Bytes, B::Error> {
    let mut body = std::pin::pin!(body);
    let mut first = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        match &mut joined {
            Some(buf) => buf.extend_from_slice(&data),
            None if first.is_empty() => first = data,
            None => {
                let mut buf = BytesMut::with_capacity(first.len() + data.len());
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&data);
                joined = Some(buf);
            }
        }
    }
    Ok(joined.map_or(first, BytesMut::freeze))
}

/// The application talks plain JSON to an egress route (a missing type is tolerated).
fn check_plain_json_type(ct: Option<&[u8]>) -> Result<(), Reject> {
    accepted(ct, &["application/json", "text/plain"])
}

/// The media type of a `Content-Type` header, without parameters; the callers compare it
/// case-insensitively, as media types are (RFC 9110 §8.3.1).
// Not the `mime` crate: only the essence is compared against short allowlists, and a
// header it would refuse to parse must still pass on routes that take any type.
// Compared as bytes: the allowlists are ASCII, and a value of visible ASCII needs no
// `str` made of it first.
fn mime_of(ct: Option<&[u8]>) -> Result<Option<&[u8]>, Reject> {
    let Some(ct) = ct else { return Ok(None) };
    if !is_text(ct) {
        return Err(Reject::UnsupportedMediaType);
    }
    // Visible ASCII, space and tab only: trimming ASCII space is all the trimming.
    let end = ct.iter().position(|&b| b == b';').unwrap_or(ct.len());
    Ok(ct.get(..end).map(<[u8]>::trim_ascii))
}

/// Whether `mime` is one of `allowed`, in any case.
fn one_of(mime: &[u8], allowed: &[&str]) -> bool {
    allowed
        .iter()
        .any(|a| a.as_bytes().eq_ignore_ascii_case(mime))
}

/// Accepts a `Content-Type` whose media type is one of `allowed` (each in lower case),
/// or none. A value written exactly as one of them, as most senders write it, is
/// compared whole first: the same verdict without taking the value apart.
fn accepted(ct: Option<&[u8]>, allowed: &[&str]) -> Result<(), Reject> {
    if ct.is_some_and(|ct| allowed.iter().any(|a| a.as_bytes() == ct)) {
        return Ok(());
    }
    match mime_of(ct)? {
        Some(mime) if !one_of(mime, allowed) => Err(Reject::UnsupportedMediaType),
        _ => Ok(()),
    }
}

/// Form envelopes come urlencoded or as JSON; token envelopes as JSON. A missing content
/// type is tolerated (many legacy senders omit it) and the layer decides from the body.
fn check_content_type(layers: &[Layer], ct: Option<&[u8]>) -> Result<(), Reject> {
    let allowed: &[&str] = match layers.first() {
        Some(Layer::Form) => &["application/x-www-form-urlencoded", "application/json"],
        Some(Layer::Token) => &["application/json", "text/plain"],
        Some(Layer::Aes) | Some(Layer::Jwt) => {
            &["text/plain", "application/json", "application/octet-stream"]
        }
        // Any type, as long as it is one (visible ASCII).
        Some(Layer::Bearer | Layer::Passcode) | None => return mime_of(ct).map(drop),
    };
    accepted(ct, allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_must_fit_the_envelope() {
        let form = [Layer::Form, Layer::Aes];
        let v = |s: &'static str| s.as_bytes();
        assert!(check_content_type(
            &form,
            Some(v("application/x-www-form-urlencoded; charset=UTF-8"))
        )
        .is_ok());
        assert!(check_content_type(&form, Some(v("application/json"))).is_ok());
        // Media types compare in any case, parameters and spaces aside.
        assert!(check_content_type(&form, Some(v(" Application/JSON ;charset=utf-8"))).is_ok());
        assert!(check_plain_json_type(Some(v("TEXT/plain"))).is_ok());
        assert!(check_plain_json_type(Some(v("application/jsonx"))).is_err());
        assert!(check_content_type(&form, None).is_ok());
        assert!(check_content_type(&form, Some(v("multipart/form-data; boundary=x"))).is_err());
        let token = [Layer::Token, Layer::Jwt];
        assert!(check_content_type(&token, Some(v("application/x-www-form-urlencoded"))).is_err());
        // Tabs around the type are spaces; a value that is not visible ASCII names no type.
        assert!(check_content_type(&token, Some(v("\tapplication/json\t;charset=x"))).is_ok());
        let opaque = b"application/json; x=\xe0\xa6\xac";
        assert!(check_content_type(&token, Some(&opaque[..])).is_err());
        assert!(check_content_type(&[Layer::Passcode], Some(v("anything/at-all"))).is_ok());
        assert!(check_content_type(&[Layer::Bearer], Some(&b"text/\x01"[..])).is_err());
        // Each layer's types, written exactly as listed, and no other layer's.
        assert!(check_content_type(&[Layer::Aes], Some(v("application/octet-stream"))).is_ok());
        assert!(check_content_type(&token, Some(v("application/octet-stream"))).is_err());
        assert!(check_plain_json_type(Some(v("text/plain"))).is_ok());
        assert!(check_plain_json_type(Some(v("application/octet-stream"))).is_err());
    }

    #[tokio::test]
    async fn a_body_over_the_limit_or_late_is_refused() {
        use http_body_util::{Full, StreamBody};
        let big = Full::new(Bytes::from(vec![b'a'; 11]));
        let err = collect(big, 10, Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(err, Reject::BodyTooLarge));
        let ok = collect(
            Full::new(Bytes::from_static(b"{}")),
            10,
            Duration::from_secs(1),
        );
        assert_eq!(ok.await.unwrap(), Bytes::from_static(b"{}"));
        // A body in several frames (and an empty one among them) is read whole, in order.
        let frames = |parts: &'static [&'static str]| {
            StreamBody::new(futures_util::stream::iter(parts.iter().map(|p| {
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(
                    p.as_bytes(),
                )))
            })))
        };
        let split = frames(&["{\"a\":", "", "1,", "\"b\":2}"]);
        let whole = collect(split, 64, Duration::from_secs(1)).await.unwrap();
        assert_eq!(whole, Bytes::from_static(br#"{"a":1,"b":2}"#));
        let over = frames(&["12345", "678901"]);
        let err = collect(over, 10, Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(err, Reject::BodyTooLarge));
        // A body that never ends: the deadline answers.
        let never = StreamBody::new(futures_util::stream::pending::<
            Result<hyper::body::Frame<Bytes>, std::convert::Infallible>,
        >());
        let err = collect(never, 10, Duration::from_millis(20))
            .await
            .unwrap_err();
        assert!(matches!(err, Reject::BodyTimeout));
    }
}
