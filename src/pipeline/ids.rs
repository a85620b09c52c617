//! The identifying fields of an opened payload — `userid`, `ticketNo`, `appSubTime`,
//! `applicationStatus`, in any deployed spelling — for the access log and the replay key.

/// The identifying fields of an opened payload (any documented spelling), as written.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct PayloadIds {
    pub(super) userid: Option<String>,
    pub(super) ticket_no: Option<String>,
    pub(super) app_sub_time: Option<String>,
    pub(super) application_status: Option<String>,
}

pub(super) fn ids_of(plain: &[u8]) -> PayloadIds {
    use crate::guard::fields::{self, Object};
    use serde_json::value::RawValue;
    let clean = |v: &RawValue| {
        let s = v.get().trim_matches('"').trim();
        // Only short digit strings: an id, never a free-text field smuggled into the log.
        (!s.is_empty() && s.len() <= 24 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.to_string())
    };
    let Some(obj) = Object::parse(plain) else {
        return PayloadIds::default();
    };
    // A field given twice (under one spelling or two) leaves every id unknown.
    let id = |names: &[&str]| obj.one(names).map(|v| v.and_then(clean));
    let ids = || {
        Ok::<_, fields::Ambiguous>(PayloadIds {
            userid: id(fields::USERID)?,
            ticket_no: id(fields::TICKET_NO)?,
            app_sub_time: id(fields::APP_SUB_TIME)?,
            application_status: id(fields::APPLICATION_STATUS)?,
        })
    };
    ids().unwrap_or_default()
}

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
