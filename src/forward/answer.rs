//! The answer a client connection writes: a status, fields, a body.
//!
//! Not an `http::Response`: its `HeaderMap` made a `HeaderName` and a `HeaderValue` of
//! each field of the application's answer, hashed each into a table of two allocations,
//! then copied its request id in, only for the connection to write the fields out again
//! as they came. An [`Answer`] keeps the application's fields as the lines they are
//! written as (`name: value\r\n`, names in lower case), read once by the forwarder; the
//! sidecar's own answers (refusals, the journal's, egress) keep their `HeaderMap`, and
//! the connection writes both.

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{HeaderMap, HeaderName, DATE};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

/// One answer, whole. Small enough (80 bytes) to be moved from stage to stage without a
/// call to `memcpy`: the map, which only the sidecar's own answers use, is boxed.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    /// Fields set by name (a refusal's `Retry-After`, the journal's type), when any.
    headers: Option<Box<HeaderMap>>,
    /// Fields as written, `name: value\r\n` each, names in lower case.
    lines: BytesMut,
    /// Whether `lines` holds a `Date`.
    dated: bool,
    pub body: Bytes,
}

impl Answer {
    /// An answer of `status` with `body` and no field yet; `room` bytes of fields are
    /// expected.
    pub fn new(status: StatusCode, body: Bytes, room: usize) -> Answer {
        Answer {
            status,
            headers: None,
            lines: BytesMut::with_capacity(room),
            dated: false,
            body,
        }
    }

    /// Adds `name: value`, the name lowered; both already checked (by the parser that
    /// read them, or as the sidecar's own).
    pub(crate) fn push_line(&mut self, name: &[u8], value: &[u8]) {
        let from = self.lines.len();
        self.put_line(name, value);
        self.lower_name(from, name.len());
    }

    /// Writes the line `name: value`.
    fn put_line(&mut self, name: &[u8], value: &[u8]) {
        self.lines.reserve(name.len() + value.len() + 4);
        self.lines.put_slice(name);
        self.lines.put_slice(b": ");
        self.lines.put_slice(value);
        self.lines.put_slice(b"\r\n");
    }

    /// Adds a field given as the line it was written as, `name: value\r\n` exactly (one
    /// space after the colon), its name `name_len` bytes long: copied whole, then its name
    /// lowered — the line [`Answer::push_line`] would write of it.
    pub(crate) fn push_written(&mut self, line: &[u8], name_len: usize) {
        let from = self.lines.len();
        self.lines.extend_from_slice(line);
        self.lower_name(from, name_len);
    }

    /// Lowers the name of the line just written at `from`, `len` bytes long (as its
    /// sender wrote it, where it lies), and notes a `Date`.
    fn lower_name(&mut self, from: usize, len: usize) {
        if let Some(name) = self.lines.get_mut(from..from.saturating_add(len)) {
            crate::words::lower_ascii(name);
            self.dated |= name == b"date";
        }
    }

    /// Sets `name` to `value`, in place of any value given before.
    pub fn set(&mut self, name: &HeaderName, value: &[u8]) {
        self.remove(name);
        self.add(name, value);
    }

    /// Adds `name: value` after the fields already there (a value no field may hold is
    /// left out).
    pub fn add(&mut self, name: &HeaderName, value: &[u8]) {
        if crate::words::field_value(value) {
            // A `HeaderName` is in lower case already.
            self.put_line(name.as_str().as_bytes(), value);
            self.dated |= name == DATE;
        }
    }

    /// The fields set by name, when any.
    pub fn map(&self) -> Option<&HeaderMap> {
        self.headers.as_deref()
    }

    /// The fields set by name, to add to.
    pub fn map_mut(&mut self) -> &mut HeaderMap {
        self.headers.get_or_insert_with(Box::default)
    }

    /// Sets `name`, a field the application's lines never hold (the forwarder drops it as
    /// it reads them: `X-Request-Id`), to `value`: replaced in the map only.
    pub(crate) fn set_own(&mut self, name: &HeaderName, value: &[u8]) {
        if let Some(map) = &mut self.headers {
            map.remove(name);
        }
        self.add(name, value);
    }

    /// Removes every field called `name`.
    pub fn remove(&mut self, name: &HeaderName) {
        if let Some(map) = &mut self.headers {
            map.remove(name);
        }
        let name = name.as_str().as_bytes();
        if !self.lines().any(|(n, _)| n == name) {
            return;
        }
        let mut kept = Answer::new(self.status, Bytes::new(), self.lines.len());
        for (n, v) in self.lines().filter(|(n, _)| *n != name) {
            kept.push_line(n, v);
        }
        self.lines = kept.lines;
        self.dated = kept.dated;
    }

    /// The fields kept as lines: name (lower case) and value.
    pub fn lines(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        (self.lines.as_ref().split(|b| *b == b'\n'))
            .filter_map(|line| line.strip_suffix(b"\r"))
            .filter_map(|line| {
                let colon = line.iter().position(|b| *b == b':')?;
                let (name, value) = line.split_at(colon);
                Some((name, value.get(2..).unwrap_or_default()))
            })
    }

    /// The fields kept as lines, as written.
    pub(crate) fn line_bytes(&self) -> &[u8] {
        &self.lines
    }

    /// The value of the first field called `name`, of either kind.
    pub fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        if let Some(v) = self.map().and_then(|m| m.get(name)) {
            return Some(v.as_bytes());
        }
        let name = name.as_str().as_bytes();
        self.lines().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Whether the answer gives its own `Date`.
    pub fn dated(&self) -> bool {
        self.dated || self.map().is_some_and(|m| m.contains_key(DATE))
    }
}

/// The sidecar's own answers: a `Full` body is ready at once (its one frame, or none).
impl From<Response<Full<Bytes>>> for Answer {
    fn from(resp: Response<Full<Bytes>>) -> Answer {
        let (parts, mut body) = resp.into_parts();
        let data = match body.frame().now_or_never() {
            Some(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
            _ => Bytes::new(),
        };
        Answer::from(Response::from_parts(parts, data))
    }
}

impl From<Response<Bytes>> for Answer {
    fn from(resp: Response<Bytes>) -> Answer {
        let (parts, body) = resp.into_parts();
        let mut answer = Answer::new(parts.status, body, 0);
        if !parts.headers.is_empty() {
            answer.headers = Some(Box::new(parts.headers));
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONTENT_TYPE, RETRY_AFTER};

    #[test]
    fn fields_of_both_kinds_are_read_set_and_removed_by_name() {
        let mut a = Answer::new(StatusCode::OK, Bytes::from_static(b"{}"), 64);
        a.push_line(b"Content-Type", b"text/plain");
        a.push_line(b"X-App", b"1");
        a.push_line(b"content-type", b"text/html");
        a.map_mut().insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(a.get(&CONTENT_TYPE), Some(&b"text/plain"[..]));
        assert_eq!(a.get(&RETRY_AFTER), Some(&b"2"[..]));
        a.set(&CONTENT_TYPE, b"application/json");
        let lines: Vec<_> = a.lines().collect();
        assert_eq!(
            lines,
            [
                (&b"x-app"[..], &b"1"[..]),
                (b"content-type", b"application/json")
            ]
        );
        assert_eq!(
            a.line_bytes(),
            b"x-app: 1\r\ncontent-type: application/json\r\n"
        );
        // A value no field may hold is not written.
        a.set(&CONTENT_TYPE, b"a\r\nx-injected: 1");
        assert_eq!(a.get(&CONTENT_TYPE), None);
        assert!(!a.line_bytes().windows(10).any(|w| w == b"x-injected"));
        assert!(!a.dated());
        a.push_line(b"DATE", b"Tue, 01 Dec 2026 10:00:00 GMT");
        assert!(a.dated());
        a.remove(&DATE);
        assert!(!a.dated());
        a.add(&DATE, b"Tue, 01 Dec 2026 10:00:00 GMT");
        assert!(a.dated());
    }

    #[test]
    fn an_answer_moves_without_a_copy_call() {
        // Moved through five or six stages a request: at 144 bytes and more, each move
        // was a call to `memcpy`.
        assert!(std::mem::size_of::<Answer>() <= 80);
        assert!(std::mem::size_of::<Result<Answer, crate::error::Reject>>() <= 88);
    }

    #[test]
    fn an_http_response_keeps_its_status_fields_and_body() {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"body")));
        *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        resp.headers_mut().insert(RETRY_AFTER, "1".parse().unwrap());
        let mut a = Answer::from(resp);
        assert_eq!(
            (a.status, &a.body[..]),
            (StatusCode::TOO_MANY_REQUESTS, &b"body"[..])
        );
        a.push_line(b"x-app", b"v");
        assert_eq!(a.get(&RETRY_AFTER), Some(&b"1"[..]));
        assert_eq!(a.get(&"x-app".parse().unwrap()), Some(&b"v"[..]));
    }
}
