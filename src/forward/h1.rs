//! HTTP/1.1 on one connection to the application, for the forwarder's one shape of
//! exchange: a whole request out, a whole answer in.
//!
//! A general client streams bodies both ways and keeps a dispatcher and a state machine
//! per connection. The forwarder holds both bodies whole, so this codec only frames: the
//! request head goes out beside its body in one `writev`, and the answer is read into one
//! buffer and framed by `httparse` as RFC 9112 §6.3 says. Header values and a
//! `Content-Length` body are slices of that buffer, not copies. The answer's fields that
//! describe this hop (the hop-by-hop ones, those its `Connection` names, its length) are
//! read for framing and not handed on.

use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::Poll;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use memchr::memmem;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::Answer;
use crate::words::{field_value, same_name};

/// The most header fields an answer (or its trailer section) may carry.
const MAX_HEADERS: usize = 100;
/// The longest answer head, status line to blank line, 1xx heads before it included; also
/// the longest trailer section.
const MAX_HEAD: usize = 64 * 1024;
/// The longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;
/// The read buffer an exchange starts with: a typical answer (a head and a short JSON
/// body) arrives whole in it. The body is handed on as a slice of this buffer, so the
/// whole of it is held until the caller has its answer: 2 KiB, not 8, on each request in
/// flight. A longer answer grows it (a declared length at once, to its size).
const FIRST_READ: usize = 2 * 1024;

/// Why an exchange on a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    /// Not one byte of the request was written: it never reached the application.
    #[error("connection failed before the request was sent: {0}")]
    Unsent(io::Error),
    #[error("connection failed while the request was sent: {0}")]
    Write(io::Error),
    #[error("connection failed while the answer was read: {0}")]
    Read(io::Error),
    #[error("connection closed before the answer was complete")]
    Closed,
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
    #[error("answer larger than the limit")]
    TooLarge,
}

/// How the answer's body is delimited (RFC 9112 §6.3).
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    /// No body: a `HEAD` request, 204 or 304.
    Empty,
    Length(usize),
    Chunked,
    /// Until the application closes the connection.
    Close,
}

/// A request head as it goes on the wire, written field by field: no header map is built
/// for a request that is sent once. Names are `http`'s (valid by construction) and a value
/// with a byte a field may not hold (CR, LF, NUL, other controls) is left out, so nothing
/// written here can end the head early or add a field.
pub struct RequestHead {
    bytes: Vec<u8>,
    head_request: bool,
}

impl RequestHead {
    /// `method path[?query] HTTP/1.1`; `path` is an `http::Uri`'s, `query` a request
    /// target's (both checked URI text).
    pub fn new(method: &Method, path: &str, query: Option<&[u8]>) -> RequestHead {
        let mut bytes = Vec::with_capacity(512);
        bytes.extend_from_slice(method.as_str().as_bytes());
        bytes.push(b' ');
        bytes.extend_from_slice(path.as_bytes());
        if let Some(q) = query {
            bytes.push(b'?');
            bytes.extend_from_slice(q);
        }
        bytes.extend_from_slice(b" HTTP/1.1\r\n");
        RequestHead {
            bytes,
            head_request: method == Method::HEAD,
        }
    }

    /// Adds `name: value` (left out when `value` holds a byte no field may hold).
    pub fn field(&mut self, name: &HeaderName, value: &[u8]) {
        if field_value(value) {
            self.write(name, value);
        }
    }

    /// Adds `name: value` for a value `http` has already checked: a `HeaderValue` holds
    /// no byte a field may not (the same rule as [`field_value`]), so it is not read again.
    pub fn header(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.write(name, value.as_bytes());
    }

    /// `name: value` and the line's end, `value` known to be a field value.
    fn write(&mut self, name: &HeaderName, value: &[u8]) {
        self.bytes.extend_from_slice(name.as_str().as_bytes());
        self.bytes.extend_from_slice(b": ");
        self.bytes.extend_from_slice(value);
        self.bytes.extend_from_slice(b"\r\n");
    }

    /// Adds the fields of `fixed`, encoded when they were made.
    pub fn fixed(&mut self, fixed: &FixedFields) {
        self.bytes.extend_from_slice(&fixed.0);
    }

    /// Adds `name: n` in decimal (digits alone: no byte to check).
    pub fn field_number(&mut self, name: &HeaderName, n: usize) {
        let mut digits = [0u8; 20];
        self.write(name, decimal(n, &mut digits));
    }

    /// Adds `name: address` as text: an IPv4 address written directly (digits and dots
    /// alone: no byte to check), IPv6 formatted.
    pub fn field_address(&mut self, name: &HeaderName, address: std::net::IpAddr) {
        match address {
            std::net::IpAddr::V4(v4) => {
                let (text, len) = dotted_cached(v4.octets());
                self.write(name, text.get(..len).unwrap_or_default());
            }
            v6 => self.field_display(name, v6),
        }
    }

    /// Adds `name: value` with `value` written as text, without an intermediate string.
    pub fn field_display(&mut self, name: &HeaderName, value: impl std::fmt::Display) {
        use std::io::Write;
        let start = self.bytes.len();
        self.bytes.extend_from_slice(name.as_str().as_bytes());
        self.bytes.extend_from_slice(b": ");
        let at = self.bytes.len();
        let written = write!(self.bytes, "{value}").is_ok();
        let valid = self.bytes.get(at..).is_some_and(field_value);
        if written && valid {
            self.bytes.extend_from_slice(b"\r\n");
        } else {
            self.bytes.truncate(start);
        }
    }

    /// Whether the request is `HEAD` (its answer has no body).
    pub fn is_head(&self) -> bool {
        self.head_request
    }

    /// The head so far, for tests.
    #[cfg(test)]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Fields every request of a route carries with the same values, encoded once when the
/// route is built and copied into each request's head whole.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FixedFields(Vec<u8>);

impl FixedFields {
    pub fn new<'a>(
        fields: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    ) -> FixedFields {
        let mut head = RequestHead {
            bytes: Vec::new(),
            head_request: false,
        };
        for (name, value) in fields {
            head.header(name, value);
        }
        FixedFields(head.bytes)
    }

    /// The fields as they are written, for tests.
    #[cfg(test)]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// [`dotted`], kept for the last address this thread wrote: a connection's requests, and
/// most of a worker's (a department's callers are the portal's few servers), come from
/// one address, so its text is made once and copied after that.
fn dotted_cached(octets: [u8; 4]) -> ([u8; 16], usize) {
    thread_local! {
        static LAST: std::cell::Cell<([u8; 4], [u8; 16], usize)> =
            const { std::cell::Cell::new(([0; 4], *b"0.0.0.0\0\0\0\0\0\0\0\0\0", 7)) };
    }
    LAST.with(|last| {
        let (seen, text, len) = last.get();
        if seen == octets {
            return (text, len);
        }
        let (text, len) = dotted(octets);
        last.set((octets, text, len));
        (text, len)
    })
}

/// An IPv4 address in dotted decimal, in the first bytes of the array (how many is the
/// second part): each octet's digits and a dot made in one register and stored at once,
/// no branch per digit and no store per byte.
fn dotted(octets: [u8; 4]) -> ([u8; 16], usize) {
    let mut text = [0u8; 16];
    let mut len = 0usize;
    for v in octets {
        let digits = 1 + u32::from(v >= 10) + u32::from(v >= 100);
        // The three digits, the most significant first, shifted down past the leading
        // zeros the octet does not write; a dot after them.
        let all = u32::from_le_bytes([b'0' + v / 100, b'0' + v / 10 % 10, b'0' + v % 10, 0]);
        let octet = (all >> (8 * (3 - digits))) | (u32::from(b'.') << (8 * digits));
        if let Some(slot) = text.get_mut(len..len + 4) {
            slot.copy_from_slice(&octet.to_le_bytes());
        }
        len += digits as usize + 1;
    }
    // Less the last octet's dot.
    (text, len - 1)
}

/// `n` in decimal, written at the end of `digits`: no formatter for a number sent per
/// request.
pub(crate) fn decimal(n: usize, digits: &mut [u8; 20]) -> &[u8] {
    let mut start = digits.len();
    let mut rest = n;
    for slot in digits.iter_mut().rev() {
        // `rest % 10` is below 10, so the cast cannot truncate.
        *slot = b'0' + (rest % 10) as u8;
        start -= 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    digits.get(start..).unwrap_or_default()
}

/// Whether a comma-separated field value (`Connection`) lists `token`, in any case.
pub(crate) fn lists_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| same_name(t.trim_ascii(), token))
}

/// Whether the last coding a `Transfer-Encoding` value names is `chunked`.
pub(crate) fn last_coding_is_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|b| *b == b',')
        .next()
        .is_some_and(|c| same_name(c.trim_ascii(), b"chunked"))
}

/// Writes `parts` in order, in one `writev` when the socket takes them all. `written` is
/// set once any byte has gone out (a request not written at all can be sent again).
pub(crate) async fn write_parts<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    mut parts: [&[u8]; 3],
    written: &mut bool,
) -> io::Result<()> {
    while parts.iter().any(|p| !p.is_empty()) {
        let slices = parts.map(IoSlice::new);
        let mut n = match w.write_vectored(&slices).await? {
            0 => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            n => n,
        };
        *written = true;
        for part in &mut parts {
            let taken = n.min(part.len());
            *part = part.get(taken..).unwrap_or_default();
            n = n.saturating_sub(taken);
        }
    }
    Ok(())
}

/// One keep-alive connection to the application (a `TcpStream`; tests use others).
pub(crate) struct Conn<S = TcpStream> {
    stream: S,
    /// The deadline timer of the connection's last exchange, kept for the next one. A
    /// later deadline only moves the timer's expiry (one compare-and-swap); a new timer
    /// each exchange was entered into the runtime's timer wheel and taken out again.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Conn {
    /// Whether an idle connection can carry another request: the application has neither
    /// closed it nor sent anything unasked since the last answer. Costs no system call
    /// unless the reactor saw the socket become readable.
    pub(crate) fn is_idle_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub(crate) fn new(stream: S) -> Conn<S> {
        Conn {
            stream,
            timer: None,
        }
    }

    /// Sends the request and reads its whole answer ([`Conn::send`], [`Conn::receive`]),
    /// unless `deadline` passes first (`None`).
    pub(crate) async fn exchange(
        &mut self,
        head: &RequestHead,
        body: &[u8],
        max: usize,
        deadline: Instant,
    ) -> Option<Result<(Answer, bool), Fault>> {
        let mut timer = match self.timer.take() {
            Some(mut t) => {
                t.as_mut().reset(deadline);
                t
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        let outcome = {
            let mut work = std::pin::pin!(async {
                self.send(head, body).await?;
                self.receive(head.is_head(), max).await
            });
            std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = work.as_mut().poll(cx) {
                    return Poll::Ready(Some(r));
                }
                timer.as_mut().poll(cx).map(|()| None)
            })
            .await
        };
        // Kept on a connection worker only, where the connection stays (its pool slot is
        // the worker's): a timer belongs to the runtime that made it.
        if crate::workers::current() != 0 {
            self.timer = Some(timer);
        }
        outcome
    }

    /// Writes the request: its head, the blank line and `body` in one `writev` when the
    /// socket takes them all.
    pub(crate) async fn send(&mut self, head: &RequestHead, body: &[u8]) -> Result<(), Fault> {
        let mut written = false;
        let parts = [head.bytes.as_slice(), b"\r\n".as_slice(), body];
        write_parts(&mut self.stream, parts, &mut written)
            .await
            .map_err(|e| match written {
                true => Fault::Write(e),
                false => Fault::Unsent(e),
            })
    }

    /// Reads the whole answer to a request just sent (`head_request`: it was `HEAD`, so the
    /// answer has no body), its body at most `max` bytes. Also says whether the connection
    /// can carry another request.
    pub(crate) async fn receive(
        &mut self,
        head_request: bool,
        max: usize,
    ) -> Result<(Answer, bool), Fault> {
        let mut buf = BytesMut::with_capacity(FIRST_READ);
        // The final head, after any interim (1xx) ones; `seen` counts every head byte. The
        // head is parsed once a blank line has arrived (one parse, however the answer is
        // cut into reads).
        let mut seen = 0usize;
        let mut new_from = 0usize;
        let (mut answer, framing, mut reusable, rest) = loop {
            let scan = match blank_line_from(&buf, new_from) {
                true => take_head(&mut buf, head_request)?,
                false => Scan::Partial,
            };
            match scan {
                Scan::Final(head) => break head,
                Scan::Interim(len) => {
                    seen = seen.saturating_add(len);
                    new_from = 0;
                }
                Scan::Partial if seen.saturating_add(buf.len()) >= MAX_HEAD => {
                    return Err(Fault::Malformed("head longer than 64 KiB"))
                }
                Scan::Partial => {
                    new_from = buf.len();
                    self.fill(&mut buf, 0).await?;
                }
            }
        };
        // `rest`: what arrived after the head, usually the whole body.
        let (body, past) = match framing {
            Framing::Empty => (Bytes::new(), rest.len()),
            Framing::Length(n) if n > max => return Err(Fault::TooLarge),
            Framing::Length(n) if rest.len() >= n => {
                let mut rest = rest;
                (rest.split_to(n), rest.len())
            }
            Framing::Length(n) => {
                let mut buf = BytesMut::with_capacity(n);
                buf.extend_from_slice(&rest);
                while buf.len() < n {
                    let want = n.saturating_sub(buf.len());
                    self.fill(&mut buf, want).await?;
                }
                let body = buf.split_to(n).freeze();
                (body, buf.len())
            }
            Framing::Chunked => {
                let mut buf = BytesMut::from(rest.as_ref());
                let body = self.dechunk(&mut buf, max).await?;
                (body, buf.len())
            }
            Framing::Close => {
                reusable = false;
                let body = self
                    .read_to_close(BytesMut::from(rest.as_ref()), max)
                    .await?;
                (body, 0)
            }
        };
        // Bytes past the answer were never asked for: the connection is not trusted again.
        if past > 0 {
            reusable = false;
        }
        answer.body = body;
        Ok((answer, reusable))
    }

    /// Reads more into `buf`, with room for at least `want` more bytes; the connection's
    /// end before the answer's is [`Fault::Closed`].
    async fn fill(&mut self, buf: &mut BytesMut, want: usize) -> Result<(), Fault> {
        if buf.capacity().saturating_sub(buf.len()) < want.max(1024) {
            buf.reserve(want.max(FIRST_READ));
        }
        match self.stream.read_buf(buf).await {
            Ok(0) => Err(Fault::Closed),
            Ok(_) => Ok(()),
            Err(e) => Err(Fault::Read(e)),
        }
    }

    /// A chunked body, decoded, and its trailer section read past (trailers are not
    /// passed on: the answer goes on with a length).
    async fn dechunk(&mut self, buf: &mut BytesMut, max: usize) -> Result<Bytes, Fault> {
        let mut body = BytesMut::new();
        loop {
            let (line, size) = match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete(c)) => c,
                Ok(httparse::Status::Partial) if buf.len() >= MAX_CHUNK_LINE => {
                    return Err(Fault::Malformed("chunk-size line too long"))
                }
                Ok(httparse::Status::Partial) => {
                    self.fill(buf, 0).await?;
                    continue;
                }
                Err(_) => return Err(Fault::Malformed("bad chunk size")),
            };
            buf.advance(line);
            if size == 0 {
                break;
            }
            let size = usize::try_from(size).map_err(|_| Fault::TooLarge)?;
            if body.len().saturating_add(size) > max {
                return Err(Fault::TooLarge);
            }
            let need = size.saturating_add(2);
            while buf.len() < need {
                let want = need.saturating_sub(buf.len());
                self.fill(buf, want).await?;
            }
            body.extend_from_slice(buf.get(..size).unwrap_or_default());
            buf.advance(size);
            if buf.get(..2) != Some(b"\r\n".as_slice()) {
                return Err(Fault::Malformed("chunk data not followed by CRLF"));
            }
            buf.advance(2);
        }
        let mut new_from = 0usize;
        loop {
            let end = match buf.starts_with(b"\r\n")
                || buf.starts_with(b"\n")
                || blank_line_from(buf, new_from)
            {
                true => trailers_end(buf)?,
                false => None,
            };
            match end {
                Some(len) => {
                    buf.advance(len);
                    return Ok(body.freeze());
                }
                None if buf.len() >= MAX_HEAD => {
                    return Err(Fault::Malformed("trailer section longer than 64 KiB"))
                }
                None => {
                    new_from = buf.len();
                    self.fill(buf, 0).await?;
                }
            }
        }
    }

    /// A body delimited by the connection's end.
    async fn read_to_close(&mut self, mut buf: BytesMut, max: usize) -> Result<Bytes, Fault> {
        loop {
            if buf.len() > max {
                return Err(Fault::TooLarge);
            }
            match self.fill(&mut buf, 0).await {
                Ok(()) => {}
                Err(Fault::Closed) => return Ok(buf.freeze()),
                Err(e) => return Err(e),
            }
        }
    }
}

/// What the start of the read buffer holds.
// One per answer, moved straight out of `take_head`: boxing the large variant would
// only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Scan {
    /// Not all of a head yet.
    Partial,
    /// A 1xx answer other than 101, this long: taken off the buffer; the final one follows.
    Interim(usize),
    /// The final answer's head, taken off the buffer.
    Final(Head),
}

/// The final answer's status and header fields (its body still empty), how its body is
/// framed, whether the connection may be kept, and the bytes read past the head.
type Head = (Answer, Framing, bool, Bytes);

/// Parses the head at the start of `buf` once it has all arrived and takes it off the
/// buffer. The bytes read so far are frozen first, so the header values and what follows
/// the head are slices of them, not copies.
fn take_head(buf: &mut BytesMut, head_request: bool) -> Result<Scan, Fault> {
    let bad = Fault::Malformed;
    let all = buf.split().freeze();
    let mut fields = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        &all,
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            buf.extend_from_slice(&all);
            return Ok(Scan::Partial);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(bad("more than 100 header fields")),
        Err(_) => return Err(bad("bad status line or header field")),
    };
    let rest = all.slice(len.min(all.len())..);
    let code = res.code.unwrap_or(0);
    if code == 101 {
        return Err(bad("protocol switch not asked for"));
    }
    if (100..=199).contains(&code) {
        buf.extend_from_slice(&rest);
        return Ok(Scan::Interim(len));
    }
    let status = StatusCode::from_u16(code).map_err(|_| bad("bad status code"))?;
    let http11 = res.version == Some(1);
    // The fields a `Connection` field names are for this hop alone, as the hop-by-hop
    // fields are: read here for framing, never handed on.
    let listed = super::connection_listed(
        res.headers
            .iter()
            .filter(|f| same_name(f.name.as_bytes(), b"connection"))
            .map(|f| f.value),
    );
    // The fields handed on, as the lines the client's connection writes: no `HeaderName`
    // or `HeaderValue` is made of them (`httparse` has held their names and values to the
    // same rules).
    let mut answer = Answer::new(status, Bytes::new(), len);
    let mut length: Option<usize> = None;
    let mut coded = false;
    let mut chunked = false;
    let mut close = !http11;
    for field in res.headers.iter() {
        // The framing fields and the other fields of this hop are read from the name as
        // sent and never handed on.
        // (Each name spelled out: a `HeaderName`'s text is looked up in a table.)
        let raw = field.name.as_bytes();
        if same_name(raw, b"content-length") {
            let n = content_length(field.value)?;
            if length.is_some_and(|l| l != n) {
                return Err(bad("conflicting Content-Length"));
            }
            length = Some(n);
            continue;
        }
        if same_name(raw, b"transfer-encoding") {
            // The last coding of the last field decides (RFC 9112 §6.3).
            std::str::from_utf8(field.value).map_err(|_| bad("bad Transfer-Encoding"))?;
            coded = true;
            chunked = last_coding_is_chunked(field.value);
            continue;
        }
        if same_name(raw, b"connection") {
            close |= lists_token(field.value, b"close");
            continue;
        }
        // The sidecar names the request itself (`X-Request-Id`).
        if same_name(raw, b"x-request-id")
            || super::is_hop_by_hop(raw)
            || listed.iter().any(|t| t.eq_ignore_ascii_case(raw))
        {
            continue;
        }
        // Names in lower case, as `http` wrote them. A line written `name: value\r\n` (as
        // most applications write every field) is copied whole.
        match written_line(&all, raw, field.value) {
            Some(line) => answer.push_written(line, raw.len()),
            None => answer.push_line(raw, field.value),
        }
    }
    let framing =
        if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::Empty
        } else if coded {
            if !chunked {
                return Err(bad("transfer coding other than chunked"));
            }
            // A length beside a coding is a framing conflict (RFC 9112 §6.1): the coding wins,
            // and the connection is not used again.
            close |= length.is_some() || !http11;
            Framing::Chunked
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            Framing::Close
        };
    Ok(Scan::Final((answer, framing, !close, rest)))
}

/// The line of `head` that holds the field `name: value` (both slices of `head`), when it
/// is written exactly `name: value\r\n`.
fn written_line<'a>(head: &'a [u8], name: &[u8], value: &[u8]) -> Option<&'a [u8]> {
    let base = head.as_ptr() as usize;
    let from = (name.as_ptr() as usize).checked_sub(base)?;
    let value_from = from.checked_add(name.len())?.checked_add(2)?;
    if (value.as_ptr() as usize).checked_sub(base)? != value_from {
        return None;
    }
    let to = value_from.checked_add(value.len())?.checked_add(2)?;
    let line = head.get(from..to)?;
    let separator = line.get(name.len()..name.len().checked_add(2)?)?;
    (separator == b": " && line.ends_with(b"\r\n")).then_some(line)
}

/// A `Content-Length` value: decimal digits, or a list of one value repeated
/// (RFC 9110 §8.6).
fn content_length(value: &[u8]) -> Result<usize, Fault> {
    let mut length = None;
    for item in value.split(|b| *b == b',') {
        let digits = item.trim_ascii();
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(Fault::Malformed("bad Content-Length"));
        }
        let n = digits.iter().try_fold(0usize, |n, d| {
            n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
        });
        let n = n.ok_or(Fault::TooLarge)?;
        if length.is_some_and(|l| l != n) {
            return Err(Fault::Malformed("conflicting Content-Length"));
        }
        length = Some(n);
    }
    length.ok_or(Fault::Malformed("bad Content-Length"))
}

/// Whether a blank line (`\n\n` or `\n\r\n`: `httparse` accepts either) ends in `buf` at
/// or after `from`, where the bytes not yet looked at begin. Each ending is searched for
/// whole, where looking at each line's end in turn made a search per field.
fn blank_line_from(buf: &[u8], from: usize) -> bool {
    static CRLF: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"\n\r\n"));
    static LF: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\n\n"));
    let window = buf.get(from.saturating_sub(2)..).unwrap_or_default();
    CRLF.find(window).is_some() || LF.find(window).is_some()
}

/// Where the trailer section at the start of `buf` ends (its blank line included), once
/// all of it has arrived.
fn trailers_end(buf: &[u8]) -> Result<Option<usize>, Fault> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete((len, _))) => Ok(Some(len)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(Fault::Malformed("bad trailer field")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::CONTENT_LENGTH;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::ReadBuf;

    /// A connection whose application side is scripted: reads return `answer` at most
    /// `step` bytes at a time (then end), writes take at most `step` bytes at a time.
    struct Scripted {
        answer: Vec<u8>,
        read: usize,
        step: usize,
        written: Vec<u8>,
        writes: usize,
    }

    impl Scripted {
        fn new(answer: &[u8], step: usize) -> Self {
            Scripted {
                answer: answer.to_vec(),
                read: 0,
                step,
                written: Vec::new(),
                writes: 0,
            }
        }
    }

    impl AsyncRead for Scripted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let end = (self.read + self.step)
                .min(self.answer.len())
                .min(self.read + buf.remaining());
            let piece = self.answer[self.read..end].to_vec();
            buf.put_slice(&piece);
            self.read = end;
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Scripted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.written.extend_from_slice(&buf[..n]);
            self.writes += 1;
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.step - n);
                self.written.extend_from_slice(&b[..take]);
                n += take;
            }
            self.writes += 1;
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// `answer` read whole, delivered 1, 7 and 4096 bytes at a time: the same result each
    /// way (or the same fault).
    async fn read(answer: &str, head_request: bool, max: usize) -> Result<(Answer, bool), Fault> {
        let mut outcomes = Vec::new();
        for step in [1, 7, 4096] {
            let mut conn = Conn::new(Scripted::new(answer.as_bytes(), step));
            outcomes.push(conn.receive(head_request, max).await);
        }
        let last = outcomes.pop().unwrap();
        for other in outcomes {
            match (&other, &last) {
                (Ok((a, ra)), Ok((b, rb))) => {
                    assert_eq!(
                        (a.status, a.line_bytes(), &a.body, ra),
                        (b.status, b.line_bytes(), &b.body, rb)
                    );
                }
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                _ => panic!("{answer:?} read differently in pieces: {other:?} / {last:?}"),
            }
        }
        last
    }

    fn body(r: &Result<(Answer, bool), Fault>) -> (&[u8], bool) {
        let (resp, reusable) = r.as_ref().unwrap();
        (resp.body.as_ref(), *reusable)
    }

    fn fault(r: Result<(Answer, bool), Fault>) -> String {
        match r {
            Ok((resp, _)) => panic!("read as an answer: {resp:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[tokio::test]
    async fn the_request_goes_out_head_and_body_together() {
        let mut head = RequestHead::new(&Method::POST, "/api/x", Some(b"y=1"));
        head.field(&http::header::HOST, b"app.local:8080");
        head.field_number(&CONTENT_LENGTH, 11);
        let two = HeaderName::from_static("x-two");
        head.field(&two, b"a");
        head.field(&two, b"b\tc \xe0\xa6\x95");
        // A value that would end the head or add a field is left out, whole.
        head.field(&two, b"x\r\nx-evil: 1");
        head.field(&two, b"x\0");
        head.field(&two, b"del\x7f");
        head.field_display(&two, "y\nz");
        head.field_display(&two, "esc\x1b");
        let expected = "POST /api/x?y=1 HTTP/1.1\r\nhost: app.local:8080\r\ncontent-length: 11\r\n\
                        x-two: a\r\nx-two: b\tc \u{995}\r\n\r\n{\"a\":\"\u{995}\"}";
        // Whole in one write, and again when the socket takes 5 bytes a write.
        for (step, writes) in [(4096, 1), (5, expected.len().div_ceil(5))] {
            let mut conn = Conn::new(Scripted::new(b"", step));
            let body = "{\"a\":\"\u{995}\"}".as_bytes();
            conn.send(&head, body).await.unwrap();
            assert_eq!(
                String::from_utf8(conn.stream.written.clone()).unwrap(),
                expected
            );
            assert_eq!(conn.stream.writes, writes, "step {step}");
        }
        assert!(!head.is_head());
        assert!(RequestHead::new(&Method::HEAD, "/", None).is_head());
    }

    #[test]
    fn numbers_and_addresses_are_written_as_text() {
        let name = HeaderName::from_static("x-a");
        for n in [0, 7, 10, 99, 100, 4096, 1 << 20, usize::MAX] {
            let mut head = RequestHead::new(&Method::GET, "/", None);
            head.field_number(&name, n);
            assert_eq!(
                head.as_bytes(),
                format!("GET / HTTP/1.1\r\nx-a: {n}\r\n").as_bytes()
            );
        }
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "192.168.100.255",
            "255.255.255.255",
            "1.10.100.9",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let mut head = RequestHead::new(&Method::GET, "/", None);
            head.field_address(&name, ip.parse().unwrap());
            assert_eq!(
                head.as_bytes(),
                format!("GET / HTTP/1.1\r\nx-a: {ip}\r\n").as_bytes()
            );
        }
        // Every octet at each place, beside octets of one, two and three digits.
        for place in 0..4 {
            for around in [0u8, 7, 42, 255] {
                for v in 0..=255u8 {
                    let mut octets = [around; 4];
                    if let Some(o) = octets.get_mut(place) {
                        *o = v;
                    }
                    let ip = std::net::Ipv4Addr::from(octets);
                    let (text, len) = dotted(octets);
                    assert_eq!(&text[..len], ip.to_string().as_bytes(), "{ip}");
                }
            }
        }
    }

    /// The text kept for the last address is its own: each address in a run of repeats
    /// and alternations (the first one the kept text's starting value) is written as
    /// itself, on two threads at once.
    #[test]
    fn an_address_written_again_is_written_as_itself() {
        let run = [
            "0.0.0.0",
            "0.0.0.0",
            "10.0.0.1",
            "10.0.0.1",
            "10.0.0.10",
            "0.0.0.0",
        ];
        let write_all = |order: Vec<&'static str>| {
            std::thread::spawn(move || {
                for ip in order {
                    let mut head = RequestHead::new(&Method::GET, "/", None);
                    head.field_address(
                        &HeaderName::from_static("x-forwarded-for"),
                        ip.parse().unwrap(),
                    );
                    let expected = format!("GET / HTTP/1.1\r\nx-forwarded-for: {ip}\r\n");
                    assert_eq!(head.as_bytes(), expected.as_bytes(), "{ip}");
                }
            })
        };
        let forward = write_all(run.to_vec());
        let backward = write_all(run.iter().rev().copied().collect());
        forward.join().unwrap();
        backward.join().unwrap();
    }

    #[tokio::test]
    async fn answers_framed_each_way_are_read_whole() {
        let r = read("HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 7\r\n\r\n{\"a\":1}", false, 100).await;
        let (resp, reusable) = r.as_ref().unwrap();
        assert_eq!(resp.status, StatusCode::CREATED);
        assert_eq!(
            resp.get(&http::header::CONTENT_TYPE),
            Some(&b"application/json"[..])
        );
        let xa: Vec<_> = resp
            .lines()
            .filter(|(n, _)| *n == b"x-a")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(xa, [b"1", b"2"]);
        assert_eq!(
            (resp.body.as_ref(), *reusable),
            (b"{\"a\":1}".as_slice(), true)
        );

        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                       3;ext=1\r\n{\"a\r\n4\r\n\":1}\r\n0\r\nX-Trailer: t\r\n\r\n";
        assert_eq!(
            body(&read(chunked, false, 100).await),
            (b"{\"a\":1}".as_slice(), true)
        );
        let coded =
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity , CHUNKED\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        assert_eq!(
            body(&read(coded, false, 100).await),
            (b"{}".as_slice(), true)
        );

        // Interim answers are skipped; the final one is read.
        let interim = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
                       HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(
            body(&read(interim, false, 100).await),
            (b"{}".as_slice(), true)
        );

        // No length and no coding: the body ends with the connection, which is not kept.
        let close =
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"until\":\"closed\"}";
        assert_eq!(
            body(&read(close, false, 100).await),
            (b"{\"until\":\"closed\"}".as_slice(), false)
        );

        // No body: 204, 304, and any answer to HEAD.
        for (answer, head) in [
            ("HTTP/1.1 204 No Content\r\n\r\n", false),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false,
            ),
            ("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true),
        ] {
            assert_eq!(
                body(&read(answer, head, 100).await),
                (b"".as_slice(), true),
                "{answer}"
            );
        }
    }

    /// What describes the application's hop stays here: the hop-by-hop fields, those its
    /// `Connection` names (wherever they stand), and its length (the answer sent on is
    /// framed anew). The rest is handed on in order.
    #[tokio::test]
    async fn an_answers_hop_fields_are_not_handed_on() {
        let answer = "HTTP/1.1 200 OK\r\nX-Hop: 1\r\nContent-Type: application/json\r\n\
                      Connection: Keep-Alive, X-Hop\r\nKeep-Alive: timeout=5\r\n\
                      Connection: x-other\r\nX-Other: 2\r\nProxy-Connection: x\r\n\
                      Upgrade: h2c\r\nTrailer: x-t\r\nX-Kept: 1\r\nX-Request-Id: app-own\r\n\
                      x-kept: 2\r\nContent-Length: 2\r\n\r\n{}";
        let r = read(answer, false, 100).await;
        let (resp, reusable) = r.as_ref().unwrap();
        // Names in lower case, values as sent; the request id is the sidecar's to give.
        assert_eq!(
            resp.line_bytes(),
            b"content-type: application/json\r\nx-kept: 1\r\nx-kept: 2\r\n"
        );
        assert!(resp.map().is_none());
        assert_eq!((resp.body.as_ref(), *reusable), (b"{}".as_slice(), true));
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\
                       X-A: 1\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        let r = read(chunked, false, 100).await;
        let names: Vec<_> = r.as_ref().unwrap().0.lines().map(|(n, _)| n).collect();
        assert_eq!(names, [b"x-a"]);
    }

    /// However a field's line is written (one space after the colon or another spacing, a
    /// bare line feed, an empty value, a name in capitals), the line handed on is the
    /// same: the name in lower case, `: `, the value as read.
    #[tokio::test]
    async fn a_field_is_handed_on_alike_however_its_line_is_written() {
        for (field, handed) in [
            ("X-A: 1\r\n", "x-a: 1\r\n"),
            ("X-A:1\r\n", "x-a: 1\r\n"),
            ("X-A:  1\r\n", "x-a: 1\r\n"),
            ("X-A: 1 \r\n", "x-a: 1\r\n"),
            ("X-A: 1\t\r\n", "x-a: 1\r\n"),
            ("X-A: 1\n", "x-a: 1\r\n"),
            ("X-A: a b\r\n", "x-a: a b\r\n"),
            ("X-A: \r\n", "x-a: \r\n"),
            ("X-A:\r\n", "x-a: \r\n"),
            ("X-A:\n", "x-a: \r\n"),
        ] {
            for before in ["", "Server: s\r\n", "Content-Length: 2\r\n"] {
                let answer =
                    format!("HTTP/1.1 200 OK\r\n{before}{field}Content-Length: 2\r\n\r\n{{}}");
                let r = read(&answer, false, 100).await;
                let (resp, _) = r.as_ref().unwrap();
                let kept = before
                    .strip_prefix("Server")
                    .map_or("", |_| "server: s\r\n");
                let lines = String::from_utf8_lossy(resp.line_bytes());
                assert_eq!(lines, format!("{kept}{handed}"), "{answer:?}");
                assert!(!resp.dated(), "{answer:?}");
            }
        }
        for date in ["Date", "DATE", "date"] {
            let answer = format!("HTTP/1.1 200 OK\r\n{date}: d\r\nContent-Length: 2\r\n\r\n{{}}");
            let r = read(&answer, false, 100).await;
            let (resp, _) = r.as_ref().unwrap();
            assert_eq!(resp.line_bytes(), b"date: d\r\n", "{answer:?}");
            assert!(resp.dated(), "{answer:?}");
        }
    }

    /// Heads with lines ended by CRLF, by LF alone or both, read in pieces cut at every
    /// place: a blank line is seen exactly when one ends at or after where the new bytes
    /// begin, as a look at every line's end sees it.
    #[test]
    fn a_blank_line_is_seen_where_it_ends_however_the_head_arrives() {
        let heads: [&[u8]; 5] = [
            b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\nA: 1\nB: 2\n\n{}",
            b"HTTP/1.1 200 OK\r\nA: 1\nB: 2\r\n\n{}",
            b"HTTP/1.1 200 OK\nA: \r\r\n\nB\r\n\r\r\n\r\n",
            b"\n\r\n",
        ];
        let reference = |buf: &[u8], from: usize| {
            (from.saturating_sub(2)..buf.len()).any(|i| {
                let rest = &buf[i..];
                rest.starts_with(b"\n\n") || rest.starts_with(b"\n\r\n")
            })
        };
        for head in heads {
            for cut in 0..=head.len() {
                let buf = &head[..cut];
                for from in 0..=cut {
                    assert_eq!(
                        blank_line_from(buf, from),
                        reference(buf, from),
                        "{:?} from {from}",
                        String::from_utf8_lossy(buf)
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn a_connection_is_kept_only_when_the_answer_allows_it() {
        for (answer, kept) in [
            ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", true),
            ("HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 2\r\n\r\n{}", false),
            ("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}", false),
            // A length beside a coding: the coding frames it, and the connection ends.
            ("HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", false),
        ] {
            assert_eq!(body(&read(answer, false, 100).await), (b"{}".as_slice(), kept), "{answer}");
        }
        // Bytes past the answer, read with it, were never asked for.
        let extra = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\n";
        let mut conn = Conn::new(Scripted::new(extra.as_bytes(), 4096));
        let r = conn.receive(false, 100).await;
        assert_eq!(body(&r), (b"{}".as_slice(), false));
    }

    #[tokio::test]
    async fn malformed_answers_are_refused() {
        let long_head = format!(
            "HTTP/1.1 200 OK\r\nX-Long: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "X-A: 1\r\n".repeat(MAX_HEADERS + 1)
        );
        for (answer, expected) in [
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
                "protocol switch",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
                "conflicting Content-Length",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\n{}",
                "conflicting Content-Length",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n{}",
                "bad Content-Length",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n{}",
                "transfer coding other than chunked",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
                "bad chunk size",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}xx0\r\n\r\n",
                "not followed by CRLF",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}",
                "closed before the answer was complete",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n",
                "closed before the answer was complete",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Le",
                "closed before the answer was complete",
            ),
            ("", "closed before the answer was complete"),
            ("HTTP/1.1 2000 OK\r\n\r\n", "bad status line"),
            (
                "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
                "bad status line or header field",
            ),
            (&long_head, "head longer than 64 KiB"),
            (&many, "more than 100 header fields"),
        ] {
            let got = fault(read(answer, false, 100).await);
            assert!(got.contains(expected), "{answer:.80}: {got}");
        }
    }

    #[tokio::test]
    async fn answers_over_the_limit_are_refused() {
        let big = "x".repeat(101);
        for answer in [
            // Refused from the length alone, before the body is read.
            "HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n".to_string(),
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n".to_string(),
            format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n50\r\n{}\r\n51\r\n{}\r\n0\r\n\r\n", &big[..80], &big[..81]),
            format!("HTTP/1.1 200 OK\r\n\r\n{big}"),
        ] {
            assert!(matches!(read(&answer, false, 100).await, Err(Fault::TooLarge)), "{answer:.60}");
        }
        // Exactly the limit is read.
        let at = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}",
            &big[..100]
        );
        assert_eq!(body(&read(&at, false, 100).await).0.len(), 100);
    }

    #[tokio::test]
    async fn an_idle_connection_the_application_closed_is_seen_closed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conn = Conn::new(TcpStream::connect(addr).await.unwrap());
        let (server, _) = listener.accept().await.unwrap();
        assert!(conn.is_idle_open());
        drop(server);
        // The reactor sees the end on one of its next turns.
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while conn.is_idle_open() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the closed connection was never seen closed");
    }
}
