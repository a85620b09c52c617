//! The payload's field names and the spellings deployed peers send them under
//! (`spec/NOTES.md`), in one table that the schema check, the replay key and the API-7
//! journal all read; and a JSON object's entries looked up by any spelling.
//!
//! Each list is the spec's spelling first, then its aliases. A field given under two
//! spellings (or one spelling twice) is ambiguous: which value was meant is not for us
//! to guess.
//!
//! ```
//! use bsk_sidecar::guard::fields::{self, Object};
//! let obj = Object::parse(br#"{"userId":"9054233544","tokenNo":20221202153322882}"#).unwrap();
//! assert_eq!(obj.one(fields::TICKET_NO).unwrap().map(|v| v.get()), Some("20221202153322882"));
//! let twice = Object::parse(br#"{"userid":1,"userId":2}"#).unwrap();
//! assert!(twice.one(fields::USERID).is_err());
//! ```

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use smallvec::SmallVec;

use crate::words::all_digits;

/// The citizen's mobile number that identifies them.
pub const USERID: &[&str] = &["userid", "userId"];
/// The request's IST timestamp, which with `userid` identifies a service entry.
pub const TICKET_NO: &[&str] = &["ticketNo", "ticketno", "tokenNo"];
/// API-2's application time; a deployed sender pads the name with spaces.
pub const APP_SUB_TIME: &[&str] = &["appSubTime", " appSubTime "];
/// Where an application stands (0–5).
pub const APPLICATION_STATUS: &[&str] = &["applicationStatus"];
/// Department code and sequence (`AMD/003`).
pub const SERVICE_CODE: &[&str] = &["serviceCode", "ServiceCode"];
/// API-7's first day: the spec's spellings and the deployed department code's.
pub const FROM_DATE: &[&str] = &[
    "fromDate",
    "formDate",
    "From Date",
    "From_Date",
    "from_date",
    "fromdate",
];
/// API-7's last day.
pub const TO_DATE: &[&str] = &["toDate", "To Date", "To_Date", "to_date", "todate"];

/// A field given more than once, under one spelling or several.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a field is given twice")]
pub struct Ambiguous;

/// A JSON value's text as written (no surrounding space), from a document already checked:
/// what a reader of one field parses, if it parses anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Raw<'a>(&'a str);

impl<'a> Raw<'a> {
    /// `text` must be one whole JSON value, checked (as `payload::read` and
    /// [`Object::parse`] check the values they hand out).
    pub(crate) fn checked(text: &'a str) -> Raw<'a> {
        Raw(text)
    }

    pub fn get(self) -> &'a str {
        self.0
    }
}

impl<'a> From<&'a RawValue> for Raw<'a> {
    fn from(raw: &'a RawValue) -> Raw<'a> {
        Raw(raw.get())
    }
}

/// A JSON object's entries in document order, values unparsed.
#[derive(Debug, Default)]
pub struct Object<'a>(Entries<'a>);

/// An object's entries, each key (unescaped) with its value's text. The first eight are
/// held in place: the spec's payloads and claims have fewer, so reading them allocates
/// nothing.
pub(crate) type Entries<'a> = SmallVec<[(Cow<'a, str>, Raw<'a>); 8]>;

impl<'a> Object<'a> {
    /// `None` when `json` is not one JSON object.
    pub fn parse(json: &'a [u8]) -> Option<Object<'a>> {
        // Read as text, checked as UTF-8 once: from bytes, the parser checks each string
        // and each raw value again.
        serde_json::from_str(std::str::from_utf8(json).ok()?).ok()
    }

    /// Where `payload::read_into` keeps the entries as it validates the document.
    pub(crate) fn entries_mut(&mut self) -> &mut Entries<'a> {
        &mut self.0
    }

    /// The entries in document order: each key and its value.
    pub fn entries(&self) -> impl Iterator<Item = (&str, Raw<'a>)> + '_ {
        self.0.iter().map(|(k, v)| (k.as_ref(), *v))
    }

    /// The value under the last occurrence of exactly `name`.
    pub fn get(&self, name: &str) -> Option<Raw<'a>> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
    }

    /// The value under the first of `spellings` present (and which one it was), in the
    /// list's order; a repeated key counts as its last value.
    pub fn first(&self, spellings: &[&'static str]) -> Option<(&'static str, Raw<'a>)> {
        spellings.iter().find_map(|n| self.get(n).map(|v| (*n, v)))
    }

    /// The one value given under any of `spellings`; an error when more than one entry
    /// carries it.
    pub fn one(&self, spellings: &[&str]) -> Result<Option<Raw<'a>>, Ambiguous> {
        let mut found = self
            .0
            .iter()
            .filter(|(k, _)| spellings.contains(&k.as_ref()));
        match (found.next(), found.next()) {
            (None, _) => Ok(None),
            (Some((_, v)), None) => Ok(Some(*v)),
            (Some(_), Some(_)) => Err(Ambiguous),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Object<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Entries<'a> {
            type Value = Object<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Object<'a>, M::Error> {
                let mut entries = SmallVec::new();
                while let Some(BorrowedStr(k)) = m.next_key()? {
                    let v: &'de RawValue = m.next_value()?;
                    entries.push((k, Raw::from(v)));
                }
                Ok(Object(entries))
            }
        }
        d.deserialize_map(Entries(std::marker::PhantomData))
    }
}

/// The identifying fields of a payload (any deployed spelling), as written: for the access
/// log and the replay key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ids {
    pub userid: Option<Id>,
    pub ticket_no: Option<Id>,
    pub app_sub_time: Option<Id>,
    pub application_status: Option<Id>,
}

impl Ids {
    /// The ids among `obj`'s entries. Only short digit strings or numbers count: an id,
    /// never a free-text field smuggled into the log. A field given twice (under one
    /// spelling or two) leaves every id unknown.
    pub fn of(obj: &Object<'_>) -> Ids {
        // One pass over the entries, each key matched against every spelling at once.
        let mut found: [Option<Raw<'_>>; 4] = [None; 4];
        for (key, value) in &obj.0 {
            let Some(slot) = id_slot(key).and_then(|i| found.get_mut(i)) else {
                continue;
            };
            if slot.replace(*value).is_some() {
                return Ids::default();
            }
        }
        let [userid, ticket_no, app_sub_time, application_status] = found;
        Ids {
            userid: userid.and_then(id),
            ticket_no: ticket_no.and_then(id),
            app_sub_time: app_sub_time.and_then(id),
            application_status: application_status.and_then(id),
        }
    }

    /// The ids of a JSON document not read before (none unless it is one object).
    pub fn parse(json: &[u8]) -> Ids {
        Object::parse(json).map_or_else(Ids::default, |obj| Ids::of(&obj))
    }
}

/// Which of the ids (in [`Ids`]' order) `key` spells: the names of [`USERID`],
/// [`TICKET_NO`], [`APP_SUB_TIME`] and [`APPLICATION_STATUS`], matched by length first.
fn id_slot(key: &str) -> Option<usize> {
    match key {
        "userid" | "userId" => Some(0),
        "ticketNo" | "ticketno" | "tokenNo" => Some(1),
        "appSubTime" | " appSubTime " => Some(2),
        "applicationStatus" => Some(3),
        _ => None,
    }
}

/// A value's text as an id: up to 24 digits, quoted or not, surrounding spaces dropped.
fn id(v: Raw<'_>) -> Option<Id> {
    // A string's quotes dropped: `v` is checked JSON, so a string has one at each end and
    // none inside that is not escaped.
    let text = v.get();
    let text = (text.strip_prefix('"').and_then(|t| t.strip_suffix('"'))).unwrap_or(text);
    // Unicode's spaces are looked for only when the text is not digits alone (as an id
    // usually is).
    let digits = if all_digits(text.as_bytes()) {
        text
    } else {
        Some(text.trim()).filter(|t| all_digits(t.as_bytes()))?
    };
    if digits.is_empty() {
        return None;
    }
    Id::new(digits.as_bytes())
}

/// An id's digits (see [`Ids`]): every request with ids reads two to four of them, and
/// each was a small allocation.
pub type Id = ShortText<24>;

/// Up to `N` bytes of ASCII text held in place, not on the heap: a request's ids and its
/// request id, made for every request.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ShortText<const N: usize> {
    len: u8,
    bytes: [u8; N],
}

impl<const N: usize> ShortText<N> {
    /// No text.
    pub const EMPTY: ShortText<N> = ShortText {
        len: 0,
        bytes: [0; N],
    };

    /// `text`, when it is ASCII and at most `N` bytes (and under 255). Copied whole, not
    /// pushed byte by byte: a text stored a byte at a time and then moved as a whole
    /// (the ids are, twice) made the move wait for each byte's store.
    pub fn new(text: &[u8]) -> Option<ShortText<N>> {
        let len = u8::try_from(text.len()).ok().filter(|&n| n < u8::MAX)?;
        if !crate::words::ascii(text) {
            return None;
        }
        let mut bytes = [0; N];
        bytes.get_mut(..text.len())?.copy_from_slice(text);
        Some(ShortText { len, bytes })
    }

    /// Appends `b`; `false` (and nothing appended) when it is not ASCII or there is no room.
    pub fn push(&mut self, b: u8) -> bool {
        match self.bytes.get_mut(usize::from(self.len)) {
            Some(slot) if b.is_ascii() && self.len < u8::MAX => {
                *slot = b;
                self.len += 1;
                true
            }
            _ => false,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or_default()
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever pushed.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl<const N: usize> std::ops::Deref for ShortText<N> {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> fmt::Display for ShortText<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> fmt::Debug for ShortText<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The string a JSON value's text holds, or `None` when the value is not a string: the
/// text between its quotes when it has no escape (the value is checked JSON, so nothing
/// is parsed again), else unescaped into its own `String`.
pub fn string_of(text: &str) -> Option<Cow<'_, str>> {
    if memchr::memchr(b'\\', text.as_bytes()).is_none() {
        if let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            return Some(Cow::Borrowed(inner));
        }
    }
    serde_json::from_str::<BorrowedStr<'_>>(text)
        .ok()
        .map(|s| s.0)
}

/// A JSON string borrowed from the document when it has no escapes, else unescaped into
/// its own `String`. (serde's own `Cow<str>` always copies, even with `#[serde(borrow)]`
/// inside an `Option`.)
pub struct BorrowedStr<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for BorrowedStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Text<'a> {
            type Value = BorrowedStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Text(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_borrowed_unless_escaped() {
        let plain: BorrowedStr<'_> = serde_json::from_str(r#""encData""#).unwrap();
        assert!(matches!(plain.0, Cow::Borrowed("encData")));
        let escaped: BorrowedStr<'_> = serde_json::from_str(r#""enc\u0044ata\n""#).unwrap();
        assert!(matches!(escaped.0, Cow::Owned(ref s) if s == "encData\n"));
        assert!(serde_json::from_str::<BorrowedStr<'_>>("1").is_err());
        let obj = Object::parse(br#"{"a\u0062":1,"cd":2}"#).unwrap();
        assert_eq!(obj.get("ab").map(Raw::get), Some("1"));
        assert_eq!(obj.get("cd").map(Raw::get), Some("2"));
    }

    #[test]
    fn a_string_value_is_read_from_between_its_quotes_unless_escaped() {
        assert!(matches!(
            string_of(r#""m4p3+Cxx/=""#),
            Some(Cow::Borrowed("m4p3+Cxx/="))
        ));
        let escaped = string_of(r#""m4p3+Cxx\/=A""#);
        assert!(matches!(escaped, Some(Cow::Owned(ref s)) if s == "m4p3+Cxx/=A"));
        assert!(matches!(string_of(r#""""#), Some(Cow::Borrowed(""))));
        for other in ["12", "null", "true", r#"{"a":"b"}"#, r#"["x"]"#] {
            assert!(string_of(other).is_none(), "{other}");
        }
    }

    #[test]
    fn every_spelling_is_found_and_two_are_ambiguous() {
        for (json, table) in [
            (r#"{"userid":1}"#, USERID),
            (r#"{"userId":1}"#, USERID),
            (r#"{"ticketno":1}"#, TICKET_NO),
            (r#"{"tokenNo":1}"#, TICKET_NO),
            (r#"{" appSubTime ":1}"#, APP_SUB_TIME),
            (r#"{"From Date":1}"#, FROM_DATE),
            (r#"{"todate":1}"#, TO_DATE),
        ] {
            let obj = Object::parse(json.as_bytes()).unwrap();
            assert_eq!(obj.one(table).unwrap().map(Raw::get), Some("1"), "{json}");
        }
        let obj = Object::parse(br#"{"UserId":1,"ticket_no":2}"#).unwrap();
        assert!(
            matches!(obj.one(USERID), Ok(None)),
            "not a deployed spelling"
        );
        assert!(matches!(obj.one(TICKET_NO), Ok(None)));
        for json in [
            r#"{"ticketNo":1,"tokenNo":1}"#,
            r#"{"ticketNo":1,"ticketNo":1}"#,
        ] {
            let obj = Object::parse(json.as_bytes()).unwrap();
            assert!(matches!(obj.one(TICKET_NO), Err(Ambiguous)), "{json}");
        }
    }

    #[test]
    fn first_follows_the_tables_order_and_get_the_last_repeat() {
        let obj = Object::parse(br#"{"tokenNo":3,"ticketno":2,"ticketno":4}"#).unwrap();
        let (name, v) = obj.first(TICKET_NO).unwrap();
        assert_eq!((name, v.get()), ("ticketno", "4"));
        assert_eq!(obj.get("tokenNo").map(Raw::get), Some("3"));
    }

    /// Every spelling of every id is read as that id and no other, beside a field that is
    /// none; a spelling one letter off is not read.
    #[test]
    fn every_spelling_of_every_id_is_read() {
        let read = |ids: &Ids| {
            [
                ids.userid,
                ids.ticket_no,
                ids.app_sub_time,
                ids.application_status,
            ]
        };
        for (i, names) in [USERID, TICKET_NO, APP_SUB_TIME, APPLICATION_STATUS]
            .iter()
            .enumerate()
        {
            for name in names.iter() {
                let ids = Ids::parse(format!(r#"{{"iat":1,"{name}":"4711"}}"#).as_bytes());
                let got = read(&ids);
                for (j, v) in got.iter().enumerate() {
                    assert_eq!(v.as_deref(), (i == j).then_some("4711"), "{name}");
                }
            }
        }
        for other in ["userix", "tokenNx", "applicationStatux", "u", ""] {
            let ids = Ids::parse(format!(r#"{{"{other}":"4711"}}"#).as_bytes());
            assert_eq!(ids, Ids::default(), "{other}");
        }
    }

    #[test]
    fn ids_keep_17_digit_ticket_exactly_and_accept_aliases() {
        let ids = Ids::parse(br#"{"userId":"8527419636","ticketno":20221202153322882,"name":"X"}"#);
        assert_eq!(ids.userid.as_deref(), Some("8527419636"));
        assert_eq!(ids.ticket_no.as_deref(), Some("20221202153322882"));
        let ids = Ids::parse(
            br#"{"userid":9054233544,"tokenNo":"20220811130723"," appSubTime ":20220811052025,"applicationStatus":3}"#,
        );
        assert_eq!(ids.userid.as_deref(), Some("9054233544"));
        assert_eq!(ids.ticket_no.as_deref(), Some("20220811130723"));
        assert_eq!(ids.app_sub_time.as_deref(), Some("20220811052025"));
        assert_eq!(ids.application_status.as_deref(), Some("3"));
    }

    /// A short text is made whole as pushing its bytes one by one makes it, and refused
    /// where pushing would stop: past `N` bytes, or at a byte that is not ASCII.
    #[test]
    fn a_short_text_holds_ascii_up_to_its_room_and_nothing_else() {
        let pushed = |text: &[u8]| {
            let mut t = ShortText::<4>::EMPTY;
            text.iter().all(|&b| t.push(b)).then_some(t)
        };
        for text in [
            &b""[..],
            b"1",
            b"abcd",
            b"abcde",
            b"a\xc3\xa9",
            b"\x7f\x00",
            b"12\x80",
        ] {
            assert_eq!(ShortText::<4>::new(text), pushed(text), "{text:?}");
        }
        let t = ShortText::<4>::new(b"ab").unwrap();
        assert_eq!((t.as_str(), t.len()), ("ab", 2));
        assert_eq!(ShortText::<4>::new(b"abcde"), None);
        assert_eq!(ShortText::<4>::new("é".as_bytes()), None);
    }

    #[test]
    fn ids_never_carry_free_text() {
        let ids = Ids::parse(br#"{"userid":"Anupam Ghosh","ticketNo":"x\ny"}"#);
        assert_eq!(ids, Ids::default());
        let long = format!(
            r#"{{"userid":"{}","ticketNo":"{}"}}"#,
            "1".repeat(25),
            "2".repeat(24)
        );
        let ids = Ids::parse(long.as_bytes());
        assert_eq!(
            (ids.userid, ids.ticket_no.map(|t| t.len())),
            (None, Some(24))
        );
    }

    #[test]
    fn a_field_given_twice_leaves_every_id_unknown() {
        for json in [
            r#"{"userid":"9054233544","userId":"9054233544","ticketNo":1}"#,
            r#"{"ticketNo":1,"tokenNo":1,"userid":"9054233544"}"#,
            r#"{"userid":"9054233544","applicationStatus":1,"applicationStatus":1}"#,
        ] {
            assert_eq!(Ids::parse(json.as_bytes()), Ids::default(), "{json}");
        }
        // Nested fields are not the payload's ids; escaped names are read unescaped.
        let ids =
            Ids::parse(br#"{"inner":{"userid":1,"userid":2},"user\u0069d":"77","ticketNo":[1]}"#);
        assert_eq!(ids.userid.as_deref(), Some("77"));
        assert_eq!(ids.ticket_no, None);
        for json in ["[1]", "\"userid\"", "{\"userid\":1", "{\"userid\":1} x"] {
            assert_eq!(Ids::parse(json.as_bytes()), Ids::default(), "{json}");
        }
    }

    #[test]
    fn only_an_object_is_an_object() {
        for json in ["[1,2,3,4]", "\"x\"", "12", "null", "{", ""] {
            assert!(Object::parse(json.as_bytes()).is_none(), "{json}");
        }
        let escaped = Object::parse(br#"{"user\u0069d":5}"#).unwrap();
        assert_eq!(escaped.one(USERID).unwrap().map(Raw::get), Some("5"));
    }
}
