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
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::bounds::{JsonBounds, TooComplex};
use super::fields::Object;

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
    let mut entries = Vec::new();
    checked(bytes, bounds, Some(&mut entries))?;
    let is_object = bytes.trim_ascii_start().first() == Some(&b'{');
    Ok(is_object.then(|| Object::from_entries(entries)))
}

/// The check: with `bounds`, the ingress one (bounded, a container); without, any value.
/// A top-level object's entries go to `entries` when given.
fn checked<'a>(
    bytes: &'a [u8],
    bounds: Option<&JsonBounds>,
    entries: Option<&mut Vec<Entry<'a>>>,
) -> Result<(), Invalid> {
    // 32 bytes at a time (`simdutf8`, the same verdict as the standard library's check).
    let text = simdutf8::basic::from_utf8(bytes).map_err(|_| Invalid::NotUtf8)?;
    let Some(bounds) = bounds else {
        return well_formed(text, entries);
    };
    // The byte scan bounds depth before the recursive parse below runs.
    bounds.check(bytes)?;
    match text.trim_start().as_bytes().first() {
        Some(b'{' | b'[') => well_formed(text, entries),
        Some(_) => {
            // Say "not an object" only about a real JSON value.
            match well_formed(text, entries) {
                Ok(()) => Err(Invalid::NotContainer),
                Err(e) => Err(e),
            }
        }
        None => Err(Invalid::NotJson),
    }
}

fn well_formed<'a>(text: &'a str, entries: Option<&mut Vec<Entry<'a>>>) -> Result<(), Invalid> {
    let mut de = serde_json::Deserializer::from_str(text);
    let mut duplicate = false;
    let parsed = Value {
        duplicate: &mut duplicate,
        entries,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    match (parsed, duplicate) {
        (_, true) => Err(Invalid::DuplicateKey),
        (Ok(()), false) => Ok(()),
        (Err(_), false) => Err(Invalid::NotJson),
    }
}

/// One entry of a top-level object: its key and its value's JSON text.
type Entry<'a> = (Cow<'a, str>, &'a RawValue);

/// A top-level value read raw, checked as [`Value`] checks a value. The raw read checked
/// its syntax, so some values need nothing more: a string without escapes (closed, no
/// control character, and the text is UTF-8), `true`, `false`, `null`, and an integer of
/// at most 18 digits (within what an i64 and a u64 hold). Anything else is walked.
fn walk_raw<E: de::Error>(raw: &RawValue, duplicate: &mut bool) -> Result<(), E> {
    let text = raw.get();
    let checked = match text.as_bytes() {
        [b'"', ..] => memchr::memchr(b'\\', text.as_bytes()).is_none(),
        [b't' | b'f' | b'n', ..] => true,
        [b'-', digits @ ..] | digits => digits.len() <= 18 && digits.iter().all(u8::is_ascii_digit),
    };
    if checked {
        return Ok(());
    }
    let mut de = serde_json::Deserializer::from_str(text);
    Value {
        duplicate,
        entries: None,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end())
    .map_err(E::custom)
}

/// Walks one JSON value, failing on a repeated key (and recording that it was one). With
/// `entries`, the value is the document and its entries are kept when it is an object.
struct Value<'a, 'de> {
    duplicate: &'a mut bool,
    entries: Option<&'a mut Vec<Entry<'de>>>,
}

impl<'de> DeserializeSeed<'de> for Value<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Value<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        if v.is_finite() {
            Ok(())
        } else {
            Err(E::custom("number out of range"))
        }
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(Value {
                duplicate: &mut *self.duplicate,
                entries: None,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Keys are borrowed from the input unless they hold an escape: no allocation per
        // key on the request path.
        let Value {
            duplicate,
            mut entries,
        } = self;
        let mut keys = SeenKeys::default();
        while let Some(key) = map.next_key_seed(Key)? {
            // The document's own entries are kept: each key, and its value read raw.
            let kept = entries.is_some().then(|| key.clone());
            if !keys.insert(key) {
                *duplicate = true;
                return Err(de::Error::custom("duplicate key"));
            }
            match (entries.as_deref_mut(), kept) {
                (Some(entries), Some(key)) => {
                    let raw: &'de RawValue = map.next_value()?;
                    walk_raw(raw, &mut *duplicate)?;
                    entries.push((key, raw));
                }
                _ => map.next_value_seed(Value {
                    duplicate: &mut *duplicate,
                    entries: None,
                })?,
            }
        }
        Ok(())
    }
}

/// How many keys of one object are compared in turn before they are hashed.
const FEW_KEYS: usize = 16;

/// The keys of one object seen so far. The first [`FEW_KEYS`] are kept on the stack, in
/// order, and compared in turn — the objects the spec's APIs carry have fewer, so checking
/// them allocates nothing — and any beyond go to a hash set, made for the first of them, so
/// an object with many keys still costs linear time, not quadratic.
#[derive(Default)]
struct SeenKeys<'de> {
    few: [Option<Cow<'de, str>>; FEW_KEYS],
    /// How many of `few` are taken.
    taken: usize,
    many: Option<HashSet<Cow<'de, str>>>,
}

impl<'de> SeenKeys<'de> {
    /// Adds `key`; `false` when the object already had it.
    fn insert(&mut self, key: Cow<'de, str>) -> bool {
        let taken = self.few.get(..self.taken).unwrap_or_default();
        if taken.iter().flatten().any(|k| *k == key) {
            return false;
        }
        match self.few.get_mut(self.taken) {
            Some(slot) => {
                *slot = Some(key);
                self.taken += 1;
                true
            }
            None => self.many.get_or_insert_with(HashSet::new).insert(key),
        }
    }
}

/// An object key as written (borrowed), or unescaped (owned) when it holds an escape.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

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
        let text = |k| obj.get(k).map(RawValue::get);
        assert_eq!(
            (text("a"), text("b"), text("c")),
            (Some("1.5e3"), Some(r#""x\/y""#), Some("[ 1 ]"))
        );
    }

    #[test]
    fn bounds_apply_before_the_parse() {
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
