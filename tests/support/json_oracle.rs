//! The reference the sidecar's own JSON scan (`guard::payload`) is held to: the same check
//! made with `serde_json` — one JSON value, no key twice in one object at any depth (keys
//! compared unescaped), every number within what an f64 holds. Shared by the payload's
//! unit tests and the `json_guard` fuzz target, so both compare against one reference.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Why the reference refused a text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    NotJson,
    DuplicateKey,
}

/// The reference's verdict on `text`: one JSON value of any kind.
pub fn verdict(text: &str) -> Result<(), Refusal> {
    let mut de = serde_json::Deserializer::from_str(text);
    let mut duplicate = false;
    let parsed = Walk {
        duplicate: &mut duplicate,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    match (parsed, duplicate) {
        (_, true) => Err(Refusal::DuplicateKey),
        (Ok(()), false) => Ok(()),
        (Err(_), false) => Err(Refusal::NotJson),
    }
}

/// Walks one value, failing on a repeated key (and recording that it was one).
struct Walk<'a> {
    duplicate: &'a mut bool,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
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
            .next_element_seed(Walk {
                duplicate: &mut *self.duplicate,
            })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys = HashSet::new();
        while let Some(key) = map.next_key_seed(Key)? {
            if !keys.insert(key) {
                *self.duplicate = true;
                return Err(de::Error::custom("duplicate key"));
            }
            map.next_value_seed(Walk {
                duplicate: &mut *self.duplicate,
            })?;
        }
        Ok(())
    }
}

/// An object key, unescaped.
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
