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

use super::bounds::{JsonBounds, TooComplex};

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
    let text = std::str::from_utf8(bytes).map_err(|_| Invalid::NotUtf8)?;
    // The byte scan bounds depth before the recursive parse below runs.
    bounds.check(bytes)?;
    match text.trim_start().as_bytes().first() {
        Some(b'{' | b'[') => well_formed(text),
        Some(_) => {
            // Say "not an object" only about a real JSON value.
            match well_formed(text) {
                Ok(()) => Err(Invalid::NotContainer),
                Err(e) => Err(e),
            }
        }
        None => Err(Invalid::NotJson),
    }
}

/// The tools' check (`open`, a peer's reply): UTF-8, one JSON value of any kind, no
/// repeated key, numbers in range — without the ingress bounds, since an integration
/// engineer may open anything a peer sends. Nesting is still bounded by the parser's
/// recursion limit.
pub fn validate_any(bytes: &[u8]) -> Result<(), Invalid> {
    let text = std::str::from_utf8(bytes).map_err(|_| Invalid::NotUtf8)?;
    well_formed(text)
}

fn well_formed(text: &str) -> Result<(), Invalid> {
    let mut de = serde_json::Deserializer::from_str(text);
    let mut duplicate = false;
    let parsed = Value {
        duplicate: &mut duplicate,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    match (parsed, duplicate) {
        (_, true) => Err(Invalid::DuplicateKey),
        (Ok(()), false) => Ok(()),
        (Err(_), false) => Err(Invalid::NotJson),
    }
}

/// Walks one JSON value, failing on a repeated key (and recording that it was one).
struct Value<'a> {
    duplicate: &'a mut bool,
}

impl<'de> DeserializeSeed<'de> for Value<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Value<'_> {
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
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Keys are borrowed from the input unless they hold an escape: no allocation per
        // key on the request path.
        let mut keys = SeenKeys::default();
        while let Some(key) = map.next_key_seed(Key)? {
            if !keys.insert(key) {
                *self.duplicate = true;
                return Err(de::Error::custom("duplicate key"));
            }
            map.next_value_seed(Value {
                duplicate: &mut *self.duplicate,
            })?;
        }
        Ok(())
    }
}

/// How many keys of one object are compared in turn before they are hashed.
const FEW_KEYS: usize = 16;

/// The keys of one object seen so far. The first [`FEW_KEYS`] are kept on the stack and
/// compared in turn — the objects the spec's APIs carry have fewer, so checking them
/// allocates nothing — and any beyond go to a hash set, so an object with many keys still
/// costs linear time, not quadratic.
#[derive(Default)]
struct SeenKeys<'de> {
    few: [Option<Cow<'de, str>>; FEW_KEYS],
    many: HashSet<Cow<'de, str>>,
}

impl<'de> SeenKeys<'de> {
    /// Adds `key`; `false` when the object already had it.
    fn insert(&mut self, key: Cow<'de, str>) -> bool {
        if self.few.iter().flatten().any(|k| *k == key) {
            return false;
        }
        match self.few.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => {
                *slot = Some(key);
                true
            }
            None => self.many.insert(key),
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
