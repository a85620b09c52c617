//! HTTP/1.1 on one client connection: the request head parsed by `httparse`, the body
//! framed by `Content-Length` or the chunked coding (RFC 9112 §6–7), each answer's head
//! and body written in one `writev`.
//!
//! The sidecar answers one shape of exchange: a request, whole, then its answer, whole,
//! in order. A general server keeps a dispatcher, a body channel and a state machine per
//! connection for streaming both ways; here the connection is one loop (read a head, hand
//! the request on with its body still in the read buffer or the socket, write the answer),
//! and the body is read straight from that buffer by the stage that wants it.
//!
//! What is accepted and refused follows hyper's HTTP/1 server, which served these
//! listeners before, rule for rule: the same parser and limits (100 fields, the head no
//! longer than `max_header_bytes`: 431), a `Transfer-Encoding` whose last coding is not
//! `chunked` refused, a length beside a coding ignored and the connection closed after,
//! lengths that disagree refused, strict chunk framing (no bare LF), the HTTP/2 preface
//! closed without an answer, keep-alive by version and `Connection`.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, StatusCode, Uri, Version};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::forward::{self, write_parts, Answer};
use crate::pipeline::request::{self, Fields, Span};
use crate::pipeline::{Request, Target};

/// A client connection's stream, as the request body reads it.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The most header fields a request head (or its trailer section) may carry.
const MAX_HEADERS: usize = 100;
/// The longest request target.
const MAX_URI: usize = u16::MAX as usize - 1;
/// The most bytes of chunk extensions a body may carry (they are read past).
const MAX_EXTENSIONS: u64 = 16 * 1024;
/// What a read asks the socket for at least: a typical request (head and sealed body)
/// arrives whole in one read.
const READ_SIZE: usize = 4 * 1024;
/// The most one read asks for while a body is still to come.
const MAX_READ: usize = 64 * 1024;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the connection's requests go to.
pub(super) trait Service {
    /// What the service keeps from one request to the next while the loop runs: made
    /// when it starts, dropped when it returns. A request's handling may borrow it, as
    /// the loop takes the next request only after this one's answer.
    type Kept: Default + Send;
    /// One request, its body read from the connection as the handler asks for it. The
    /// loop holds the future in its own state while it runs.
    fn call<'a>(
        &self,
        kept: &'a mut Self::Kept,
        req: Request<ReqBody<'a>>,
    ) -> impl Future<Output = Answer> + Send + 'a;
    /// The answer to a request head that is not HTTP/1.1 (400, 414 or 431).
    fn refuse(&self, status: StatusCode) -> Answer;
    /// Part of a request head is in the buffer and the rest is awaited.
    fn head_begun(&self);
}

/// A request's handling, polled by a function of its own. Inlined into this loop
/// (generic over the stream), the whole pipeline laid out among the loop's code ran a
/// fifth more distinct code a request in a profile-guided build, and cost more time, than
/// the same pipeline behind a call (BENCHMARKS.md).
struct OutOfLine<'p, F>(Pin<&'p mut F>);

impl<F: Future> Future for OutOfLine<'_, F> {
    type Output = F::Output;

    #[inline(never)]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.0.as_mut().poll(cx)
    }
}

/// The connection's limits.
pub(super) struct Settings {
    /// The longest request head (`max_header_bytes`).
    pub max_head: usize,
    /// Whether a connection is kept after an answer (`keepalive_idle` is not zero).
    pub keep_alive: bool,
}

/// Serves requests on `io` until the client closes it, or it is not to be kept, or
/// `closing` is set (a drain, the idle deadline): the request being handled is answered,
/// with `Connection: close`, and none is waited for after it. `buf` holds what was read
/// and not yet used: a parked connection's caller reads it again first.
pub(super) async fn serve<S: Io, Svc: Service>(
    io: &mut S,
    buf: &mut BytesMut,
    settings: &Settings,
    closing: &AtomicBool,
    service: &Svc,
) -> io::Result<()> {
    let mut out = Vec::new();
    let mut kept = Svc::Kept::default();
    loop {
        let head = loop {
            if !buf.is_empty() {
                match parse_head(buf, settings.max_head) {
                    Ok(Some(head)) => break head,
                    Ok(None) => {}
                    Err(refusal) => {
                        let Some(status) = refusal.status() else {
                            return Ok(());
                        };
                        let answer = service.refuse(status);
                        return write_answer(io, &mut out, answer, Version::HTTP_11, true, false)
                            .await;
                    }
                }
                // Part of a head is here (it may have come behind the last request): its
                // deadline runs from now, if it did not already.
                service.head_begun();
            }
            let read = std::future::poll_fn(|cx| {
                // Finishing: a head not yet all here is not waited for.
                if closing.load(Ordering::Relaxed) {
                    return Poll::Ready(Ok(0));
                }
                poll_read_more(&mut *io, buf, READ_SIZE, cx)
            });
            if read.await? == 0 {
                // The client's end, a park or finishing: a head begun and not finished is
                // dropped.
                return Ok(());
            }
        };
        let Head {
            method,
            target,
            version,
            fields,
            framing,
            keep_alive,
            expect_continue,
        } = head;
        let head_request = method == Method::HEAD;
        let mut state = BodyState {
            framing,
            chunked: Chunked::default(),
            done: framing == Framing::Length(0),
            continue_left: match expect_continue && version == Version::HTTP_11 {
                true => CONTINUE.len(),
                false => 0,
            },
            max_trailers: settings.max_head,
        };
        let body = ReqBody {
            io: &mut *io,
            buf: &mut *buf,
            state: &mut state,
        };
        let req = Request {
            method,
            target,
            fields,
            client_cert: None,
            body,
        };
        // Awaited where it is pinned: `.await` on the future itself moved all of it
        // (its size is the pipeline's) into another place first.
        let answer = OutOfLine(std::pin::pin!(service.call(&mut kept, req))).await;
        // A body the handler did not read is skipped when it is all here already; else
        // the connection cannot be read further and closes after the answer.
        let reusable = state.skip_rest(buf);
        let close = !(keep_alive
            && reusable
            && settings.keep_alive
            && version == Version::HTTP_11
            && !closing.load(Ordering::Relaxed));
        write_answer(io, &mut out, answer, version, close, head_request).await?;
        if close {
            return Ok(());
        }
    }
}

/// Reads what the socket has into `buf`, with room for `want` more bytes (a typical
/// request at least, [`MAX_READ`] at most): what a body still has to come, so a large one
/// arrives in reads of up to 64 KiB, not 4.
fn poll_read_more<R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
    buf: &mut BytesMut,
    want: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    let want = want.clamp(READ_SIZE, MAX_READ);
    if buf.capacity().saturating_sub(buf.len()) < want / 4 {
        buf.reserve(want);
    }
    // `read_buf` keeps no state between polls: made anew at each poll, it reads once.
    let read = io.read_buf(buf);
    std::pin::pin!(read).poll(cx)
}

/// Writes one answer and flushes it.
async fn write_answer<S: Io>(
    io: &mut S,
    out: &mut Vec<u8>,
    answer: Answer,
    version: Version,
    close: bool,
    head_request: bool,
) -> io::Result<()> {
    out.clear();
    let bodiless = encode_head(&answer, answer.body.len(), version, close, out);
    let body = match head_request || bodiless {
        true => &[][..],
        false => &answer.body[..],
    };
    let mut written = false;
    write_parts(io, [out.as_slice(), body, &[]], &mut written).await?;
    io.flush().await
}

/// The answer's head: status line, its fields but those of this hop, the length, the
/// connection's fate and the date. Whether the status has no body at all.
fn encode_head(
    answer: &Answer,
    len: usize,
    version: Version,
    close: bool,
    out: &mut Vec<u8>,
) -> bool {
    let status = answer.status;
    if status == StatusCode::OK && version != Version::HTTP_10 {
        // Nearly every answer's line, written whole.
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(match version {
            Version::HTTP_10 => b"HTTP/1.0 ",
            _ => b"HTTP/1.1 ",
        });
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in answer.map().into_iter().flatten() {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING || name == CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // The application's fields, as the forwarder wrote them (none of this hop's).
    out.extend_from_slice(answer.line_bytes());
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if !bodiless {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(crate::forward::decimal(len, &mut [0; 20]));
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !answer.dated() {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&date::now());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    bodiless
}

/// Why a request head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Not HTTP/1.x as RFC 9112 has it: 400.
    Bad,
    /// A head over `max_header_bytes` or with over 100 fields: 431.
    TooLarge,
    /// A target over 65,534 bytes: 414.
    UriTooLong,
    /// The HTTP/2 connection preface: closed without an answer.
    H2,
}

impl Refusal {
    fn status(self) -> Option<StatusCode> {
        match self {
            Refusal::Bad => Some(StatusCode::BAD_REQUEST),
            Refusal::TooLarge => Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
            Refusal::UriTooLong => Some(StatusCode::URI_TOO_LONG),
            Refusal::H2 => None,
        }
    }
}

/// How the request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes (left to read).
    Length(u64),
    Chunked,
}

struct Head {
    method: Method,
    target: Target,
    version: Version,
    fields: Fields,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
}

/// Parses the request head at the start of `buf` once it has all arrived, and takes it
/// off the buffer (the body, and any request after it, stay). Header values and the
/// target are slices of the head's bytes, not copies.
fn parse_head(buf: &mut BytesMut, max_head: usize) -> Result<Option<Head>, Refusal> {
    let base = buf.as_ptr() as usize;
    // Within a head no longer than `max_head`; an offset past `u32` is out of range and
    // refused when sliced.
    let at = |s: &[u8]| {
        let from = (s.as_ptr() as usize).wrapping_sub(base);
        let to = from.wrapping_add(s.len());
        (
            u32::try_from(from).unwrap_or(u32::MAX),
            u32::try_from(to).unwrap_or(0),
        )
    };
    let (len, method, target, http11, mut spans) = {
        let mut fields = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            buf,
            &mut fields,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > max_head => return Err(Refusal::TooLarge),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooLarge),
            Err(httparse::Error::Version) if buf.starts_with(H2_PREFACE) => {
                return Err(Refusal::H2)
            }
            Err(_) => return Err(Refusal::Bad),
        };
        if len > max_head {
            return Err(Refusal::TooLarge);
        }
        let path = req.path.unwrap_or_default();
        if path.len() > MAX_URI {
            return Err(Refusal::UriTooLong);
        }
        let method = req.method.unwrap_or_default().as_bytes();
        let method = Method::from_bytes(method).map_err(|_| Refusal::Bad)?;
        // Each field's offsets (as `u32`: small). The fields handed on are these, less
        // any `Content-Length` the framing below sets aside.
        let spans: Vec<Span> = req
            .headers
            .iter()
            .map(|field| {
                let (name, value) = (at(field.name.as_bytes()), at(field.value));
                [name.0, name.1, value.0, value.1]
            })
            .collect();
        (
            len,
            method,
            at(path.as_bytes()),
            req.version == Some(1),
            spans,
        )
    };
    // Names are read in lower case from here on, so each lookup is a plain comparison.
    for &[name_from, name_to, _, _] in &spans {
        if let Some(name) = buf.get_mut(name_from as usize..name_to as usize) {
            crate::words::lower_ascii(name);
        }
    }
    let head = buf.split_to(len).freeze();
    let bytes = |from: u32, to: u32| head.get(from as usize..to as usize).ok_or(Refusal::Bad);
    let target = bytes(target.0, target.1).map(|s| head.slice_ref(s))?;
    // A usual target is split where it lies; any other is read by `http` as before.
    let target = match Target::origin(target) {
        Ok(origin) => origin,
        Err(other) => Target::from(&Uri::from_maybe_shared(other).map_err(|_| Refusal::Bad)?),
    };

    let mut framing = Framing::Length(0);
    let mut length = None;
    let mut lengths = 0usize;
    let mut coded = false;
    let mut chunked = false;
    let mut keep_alive = http11;
    let mut said_close = false;
    let mut expect_continue = false;
    // (Each name spelled out: a `HeaderName`'s text is looked up in a table.)
    for &[name_from, name_to, value_from, value_to] in &spans {
        let name = bytes(name_from, name_to)?;
        let value = bytes(value_from, value_to)?;
        if name == b"transfer-encoding" {
            // The last coding must be chunked (RFC 9112 §6.3); HTTP/1.0 has none.
            if !http11 {
                return Err(Refusal::Bad);
            }
            coded = true;
            chunked = last_coding_is_chunked(value);
            if chunked {
                framing = Framing::Chunked;
            }
        } else if name == b"content-length" {
            lengths += 1;
            // Beside a coding, a length is ignored (and the connection not kept).
            if coded {
                continue;
            }
            let n = digits(value).ok_or(Refusal::Bad)?;
            match length {
                Some(before) if before != n => return Err(Refusal::Bad),
                Some(_) => {}
                None => {
                    framing = Framing::Length(n);
                    length = Some(n);
                }
            }
        } else if name == b"connection" {
            // Once a `Connection` field says close, a later keep-alive does not undo it.
            if said_close || has_token(value, "close") {
                said_close = true;
                keep_alive = false;
            } else if !keep_alive {
                keep_alive = has_token(value, "keep-alive");
            }
        } else if name == b"expect" {
            expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    if coded && !chunked {
        return Err(Refusal::Bad);
    }
    if coded && lengths > 0 {
        keep_alive = false;
    }
    // The application sees one `Content-Length` (the first of equal ones), none beside a
    // coding: each field a map would have held.
    if lengths > 1 || (coded && lengths > 0) {
        let mut first = !coded;
        spans.retain(|&[nf, nt, _, _]| {
            !bytes(nf, nt).is_ok_and(|n| n == b"content-length") || std::mem::take(&mut first)
        });
    }
    Ok(Some(Head {
        method,
        target,
        version: match http11 {
            true => Version::HTTP_11,
            false => Version::HTTP_10,
        },
        fields: Fields::from_spans(head, spans),
        framing,
        keep_alive,
        expect_continue,
    }))
}

/// A `Content-Length` value: decimal digits only, no sign, space or list.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| match b {
        b'0'..=b'9' => n.checked_mul(10)?.checked_add(u64::from(b - b'0')),
        _ => None,
    })
}

/// Read as hyper read these fields: a value that is not visible ASCII names no coding
/// and no token.
fn last_coding_is_chunked(value: &[u8]) -> bool {
    request::text(value).is_some() && forward::last_coding_is_chunked(value)
}

/// Whether a `Connection` value lists `token`.
fn has_token(value: &[u8], token: &str) -> bool {
    request::text(value).is_some() && forward::lists_token(value, token.as_bytes())
}

/// Where one request's body stands; the connection reads it after the answer too.
pub(crate) struct BodyState {
    framing: Framing,
    chunked: Chunked,
    /// All of the body has been read.
    done: bool,
    /// Bytes of `100 Continue` still to write before the body is read.
    continue_left: usize,
    max_trailers: usize,
}

impl BodyState {
    /// Takes the rest of an unread body off `buf` when all of it is there; whether the
    /// connection can read a next request.
    fn skip_rest(&mut self, buf: &mut BytesMut) -> bool {
        if self.done {
            return true;
        }
        match self.framing {
            Framing::Length(left) if left <= buf.len() as u64 => {
                buf.advance(usize::try_from(left).unwrap_or(usize::MAX));
                true
            }
            // A chunked body not read is not looked into: the connection closes.
            Framing::Length(_) | Framing::Chunked => false,
        }
    }
}

/// A request's body, read from the connection's buffer and then its stream.
pub(crate) struct ReqBody<'a> {
    io: &'a mut dyn Io,
    buf: &'a mut BytesMut,
    state: &'a mut BodyState,
}

impl Body for ReqBody<'_> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let state = &mut *this.state;
        // A client that asked first is told to send the body when it is first read.
        while state.continue_left > 0 {
            let from = CONTINUE.len().saturating_sub(state.continue_left);
            let rest = CONTINUE.get(from..).unwrap_or_default();
            match ready!(Pin::new(&mut *this.io).poll_write(cx, rest))? {
                0 => return Poll::Ready(Some(Err(io::ErrorKind::WriteZero.into()))),
                n => state.continue_left = state.continue_left.saturating_sub(n),
            }
            if state.continue_left == 0 {
                ready!(Pin::new(&mut *this.io).poll_flush(cx))?;
            }
        }
        loop {
            if state.done {
                return Poll::Ready(None);
            }
            match state.framing {
                Framing::Length(left) if !this.buf.is_empty() => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(this.buf.len());
                    let left = left.saturating_sub(take as u64);
                    state.framing = Framing::Length(left);
                    state.done = left == 0;
                    let data = this.buf.split_to(take).freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Length(_) => {}
                Framing::Chunked => match state.chunked.step(this.buf, state.max_trailers)? {
                    Chunk::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Chunk::End => {
                        state.done = true;
                        return Poll::Ready(None);
                    }
                    Chunk::More => {}
                },
            }
            let want = match state.framing {
                Framing::Length(left) => usize::try_from(left).unwrap_or(usize::MAX),
                Framing::Chunked => state.chunked.data_left(),
            };
            if ready!(poll_read_more(&mut *this.io, this.buf, want, cx))? == 0 {
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection ended inside the request body",
                ))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state.framing {
            Framing::Length(left) => SizeHint::with_exact(left),
            Framing::Chunked => SizeHint::default(),
        }
    }
}

/// What decoding the chunked body found in the buffer.
#[derive(Debug, PartialEq, Eq)]
enum Chunk {
    Data(Bytes),
    /// The buffer ended first.
    More,
    /// The last chunk and the trailer section, all read.
    End,
}

/// Where the chunked decoder is, byte by byte as RFC 9112 §7.1 frames it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkAt {
    #[default]
    Start,
    Size,
    SizeSpace,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
    End,
}

#[derive(Debug, Default)]
struct Chunked {
    at: ChunkAt,
    /// The current chunk's size, then what is left of it.
    size: u64,
    extensions: u64,
    /// The trailer section as read, its blank line included, to be checked whole.
    trailers: Vec<u8>,
    trailer_lines: usize,
}

fn malformed(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl Chunked {
    /// Decodes what `buf` holds: the next piece of chunk data, or the end of the body.
    fn step(&mut self, buf: &mut BytesMut, max_trailers: usize) -> io::Result<Chunk> {
        use ChunkAt::*;
        loop {
            match self.at {
                End => return Ok(Chunk::End),
                Data if buf.is_empty() => return Ok(Chunk::More),
                Data => {
                    let take = usize::try_from(self.size)
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    self.size = self.size.saturating_sub(take as u64);
                    if self.size == 0 {
                        self.at = DataCr;
                    }
                    return Ok(Chunk::Data(buf.split_to(take).freeze()));
                }
                _ => {}
            }
            let Some(&b) = buf.first() else {
                return Ok(Chunk::More);
            };
            buf.advance(1);
            self.at = match (self.at, b) {
                (Start | Size, _) if b.is_ascii_hexdigit() => {
                    let digit = u64::from(char::from(b).to_digit(16).unwrap_or(0));
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|n| n.checked_add(digit))
                        .ok_or_else(|| malformed("chunk size overflows"))?;
                    Size
                }
                (Start, _) => return Err(malformed("chunk size line without a size")),
                (Size | SizeSpace, b'\t' | b' ') => SizeSpace,
                (Size | SizeSpace, b';') => Extension,
                (Size | SizeSpace, b'\r') => SizeLf,
                (Size | SizeSpace, _) => return Err(malformed("bad chunk size")),
                (Extension, b'\r') => SizeLf,
                (Extension, b'\n') => return Err(malformed("chunk extension with a bare LF")),
                (Extension, _) => {
                    self.extensions += 1;
                    if self.extensions >= MAX_EXTENSIONS {
                        return Err(malformed("chunk extensions over the limit"));
                    }
                    Extension
                }
                (SizeLf, b'\n') if self.size == 0 => EndCr,
                (SizeLf, b'\n') => Data,
                (SizeLf, _) => return Err(malformed("chunk size line without CRLF")),
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Start,
                (DataCr | DataLf, _) => return Err(malformed("chunk data not followed by CRLF")),
                (Trailer, _) => {
                    self.trailer_byte(b, max_trailers)?;
                    match b {
                        b'\r' => TrailerLf,
                        _ => Trailer,
                    }
                }
                (TrailerLf, b'\n') => {
                    if self.trailer_lines >= MAX_HEADERS {
                        return Err(malformed("more than 100 trailer fields"));
                    }
                    self.trailer_lines += 1;
                    self.trailer_byte(b, max_trailers)?;
                    EndCr
                }
                (TrailerLf, _) => return Err(malformed("trailer field without CRLF")),
                (EndCr, b'\r') => {
                    self.trailer_byte_if_any(b, max_trailers)?;
                    EndLf
                }
                (EndCr, _) => {
                    self.trailer_byte(b, max_trailers)?;
                    Trailer
                }
                (EndLf, b'\n') => {
                    self.trailer_byte_if_any(b, max_trailers)?;
                    self.check_trailers()?;
                    End
                }
                (EndLf, _) => return Err(malformed("chunked body without its final CRLF")),
                (Data | End, _) => self.at,
            };
        }
    }

    /// What is left of the chunk whose data is being read; 0 between chunks.
    fn data_left(&self) -> usize {
        match self.at {
            ChunkAt::Data => usize::try_from(self.size).unwrap_or(usize::MAX),
            _ => 0,
        }
    }

    fn trailer_byte(&mut self, b: u8, max: usize) -> io::Result<()> {
        if self.trailers.len() >= max {
            return Err(malformed("trailer section over the head limit"));
        }
        self.trailers.push(b);
        Ok(())
    }

    fn trailer_byte_if_any(&mut self, b: u8, max: usize) -> io::Result<()> {
        match self.trailers.is_empty() {
            true => Ok(()),
            false => self.trailer_byte(b, max),
        }
    }

    /// The trailer section must be header fields as a head's are (they are not passed on).
    fn check_trailers(&self) -> io::Result<()> {
        if self.trailers.is_empty() {
            return Ok(());
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match httparse::parse_headers(&self.trailers, &mut fields) {
            Ok(httparse::Status::Complete(_)) => Ok(()),
            _ => Err(malformed("bad trailer field")),
        }
    }
}

/// The `Date` field's value, made once a second per thread from the coarse clock.
mod date {
    use std::cell::RefCell;
    use std::time::{Duration, UNIX_EPOCH};

    const LEN: usize = 29;

    thread_local! {
        static CACHED: RefCell<(u64, [u8; LEN])> = const { RefCell::new((0, [0; LEN])) };
    }

    pub(super) fn now() -> [u8; LEN] {
        let secs = crate::clock::coarse::unix_secs();
        CACHED.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != secs {
                let text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
                for (d, s) in c.1.iter_mut().zip(text.as_bytes()) {
                    *d = *s;
                }
                c.0 = secs;
            }
            c.1
        })
    }
}

/// What [`read_all`] found at one point of the input.
#[doc(hidden)]
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// A request: its method, target and body.
    Request(String, String, Vec<u8>),
    /// A head refused with this status (0: closed without an answer).
    Refused(u16),
    /// A body refused as malformed.
    BadBody,
    /// The input ended inside a head or a body.
    Cut,
}

/// Reads `input` as the connection reads what a client sends: each request's head, then
/// its body, until the input ends or something is refused. For the fuzz target and the
/// tests; the connection's loop does the same across reads.
#[doc(hidden)]
pub fn read_all(input: &[u8], max_head: usize) -> Vec<Read> {
    let mut buf = BytesMut::from(input);
    let mut found = Vec::new();
    while !buf.is_empty() {
        let head = match parse_head(&mut buf, max_head) {
            Ok(Some(head)) => head,
            Ok(None) => {
                found.push(Read::Cut);
                break;
            }
            Err(refusal) => {
                found.push(Read::Refused(refusal.status().map_or(0, |s| s.as_u16())));
                break;
            }
        };
        let mut body = Vec::new();
        let complete = match head.framing {
            Framing::Length(n) => match usize::try_from(n).ok().filter(|n| *n <= buf.len()) {
                Some(n) => {
                    body.extend_from_slice(&buf.split_to(n));
                    true
                }
                None => false,
            },
            Framing::Chunked => {
                let mut chunked = Chunked::default();
                loop {
                    match chunked.step(&mut buf, max_head) {
                        Ok(Chunk::Data(d)) => body.extend_from_slice(&d),
                        Ok(Chunk::End) => break true,
                        Ok(Chunk::More) => break false,
                        Err(_) => {
                            found.push(Read::BadBody);
                            return found;
                        }
                    }
                }
            }
        };
        if !complete {
            found.push(Read::Cut);
            break;
        }
        let target = head.target.to_string();
        found.push(Read::Request(head.method.to_string(), target, body));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use http::HeaderValue;
    use http_body_util::BodyExt;

    const LIMIT: usize = 16 * 1024;

    fn req(path: &str, body: &[u8]) -> Read {
        Read::Request("POST".into(), path.into(), body.to_vec())
    }

    fn head_of(text: &str) -> Result<Option<Head>, Refusal> {
        parse_head(&mut BytesMut::from(text.as_bytes()), LIMIT)
    }

    #[test]
    fn pipelined_requests_are_framed_each_by_its_own_length_or_chunks() {
        let input = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\n\
            Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n\
            POST /c HTTP/1.1\r\n\r\n";
        let want = vec![
            req("/a", b"hello"),
            req("/b", b"abc0123456789"),
            req("/c", b""),
        ];
        assert_eq!(read_all(input, LIMIT), want);
        // The same, arriving a byte at a time: the decoder keeps its place across reads.
        let mut buf = BytesMut::new();
        let mut chunked = Chunked::default();
        let mut body = Vec::new();
        let chunks = b"3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let mut fed = 0;
        let ended = 'feed: loop {
            let Some(b) = chunks.get(fed) else {
                break false;
            };
            buf.extend_from_slice(&[*b]);
            fed += 1;
            loop {
                match chunked.step(&mut buf, LIMIT).unwrap() {
                    Chunk::Data(d) => body.extend_from_slice(&d),
                    Chunk::End => break 'feed true,
                    Chunk::More => break,
                }
            }
        };
        assert!(ended);
        assert_eq!(body, b"abc0123456789");
        // Nothing past the body was taken.
        assert!(buf.is_empty());
        assert_eq!(&chunks[fed..], b"NEXT");
    }

    /// Decodes `input` as a chunked body fed in pieces that end at `cuts`: the data, and
    /// how it ended (`Some(true)` the body's end, `Some(false)` refused, `None` cut short).
    fn dechunk_in_pieces(input: &[u8], cuts: &[usize]) -> (Vec<u8>, Option<bool>) {
        let mut chunked = Chunked::default();
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        ends.push(input.len());
        ends.sort_unstable();
        let mut fed = 0;
        for end in ends {
            buf.extend_from_slice(&input[fed..end.max(fed)]);
            fed = end.max(fed);
            loop {
                match chunked.step(&mut buf, LIMIT) {
                    Ok(Chunk::Data(d)) => data.extend_from_slice(&d),
                    Ok(Chunk::End) => return (data, Some(true)),
                    Ok(Chunk::More) => break,
                    Err(_) => return (data, Some(false)),
                }
            }
        }
        (data, None)
    }

    proptest::proptest! {
        /// Bodies the chunked coding frames, with extensions and a trailer, arrive cut at
        /// any points: the decoder gives back exactly the data and reaches the end.
        #[test]
        fn a_chunked_body_decodes_the_same_however_it_arrives(
            chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 1..40), 0..6),
            extension in proptest::bool::ANY,
            trailer in proptest::bool::ANY,
            cuts in proptest::collection::vec(0usize..400, 0..8),
        ) {
            let mut input = Vec::new();
            for c in &chunks {
                input.extend_from_slice(format!("{:X}", c.len()).as_bytes());
                if extension {
                    input.extend_from_slice(b" ;name=\"v\"");
                }
                input.extend_from_slice(b"\r\n");
                input.extend_from_slice(c);
                input.extend_from_slice(b"\r\n");
            }
            input.extend_from_slice(b"0\r\n");
            if trailer {
                input.extend_from_slice(b"X-Sum: 1\r\n");
            }
            input.extend_from_slice(b"\r\n");
            let (data, ended) = dechunk_in_pieces(&input, &cuts);
            proptest::prop_assert_eq!(data, chunks.concat());
            proptest::prop_assert_eq!(ended, Some(true));
        }

        /// Any bytes at all: how they are cut never changes what is decoded or how it ends.
        #[test]
        fn where_the_input_is_cut_never_changes_the_outcome(
            input in proptest::collection::vec(
                proptest::sample::select(b"0123456789aAfFgG;= \t\r\n:xX".to_vec()),
                0..120,
            ),
            cuts in proptest::collection::vec(0usize..200, 0..10),
        ) {
            let whole = dechunk_in_pieces(&input, &[]);
            let cut = dechunk_in_pieces(&input, &cuts);
            proptest::prop_assert_eq!(cut, whole);
        }
    }

    #[test]
    fn chunk_framing_is_strict() {
        let chunked = |body: &str| {
            let input = format!("POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
            read_all(input.as_bytes(), LIMIT)
        };
        for (body, why) in [
            ("5\nhello\r\n0\r\n\r\n", "bare LF after the size"),
            ("5;a\nb\r\nhello\r\n0\r\n\r\n", "LF inside an extension"),
            ("5\r\nhelloX\r\n0\r\n\r\n", "data longer than its size"),
            ("5\r\nhello\n0\r\n\r\n", "bare LF after the data"),
            ("-5\r\nhello\r\n0\r\n\r\n", "negative size"),
            ("g\r\n", "not hex"),
            ("5 5\r\nhello\r\n", "digits after a space"),
            ("1ffffffffffffffff\r\n", "over u64"),
            ("0\r\n\r\r", "no LF at the end"),
            ("0\r\nX-T 1\r\n\r\n", "a trailer that is not a field"),
        ] {
            assert_eq!(chunked(body).last(), Some(&Read::BadBody), "{why}");
        }
        assert_eq!(
            chunked("0005 \t;x\r\nhello\r\n0\r\n\r\n"),
            vec![req("/x", b"hello")]
        );
        assert_eq!(
            chunked("FF\r\n").last(),
            Some(&Read::Cut),
            "capitals are hex"
        );
        // Extensions are bounded.
        let long = format!(
            "1;{}\r\na\r\n0\r\n\r\n",
            "x".repeat(MAX_EXTENSIONS as usize)
        );
        assert_eq!(chunked(&long).last(), Some(&Read::BadBody));
        // So is the trailer section, by the head's limit and by count.
        let big = format!("0\r\nX-T: {}\r\n\r\n", "v".repeat(LIMIT));
        assert_eq!(chunked(&big).last(), Some(&Read::BadBody));
        let many = format!("0\r\n{}\r\n", "X-T: 1\r\n".repeat(MAX_HEADERS + 1));
        assert_eq!(chunked(&many).last(), Some(&Read::BadBody));
    }

    #[test]
    fn fields_are_handed_on_in_order_by_lower_case_name_values_untouched() {
        let text = "POST /a?b=C HTTP/1.1\r\nHOST: x\r\nContent-Type: Application/JSON\r\n\
                    X-Passcode: AbC\r\ncontent-type: second\r\nContent-Length: 0\r\n\r\n";
        let head = head_of(text).unwrap().unwrap();
        assert_eq!(
            (head.method, head.target.to_string()),
            (Method::POST, "/a?b=C".into())
        );
        let fields: Vec<(&[u8], &[u8])> = head.fields.iter().collect();
        let expected: [(&[u8], &[u8]); 5] = [
            (b"host", b"x"),
            (b"content-type", b"Application/JSON"),
            (b"x-passcode", b"AbC"),
            (b"content-type", b"second"),
            (b"content-length", b"0"),
        ];
        assert_eq!(fields, expected);
        let ct = http::header::CONTENT_TYPE;
        assert_eq!(head.fields.text(&ct), Some("Application/JSON"));
        assert_eq!(head.fields.get_all(&ct).count(), 2);
    }

    #[test]
    fn lengths_and_codings_are_read_as_rfc_9112_has_them() {
        // A coding beside a length: chunked wins, the length is not handed on, and the
        // connection is not kept.
        for text in [
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        ] {
            let head = head_of(text).unwrap().unwrap();
            assert_eq!(head.framing, Framing::Chunked);
            assert!(!head.keep_alive);
            assert_eq!(head.fields.get(&CONTENT_LENGTH), None);
        }
        // The same length twice is one; two lengths are refused.
        let head = head_of("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, Framing::Length(3));
        assert_eq!(head.fields.get_all(&CONTENT_LENGTH).count(), 1);
        // The lengths set aside leave the other fields as they came, in order.
        let names = |text: &str| -> Vec<String> {
            let head = head_of(text).unwrap().unwrap();
            let fields = head.fields.iter();
            fields
                .map(|(n, v)| {
                    format!(
                        "{}={}",
                        String::from_utf8_lossy(n),
                        String::from_utf8_lossy(v)
                    )
                })
                .collect()
        };
        assert_eq!(
            names("POST / HTTP/1.1\r\nContent-Length: 3\r\nX-A: 1\r\nContent-Length: 3\r\nX-B: 2\r\n\r\n"),
            ["content-length=3", "x-a=1", "x-b=2"]
        );
        assert_eq!(
            names("POST / HTTP/1.1\r\nX-A: 1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nX-B: 2\r\n\r\n"),
            ["x-a=1", "transfer-encoding=chunked", "x-b=2"]
        );
        for text in [
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "PO\x01ST / HTTP/1.1\r\n\r\n",
            "POST /a b HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.2\r\n\r\n",
            "POST / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
        ] {
            assert_eq!(head_of(text).err(), Some(Refusal::Bad), "{text:?}");
        }
        let head = head_of("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, CHUNKED\r\n\r\n");
        assert_eq!(head.unwrap().unwrap().framing, Framing::Chunked);
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        let kept = |text: &str| head_of(text).unwrap().unwrap().keep_alive;
        assert!(kept("GET / HTTP/1.1\r\n\r\n"));
        assert!(!kept("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
        assert!(!kept(
            "GET / HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert!(!kept("GET / HTTP/1.0\r\n\r\n"));
        assert!(kept(
            "GET / HTTP/1.0\r\nConnection: foo, Keep-Alive\r\n\r\n"
        ));
        let head = head_of("POST / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n");
        assert!(head.unwrap().unwrap().expect_continue);
    }

    /// Heads of one field to the most allowed: every field is read, in order, its name in
    /// lower case, and the framing from the last.
    #[test]
    fn every_field_of_a_head_is_read_however_many_it_has() {
        for count in [1, 2, 16, 17, MAX_HEADERS] {
            let fields: String = (1..count)
                .map(|i| format!("X-Field-{i}: value {i}\r\n"))
                .collect();
            let text = format!("POST / HTTP/1.1\r\n{fields}Content-Length: 3\r\n\r\nabc");
            let head = head_of(&text).unwrap().unwrap();
            let read: Vec<(String, String)> = (head.fields.iter())
                .map(|(n, v)| {
                    (
                        String::from_utf8_lossy(n).into(),
                        String::from_utf8_lossy(v).into(),
                    )
                })
                .collect();
            let mut expected: Vec<(String, String)> = (1..count)
                .map(|i| (format!("x-field-{i}"), format!("value {i}")))
                .collect();
            expected.push(("content-length".into(), "3".into()));
            assert_eq!(read, expected, "{count} fields");
            assert_eq!(head.framing, Framing::Length(3), "{count} fields");
        }
    }

    #[test]
    fn heads_over_the_limits_and_the_http2_preface_are_refused() {
        let limit = 1024;
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(limit));
        let refused = |text: &[u8]| parse_head(&mut BytesMut::from(text), limit).err();
        assert_eq!(refused(long.as_bytes()), Some(Refusal::TooLarge));
        // Not all arrived yet, and already too long.
        let partial = format!("GET /{}", "a".repeat(limit));
        assert_eq!(refused(partial.as_bytes()), Some(Refusal::TooLarge));
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X: 1\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(
            parse_head(&mut BytesMut::from(many.as_bytes()), LIMIT).err(),
            Some(Refusal::TooLarge)
        );
        let target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_URI));
        assert_eq!(
            parse_head(&mut BytesMut::from(target.as_bytes()), 2 * MAX_URI).err(),
            Some(Refusal::UriTooLong)
        );
        assert_eq!(refused(H2_PREFACE), Some(Refusal::H2));
        assert_eq!(
            refused(b"POST / HTTP/2.0\r\n\r\n"),
            Some(Refusal::Bad),
            "HTTP/2.0 in a request line is not the preface"
        );
        // A head not all here is left in the buffer as it was.
        let mut buf = BytesMut::from(&b"POST / HTTP/1.1\r\nHost: x\r\n"[..]);
        assert!(parse_head(&mut buf, limit).unwrap().is_none());
        assert_eq!(&buf[..], b"POST / HTTP/1.1\r\nHost: x\r\n");
    }

    #[test]
    fn an_answer_head_says_its_length_the_connections_fate_and_the_date() {
        let mut answer = Answer::new(StatusCode::OK, Bytes::from_static(b"{}"), 64);
        let map = answer.map_mut();
        map.insert("content-type", HeaderValue::from_static("application/json"));
        map.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        answer.set(&"x-app".parse().unwrap(), b"1");
        let mut out = Vec::new();
        assert!(!encode_head(&answer, 2, Version::HTTP_11, false, &mut out));
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-app: 1\r\n")
        );
        assert!(text.contains("\r\ncontent-length: 2\r\n"));
        assert!(!text.contains("connection"), "{text}");
        let date = text.split("\r\ndate: ").nth(1).unwrap();
        assert!(httpdate::parse_http_date(date.trim_end()).is_ok(), "{text}");
        assert!(text.ends_with("\r\n\r\n"));

        answer.status = StatusCode::NO_CONTENT;
        let mut out = Vec::new();
        assert!(encode_head(&answer, 2, Version::HTTP_10, true, &mut out));
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.0 204 No Content\r\n"));
        assert!(!text.contains("content-length"));
        assert!(text.contains("\r\nconnection: close\r\n"));

        // Every status line, in either version, as `http` names the status.
        for code in 100..=599u16 {
            let status = StatusCode::from_u16(code).unwrap();
            for (version, name) in [(Version::HTTP_11, "1.1"), (Version::HTTP_10, "1.0")] {
                let mut out = Vec::new();
                encode_head(
                    &Answer::new(status, Bytes::new(), 0),
                    0,
                    version,
                    false,
                    &mut out,
                );
                let reason = status.canonical_reason().unwrap_or("");
                let line = format!("HTTP/{name} {code} {reason}\r\n");
                assert!(out.starts_with(line.as_bytes()), "{line}");
            }
        }

        // The application's own date is the one sent, once, whichever kind of field
        // it came in.
        let sent = "Tue, 01 Dec 2026 10:00:00 GMT";
        let mut lines = Answer::new(StatusCode::OK, Bytes::new(), 64);
        lines.set(&http::header::DATE, sent.as_bytes());
        let mut mapped = Answer::new(StatusCode::OK, Bytes::new(), 0);
        (mapped.map_mut()).insert(http::header::DATE, HeaderValue::from_static(sent));
        for answer in [lines, mapped] {
            let mut out = Vec::new();
            encode_head(&answer, 2, Version::HTTP_11, false, &mut out);
            let text = String::from_utf8(out).unwrap();
            assert_eq!(text.matches("date: ").count(), 1, "{text}");
            assert!(text.contains(&format!("\r\ndate: {sent}\r\n")), "{text}");
        }
    }

    /// Answers each request with how many bytes of its body it read, reading it or not as
    /// the target says (`/read`, `/skip`); sets `finish` (a drain) when it has one.
    struct Echo<'f> {
        finish: Option<&'f AtomicBool>,
        /// How often the loop said part of a head was waiting.
        begun: std::sync::atomic::AtomicUsize,
    }

    impl Service for Echo<'_> {
        type Kept = ();

        fn call<'a>(
            &self,
            _: &'a mut (),
            req: Request<ReqBody<'a>>,
        ) -> impl Future<Output = Answer> + Send + 'a {
            if let Some(finish) = self.finish {
                finish.store(true, Ordering::Relaxed);
            }
            async move {
                let read = req.target.path() == b"/read";
                let text = match read {
                    true => match req.body.collect().await {
                        Ok(body) => format!("read {}", body.to_bytes().len()),
                        Err(e) => format!("failed {e}"),
                    },
                    false => "skipped".into(),
                };
                Answer::new(StatusCode::OK, Bytes::from(text), 0)
            }
        }

        fn refuse(&self, status: StatusCode) -> Answer {
            Answer::new(status, Bytes::from_static(b"refused"), 0)
        }

        fn head_begun(&self) {
            self.begun.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What the connection's loop writes for `input` (sent whole, then the client's end);
    /// with `drain`, a drain starts as the first request is handled.
    async fn exchange(input: &[u8], drain: bool) -> String {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        let settings = Settings {
            max_head: LIMIT,
            keep_alive: true,
        };
        let mut buf = BytesMut::new();
        let flag = AtomicBool::new(false);
        let echo = Echo {
            finish: drain.then_some(&flag),
            begun: Default::default(),
        };
        serve(&mut server, &mut buf, &settings, &flag, &echo)
            .await
            .unwrap();
        drop(server);
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    fn bodies(out: &str) -> Vec<&str> {
        out.split("HTTP/1.1 ")
            .skip(1)
            .map(|a| a.split("\r\n\r\n").nth(1).unwrap_or(""))
            .collect()
    }

    #[tokio::test]
    async fn the_loop_answers_pipelined_requests_in_order_and_skips_unread_bodies() {
        let out = exchange(
            b"POST /skip HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
              POST /read HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd\
              POST /read HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
            false,
        )
        .await;
        assert_eq!(bodies(&out), ["skipped", "read 4", "read 2"], "{out}");
        assert!(!out.contains("connection: close"), "{out}");
    }

    #[tokio::test]
    async fn an_unread_chunked_body_ends_the_connection_after_its_answer() {
        let out = exchange(
            b"POST /skip HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n\
              POST /read HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .await;
        assert_eq!(bodies(&out), ["skipped"], "{out}");
        assert!(out.contains("\r\nconnection: close\r\n"), "{out}");
    }

    #[tokio::test]
    async fn continue_is_sent_only_when_the_body_is_read() {
        let asked = "POST /read HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nab";
        let out = exchange(asked.as_bytes(), false).await;
        assert!(
            out.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK"),
            "{out}"
        );
        let skipped = asked.replace("/read", "/skip");
        let out = exchange(skipped.as_bytes(), false).await;
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    }

    #[tokio::test]
    async fn a_refused_head_is_answered_and_closes_the_connection() {
        let out = exchange(
            b"POST /read HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab\
              POST /read HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
        assert!(out.contains("\r\nconnection: close\r\n"), "{out}");
        assert_eq!(bodies(&out), ["refused"]);
        // The HTTP/2 preface: nothing at all.
        assert_eq!(exchange(H2_PREFACE, false).await, "");
    }

    #[tokio::test]
    async fn a_drain_lets_the_request_being_handled_finish_and_takes_no_other() {
        let out = exchange(
            b"POST /read HTTP/1.1\r\nContent-Length: 1\r\n\r\na\
              POST /read HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            true,
        )
        .await;
        assert_eq!(bodies(&out), ["read 1"], "{out}");
        assert!(out.contains("\r\nconnection: close\r\n"), "{out}");
    }

    #[tokio::test]
    async fn an_http_1_0_request_is_answered_in_1_0_and_the_connection_closed() {
        let out = exchange(
            b"POST /read HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\na\
              POST /read HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .await;
        assert!(out.starts_with("HTTP/1.0 200 OK\r\n"), "{out}");
        assert_eq!(out.matches("HTTP/1.0 ").count(), 1, "{out}");
        assert!(out.contains("\r\nconnection: close\r\n"), "{out}");
        assert!(out.ends_with("read 1"), "{out}");
    }

    #[tokio::test]
    async fn a_head_begun_behind_a_request_is_reported_and_not_waited_for_when_finishing() {
        // The client keeps its end open: only finishing ends the loop.
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client
            .write_all(b"POST /read HTTP/1.1\r\nContent-Length: 1\r\n\r\naPOST /read HTTP/1.1\r\n")
            .await
            .unwrap();
        let settings = Settings {
            max_head: LIMIT,
            keep_alive: true,
        };
        let mut buf = BytesMut::new();
        let flag = AtomicBool::new(false);
        let echo = Echo {
            finish: None,
            begun: Default::default(),
        };
        let served = serve(&mut server, &mut buf, &settings, &flag, &echo);
        let mut served = std::pin::pin!(served);
        // Served the first request, then waiting on the rest of the second head.
        let mut answer = [0u8; 19];
        tokio::select! {
            _ = &mut served => panic!("the loop ended with the client's end open"),
            r = client.read_exact(&mut answer) => { r.unwrap(); }
        }
        assert_eq!(&answer, b"HTTP/1.1 200 OK\r\nco");
        tokio::task::yield_now().await;
        assert!(served.as_mut().now_or_never().is_none());
        assert_eq!(echo.begun.load(Ordering::Relaxed), 1);
        // A drain (or the idle deadline) does not wait for the rest of that head.
        flag.store(true, Ordering::Relaxed);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), served).await;
        assert!(matches!(ended, Ok(Ok(()))), "{ended:?}");
    }

    #[test]
    fn a_large_body_is_read_in_large_reads_and_a_head_in_small_ones() {
        // A stream with no end of bytes: one read fills all the room it is given.
        let mut source = tokio::io::repeat(b'a');
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut read = |want: usize| {
            let mut buf = BytesMut::new();
            match poll_read_more(&mut source, &mut buf, want, &mut cx) {
                Poll::Ready(Ok(n)) => n,
                other => panic!("{other:?}"),
            }
        };
        let head = read(READ_SIZE);
        assert!((READ_SIZE..2 * READ_SIZE).contains(&head), "{head}");
        assert!(read(1 << 20) >= MAX_READ);
        // A short rest of a body still gets a typical read's room.
        assert!(read(10) >= READ_SIZE);
    }

    #[tokio::test]
    async fn a_body_cut_short_fails_its_read() {
        let out = exchange(b"POST /read HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", false).await;
        assert!(bodies(&out)[0].starts_with("failed"), "{out}");
        assert!(out.contains("\r\nconnection: close\r\n"), "{out}");
    }
}
