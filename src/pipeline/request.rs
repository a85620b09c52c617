//! The request as the pipeline reads it: method, target, the head's fields as they came,
//! the client's certificate, and the body still to be read.
//!
//! The fields are not an `http::HeaderMap`. A map parsed each name, checked and counted
//! each value, hashed each name into its table and allocated for it (twice, and once more
//! for each name it does not know), then dropped all of it: about 1,000 instructions for
//! a request of three fields. The pipeline reads five or six fields by name and forwards an allowlisted few,
//! so [`Fields`] keeps where each name and value lies in the head's bytes, as the parser
//! found them, and a lookup walks that short list comparing names without regard to case.
//!
//! ```
//! use bsk_sidecar::pipeline::Request;
//! let req = http::Request::post("/bsk/status")
//!     .header("Content-Type", "application/json")
//!     .header("x-passcode", "376423")
//!     .body(())
//!     .unwrap();
//! let req = Request::from(req);
//! assert_eq!(req.fields.text(&http::header::CONTENT_TYPE), Some("application/json"));
//! assert_eq!(req.fields.get(&"X-Passcode".parse().unwrap()), Some(&b"376423"[..]));
//! ```

use std::fmt;
use std::sync::{Arc, LazyLock};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName};
use http::{Method, Uri};

use crate::guard::client_cert::PresentedCert;

/// One request: what the connection parsed of its head, and its body.
pub struct Request<B> {
    pub method: Method,
    pub target: Target,
    pub fields: Fields,
    /// The certificate the client presented on an mTLS listener.
    pub client_cert: Option<Arc<PresentedCert>>,
    pub body: B,
}

/// A request's target as the pipeline reads it: its path, which picks the route, and its
/// query, which a route may pass on. Origin-form (`/path?query`) as `http`'s `Uri` reads
/// it: the path up to the first `?`, no fragment.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// The path, then `?` and the query when there is one.
    text: Bytes,
    /// Where the path ends: at the `?`, or at the text's end.
    path_end: usize,
}

impl Target {
    /// `text` as an origin-form target when every byte of it is one `http`'s `Uri` takes
    /// as it is in a path or query — letters, digits, `%` and the punctuation RFC 3986
    /// leaves unescaped — so a usual target is split at its `?` without building a `Uri`.
    /// Any other text (an absolute-form target, a fragment, a byte `Uri` takes only for
    /// compatibility) is given back, to be read through [`Target::from`] a `Uri`.
    pub fn origin(text: Bytes) -> Result<Target, Bytes> {
        // One look-up a byte (a chain of range tests cost about 17 instructions a byte).
        static PLAIN: LazyLock<[bool; 256]> = LazyLock::new(|| {
            std::array::from_fn(|b| {
                let b = u8::try_from(b).unwrap_or(0);
                let punctuation = matches!(b, b'!' | b'$'..=b';' | b'=' | b'_' | b'~');
                punctuation || matches!(b, b'?'..=b'Z' | b'a'..=b'z')
            })
        });
        let plain: &[bool; 256] = &PLAIN;
        let taken = |b: &u8| plain.get(usize::from(*b)).copied().unwrap_or(false);
        if text.first() != Some(&b'/') || !text.iter().all(taken) {
            return Err(text);
        }
        let path_end = text.iter().position(|&b| b == b'?').unwrap_or(text.len());
        Ok(Target { text, path_end })
    }

    /// The whole target: path, then `?` and the query when there is one.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text).unwrap_or_default()
    }

    /// The path (ASCII: read as bytes, not made a `str` first).
    pub fn path(&self) -> &[u8] {
        self.text.get(..self.path_end).unwrap_or_default()
    }

    /// The query, without its `?`; `None` when the target has no `?`.
    pub fn query(&self) -> Option<&[u8]> {
        self.text.get(self.path_end..)?.strip_prefix(b"?")
    }
}

/// A `Uri`'s path and query, as it reads them (any form: the path of an absolute-form
/// target, none of an authority-form one).
impl From<&Uri> for Target {
    fn from(uri: &Uri) -> Target {
        let path = uri.path();
        let text = match uri.query() {
            Some(q) => Bytes::from(format!("{path}?{q}")),
            None => Bytes::copy_from_slice(path.as_bytes()),
        };
        Target {
            path_end: path.len(),
            text,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Where a field's name and value lie in the head: `[name from, name to, value from,
/// value to]`.
pub(crate) type Span = [u32; 4];

/// A request head's fields, in the order they came, names in lower case (header names
/// are case-insensitive, RFC 9110 §5.1: the connection lowers them as it parses the head).
/// Names are tokens and values hold no control byte but tab (the parser refused any
/// other head).
#[derive(Clone, Default)]
pub struct Fields {
    head: Bytes,
    spans: Vec<Span>,
}

impl Fields {
    /// The fields at `spans` of `head`, their names already in lower case. A span outside
    /// `head` reads as an empty name and value (the parser only makes spans inside it).
    pub(crate) fn from_spans(head: Bytes, spans: Vec<Span>) -> Fields {
        Fields { head, spans }
    }

    fn slice(&self, from: u32, to: u32) -> &[u8] {
        self.head
            .get(from as usize..to as usize)
            .unwrap_or_default()
    }

    /// Each field's name (lower case) and value, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.spans
            .iter()
            .map(|&[nf, nt, vf, vt]| (self.slice(nf, nt), self.slice(vf, vt)))
    }

    /// The values of every field called `name`, in order.
    pub fn get_all<'a: 'n, 'n>(
        &'a self,
        name: &'n HeaderName,
    ) -> impl DoubleEndedIterator<Item = &'a [u8]> + 'n {
        let name = name.as_str().as_bytes();
        self.spans
            .iter()
            .filter(move |&&[nf, nt, _, _]| self.is(nf, nt, name))
            .map(|&[_, _, vf, vt]| self.slice(vf, vt))
    }

    /// The value of the first field called `name`.
    pub fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        self.get_all(name).next()
    }

    /// Whether the name at `from..to` is `name` (lower case). Most names differ in
    /// length, which is compared first.
    fn is(&self, from: u32, to: u32, name: &[u8]) -> bool {
        to.wrapping_sub(from) as usize == name.len() && self.slice(from, to) == name
    }

    /// The value of the first field called `name`, when it is text (visible ASCII, space
    /// and tab: what `http::HeaderValue::to_str` accepts).
    pub fn text(&self, name: &HeaderName) -> Option<&str> {
        self.get(name).and_then(text)
    }
}

/// `value` as text, when it is visible ASCII, space and tab only.
pub fn text(value: &[u8]) -> Option<&str> {
    match is_text(value) {
        true => std::str::from_utf8(value).ok(),
        false => None,
    }
}

/// Whether `value` is visible ASCII, space and tab only: [`text`] without making a `str`.
pub fn is_text(value: &[u8]) -> bool {
    // Every byte is looked at (no early exit), which the compiler turns into a few
    // vector operations for a value of a typical length.
    (value.iter()).fold(true, |ok, &b| {
        ok & (matches!(b, b' '..=b'~') | (b == b'\t'))
    })
}

/// Names only: a value may be a credential (`Authorization`, `X-Passcode`).
impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(n, _)| String::from_utf8_lossy(n)))
            .finish()
    }
}

/// The fields of a map, in its order (a test's or a tool's request).
impl From<&HeaderMap> for Fields {
    fn from(map: &HeaderMap) -> Fields {
        let mut head = BytesMut::new();
        let mut spans = Vec::with_capacity(map.len());
        let at = |head: &BytesMut| u32::try_from(head.len()).unwrap_or(u32::MAX);
        for (name, value) in map {
            let name_from = at(&head);
            head.put_slice(name.as_str().as_bytes());
            let name_to = at(&head);
            head.put_slice(b": ");
            let value_from = at(&head);
            head.put_slice(value.as_bytes());
            spans.push([name_from, name_to, value_from, at(&head)]);
            head.put_slice(b"\r\n");
        }
        Fields::from_spans(head.freeze(), spans)
    }
}

/// An `http` request (a test's, a tool's): its certificate, if any, from its extensions.
impl<B> From<http::Request<B>> for Request<B> {
    fn from(req: http::Request<B>) -> Request<B> {
        let (parts, body) = req.into_parts();
        Request {
            fields: Fields::from(&parts.headers),
            client_cert: parts.extensions.get::<Arc<PresentedCert>>().cloned(),
            target: Target::from(&parts.uri),
            method: parts.method,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONNECTION, CONTENT_TYPE};

    /// Fields as the connection hands them on: names lowered.
    fn fields(raw: &[(&str, &str)]) -> Fields {
        let mut head = Vec::new();
        let mut spans = Vec::new();
        for (n, v) in raw {
            let nf = head.len() as u32;
            head.extend_from_slice(n.to_ascii_lowercase().as_bytes());
            let nt = head.len() as u32;
            head.extend_from_slice(b":");
            let vf = head.len() as u32;
            head.extend_from_slice(v.as_bytes());
            spans.push([nf, nt, vf, head.len() as u32]);
        }
        Fields::from_spans(Bytes::from(head), spans)
    }

    #[test]
    fn fields_are_found_by_name_values_in_order() {
        let f = fields(&[
            ("Content-TYPE", "application/json"),
            ("Connection", "keep-alive"),
            ("CONNECTION", "X-Secret"),
        ]);
        assert_eq!(f.text(&CONTENT_TYPE), Some("application/json"));
        let all: Vec<&[u8]> = f.get_all(&CONNECTION).collect();
        assert_eq!(all, [&b"keep-alive"[..], b"X-Secret"]);
        assert_eq!(f.get(&"x-passcode".parse().unwrap()), None);
        assert_eq!(f.iter().count(), 3);
    }

    #[test]
    fn only_visible_ascii_is_text() {
        assert_eq!(text(b"a b\tc~"), Some("a b\tc~"));
        assert_eq!(text("é".as_bytes()), None);
        assert_eq!(text(b"a\x7f"), None);
        assert_eq!(text(b"a\x01"), None);
        let f = fields(&[("content-type", "text/plain; x=\u{e9}")]);
        assert_eq!(f.text(&CONTENT_TYPE), None);
        assert!(f.get(&CONTENT_TYPE).is_some());
    }

    #[test]
    fn a_span_outside_the_head_reads_empty() {
        let f = Fields::from_spans(Bytes::from_static(b"host: a"), vec![[0, 4, 6, 99]]);
        assert_eq!(f.iter().collect::<Vec<_>>(), [(&b"host"[..], &b""[..])]);
    }

    #[test]
    fn debug_prints_names_never_values() {
        let f = fields(&[("X-Passcode", "376423"), ("Authorization", "Bearer s3cret")]);
        let shown = format!("{f:?}");
        assert!(shown.contains("x-passcode") && shown.contains("authorization"));
        assert!(
            !shown.contains("376423") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    /// A target taken where it lies reads as `http`'s `Uri` reads it; one it does not take
    /// is given back whole. Every byte value at every place of a few targets.
    #[test]
    fn an_origin_target_reads_as_a_uri_does() {
        let mut taken = 0;
        for template in ["/", "/a?b", "/bsk/status?x=1&y=%20", "/p?q?r"] {
            for at in 1..=template.len() {
                for b in 0..=255u8 {
                    let mut text = template.as_bytes().to_vec();
                    text.insert(at, b);
                    check_against_uri(&text);
                    taken += usize::from(Target::origin(Bytes::from(text)).is_ok());
                }
            }
        }
        // Most bytes are taken where they lie; the test would pass vacuously otherwise.
        assert!(taken > 1000, "{taken}");
        for other in [
            "*",
            "http://h/a?b",
            "example.com:443",
            "a/b",
            "",
            "/a#f",
            "/a b",
        ] {
            assert!(Target::origin(Bytes::from(other)).is_err(), "{other:?}");
        }
    }

    /// `text` taken where it lies only if `Uri` takes it, with the same path and query.
    fn check_against_uri(text: &[u8]) {
        let Ok(target) = Target::origin(Bytes::copy_from_slice(text)) else {
            return;
        };
        let uri = Uri::from_maybe_shared(Bytes::copy_from_slice(text))
            .unwrap_or_else(|e| panic!("{:?} taken, not a Uri: {e}", target));
        assert_eq!(
            (target.path(), target.query()),
            (uri.path().as_bytes(), uri.query().map(str::as_bytes)),
            "{text:?}"
        );
        assert_eq!(Target::from(&uri), target, "{text:?}");
    }

    proptest::proptest! {
        /// Targets of the bytes that matter to the split, in any order.
        #[test]
        fn any_target_taken_reads_as_a_uri_does(
            text in proptest::collection::vec(
                proptest::sample::select(b"/?#%&=a0.~!$'()*+,;:@[]\\^`{}|\" -_Z\x7f\x80".to_vec()),
                0..24,
            )
        ) {
            check_against_uri(&text);
        }
    }

    #[test]
    fn an_http_request_keeps_its_fields_and_order() {
        let req = http::Request::post("/a?b=c")
            .header("x-one", "1")
            .header("x-two", "2")
            .header("x-one", "3")
            .body(())
            .unwrap();
        let req = Request::from(req);
        assert_eq!(
            (req.method, req.target.query()),
            (Method::POST, Some(&b"b=c"[..]))
        );
        let got: Vec<_> = req.fields.iter().collect();
        // A map groups a name's values; both of `x-one`'s are kept, in their order.
        assert_eq!(got.len(), 3);
        let ones: Vec<&[u8]> = req.fields.get_all(&"x-one".parse().unwrap()).collect();
        assert_eq!(ones, [&b"1"[..], b"3"]);
    }
}
