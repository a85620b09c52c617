//! The one validator every opened payload passes — AES plaintext, JWT claims, a lone form's
//! `encData` — before anything reads a field of it or hands it on.
//!
//! Forwarded bytes are never re-serialised, so the application parses exactly what the
//! peer sent. That is only safe when every parser agrees on what the bytes mean: UTF-8,
//! exactly one JSON object or array, no key twice in one object at any depth (the schema
//! would see one value and the application's parser might read the other), every number
//! representable as an f64 (`1e400` is infinity to some parsers and an error to others),
//! and within the structural [`JsonBounds`].
//!
//! ```
//! use bsk_sidecar::guard::bounds::JsonBounds;
//! use bsk_sidecar::guard::payload::{validate, Invalid};
//! let b = JsonBounds::default();
//! assert!(validate(br#"{"userid":"8527419636","n":20221202153322882}"#, &b).is_ok());
//! assert_eq!(validate(br#"{"a":{"k":1,"k":2}}"#, &b), Err(Invalid::DuplicateKey));
//! assert_eq!(validate(b"{\"a\":\"\xff\"}", &b), Err(Invalid::NotUtf8));
//! assert_eq!(validate(br#"{"n":1e400}"#, &b), Err(Invalid::NotJson));
//! assert_eq!(validate(br#""just a string""#, &b), Err(Invalid::NotContainer));
//! ```

use std::borrow::Cow;
use std::collections::HashSet;

use smallvec::SmallVec;

use super::bounds::{JsonBounds, Tally, TooComplex};
use super::fields::{Entries, Object, Raw};
use crate::words::{digit_stops, HIGHS, ONES};

/// Why a payload was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Not UTF-8 (JSON text is UTF-8, RFC 8259 §8.1).
    #[error("payload is not UTF-8")]
    NotUtf8,
    /// Not one JSON value, or a number outside what an f64 holds.
    #[error("payload is not a JSON document")]
    NotJson,
    /// A JSON value, but not an object or an array.
    #[error("payload is not a JSON object or array")]
    NotContainer,
    /// An object repeats a key.
    #[error("payload repeats a key in one object")]
    DuplicateKey,
    /// Nested too deep, too many values, or too long a string.
    #[error("{0}")]
    TooComplex(#[from] TooComplex),
}

impl Invalid {
    /// The bounded label for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Invalid::TooComplex(_) => "json_too_complex",
            Invalid::NotUtf8 | Invalid::NotJson | Invalid::NotContainer | Invalid::DuplicateKey => {
                "invalid_json"
            }
        }
    }
}

/// Checks `bytes` as described in the module docs; the bytes themselves are not changed.
pub fn validate(bytes: &[u8], bounds: &JsonBounds) -> Result<(), Invalid> {
    checked(bytes, Some(bounds), None)
}

/// The tools' check (`open`, a peer's reply): UTF-8, one JSON value of any kind, no
/// repeated key, numbers in range — without the ingress bounds, since an integration
/// engineer may open anything a peer sends. Nesting is still bounded by the parser's
/// recursion limit.
pub fn validate_any(bytes: &[u8]) -> Result<(), Invalid> {
    checked(bytes, None, None)
}

/// [`validate`] under `bounds` (else [`validate_any`]), handing out what the walk read of a
/// top-level object: its entries, values unparsed (`None` when the document is not an
/// object). A reader of a few fields then looks them up without parsing the document again.
///
/// ```
/// use bsk_sidecar::guard::bounds::JsonBounds;
/// use bsk_sidecar::guard::payload::{read, Invalid};
/// let b = JsonBounds::default();
/// let obj = read(br#"{"exp":1700000000,"n":{"k":1}}"#, Some(&b)).unwrap().unwrap();
/// assert_eq!(obj.get("n").map(|v| v.get()), Some(r#"{"k":1}"#));
/// assert!(read(b"[1,2]", Some(&b)).unwrap().is_none());
/// assert_eq!(read(br#"{"n":{"k":1,"k":2}}"#, Some(&b)).err(), Some(Invalid::DuplicateKey));
/// ```
pub fn read<'a>(
    bytes: &'a [u8],
    bounds: Option<&JsonBounds>,
) -> Result<Option<Object<'a>>, Invalid> {
    let mut object = Object::default();
    Ok(read_into(bytes, bounds, &mut object)?.then_some(object))
}

/// [`read`] into `object`, which the caller holds: the entries (the first eight in place)
/// are not moved again on their way out. `true` when the document is an object; `object`
/// is then its entries, else (not an object, or refused) empty.
pub fn read_into<'a>(
    bytes: &'a [u8],
    bounds: Option<&JsonBounds>,
    object: &mut Object<'a>,
) -> Result<bool, Invalid> {
    let entries = object.entries_mut();
    entries.clear();
    let checked = checked(bytes, bounds, Some(&mut *entries));
    let is_object = checked.is_ok() && bytes.trim_ascii_start().first() == Some(&b'{');
    if !is_object {
        // What a refused document's walk kept before it failed is not handed out.
        entries.clear();
    }
    checked.map(|()| is_object)
}

/// The check: with `bounds`, the ingress one (bounded, a container); without, any value.
/// A top-level object's entries go to `entries` when given.
fn checked<'a>(
    bytes: &'a [u8],
    bounds: Option<&JsonBounds>,
    entries: Option<&mut Entries<'a>>,
) -> Result<(), Invalid> {
    // 32 bytes at a time (`simdutf8`, the same verdict as the standard library's check).
    let text = simdutf8::basic::from_utf8(bytes).map_err(|_| Invalid::NotUtf8)?;
    let Some(bounds) = bounds else {
        return well_formed(text, &UNBOUNDED, entries);
    };
    match text.trim_start().as_bytes().first() {
        Some(b'{' | b'[') => well_formed(text, bounds, entries),
        Some(_) => {
            // Say "not an object" only about a real JSON value.
            match well_formed(text, bounds, entries) {
                Ok(()) => Err(Invalid::NotContainer),
                Err(e) => Err(e),
            }
        }
        None => Err(Invalid::NotJson),
    }
}

/// No structural bounds (the tools' check): only [`MAX_DEPTH`] applies.
const UNBOUNDED: JsonBounds = JsonBounds {
    max_depth: usize::MAX,
    max_values: usize::MAX,
    max_string: usize::MAX,
};

/// The check of one JSON value (RFC 8259, as `serde_json` reads it: every string's escapes
/// and control characters, no key twice in one object at any depth, numbers within an
/// f64) under `bounds`, in one pass over the text; the document's own entries go to
/// `entries` when it is an object. A bound is checked where the pass reaches what breaks
/// it — nesting before it goes deeper — counted as [`JsonBounds::check`] counts it; a
/// document broken in two ways is refused for the first the pass meets.
fn well_formed<'a>(
    text: &'a str,
    bounds: &JsonBounds,
    entries: Option<&mut Entries<'a>>,
) -> Result<(), Invalid> {
    let mut scan = Scan {
        text,
        at: 0,
        tally: Tally::new(*bounds),
    };
    scan.space();
    match entries {
        Some(entries) if scan.peek() == Some(b'{') => scan.object(Some(entries))?,
        _ => scan.value()?,
    }
    scan.space();
    if scan.at == text.len() {
        Ok(())
    } else {
        Err(Invalid::NotJson)
    }
}

/// How deep containers may nest without `bounds` (the tools' check): `serde_json`'s
/// recursion limit, so what the tools refused before they still refuse.
const MAX_DEPTH: usize = 127;

/// The bytes of `word` (eight of the text, in order) that end a string's plain run — a
/// quote, a backslash or a control character — each marked by its high bit. Bytes past the
/// first marked may be marked wrongly (a borrow runs on), never the first one: only the
/// lowest mark is read.
fn string_stops(word: u64) -> u64 {
    let quote = word ^ (ONES * u64::from(b'"'));
    let slash = word ^ (ONES * u64::from(b'\\'));
    let zero_at = |w: u64| w.wrapping_sub(ONES) & !w;
    let control = word.wrapping_sub(ONES * 0x20) & !word;
    (zero_at(quote) | zero_at(slash) | control) & HIGHS
}

/// How many words of a string's plain run are looked at one by one before the rest of it
/// is searched.
const SHORT_WORDS: usize = 2;

/// Where the first byte `stop` marks lies in `bytes` from `at`: looked for eight bytes
/// at a time (`stops` marks a word's, the first mark exact), then one by one in a tail
/// shorter than a word; the text's length when there is none. `Err` with where the look
/// left off when `words` words passed without one.
fn first_stop(
    bytes: &[u8],
    mut at: usize,
    words: usize,
    stops: impl Fn(u64) -> u64,
    stop: impl Fn(u8) -> bool,
) -> Result<usize, usize> {
    for _ in 0..words {
        let Some(word) = bytes.get(at..).and_then(|rest| rest.first_chunk::<8>()) else {
            let tail = bytes.get(at..).unwrap_or_default();
            return Ok(at + tail.iter().position(|&b| stop(b)).unwrap_or(tail.len()));
        };
        let marks = stops(u64::from_le_bytes(*word));
        if marks != 0 {
            return Ok(at + (marks.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    Err(at)
}

/// Whether `b` ends a string's plain run (see [`string_stops`]).
fn stops_string(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

/// Where the JSON whitespace (its four bytes) from `at` in `bytes` ends.
pub(crate) fn space_end(bytes: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = bytes.get(at) {
        at += 1;
    }
    at
}

/// Where the plain run of a string's text from `at` ends (a quote, backslash or control
/// character); the text's length when it never does. The first bytes are looked at
/// eight at a time (most strings, keys and ids, end in them); a longer run is searched
/// for its quote or backslash (`memchr`), then checked for control characters.
pub(crate) fn plain_run_end(bytes: &[u8], at: usize) -> usize {
    let at = match first_stop(bytes, at, SHORT_WORDS, string_stops, stops_string) {
        Ok(end) => return end,
        Err(at) => at,
    };
    let rest = bytes.get(at..).unwrap_or_default();
    let end = memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
    let run = rest.get(..end).unwrap_or_default();
    // Every byte compared, with no early exit, so the compiler compares many at once.
    if run.iter().fold(false, |control, &b| control | (b < 0x20)) {
        return at + run.iter().position(|&b| b < 0x20).unwrap_or(end);
    }
    at + end
}

/// A walk over the text, `at` the next byte to read.
struct Scan<'a> {
    text: &'a str,
    at: usize,
    /// The structure so far against the bounds, counted as [`JsonBounds::check`] counts it.
    tally: Tally,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    /// Skips JSON's four whitespace bytes.
    fn space(&mut self) {
        self.at = space_end(self.text.as_bytes(), self.at);
    }

    /// Takes a `,` or `:`, which starts one more member or element.
    fn separator(&mut self) -> Result<(), Invalid> {
        self.at += 1;
        Ok(self.tally.separator()?)
    }

    // `value`, `string_value`, `pass_string` and `number` are inlined into the loops of
    // `object` and `array` (`inline(always)`: the hint alone left them calls). Called, they
    // cost a short payload's check 12–16% more instructions.
    #[inline(always)]
    fn value(&mut self) -> Result<(), Invalid> {
        match self.peek() {
            Some(b'{') => self.object(None),
            Some(b'[') => self.array(),
            Some(b'"') => self.string_value(),
            Some(b't') => self.word("true"),
            Some(b'f') => self.word("false"),
            Some(b'n') => self.word("null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(Invalid::NotJson),
        }
    }

    fn word(&mut self, word: &str) -> Result<(), Invalid> {
        let rest = self.text.as_bytes().get(self.at..).unwrap_or_default();
        if !rest.starts_with(word.as_bytes()) {
            return Err(Invalid::NotJson);
        }
        self.at += word.len();
        Ok(())
    }

    /// Into a container (at its opening byte), within the bounds and the nesting limit;
    /// `true` when it closes at once (`{}`, `[]`).
    fn open(&mut self, close: u8) -> Result<bool, Invalid> {
        self.tally.open()?;
        if self.tally.depth() > MAX_DEPTH {
            return Err(Invalid::NotJson);
        }
        self.at += 1;
        self.space();
        if self.peek() == Some(close) {
            self.at += 1;
            self.tally.close();
            return Ok(true);
        }
        Ok(false)
    }

    /// After a container's element: `,` (and more to come) or its closing byte.
    fn next_or_close(&mut self, close: u8) -> Result<bool, Invalid> {
        self.space();
        match self.peek() {
            Some(b',') => {
                self.separator()?;
                self.space();
                Ok(true)
            }
            Some(b) if b == close => {
                self.at += 1;
                self.tally.close();
                Ok(false)
            }
            _ => Err(Invalid::NotJson),
        }
    }

    fn array(&mut self) -> Result<(), Invalid> {
        if self.open(b']')? {
            return Ok(());
        }
        loop {
            self.value()?;
            if !self.next_or_close(b']')? {
                return Ok(());
            }
        }
    }

    /// An object; a repeated key fails it as soon as the key is read.
    fn object(&mut self, mut entries: Option<&mut Entries<'a>>) -> Result<(), Invalid> {
        if self.open(b'}')? {
            return Ok(());
        }
        let mut keys = SeenKeys::default();
        loop {
            if self.peek() != Some(b'"') {
                return Err(Invalid::NotJson);
            }
            let key = self.string()?;
            if !keys.insert(&key) {
                return Err(Invalid::DuplicateKey);
            }
            self.space();
            if self.peek() != Some(b':') {
                return Err(Invalid::NotJson);
            }
            self.separator()?;
            self.space();
            let start = self.at;
            self.value()?;
            // The document's own entries are kept: each key, and its value's text.
            if let Some(entries) = entries.as_deref_mut() {
                let text = self.text.get(start..self.at).ok_or(Invalid::NotJson)?;
                entries.push((key, Raw::checked(text)));
            }
            if !self.next_or_close(b'}')? {
                return Ok(());
            }
        }
    }

    /// A string (at its opening quote), as text: borrowed when it has no escape. A string
    /// with an escape is unescaped by `fields::string_of` (`serde_json`), which checks each
    /// escape (a `\\u` surrogate must be one of a pair) as it has always been checked here.
    fn string(&mut self) -> Result<Cow<'a, str>, Invalid> {
        let open = self.at;
        if !self.pass_string()? {
            let inner = (self.text.get(open + 1..self.at - 1)).ok_or(Invalid::NotJson)?;
            return Ok(Cow::Borrowed(inner));
        }
        self.unescaped(open)
    }

    /// A string that is a value: checked as [`Scan::string`] checks it, its text not kept.
    #[inline(always)]
    fn string_value(&mut self) -> Result<(), Invalid> {
        let open = self.at;
        if self.pass_string()? {
            self.unescaped(open)?;
        }
        Ok(())
    }

    /// The string with an escape just passed, from its opening quote at `open`, unescaped.
    fn unescaped(&self, open: usize) -> Result<Cow<'a, str>, Invalid> {
        let quoted = self.text.get(open..self.at).ok_or(Invalid::NotJson)?;
        super::fields::string_of(quoted).ok_or(Invalid::NotJson)
    }

    /// Past a string (from its opening quote) and its closing quote, within the bound on
    /// its length; `true` when it holds an escape.
    #[inline(always)]
    fn pass_string(&mut self) -> Result<bool, Invalid> {
        let open = self.at;
        self.at += 1;
        let mut escaped = false;
        loop {
            let stop = self.plain_run();
            match self.text.as_bytes().get(stop) {
                Some(b'"') => {
                    self.at = stop + 1;
                    break;
                }
                Some(b'\\') => {
                    // The escaped byte is skipped whatever it is: serde_json judges the
                    // escape afterwards, and only `\\"` could end the string early.
                    escaped = true;
                    self.at = stop + 2;
                }
                _ => return Err(Invalid::NotJson),
            }
        }
        // Its length as written, escapes and all.
        self.tally.string(self.at - open - 2)?;
        Ok(escaped)
    }

    /// Where the plain run of the string from `at` ends (see [`plain_run_end`]).
    fn plain_run(&self) -> usize {
        plain_run_end(self.text.as_bytes(), self.at)
    }

    /// A number (at its `-` or first digit). An integer of at most 18 digits is within
    /// an f64's range by its length; any other is read by `serde_json`, which refuses one
    /// outside it (`1e400`, four hundred digits).
    #[inline(always)]
    fn number(&mut self) -> Result<(), Invalid> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let int_start = self.at;
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(Invalid::NotJson),
        }
        let mut plain = self.at - int_start <= 18;
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.some_digits()?;
            plain = false;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.some_digits()?;
            plain = false;
        }
        if plain {
            return Ok(());
        }
        let text = self.text.get(start..self.at).ok_or(Invalid::NotJson)?;
        match serde_json::from_str::<f64>(text) {
            Ok(n) if n.is_finite() => Ok(()),
            _ => Err(Invalid::NotJson),
        }
    }

    /// Past the digits from `at`, eight bytes at a time.
    fn digits(&mut self) {
        let not_digit = |b: u8| !b.is_ascii_digit();
        let bytes = self.text.as_bytes();
        self.at =
            first_stop(bytes, self.at, usize::MAX, digit_stops, not_digit).unwrap_or_else(|at| at);
    }

    /// At least one digit, and any after it.
    fn some_digits(&mut self) -> Result<(), Invalid> {
        if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
            return Err(Invalid::NotJson);
        }
        self.digits();
        Ok(())
    }
}

/// How many keys of one object are compared in turn before they are hashed.
const FEW_KEYS: usize = 16;

/// The keys of one object seen so far. The first [`FEW_KEYS`] as written (no escape) are
/// kept on the stack, in order, and compared in turn — the objects the spec's APIs carry
/// have fewer, so checking them allocates nothing — and any beyond, or unescaped, go to a
/// hash set, made for the first of them, so an object with many keys still costs linear
/// time, not quadratic.
#[derive(Default)]
struct SeenKeys<'de> {
    /// Not zeroed when made: the objects of a request are many and small.
    few: SmallVec<[&'de str; FEW_KEYS]>,
    many: Option<HashSet<Cow<'de, str>>>,
}

impl<'de> SeenKeys<'de> {
    /// Adds `key`; `false` when the object already had it.
    #[allow(clippy::ptr_arg)] // a borrowed key is kept for the text's lifetime, not copied
    fn insert(&mut self, key: &Cow<'de, str>) -> bool {
        let text: &str = key;
        if self.few.contains(&text) || self.many.as_ref().is_some_and(|m| m.contains(text)) {
            return false;
        }
        match key {
            Cow::Borrowed(key) if self.few.len() < FEW_KEYS => self.few.push(key),
            key => {
                self.many
                    .get_or_insert_with(HashSet::new)
                    .insert(key.clone());
            }
        }
        true
    }
}

/// The reference the scan is held to: the same check made with `serde_json`.
#[cfg(test)]
#[path = "../../tests/support/json_oracle.rs"]
mod json_oracle;

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[u8]) -> Result<(), Invalid> {
        validate(s, &JsonBounds::default())
    }

    #[test]
    fn accepts_what_peers_send() {
        assert_eq!(
            v(br#"{"userid":8527419636,"ticketNo":20221202153322882}"#),
            Ok(())
        );
        assert_eq!(
            v(br#"[{"a":1},{"a":2}]"#),
            Ok(()),
            "same key in two objects"
        );
        assert_eq!(v(" {\"name\":\"বাংলা ÀÀÀ 😀\"} \n".as_bytes()), Ok(()));
        assert_eq!(v(br#"{"big":18446744073709551616,"f":1.5e300}"#), Ok(()));
        assert_eq!(v(br#"{"e":"\u00e9","k":"\ud83d\ude00"}"#), Ok(()));
    }

    /// An object of `n` distinct keys `k0`..; `repeat` appends a second `k{repeat}`.
    fn object(n: usize, repeat: Option<usize>) -> Vec<u8> {
        let keys = (0..n).chain(repeat).map(|i| format!("\"k{i}\":{i}"));
        format!("{{{}}}", keys.collect::<Vec<_>>().join(",")).into_bytes()
    }

    /// Keys are compared in turn while few and hashed beyond: a repeat is found wherever
    /// its first use was, and many distinct keys are not mistaken for one.
    #[test]
    fn a_repeated_key_is_found_among_few_and_many_keys() {
        for n in [1, FEW_KEYS - 1, FEW_KEYS, FEW_KEYS + 1, 4 * FEW_KEYS] {
            assert_eq!(v(&object(n, None)), Ok(()), "{n} distinct keys");
            for repeat in [0, n / 2, n - 1] {
                assert_eq!(
                    v(&object(n, Some(repeat))),
                    Err(Invalid::DuplicateKey),
                    "k{repeat} repeated after {n} keys"
                );
            }
        }
    }

    /// An object read into again holds only the new document's entries, and none of a
    /// document refused halfway.
    #[test]
    fn an_object_read_into_holds_only_what_the_last_read_accepted() {
        let b = JsonBounds::default();
        let mut obj = Object::default();
        assert_eq!(read_into(br#"{"a":1,"b":2}"#, Some(&b), &mut obj), Ok(true));
        assert_eq!(obj.get("a").map(Raw::get), Some("1"));
        assert_eq!(read_into(br#"{"c":3}"#, Some(&b), &mut obj), Ok(true));
        assert_eq!(
            (obj.get("a"), obj.get("c").map(Raw::get)),
            (None, Some("3"))
        );
        let refused = read_into(br#"{"d":4,"d":5}"#, Some(&b), &mut obj);
        assert_eq!(refused, Err(Invalid::DuplicateKey));
        assert_eq!((obj.get("c"), obj.get("d")), (None, None));
        assert_eq!(read_into(b"[1]", Some(&b), &mut obj), Ok(false));
        assert_eq!(obj.get("d"), None);
    }

    #[test]
    fn refuses_what_parsers_disagree_on() {
        assert_eq!(v(br#"{"userid":1,"userid":2}"#), Err(Invalid::DuplicateKey));
        assert_eq!(v(br#"[{"a":[{"x":1,"x":1}]}]"#), Err(Invalid::DuplicateKey));
        // An escape spelling of the same key is the same key.
        assert_eq!(v(br#"{"a":1,"\u0061":2}"#), Err(Invalid::DuplicateKey));
        assert_eq!(v(b"{\"a\":\"\xff\"}"), Err(Invalid::NotUtf8));
        assert_eq!(v(br#"{"n":1e400}"#), Err(Invalid::NotJson));
        assert_eq!(v(br#"{"n":-1e400}"#), Err(Invalid::NotJson));
        assert_eq!(v(br#"{"a":1} {"b":2}"#), Err(Invalid::NotJson));
        assert_eq!(v(br#"{"a":1,}"#), Err(Invalid::NotJson));
        assert_eq!(v(b""), Err(Invalid::NotJson));
        assert_eq!(v(b"   "), Err(Invalid::NotJson));
        assert_eq!(v(b"12"), Err(Invalid::NotContainer));
        assert_eq!(v(b"null"), Err(Invalid::NotContainer));
        assert_eq!(v(b"nul"), Err(Invalid::NotJson));
    }

    /// A control character inside a string is refused wherever it falls in the string
    /// (the plain run is scanned in blocks); a space and DEL are not control characters.
    #[test]
    fn every_control_character_in_a_string_is_refused() {
        for pad in [0, 1, 7, 15, 16, 31, 33, 64] {
            let before = "x".repeat(pad);
            for c in (0u8..=0x1f).map(char::from) {
                let doc = format!("{{\"k{before}{c}\":1}}");
                assert_eq!(v(doc.as_bytes()), Err(Invalid::NotJson), "{doc:?}");
                let doc = format!("{{\"k\":\"{before}{c}{before}\"}}");
                assert_eq!(v(doc.as_bytes()), Err(Invalid::NotJson), "{doc:?}");
            }
            for c in [' ', '\u{7f}', 'é'] {
                let doc = format!("{{\"k\":\"{before}{c}{before}\"}}");
                assert_eq!(v(doc.as_bytes()), Ok(()), "{doc:?}");
            }
        }
    }

    /// `read` walks a top-level object's values raw and checks each after; it judges every
    /// document as `validate` does, and keeps each entry's text as sent.
    #[test]
    fn read_judges_as_validate_does_and_keeps_the_entries() {
        let b = JsonBounds::default();
        for doc in [
            &br#"{"a":"\ud800"}"#[..],
            br#"{"a":"\ud83d\ude00","b":"x\/y"}"#,
            b"{\"a\":\"\x01\"}",
            br#"{"n":1e400}"#,
            br#"{"n":-1e400,"m":1}"#,
            br#"{"i":-123456789012345678,"u":999999999999999999,"t":true,"f":false,"z":null}"#,
            br#"{"big":1234567890123456789012345678901234567890,"neg":-98765432109876543210}"#,
            format!(r#"{{"inf":1{}}}"#, "0".repeat(400)).as_bytes(),
            format!(r#"{{"inf":-1{}}}"#, "0".repeat(400)).as_bytes(),
            br#"{"a":{"k":1,"k":2}}"#,
            br#"{"a":[{"k":1},{"k":1,"k":1}]}"#,
            br#"{"a":1,"a":2}"#,
            br#"{"a":1,"\u0061":2}"#,
            br#"{"a":tru}"#,
            br#"{"a":1} {"b":2}"#,
            br#"[{"a":1,"a":2}]"#,
            br#"{"a":1,"b":[1,2],"c":{"d":null},"e":true,"f":"g"}"#,
            b"12",
        ] {
            let read = read(doc, Some(&b)).map(|o| o.is_some());
            let valid = validate(doc, &b).map(|()| doc.first() == Some(&b'{'));
            assert_eq!(read, valid, "{}", String::from_utf8_lossy(doc));
        }
        let obj = read(br#" {"a" : 1.5e3 ,"b":"x\/y", "c" : [ 1 ] }"#, Some(&b))
            .unwrap()
            .unwrap();
        let text = |k| obj.get(k).map(Raw::get);
        assert_eq!(
            (text("a"), text("b"), text("c")),
            (Some("1.5e3"), Some(r#""x\/y""#), Some("[ 1 ]"))
        );
    }

    use super::json_oracle as oracle;

    /// The scan's verdict, as the reference words it.
    fn scanned(text: &str, keep: bool) -> Result<(), oracle::Refusal> {
        let mut entries = Entries::new();
        well_formed(text, &UNBOUNDED, keep.then_some(&mut entries)).map_err(scanned_reason)
    }

    fn scanned_reason(e: Invalid) -> oracle::Refusal {
        match e {
            Invalid::DuplicateKey => oracle::Refusal::DuplicateKey,
            _ => oracle::Refusal::NotJson,
        }
    }

    /// Strings of every length to 100, with a quote, a backslash, a control character
    /// or a byte that stops nothing at every place: the scan (eight bytes at a time, then
    /// byte by byte) judges each as the reference does, and a kept value is the whole
    /// string.
    #[test]
    fn a_string_ends_where_the_reference_ends_it_at_every_length_and_place() {
        let stops = [
            "\"", "\\", "\\n", "\u{1}", "\u{1f}", "\u{0}", " ", "\u{7f}", "é", "/",
        ];
        for len in 0..=100 {
            for at in 0..len {
                for stop in stops {
                    let body = format!("{}{stop}{}", "a".repeat(at), "b".repeat(len - at - 1));
                    let text = format!(r#"{{"k":"{body}","z":1}}"#);
                    let expected = oracle::verdict(&text);
                    assert_eq!(scanned(&text, false), expected, "{text:?}");
                    assert_eq!(scanned(&text, true), expected, "{text:?}");
                    if expected.is_ok() {
                        let obj = read(text.as_bytes(), None).unwrap().unwrap();
                        assert_eq!(obj.get("k").map(Raw::get), Some(&*format!("\"{body}\"")));
                    }
                }
            }
        }
    }

    /// Numbers of every length to 40 digits (in the integer part, the fraction or the
    /// exponent), each followed by every ASCII character, so the digits end at every place
    /// of an eight-byte word, and by letters and digits of other scripts: the scan (eight
    /// digits at a time, then one by one) judges each as the reference does, and a kept
    /// value is the whole number.
    #[test]
    fn a_number_ends_where_the_reference_ends_it_at_every_length_and_place() {
        for len in 1..=40 {
            for shape in ["", "-", "0.", "1e", "1E+", "-2.5e-"] {
                let digits = "9876543210".repeat(5);
                let digits = digits.get(..len).unwrap();
                // A leading zero is not JSON, so the integer part starts at 1.
                let number = match shape {
                    "" | "-" => format!("{shape}1{}", digits.get(1..).unwrap()),
                    _ => format!("{shape}{digits}"),
                };
                for next in 0u8..=0x7f {
                    let after = char::from(next);
                    let text = format!(r#"{{"k":{number}{after}}}"#);
                    let expected = oracle::verdict(&text);
                    assert_eq!(scanned(&text, false), expected, "{text:?}");
                    if expected.is_ok() {
                        let obj = read(text.as_bytes(), None).unwrap().unwrap();
                        let whole = match next.is_ascii_digit() {
                            true => format!("{number}{after}"),
                            false => number.clone(),
                        };
                        assert_eq!(obj.get("k").map(Raw::get), Some(&*whole), "{text:?}");
                    }
                }
                for after in ["é", "٠", "０", "😀"] {
                    let text = format!(r#"{{"k":{number}{after}}}"#);
                    assert_eq!(scanned(&text, true), oracle::verdict(&text), "{text:?}");
                }
            }
        }
    }

    /// Pieces of JSON text, valid and not, that random texts are made of.
    const PIECES: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "\\",
        "u",
        "d83d",
        "de00",
        "dc00",
        "0041",
        "00e9",
        "\"a\"",
        "\"b\"",
        "\"\\u0061\"",
        "\"\\ud800\"",
        "\"\\n\"",
        "\\/",
        "\\x",
        "1",
        "0",
        "-",
        ".",
        "e",
        "E",
        "+",
        "7",
        "true",
        "false",
        "null",
        "nul",
        " ",
        "\n",
        "\t",
        "\r",
        "\u{1}",
        "\u{1f}",
        "\u{7f}",
        "é",
        "😀",
        "1e400",
        "-1e400",
        "1e-400",
        "18446744073709551616",
        "123456789012345678",
        "1234567890123456789",
        "0.5",
        "01",
    ];

    /// A JSON-like value: containers of a few keys (so repeats happen) over tricky scalars.
    fn tree() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let scalar = proptest::sample::select(vec![
            "1",
            "-0",
            "0.25",
            "2.5e10",
            "1E+2",
            "1e400",
            "-1e400",
            "1e-999",
            "99999999999999999999",
            "-123456789012345678",
            "true",
            "false",
            "null",
            "\"x\"",
            "\"\"",
            "\"a\\\"b\"",
            "\"\\u00e9\\ud83d\\ude00\"",
            "\"\\udc00\"",
            "\"\\ud83dx\"",
            "\"tab\\tline\\n\"",
            "\"বাংলা\"",
            "\"\u{1}\"",
            "\"\u{1f}\"",
        ])
        .prop_map(str::to_owned);
        scalar.prop_recursive(4, 32, 5, |inner| {
            let key = proptest::sample::select(vec!["a", "b", "\\u0061", "c d", ""]);
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5)
                    .prop_map(|items| format!("[{}]", items.join(","))),
                proptest::collection::vec((key, inner), 0..5).prop_map(|entries| {
                    let entries: Vec<String> = entries
                        .iter()
                        .map(|(k, v)| format!("\"{k}\" : {v}"))
                        .collect();
                    format!("{{ {} }}", entries.join(","))
                }),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(2000))]

        /// Random texts of JSON's pieces: the scan refuses what the reference refuses,
        /// for the same reason, and accepts the rest.
        #[test]
        fn random_pieces_are_judged_as_the_reference_judges_them(
            pieces in proptest::collection::vec(proptest::sample::select(PIECES), 0..24)
        ) {
            let text = pieces.concat();
            let expected = oracle::verdict(&text);
            proptest::prop_assert_eq!(scanned(&text, false), expected, "{:?}", text);
            proptest::prop_assert_eq!(scanned(&text, true), expected, "{:?}", text);
        }

        /// Documents, as they are and with one byte cut out or one piece put in: the same
        /// verdict as the reference, and a top-level object's entries as `serde_json`
        /// reads them.
        #[test]
        fn documents_and_their_mutants_are_judged_as_the_reference_judges_them(
            doc in tree(),
            cut in proptest::option::of(0usize..400),
            insert in proptest::option::of((0usize..400, proptest::sample::select(PIECES))),
        ) {
            let mut text = doc;
            if let Some(at) = cut.filter(|&at| text.is_char_boundary(at) && at < text.len()) {
                let next = text[at..].chars().next().map_or(0, char::len_utf8);
                text.replace_range(at..at + next, "");
            }
            if let Some((at, piece)) = insert.filter(|(at, _)| text.is_char_boundary(*at)) {
                text.insert_str(at, piece);
            }
            let expected = oracle::verdict(&text);
            proptest::prop_assert_eq!(scanned(&text, false), expected, "{:?}", text);
            proptest::prop_assert_eq!(scanned(&text, true), expected, "{:?}", text);
            // Under tight bounds: a valid document is refused as the bounds' own scan
            // refuses it; an invalid one is refused, for its own reason when within them.
            let tight = JsonBounds { max_depth: 3, max_values: 12, max_string: 6 };
            let got = validate(text.as_bytes(), &tight);
            let container = matches!(text.trim_start().as_bytes().first(), Some(b'{' | b'['));
            match (expected, tight.check(text.as_bytes())) {
                (Ok(()), Err(e)) => proptest::prop_assert_eq!(got, Err(Invalid::TooComplex(e))),
                (Ok(()), Ok(())) if container => proptest::prop_assert_eq!(got, Ok(())),
                (Ok(()), Ok(())) => proptest::prop_assert_eq!(got, Err(Invalid::NotContainer)),
                (Err(reason), Ok(())) => proptest::prop_assert_eq!(
                    got.map_err(scanned_reason),
                    Err(reason)
                ),
                (Err(_), Err(_)) => proptest::prop_assert!(got.is_err()),
            }
            if expected.is_ok() {
                let mine = read(text.as_bytes(), None).unwrap();
                let reference = Object::parse(text.as_bytes());
                proptest::prop_assert_eq!(
                    format!("{mine:?}"),
                    format!("{reference:?}"),
                    "{:?}", text
                );
            }
        }
    }

    /// Containers count as values, as the bounds' own scan counts them: a list of empty
    /// lists reaches the limit where that scan says it does.
    #[test]
    fn containers_count_towards_the_values_bound() {
        let tight = JsonBounds {
            max_depth: 3,
            max_values: 12,
            max_string: 6,
        };
        let mut refused = 0;
        for n in 0..10 {
            let doc = format!("[{}[]]", "[],".repeat(n));
            let by_bounds = tight.check(doc.as_bytes()).map_err(Invalid::TooComplex);
            assert_eq!(validate(doc.as_bytes(), &tight), by_bounds, "{doc}");
            refused += usize::from(by_bounds.is_err());
        }
        assert!(
            refused > 0 && refused < 10,
            "the limit falls inside the range"
        );
    }

    /// The nesting limit without bounds is the reference's.
    #[test]
    fn nesting_without_bounds_stops_where_the_reference_stops() {
        for depth in [126, 127, 128, 129] {
            let text = "[".repeat(depth) + &"]".repeat(depth);
            assert_eq!(scanned(&text, false), oracle::verdict(&text), "{depth}");
        }
        assert_eq!(validate_any(&b"[".repeat(127)), Err(Invalid::NotJson));
        let deepest = "[".repeat(127) + &"]".repeat(127);
        assert_eq!(validate_any(deepest.as_bytes()), Ok(()));
    }

    #[test]
    fn nesting_is_bounded_before_the_pass_goes_deeper() {
        let deep = "[".repeat(5000) + &"]".repeat(5000);
        assert!(matches!(
            v(deep.as_bytes()),
            Err(Invalid::TooComplex(TooComplex::Depth(_)))
        ));
        assert_eq!(
            Invalid::TooComplex(TooComplex::Depth(1)).reason(),
            "json_too_complex"
        );
        assert_eq!(Invalid::DuplicateKey.reason(), "invalid_json");
    }
}
