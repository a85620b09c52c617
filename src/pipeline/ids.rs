//! The identifying fields of an opened payload — `userid`, `ticketNo`, `appSubTime`,
//! `applicationStatus`, in any deployed spelling — for the access log and the replay key.

use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::guard::fields::{self, BorrowedStr};

/// The identifying fields of an opened payload (any documented spelling), as written.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct PayloadIds {
    pub(super) userid: Option<String>,
    pub(super) ticket_no: Option<String>,
    pub(super) app_sub_time: Option<String>,
    pub(super) application_status: Option<String>,
}

pub(super) fn ids_of(plain: &[u8]) -> PayloadIds {
    serde_json::from_slice::<Found>(plain)
        .ok()
        .and_then(|found| found.0)
        .unwrap_or_default()
}

/// An id's value as written: only short digit strings (or numbers written in digits),
/// never a free-text field smuggled into the log.
fn clean(v: &RawValue) -> Option<String> {
    let s = v.get().trim_matches('"').trim();
    (!s.is_empty() && s.len() <= 24 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.to_string())
}

/// The ids of one JSON object, read in one pass over its entries: only the values of id
/// fields are kept (unparsed), every other value is only read past. `None` when a field
/// is given twice, under one spelling or two (`fields::Ambiguous`): every id is then
/// unknown.
struct Found(Option<PayloadIds>);

impl<'de> Deserialize<'de> for Found {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(Entries)
    }
}

struct Entries;

impl<'de> Visitor<'de> for Entries {
    type Value = Found;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Found, M::Error> {
        // Each table's value, and whether it was given twice.
        let mut slots: [Option<&'de RawValue>; 4] = [None; 4];
        let mut twice = false;
        while let Some(BorrowedStr(key)) = m.next_key()? {
            let table = TABLES.iter().position(|t| t.contains(&key.as_ref()));
            match table.and_then(|i| slots.get_mut(i)) {
                Some(slot) => {
                    twice |= slot.replace(m.next_value::<&'de RawValue>()?).is_some();
                }
                None => {
                    m.next_value::<IgnoredAny>()?;
                }
            }
        }
        let [userid, ticket_no, app_sub_time, application_status] =
            slots.map(|v| v.and_then(clean));
        Ok(Found((!twice).then_some(PayloadIds {
            userid,
            ticket_no,
            app_sub_time,
            application_status,
        })))
    }
}

/// The id fields' spellings, in the order of [`PayloadIds`]'s fields.
const TABLES: [&[&str]; 4] = [
    fields::USERID,
    fields::TICKET_NO,
    fields::APP_SUB_TIME,
    fields::APPLICATION_STATUS,
];

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn ids_keep_17_digit_ticket_exactly_and_accept_aliases() {
        let ids = ids_of(br#"{"userId":"8527419636","ticketno":20221202153322882,"name":"X"}"#);
        assert_eq!(ids.userid.as_deref(), Some("8527419636"));
        assert_eq!(ids.ticket_no.as_deref(), Some("20221202153322882"));
        let ids = ids_of(
            br#"{"userid":9054233544,"tokenNo":"20220811130723"," appSubTime ":20220811052025,"applicationStatus":3}"#,
        );
        assert_eq!(ids.userid.as_deref(), Some("9054233544"));
        assert_eq!(ids.ticket_no.as_deref(), Some("20220811130723"));
        assert_eq!(ids.app_sub_time.as_deref(), Some("20220811052025"));
        assert_eq!(ids.application_status.as_deref(), Some("3"));
    }

    #[test]
    fn ids_never_carry_free_text() {
        let ids = ids_of(br#"{"userid":"Anupam Ghosh","ticketNo":"x\ny"}"#);
        assert_eq!(ids, PayloadIds::default());
    }

    #[test]
    fn a_field_given_twice_leaves_every_id_unknown() {
        for json in [
            r#"{"userid":"9054233544","userId":"9054233544","ticketNo":1}"#,
            r#"{"ticketNo":1,"tokenNo":1,"userid":"9054233544"}"#,
        ] {
            assert_eq!(ids_of(json.as_bytes()), PayloadIds::default(), "{json}");
        }
        // Nested fields are not the payload's ids; escaped names are read unescaped.
        let ids = ids_of(br#"{"inner":{"userid":1,"userid":2},"user\u0069d":"77","ticketNo":[1]}"#);
        assert_eq!(ids.userid.as_deref(), Some("77"));
        assert_eq!(ids.ticket_no, None);
        for json in ["[1]", "\"userid\"", "{\"userid\":1", "{\"userid\":1} x"] {
            assert_eq!(ids_of(json.as_bytes()), PayloadIds::default(), "{json}");
        }
    }
}
