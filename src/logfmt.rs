//! The log line's timestamp and fields, written for less CPU than `tracing-subscriber`'s
//! defaults spend and byte for byte the same text. Every request writes an access line
//! (the default level), so what a line costs is paid per request: the defaults format the
//! date from scratch each time and every field through `core::fmt` and the colour
//! machinery, even with colour off.
//!
//! - [`Timestamp`]: RFC 3339 UTC with microseconds, as `fmt::time::SystemTime` writes
//!   it; the date and time of day are made once a second per thread.
//! - [`Fields`]: `name=value` as `fmt::format::DefaultFields` writes it; strings and
//!   messages of printable ASCII, integers, floats and `%`/`?` values are written
//!   directly, anything else (text to escape, errors, colour) by `DefaultFields`' own
//!   visitor. A float that is a whole number of thousandths (a latency in milliseconds,
//!   to the microsecond) is written as digits, as both formats would write it.
//! - [`Json`]: the line of `fmt().json().flatten_event(true).with_current_span(false)`,
//!   written field by field without serde's map state; serde_json still writes floats.
//!
//! A line is gathered in a text kept by its thread and handed to the subscriber's writer
//! whole, not piece by piece through its dynamic `Writer`.
//!
//! Unit tests format the same events through these and through the defaults and
//! compare the text byte for byte.

use std::any::TypeId;
use std::cell::Cell;
use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::format::{
    DefaultFields, DefaultVisitor, Format, Full, Json as JsonFormat, Writer,
};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// `YYYY-MM-DDThh:mm:ss`.
const PREFIX: usize = 19;

/// The wall clock as `2026-12-01T19:30:00.123456Z` — the text of
/// `tracing_subscriber::fmt::time::SystemTime`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timestamp;

thread_local! {
    /// The second last written on this thread and its date and time of day.
    static SECOND: Cell<Option<(u64, [u8; PREFIX])>> = const { Cell::new(None) };
}

impl FormatTime for Timestamp {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        match now() {
            Some(text) => w.write_str(text.as_str()),
            None => tracing_subscriber::fmt::time::SystemTime.format_time(w),
        }
    }
}

/// The stamp of the wall clock now; `None` before the epoch or past 9999, which the
/// default's own formatter writes.
fn now() -> Option<Stamp> {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    stamp(d.as_secs(), d.subsec_micros())
}

/// The stamp of now onto `line`, as [`Timestamp`] writes it.
fn write_now(line: &mut Line<'_>) -> fmt::Result {
    match now() {
        Some(text) => line.write_str(text.as_str()),
        None => {
            line.flush()?;
            tracing_subscriber::fmt::time::SystemTime.format_time(&mut line.out)
        }
    }
}

/// A stamp's text, on the stack.
struct Stamp {
    buf: [u8; PREFIX + 8],
}

impl Stamp {
    fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.buf).unwrap_or_default()
    }
}

/// `secs` past the epoch and `micros` into that second, as text; `None` for a year
/// past 9999, which the fallback writes.
fn stamp(secs: u64, micros: u32) -> Option<Stamp> {
    let prefix = match SECOND.get() {
        Some((s, p)) if s == secs => p,
        _ => {
            let p = date_and_time(secs)?;
            SECOND.set(Some((secs, p)));
            p
        }
    };
    let mut buf = [0u8; PREFIX + 8];
    let (head, tail) = buf.split_at_mut(PREFIX);
    head.copy_from_slice(&prefix);
    let mut digits = micros.min(999_999);
    // `.`, six digits, `Z`.
    for (i, b) in tail.iter_mut().enumerate().rev() {
        *b = match i {
            0 => b'.',
            7 => b'Z',
            _ => {
                let d = b'0' + (digits % 10) as u8;
                digits /= 10;
                d
            }
        };
    }
    Some(Stamp { buf })
}

/// `YYYY-MM-DDThh:mm:ss` of `secs` past the epoch (UTC).
fn date_and_time(secs: u64) -> Option<[u8; PREFIX]> {
    let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).ok()?).ok()?;
    let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
    let mut out = [0u8; PREFIX];
    let fields: [(u32, usize); 6] = [
        (year, 4),
        (u32::from(u8::from(t.month())), 2),
        (u32::from(t.day()), 2),
        (u32::from(t.hour()), 2),
        (u32::from(t.minute()), 2),
        (u32::from(t.second()), 2),
    ];
    let separators = [b'-', b'-', b'T', b':', b':'];
    let mut at = out.iter_mut();
    for (n, (value, width)) in fields.into_iter().enumerate() {
        let mut digits = [0u8; 4];
        let mut v = value;
        for d in digits.iter_mut().take(width).rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
        for d in digits.iter().take(width) {
            *at.next()? = *d;
        }
        if let Some(s) = separators.get(n) {
            *at.next()? = *s;
        }
    }
    Some(out)
}

/// Room for an access line in the text a thread gathers its lines in.
const LINE: usize = 512;

thread_local! {
    /// The text this thread gathers a line in, kept between lines (see [`Line`]).
    static GATHERED: Cell<String> = const { Cell::new(String::new()) };
}

/// A line's text gathered in a `String` of this thread's, then handed to the subscriber's
/// writer in one write. A line is made of some sixty pieces, and each write through
/// `Writer` is a dynamic call: written piece by piece, that was most of a line's cost.
struct Line<'a> {
    out: Writer<'a>,
    text: String,
}

impl<'a> Line<'a> {
    fn new(out: Writer<'a>) -> Line<'a> {
        // A line formatted while another is (a value's `Debug` that logs) starts empty.
        let mut text = GATHERED.take();
        text.reserve(LINE);
        Line { out, text }
    }

    /// Hands on what is gathered.
    fn flush(&mut self) -> fmt::Result {
        let written = self.out.write_str(&self.text);
        self.text.clear();
        written
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        // Kept for the thread's next line, unless one line made it large.
        if self.text.capacity() <= 8 * LINE {
            self.text.clear();
            GATHERED.set(std::mem::take(&mut self.text));
        }
    }
}

impl fmt::Write for Line<'_> {
    #[inline]
    fn write_char(&mut self, c: char) -> fmt::Result {
        self.text.push(c);
        Ok(())
    }

    #[inline]
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.text.push_str(s);
        Ok(())
    }
}

/// The fields of an event or span as `name=value`, separated by spaces: the text of
/// `DefaultFields`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fields;

impl<'writer> FormatFields<'writer> for Fields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        if writer.has_ansi_escapes() {
            return DefaultFields::new().format_fields(writer, fields);
        }
        let mut v = Visitor::new(Line::new(writer));
        fields.record(&mut v);
        v.finish()
    }
}

struct Visitor<'a> {
    line: Line<'a>,
    is_empty: bool,
    result: fmt::Result,
}

impl<'a> Visitor<'a> {
    /// The fields written onto `line`, after what it holds already.
    fn new(line: Line<'a>) -> Visitor<'a> {
        Visitor {
            line,
            is_empty: true,
            result: Ok(()),
        }
    }

    /// The fields written, and the line handed on.
    fn finish(mut self) -> fmt::Result {
        self.result.and_then(|()| self.line.flush())
    }

    /// Whether `field` is written `name=` by the fast path: not the message (written
    /// bare), nor a raw identifier (`r#` dropped), nor log metadata.
    fn plain(field: &Field) -> bool {
        let name = field.name();
        name != "message" && !name.starts_with("r#") && !name.starts_with("log.")
    }

    /// Writes `field` with `DefaultFields`' own visitor, continuing this line.
    fn fallback(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        if let Err(e) = self.line.flush() {
            self.result = Err(e);
            return;
        }
        let mut v = DefaultVisitor::new(self.line.out.by_ref(), self.is_empty);
        record(&mut v);
        self.result = v.finish();
        self.is_empty = false;
    }

    /// ` name=` (no space before the first field).
    fn name(&mut self, field: &Field) -> fmt::Result {
        if !self.is_empty {
            self.line.write_char(' ')?;
        }
        self.is_empty = false;
        self.line.write_str(field.name())?;
        self.line.write_char('=')
    }

    fn number(&mut self, field: &Field, negative: bool, n: u64) {
        if self.result.is_err() {
            return;
        }
        self.result = self
            .name(field)
            .and_then(|()| decimal(&mut self.line, negative, n));
    }
}

/// `n` in decimal, after a `-` when `negative`.
fn decimal(w: &mut (impl fmt::Write + ?Sized), negative: bool, n: u64) -> fmt::Result {
    if negative {
        w.write_char('-')?;
    }
    w.write_str(itoa::Buffer::new().format(n))
}

/// `v` as whole thousandths, when it is one below 1e9 (and not `-0.0`): then `{:?}` and
/// serde_json both write it as its decimal digits with trailing zeros dropped (`12.34`,
/// `7.0`). That text reads back as `v`, and no shorter text does: below 1e9 a float's
/// neighbours are far closer than 0.001, so no other decimal of three places or fewer
/// rounds to it.
fn thousandths(v: f64) -> Option<u64> {
    if !(v.is_sign_positive() && v < 1e9) {
        return None;
    }
    let n = (v * 1000.0).round();
    // Exact: `n` is a whole number below 1e12, and the division rounds correctly.
    (n / 1000.0 == v).then_some(n as u64)
}

/// Whole thousandths `n` as `{:?}` writes `n / 1000` as a float.
fn write_thousandths(w: &mut (impl fmt::Write + ?Sized), n: u64) -> fmt::Result {
    decimal(w, false, n / 1000)?;
    let frac = n % 1000;
    let digits = [frac / 100, frac / 10 % 10, frac % 10].map(|d| b'0' + d as u8);
    // Trailing zeros dropped, one digit kept.
    let keep = match frac {
        f if f % 100 == 0 => 1,
        f if f % 10 == 0 => 2,
        _ => 3,
    };
    w.write_char('.')?;
    for d in digits.iter().take(keep) {
        w.write_char(char::from(*d))?;
    }
    Ok(())
}

/// Text formatted onto the stack, up to 64 bytes; a longer write fails.
struct Short {
    buf: [u8; 64],
    len: usize,
}

impl Short {
    fn new() -> Short {
        Short {
            buf: [0; 64],
            len: 0,
        }
    }

    /// The text, when all of it is printable ASCII: what tracing's escaping of a message
    /// leaves as it is.
    fn printable(&self) -> Option<&str> {
        let text = self.buf.get(..self.len)?;
        text.iter()
            .all(|b| (0x20..0x7f).contains(b))
            .then(|| std::str::from_utf8(text).ok())
            .flatten()
    }
}

impl fmt::Write for Short {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let room = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        room.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        if Self::plain(field) && crate::words::quotable(value.as_bytes()) {
            self.result = self.name(field).and_then(|()| {
                self.line.write_char('"')?;
                self.line.write_str(value)?;
                self.line.write_char('"')
            });
        } else {
            self.fallback(|v| v.record_str(field, value));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if Self::plain(field) {
            self.number(field, false, value);
        } else {
            self.fallback(|v| v.record_u64(field, value));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if Self::plain(field) {
            self.number(field, value < 0, value.unsigned_abs());
        } else {
            self.fallback(|v| v.record_i64(field, value));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.result.is_err() {
            return;
        }
        if Self::plain(field) {
            self.result = self
                .name(field)
                .and_then(|()| self.line.write_str(if value { "true" } else { "false" }));
        } else {
            self.fallback(|v| v.record_bool(field, value));
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.result.is_err() {
            return;
        }
        match thousandths(value) {
            Some(n) if Self::plain(field) => {
                self.result = self
                    .name(field)
                    .and_then(|()| write_thousandths(&mut self.line, n));
            }
            // `{:?}`, as `DefaultFields` writes it.
            _ => self.record_debug(field, &value),
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.fallback(|v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        if field.name() == "message" {
            // Written bare. The default escapes control characters in it one character at
            // a time; text with none to escape is written as it is.
            let mut text = Short::new();
            if write!(text, "{value:?}").is_ok() {
                if let Some(text) = text.printable() {
                    let pad = if self.is_empty { "" } else { " " };
                    self.is_empty = false;
                    self.result = self
                        .line
                        .write_str(pad)
                        .and_then(|()| self.line.write_str(text));
                    return;
                }
            }
            self.fallback(|v| v.record_debug(field, value));
        } else if Self::plain(field) {
            self.result = self
                .name(field)
                .and_then(|()| write!(self.line, "{value:?}"));
        } else {
            self.fallback(|v| v.record_debug(field, value));
        }
    }
}

/// The human line, as `fmt()`'s default format (`Format<Full>`) writes it: timestamp,
/// level, target, the fields. Written directly, without the level's and the target's
/// `Display` and the colour styles the default runs through even with colour off, and
/// gathered in one text with the fields when they are written by [`Fields`]; a line with
/// colour, or of an event inside a span, is written by that formatter itself.
pub struct Human {
    otherwise: Format<Full, Timestamp>,
}

impl Default for Human {
    fn default() -> Self {
        Human {
            otherwise: tracing_subscriber::fmt::format().with_timer(Timestamp),
        }
    }
}

/// Whether `event` is inside a span (its own parent, else the current one): the default
/// formats then write the spans too, and are left to.
fn in_span<S, N>(ctx: &FmtContext<'_, S, N>, event: &Event<'_>) -> bool
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    let span = (event.parent().and_then(|id| ctx.span(id))).or_else(|| ctx.lookup_current());
    span.is_some()
}

impl<S, N> FormatEvent<S, N> for Human
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if in_span(ctx, event) || writer.has_ansi_escapes() {
            return self.otherwise.format_event(ctx, writer, event);
        }
        let meta = event.metadata();
        let mut line = Line::new(writer.by_ref());
        if write_now(&mut line).is_err() {
            line.write_str("<unknown time>")?;
        }
        line.write_char(' ')?;
        line.write_str(match *meta.level() {
            tracing::Level::TRACE => "TRACE",
            tracing::Level::DEBUG => "DEBUG",
            tracing::Level::INFO => " INFO",
            tracing::Level::WARN => " WARN",
            tracing::Level::ERROR => "ERROR",
        })?;
        line.write_char(' ')?;
        line.write_str(meta.target())?;
        line.write_str(": ")?;
        if TypeId::of::<N>() == TypeId::of::<Fields>() {
            // What `Fields` would write (colour is off), onto the same line.
            let mut v = Visitor::new(line);
            event.record(&mut v);
            v.result?;
            v.line.write_char('\n')?;
            return v.line.flush();
        }
        line.flush()?;
        drop(line);
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

/// One JSON object per line, as `fmt().json().flatten_event(true).with_current_span(false)`
/// writes it: `timestamp`, `level`, the fields (the message among them), `target`. An
/// event inside a span (which adds `spans`) is written by that formatter itself.
pub struct Json {
    in_span: Format<JsonFormat, Timestamp>,
}

impl Default for Json {
    fn default() -> Self {
        Json {
            in_span: tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_timer(Timestamp),
        }
    }
}

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if in_span(ctx, event) {
            return self.in_span.format_event(ctx, writer, event);
        }
        let meta = event.metadata();
        let mut line = Line::new(writer);
        line.write_str("{\"timestamp\":\"")?;
        write_now(&mut line)?;
        line.write_str("\",\"level\":\"")?;
        line.write_str(meta.level().as_str())?;
        line.write_char('"')?;
        let mut v = JsonVisitor {
            line,
            result: Ok(()),
        };
        event.record(&mut v);
        v.result?;
        let mut line = v.line;
        line.write_str(",\"target\":")?;
        json_str(&mut line, meta.target())?;
        line.write_str("}\n")?;
        line.flush()
    }
}

/// `,"name":value` per field, as serde_json writes each, gathered in the line's text.
struct JsonVisitor<'a> {
    line: Line<'a>,
    result: fmt::Result,
}

impl JsonVisitor<'_> {
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut Line<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let w = &mut self.line;
        self.result = w
            .write_char(',')
            .and_then(|()| json_str(w, field.name()))
            .and_then(|()| w.write_char(':'))
            .and_then(|()| value(w));
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |w| json_str(w, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |w| decimal(w, false, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |w| decimal(w, value < 0, value.unsigned_abs()));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // serde_json's own number text (and `null` for NaN and the infinities).
        self.entry(field, |w| match thousandths(value) {
            Some(n) => write_thousandths(w, n),
            None => serde_json::to_writer(FmtIo(w), &value).map_err(|_| fmt::Error),
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |w| {
            w.write_char('"')?;
            write!(JsonEscaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

/// `s` as a JSON string.
fn json_str(w: &mut (impl fmt::Write + ?Sized), s: &str) -> fmt::Result {
    w.write_char('"')?;
    JsonEscaped(w).write_str(s)?;
    w.write_char('"')
}

/// Text written through this is escaped as serde_json escapes a string's contents: `"`,
/// `\` and the control characters below U+0020; everything else, `DEL` and all of
/// Unicode included, is written as it is.
struct JsonEscaped<'a, W: ?Sized>(&'a mut W);

impl<W: fmt::Write + ?Sized> fmt::Write for JsonEscaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let short = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(s.get(start..i).unwrap_or_default())?;
            start = i + 1;
            if short.is_empty() {
                let hex = |n: u8| char::from(HEX.get(usize::from(n)).copied().unwrap_or(b'0'));
                self.0.write_str("\\u00")?;
                self.0.write_char(hex(b >> 4))?;
                self.0.write_char(hex(b & 0xf))?;
            } else {
                self.0.write_str(short)?;
            }
        }
        self.0.write_str(s.get(start..).unwrap_or_default())
    }
}

/// serde_json's writer side, onto a log line.
struct FmtIo<'a, W: ?Sized>(&'a mut W);

impl<W: fmt::Write + ?Sized> std::io::Write for FmtIo<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = std::str::from_utf8(buf).map_err(|_| std::io::ErrorKind::InvalidData)?;
        self.0
            .write_str(text)
            .map_err(|_| std::io::Error::other("log line not written"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The access line of a request forwarded to the application (`pipeline::access`). The
/// binary has [`Forwarded::log`] write it directly, as the subscriber's formatter would
/// write its event: the line is written for every request, and through the event each of
/// its ten fields is a dynamic call into the formatter's visitor, 4,400 instructions a
/// request where the direct text takes 1,900 (BENCHMARKS.md, the forty-ninth round), and
/// 1,560 with the route's names kept (the fiftieth). The ids are ASCII text, as the
/// request held them.
pub struct Forwarded<'a> {
    pub request_id: &'a [u8],
    pub listener: &'a str,
    pub route: &'a str,
    pub peer: &'a str,
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub latency_ms: f64,
    pub userid: Option<&'a [u8]>,
    pub ticket_no: Option<&'a [u8]>,
    /// The route's three names, kept for its lines (see [`RouteNames`]); `None` writes
    /// them each time. Those of the route `listener`, `route` and `peer` name: the kept
    /// text is made from the first line's three and never checked against them again.
    pub names: Option<&'a RouteNames>,
}

/// Writes one whole line.
type WriteLine = Box<dyn Fn(&[u8]) + Send + Sync>;

/// Where the binary's subscriber writes, for the lines written directly.
struct Direct {
    json: bool,
    write: WriteLine,
}

static DIRECT: std::sync::OnceLock<Direct> = std::sync::OnceLock::new();

thread_local! {
    /// The room a direct line is written in, kept for the thread's next line.
    static DIRECT_LINE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// From now on [`Forwarded::log`] writes its line itself, in the JSON or the human format
/// (without colour), through `write`: the writer the process's subscriber writes to. Set
/// once, by the binary; without it every line is the `tracing` event.
pub fn write_forwarded_lines(json: bool, write: impl Fn(&[u8]) + Send + Sync + 'static) {
    let direct = Direct {
        json,
        write: Box::new(write),
    };
    // Only the first call counts.
    let _ = DIRECT.set(direct);
}

/// A line's bytes as a [`fmt::Write`], for the number writers.
struct Bytes<'a>(&'a mut Vec<u8>);

impl fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// ASCII text as `str` (the event's values).
fn text(ascii: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(ascii)
}

impl Forwarded<'_> {
    /// Logs the line: written directly when the binary asked for that and the log's
    /// filter wants the access lines (by their target and level), else as the `tracing`
    /// event, which a filter on its fields' values judges.
    pub fn log(&self) {
        if !self.write_direct() {
            self.event();
        }
    }

    /// The line as a `tracing` event, for any subscriber.
    pub fn event(&self) {
        tracing::info!(
            target: "bsk_sidecar::access",
            request_id = %text(self.request_id),
            listener = %self.listener,
            route = self.route,
            peer = self.peer,
            status = self.status,
            upstream_status = self.upstream_status,
            latency_ms = self.latency_ms,
            userid = self.userid.map(text).as_deref(),
            ticket_no = self.ticket_no.map(text).as_deref(),
            "forwarded"
        );
    }

    /// Whether the line is written. `false` when it is left to the event: no direct
    /// writer, access lines not wanted by target and level, or a field the formatter
    /// writes another way.
    fn write_direct(&self) -> bool {
        let Some(direct) = DIRECT.get() else {
            return false;
        };
        if !tracing::enabled!(target: "bsk_sidecar::access", tracing::Level::INFO) {
            return false;
        }
        let Some(stamp) = now() else {
            return false;
        };
        let mut line = DIRECT_LINE.take();
        line.clear();
        let written = self.write(direct.json, &stamp.buf, &mut line).is_ok();
        if written {
            (direct.write)(&line);
        }
        line.clear();
        if line.capacity() <= 8 * LINE {
            DIRECT_LINE.set(line);
        }
        written
    }

    /// The line, stamped `stamp`, as [`Human`] (`json`: [`Json`]) writes the event, with
    /// [`Fields`]; `Err` when a field would take another way there: text to escape in the
    /// human format, a latency not in whole thousandths.
    fn write(&self, json: bool, stamp: &[u8], w: &mut Vec<u8>) -> fmt::Result {
        let latency = thousandths(self.latency_ms).ok_or(fmt::Error)?;
        let mut out = Out { w, json };
        if json {
            out.text(b"{\"timestamp\":\"");
            out.text(stamp);
            out.text(b"\",\"level\":\"INFO\",\"message\":\"forwarded\"");
        } else {
            out.text(stamp);
            out.text(b"  INFO bsk_sidecar::access: forwarded");
        }
        out.shown((b",\"request_id\":", b" request_id="), self.request_id)?;
        match self.names {
            Some(names) => {
                let kept = if json { &names.json } else { &names.human };
                let text = kept.get_or_init(|| {
                    let mut text = Vec::new();
                    let made = self.write_names(&mut Out { w: &mut text, json });
                    made.ok().map(|()| text.into_boxed_slice())
                });
                out.text(text.as_deref().ok_or(fmt::Error)?);
            }
            None => self.write_names(&mut out)?,
        }
        out.number((b",\"status\":", b" status="), self.status)?;
        if let Some(s) = self.upstream_status {
            out.number((b",\"upstream_status\":", b" upstream_status="), s)?;
        }
        out.name((b",\"latency_ms\":", b" latency_ms="));
        write_thousandths(&mut Bytes(out.w), latency)?;
        if let Some(u) = self.userid {
            out.string((b",\"userid\":", b" userid="), u)?;
        }
        if let Some(t) = self.ticket_no {
            out.string((b",\"ticket_no\":", b" ticket_no="), t)?;
        }
        if json {
            out.text(b",\"target\":\"bsk_sidecar::access\"}");
        }
        out.text(b"\n");
        Ok(())
    }

    /// The `listener`, `route` and `peer` fields, the same on every line of a route.
    fn write_names(&self, out: &mut Out<'_>) -> fmt::Result {
        out.shown((b",\"listener\":", b" listener="), self.listener.as_bytes())?;
        out.string((b",\"route\":", b" route="), self.route.as_bytes())?;
        out.string((b",\"peer\":", b" peer="), self.peer.as_bytes())
    }
}

/// A route's `listener`, `route` and `peer` fields as [`Forwarded::log`] writes them
/// directly, in each format: made on the route's first line and kept with the route, so
/// each later line copies them at once (`None`: the human format would escape them, and
/// the event writes the route's lines). Belongs to one route; a reload makes new ones.
#[derive(Default)]
pub struct RouteNames {
    human: std::sync::OnceLock<Option<Box<[u8]>>>,
    json: std::sync::OnceLock<Option<Box<[u8]>>>,
}

/// A field's name, each format's way (`,"name":` or ` name=`), written whole.
type Name = (&'static [u8], &'static [u8]);

/// A direct line being written, in JSON or the human format.
struct Out<'w> {
    w: &'w mut Vec<u8>,
    json: bool,
}

impl Out<'_> {
    fn text(&mut self, bytes: &[u8]) {
        self.w.extend_from_slice(bytes);
    }

    fn name(&mut self, (in_json, in_human): Name) {
        self.text(if self.json { in_json } else { in_human });
    }

    fn quoted(&mut self, value: &[u8]) {
        self.text(b"\"");
        self.text(value);
        self.text(b"\"");
    }

    /// A string: between quotes, escaped as JSON escapes it; in the human format only
    /// when it needs no escape (else the event writes the line).
    fn string(&mut self, n: Name, value: &[u8]) -> fmt::Result {
        self.name(n);
        if self.json && !crate::words::json_plain(value) {
            let value = std::str::from_utf8(value).map_err(|_| fmt::Error)?;
            return json_str(&mut Bytes(self.w), value);
        }
        if !self.json && !crate::words::quotable(value) {
            return Err(fmt::Error);
        }
        self.quoted(value);
        Ok(())
    }

    /// A `%` value: as it is in the human format, a string in JSON.
    fn shown(&mut self, n: Name, value: &[u8]) -> fmt::Result {
        if self.json {
            return self.string(n, value);
        }
        self.name(n);
        self.text(value);
        Ok(())
    }

    fn number(&mut self, n: Name, value: u16) -> fmt::Result {
        self.name(n);
        decimal(&mut Bytes(self.w), false, u64::from(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};

    /// Lines written by a subscriber, for comparing two of them.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().map_err(|_| io::ErrorKind::Other)?.extend(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
            String::from_utf8(bytes).expect("log text is UTF-8")
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer failure")]
    struct Outer(#[source] io::Error);

    /// Every kind of field the sidecar logs, and the ones that take the fallback.
    fn events() {
        let client: std::net::IpAddr = "127.0.0.1".parse().expect("an address");
        tracing::info!(
            target: "bsk_sidecar::access",
            request_id = %"0000002a-000000001f",
            listener = %"public",
            route = "/bsk/api1",
            peer = "bsk",
            client = %client,
            status = 200u16,
            upstream_status = Some(201u16),
            latency_ms = 1.25f64,
            userid = None::<&str>,
            ticket_no = Some("20221202153322882"),
            "forwarded"
        );
        tracing::warn!(
            quoted = "say \"hi\" \\ there",
            control = "tab\there\nnew\x1bline",
            bengali = "বাংলা সহায়তা কেন্দ্র",
            empty = "",
            negative = -42i64,
            zero = 0u64,
            max = u64::MAX,
            min = i64::MIN,
            yes = true,
            no = false,
            float = 0.1f64 + 0.2,
            debug = ?vec![1, 2],
            r#type = "raw",
            "message with \x1b[31m escape"
        );
        let err = Outer(io::Error::other("inner cause"));
        tracing::error!(error = &err as &(dyn std::error::Error + 'static), "failed");
        tracing::info!(only = 1u64);
        tracing::info!("bare message");
        tracing::info!(
            nan = f64::NAN,
            inf = f64::INFINITY,
            big = 1e21f64,
            small = -1.5e-7f64,
            whole = 3.0f64,
            every_ascii = (0u8..0x80).map(char::from).collect::<String>().as_str(),
            "floats and every ASCII character"
        );
        tracing::info!(
            zero = 0.0f64,
            negative_zero = -0.0f64,
            thousandth = 0.001f64,
            tenths = 12.3f64,
            hundredths = 12.34f64,
            thousandths = 12.345f64,
            whole = 1000.0f64,
            largest = 999_999_999.999f64,
            too_large = 1e9f64,
            finer = 1.2345f64,
            negative = -1.25f64,
            "latencies, to the microsecond and finer"
        );
        tracing::info!("a message longer than sixty-four bytes, which is written by the default");
        // Longer than the room a line's text starts with: pieces that cross its end, and one
        // longer than all of it.
        let part = "y".repeat(LINE / 3);
        let long = "x".repeat(LINE + 88);
        tracing::info!(
            first = part.as_str(),
            second = part.as_str(),
            third = part.as_str(),
            whole = long.as_str(),
            after = 7u64,
            "a line longer than the room its text starts with"
        );
        tracing::info!("বাংলা, DEL \x7f and a C1 control \u{9b}");
        let span = tracing::info_span!("outer", id = 7u64, name = "a \"quoted\" span");
        let _entered = span.enter();
        tracing::info!(inside = true, "in a span");
    }

    fn subscriber_text(fast: bool, ansi: bool) -> String {
        let sink = Sink::default();
        let writer = sink.clone();
        let builder = tracing_subscriber::fmt()
            .with_ansi(ansi)
            .without_time()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone());
        if fast {
            tracing::subscriber::with_default(builder.fmt_fields(Fields).finish(), events);
        } else {
            tracing::subscriber::with_default(builder.finish(), events);
        }
        sink.text()
    }

    #[test]
    fn fields_are_written_as_the_default_writes_them() {
        let default = subscriber_text(false, false);
        assert_eq!(default.lines().count(), 11, "{default}");
        assert!(default.contains(r#"route="/bsk/api1""#), "{default}");
        assert!(default.contains(" largest=999999999.999 "), "{default}");
        assert_eq!(subscriber_text(true, false), default);
    }

    #[test]
    fn with_colour_the_default_writes_the_fields() {
        let default = subscriber_text(false, true);
        assert!(default.contains('\x1b'), "{default}");
        assert_eq!(subscriber_text(true, true), default);
    }

    /// The human lines of `events` through the default format and through [`Human`] (both
    /// with [`Fields`], or both with the subscriber's default field formatter unless
    /// `ours`), their timestamps blanked: the two read the clock at different instants.
    fn human_lines(fast: bool, ansi: bool, ours: bool) -> String {
        let sink = Sink::default();
        let writer = sink.clone();
        let builder = tracing_subscriber::fmt()
            .with_ansi(ansi)
            .with_timer(Timestamp)
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone());
        match (ours, fast) {
            (true, true) => {
                let s = builder.fmt_fields(Fields).event_format(Human::default());
                tracing::subscriber::with_default(s.finish(), events);
            }
            (true, false) => {
                tracing::subscriber::with_default(builder.fmt_fields(Fields).finish(), events)
            }
            (false, true) => {
                let s = builder.event_format(Human::default()).finish();
                tracing::subscriber::with_default(s, events);
            }
            (false, false) => tracing::subscriber::with_default(builder.finish(), events),
        }
        sink.text()
            .lines()
            .map(|l| {
                // The stamp ends at the line's first `Z` (with colour, inside the dimmed
                // style's escapes).
                let end = l.find('Z').expect("a timestamp") + 1;
                let start = end.checked_sub(PREFIX + 8).expect("a whole timestamp");
                format!("{}T{}\n", &l[..start], &l[end..])
            })
            .collect()
    }

    /// With another field formatter than [`Fields`] (here the subscriber's default),
    /// [`Human`] writes the line's start and hands the fields to it.
    #[test]
    fn human_lines_hand_other_fields_to_their_formatter() {
        let default = human_lines(false, false, false);
        assert_eq!(default.lines().count(), 11, "{default}");
        assert!(default.contains(r#"route="/bsk/api1""#), "{default}");
        assert_eq!(human_lines(true, false, false), default);
    }

    #[test]
    fn human_lines_are_written_as_the_default_writes_them() {
        let default = human_lines(false, false, true);
        assert_eq!(default.lines().count(), 11, "{default}");
        assert!(
            default.contains("T  INFO bsk_sidecar::access: "),
            "{default}"
        );
        assert!(
            default.contains("T  WARN bsk_sidecar::logfmt::tests: "),
            "{default}"
        );
        assert!(default.contains("T ERROR "), "{default}");
        assert!(default.contains(" outer{"), "{default}");
        assert_eq!(human_lines(true, false, true), default);
        let coloured = human_lines(false, true, true);
        assert!(coloured.contains('\x1b'), "{coloured}");
        assert_eq!(human_lines(true, true, true), coloured);
    }

    /// The JSON lines of `events`, their timestamps blanked (the default's clock and
    /// ours are read at different instants).
    fn json_text(fast: bool) -> String {
        let sink = Sink::default();
        let writer = sink.clone();
        let builder = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .json()
            .flatten_event(true)
            .with_current_span(false);
        if fast {
            let s = builder.event_format(Json::default()).finish();
            tracing::subscriber::with_default(s, events);
        } else {
            tracing::subscriber::with_default(builder.finish(), events);
        }
        let key = "\"timestamp\":\"";
        sink.text()
            .lines()
            .map(|l| {
                let (head, rest) = l.split_once(key).expect("a timestamp");
                let (stamp, tail) = rest.split_once('"').expect("a closed timestamp");
                assert_eq!(stamp.len(), PREFIX + 8, "{l}");
                format!("{head}{key}T\"{tail}\n")
            })
            .collect()
    }

    #[test]
    fn json_lines_are_written_as_the_default_writes_them() {
        let default = json_text(false);
        assert_eq!(default.lines().count(), 11, "{default}");
        assert!(default.contains(r#""spans":[{"#), "{default}");
        assert!(default.contains(r#""hundredths":12.34,"#), "{default}");
        assert!(default.contains(r#""nan":null"#), "{default}");
        assert_eq!(json_text(true), default);
    }

    /// The line `f.event()` makes through the binary's subscriber, in the human format
    /// (with [`Fields`]) or JSON.
    fn event_line(f: &Forwarded<'_>, json: bool) -> String {
        let sink = Sink::default();
        let writer = sink.clone();
        let builder = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_timer(Timestamp)
            .with_writer(move || writer.clone());
        if json {
            let s = builder.json().event_format(Json::default()).finish();
            tracing::subscriber::with_default(s, || f.event());
        } else {
            let s = builder.fmt_fields(Fields).event_format(Human::default());
            tracing::subscriber::with_default(s.finish(), || f.event());
        }
        let text = sink.text();
        assert_eq!(text.lines().count(), 1, "{text}");
        text
    }

    #[test]
    fn forwarded_lines_written_directly_are_the_events_lines() {
        let all = Forwarded {
            request_id: b"0000002a-000000001f",
            listener: "public",
            route: "/bsk/api1",
            peer: "bsk",
            status: 200,
            upstream_status: Some(201),
            latency_ms: 1.25,
            userid: Some(b"9054233544"),
            ticket_no: Some(b"20221202153322882"),
            names: None,
        };
        let bare = Forwarded {
            status: 502,
            upstream_status: None,
            latency_ms: 0.001,
            userid: None,
            ticket_no: None,
            ..all
        };
        let whole = Forwarded {
            latency_ms: 17.0,
            ..all
        };
        // Text the human format escapes: the event writes those lines.
        let quoted = Forwarded {
            route: "/say \"hi\"",
            ..all
        };
        let bengali = Forwarded {
            userid: Some("বাংলা".as_bytes()),
            ..all
        };
        for json in [false, true] {
            let cases = [(&all, true), (&bare, true), (&whole, true)];
            let escaped = [(&quoted, json), (&bengali, json)];
            for (f, direct) in cases.into_iter().chain(escaped) {
                let event = event_line(f, json);
                let stamp = match json {
                    true => event.split_once("\"timestamp\":\"").map(|(_, t)| t),
                    false => Some(event.as_str()),
                };
                let stamp = stamp.and_then(|t| t.get(..PREFIX + 8)).unwrap();
                // Each name written, then the route's names made on its first line and
                // copied on the next.
                let kept = RouteNames::default();
                let with_kept = Forwarded {
                    names: Some(&kept),
                    ..*f
                };
                for f in [f, &with_kept, &with_kept] {
                    let mut ours = Vec::new();
                    let written = f.write(json, stamp.as_bytes(), &mut ours);
                    assert_eq!(written.is_ok(), direct, "{event}");
                    if direct {
                        assert_eq!(String::from_utf8(ours).unwrap(), event);
                    }
                }
            }
            // A latency of other than whole thousandths is the event's.
            let finer = Forwarded {
                latency_ms: 0.0001,
                ..all
            };
            assert!(finer.write(json, b"T", &mut Vec::new()).is_err());
        }
        assert!(event_line(&all, false).contains(
            r#"  INFO bsk_sidecar::access: forwarded request_id=0000002a-000000001f listener=public route="/bsk/api1" peer="bsk" status=200 upstream_status=201 latency_ms=1.25 userid="9054233544" ticket_no="20221202153322882""#
        ));
    }

    /// Every thousandth below 1,000, and a stride of larger ones up to 1e9: written as
    /// `{:?}` and serde_json write the float.
    #[test]
    fn whole_thousandths_are_written_as_the_float_formatters_write_them() {
        let large = (0..1_000_000_000_000u64).step_by(9_999_991);
        for n in (0..1_000_000u64).chain(large) {
            let v = n as f64 / 1000.0;
            assert_eq!(thousandths(v), Some(n), "{v:?}");
            let mut ours = String::new();
            write_thousandths(&mut Writer::new(&mut ours), n).unwrap();
            assert_eq!(ours, format!("{v:?}"));
            assert_eq!(ours, serde_json::to_string(&v).unwrap());
        }
        for v in [
            -0.0,
            -1.0,
            1e9,
            1e300,
            f64::NAN,
            f64::INFINITY,
            0.0005,
            1.2345,
            1e-7,
        ] {
            assert_eq!(thousandths(v), None, "{v:?}");
        }
    }

    fn text(secs: u64, micros: u32) -> String {
        stamp(secs, micros)
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default()
    }

    #[test]
    fn stamps_are_rfc3339_with_microseconds() {
        assert_eq!(text(0, 0), "1970-01-01T00:00:00.000000Z");
        // 2022-12-02 15:33:22.882 IST, the spec's sample ticket.
        assert_eq!(text(1_669_975_402, 882_000), "2022-12-02T10:03:22.882000Z");
        // The same second again, from the cache, with other microseconds.
        assert_eq!(text(1_669_975_402, 7), "2022-12-02T10:03:22.000007Z");
        assert_eq!(text(1_709_164_799, 999_999), "2024-02-28T23:59:59.999999Z");
        assert_eq!(text(1_709_164_800, 1), "2024-02-29T00:00:00.000001Z");
        assert_eq!(text(1_735_689_599, 500_000), "2024-12-31T23:59:59.500000Z");
        assert_eq!(text(253_402_300_799, 0), "9999-12-31T23:59:59.000000Z");
        // Past 9999 the default's own formatter writes it.
        assert!(stamp(253_402_300_800, 0).is_none());
    }

    /// The live clock through a subscriber, ours then the default's: the same text
    /// up to the second, for a second between the first reading and the last.
    #[test]
    fn the_clock_reads_as_the_default_reads_it() {
        let line = |fast: bool| {
            let sink = Sink::default();
            let writer = sink.clone();
            let builder = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(move || writer.clone());
            if fast {
                let s = builder.with_timer(Timestamp).finish();
                tracing::subscriber::with_default(s, || tracing::info!("tick"));
            } else {
                tracing::subscriber::with_default(builder.finish(), || tracing::info!("tick"));
            }
            sink.text()
        };
        let unix = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default()
        };
        let before = unix();
        let (ours, theirs) = (line(true), line(false));
        let after = unix();
        for l in [&ours, &theirs] {
            let stamp = l.split_once(' ').map(|(t, _)| t).unwrap_or_default();
            let within = (before..=after).any(|s| {
                let p = date_and_time(s).expect("a date before 9999");
                stamp.len() == PREFIX + 8
                    && stamp.as_bytes().starts_with(&p)
                    && stamp.ends_with('Z')
                    && stamp.get(PREFIX..PREFIX + 1) == Some(".")
                    && stamp
                        .bytes()
                        .skip(PREFIX + 1)
                        .take(6)
                        .all(|b| b.is_ascii_digit())
            });
            assert!(within, "{ours} / {theirs}");
        }
    }
}
