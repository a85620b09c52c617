//! The API-7 journal, pure half: which fields of an API-2 push are kept, which date a
//! record is filed under, the push's idempotency key, and how a portal's API-7 pull is
//! read. Storage is [`super::outbox`]; the HTTP side is [`super::serve_journal`].
//!
//! Only the spec's transactional fields are kept (`userid`, `ticketNo`, `serviceCode`,
//! `appNo`, `appSubTime`, `deptPayRefNo`, `transNo`, `bankRefNo`, `paidAmt`, `message`,
//! `applicationStatus`, `statusCode`), each under the spelling the application used and
//! with its value byte for byte (a 17-digit `ticketNo` is never re-serialised). Anything
//! else — a citizen's name, mobile, email, address — is dropped before it is written.
//!
//! ```
//! use bsk_sidecar::egress::journal;
//! let push = br#"{"userid":9054233544,"ticketNo":20221202153322882,"citizenname":"A. Ghosh","applicationStatus":2}"#;
//! let rec = journal::extract(push).unwrap();
//! assert_eq!(rec.json, r#"{"userid":9054233544,"ticketNo":20221202153322882,"applicationStatus":2}"#);
//! assert_eq!(rec.date.as_deref(), Some("2022-12-02"));
//! ```

use std::borrow::Cow;

use crate::calendar;
use crate::clock::Clock;
use crate::guard::fields::{self, Object, Raw, APPLICATION_STATUS, TICKET_NO, USERID};

/// Fields kept, in the spec's order; each row lists the spellings seen in the spec. An
/// allowlist: a citizen's `name`/`citizenname`, `mobile`/`citizenmobile`,
/// `email`/`citizenemail`, gender, age or address is never stored (nor logged).
const KEPT: &[&[&str]] = &[
    USERID,
    TICKET_NO,
    fields::SERVICE_CODE,
    &["appNo"],
    fields::APP_SUB_TIME,
    &["deptPayRefNo"],
    &["transNo"],
    &["bankRefNo"],
    &["paidAmt"],
    &["message"],
    APPLICATION_STATUS,
    &["statusCode"],
];

/// A journal record: the kept fields as a JSON object, and its date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub json: String,
    /// `YYYY-MM-DD` of the `ticketNo` (IST); `None` when it has none the journal can read
    /// (the caller files it under the day it was received).
    pub date: Option<String>,
}

/// A scalar's text: a number's digits, a string's content; `None` for anything else or a
/// string with characters an id never has.
fn scalar(v: Raw<'_>) -> Option<String> {
    let t = v.get().trim();
    let s = if t.starts_with('"') {
        serde_json::from_str::<String>(t).ok()?
    } else if t.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
        t.to_string()
    } else {
        return None;
    };
    let s = s.trim();
    (!s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'))
        .then(|| s.to_string())
}

/// The transactional fields of an API-2 push, or `None` when it is not one (a JSON
/// object with at least `userid` and `ticketNo`).
pub fn extract(plain: &[u8]) -> Option<Record> {
    let f = Object::parse(plain)?;
    f.first(USERID)?;
    let (_, ticket) = f.first(TICKET_NO)?;
    let mut json = String::from("{");
    for (n, v) in KEPT.iter().filter_map(|names| f.first(names)) {
        if json.len() > 1 {
            json.push(',');
        }
        json.push_str(&serde_json::Value::from(n).to_string());
        json.push(':');
        json.push_str(v.get().trim());
    }
    json.push('}');
    let date = scalar(ticket).and_then(|t| date_of_ticket(&t));
    Some(Record { json, date })
}

/// (`userid`, `ticketNo`, `applicationStatus`) of a push, normalised so a number and the
/// same digits as a string are one key. `None` when any is missing.
pub fn idempotency_key(peer: &str, plain: &[u8]) -> Option<String> {
    let f = Object::parse(plain)?;
    let user = scalar(f.first(USERID)?.1)?;
    let ticket = scalar(f.first(TICKET_NO)?.1)?;
    let status = scalar(f.first(APPLICATION_STATUS)?.1)?;
    Some(format!("{peer}\u{1f}{user}\u{1f}{ticket}\u{1f}{status}"))
}

/// `YYYY-MM-DD` of a `YYYYMMDDHHmmSS[mmm]` ticket, when it is a real calendar date.
pub fn date_of_ticket(ticket: &str) -> Option<String> {
    calendar::ticket_date(ticket).map(calendar::format_date)
}

/// The date in India (UTC+05:30) at Unix time `unix_secs`, as `YYYY-MM-DD`.
pub fn ist_date(unix_secs: u64) -> String {
    calendar::ist_date(unix_secs)
}

/// The date a record is filed under: its ticket's, else today's in India by `clock`.
pub fn filing_date(ticket_date: Option<String>, clock: &Clock) -> String {
    ticket_date.unwrap_or_else(|| ist_date(clock.unix_secs()))
}

/// Most records one API-7 answer carries; page with `limit` / `offset` beyond it.
pub const MAX_PULL: usize = 10_000;

/// A portal's API-7 request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pull {
    /// Inclusive, `YYYY-MM-DD`.
    pub from: String,
    /// Inclusive, `YYYY-MM-DD`.
    pub to: String,
    pub offset: usize,
    pub limit: usize,
}

/// Reads an API-7 request: `fromDate` (or `formDate`, `From Date`, `From_Date`, and the
/// deployed department code's `fromdate`), `toDate` (or `To Date`, `To_Date`, `todate`),
/// optional `limit` / `offset` (numbers or digit strings). Other fields (a `passcode` the
/// `passcode` layer has checked) are ignored. Errors are the caller-facing message.
pub fn parse_pull(plain: &[u8]) -> Result<Pull, &'static str> {
    const NOT_A_PULL: &str = "API-7 request must be a JSON object with fromDate and toDate";
    let obj = Object::parse(plain).ok_or(NOT_A_PULL)?;
    // A field given twice, under one spelling or two, is refused like a malformed body.
    let one = |names: &[&str]| obj.one(names).map_err(|_| NOT_A_PULL);
    // Every field's type is checked before any value is judged.
    let text = |names: &[&str]| -> Result<Option<String>, &'static str> {
        match one(names)?.filter(|v| !is_null(*v)) {
            None => Ok(None),
            Some(v) => serde_json::from_str::<String>(v.get())
                .map(Some)
                .map_err(|_| NOT_A_PULL),
        }
    };
    let (from, to) = (text(fields::FROM_DATE)?, text(fields::TO_DATE)?);
    let (limit, offset) = (one(&["limit"])?, one(&["offset"])?);
    let (limit, offset) = (
        limit.filter(|v| !is_null(*v)),
        offset.filter(|v| !is_null(*v)),
    );
    let date = |d: Option<String>, missing: &'static str| -> Result<String, &'static str> {
        let d = d.ok_or(missing)?;
        let d = d.trim();
        if is_date(d) {
            Ok(d.to_string())
        } else {
            Err("dates must be YYYY-MM-DD")
        }
    };
    let from = date(from, "fromDate is missing")?;
    let to = date(to, "toDate is missing")?;
    if from > to {
        return Err("fromDate is after toDate");
    }
    let number = |v: Option<Raw<'_>>, default: usize| -> Result<usize, &'static str> {
        match v {
            None => Ok(default),
            Some(v) => whole_number(v).ok_or("limit and offset must be whole numbers"),
        }
    };
    let limit = number(limit, MAX_PULL)?;
    let offset = number(offset, 0)?;
    if limit == 0 || limit > MAX_PULL {
        return Err("limit must be between 1 and 10000");
    }
    Ok(Pull {
        from,
        to,
        offset,
        limit,
    })
}

/// JSON `null`: the same as leaving the field out.
fn is_null(v: Raw<'_>) -> bool {
    v.get().trim() == "null"
}

/// `YYYY-MM-DD`, a real calendar date from 1970 on.
fn is_date(d: &str) -> bool {
    calendar::parse_date(d).is_some_and(|d| d.year() >= 1970)
}

/// A JSON number of digits (`100`) or a string of them (`"100"`, stray spaces tolerated).
fn whole_number(v: Raw<'_>) -> Option<usize> {
    let t = v.get().trim();
    let s: Cow<'_, str> = if t.starts_with('"') {
        Cow::Owned(serde_json::from_str::<String>(t).ok()?)
    } else {
        Cow::Borrowed(t)
    };
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The spec's answer: a JSON array of the records, as stored.
pub fn answer(records: &[String]) -> String {
    let mut out = String::with_capacity(2 + records.iter().map(|r| r.len() + 1).sum::<usize>());
    out.push('[');
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r);
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_transactional_fields_byte_for_byte() {
        let push = br#"{"userId":"9054233544","ticketno":20221202153322882,"serviceCode":"AMD/003","citizenname":"Anupam Ghosh","citizenmobile":"9963258963","citizenemail":"ag@c.in","email":"a@b.in","gender":"M","age":40,"paidAmt":2500.00,"message":"Draft Submitted","applicationStatus":2}"#;
        let rec = extract(push).unwrap();
        assert_eq!(
            rec.json,
            r#"{"userId":"9054233544","ticketno":20221202153322882,"serviceCode":"AMD/003","paidAmt":2500.00,"message":"Draft Submitted","applicationStatus":2}"#
        );
        for personal in [
            "Anupam",
            "9963258963",
            "ag@c.in",
            "a@b.in",
            "\"gender\"",
            "\"age\"",
        ] {
            assert!(!rec.json.contains(personal), "{personal}");
        }
        assert_eq!(rec.date.as_deref(), Some("2022-12-02"));
    }

    #[test]
    fn not_an_api2_record_is_not_journaled() {
        assert!(extract(br#"{"userId":9054233544,"deptCode":"AMD"}"#).is_none());
        assert!(extract(b"[1,2]").is_none());
        assert!(extract(b"not json").is_none());
    }

    #[test]
    fn ticket_dates_must_be_real() {
        assert_eq!(
            date_of_ticket("20240229101010").as_deref(),
            Some("2024-02-29")
        );
        assert_eq!(date_of_ticket("20230229101010"), None);
        assert_eq!(date_of_ticket("2022120215332"), None);
        assert_eq!(date_of_ticket("2022x202153322"), None);
    }

    #[test]
    fn idempotency_key_normalises_number_and_string() {
        let a = idempotency_key(
            "bsk",
            br#"{"userid":9054233544,"ticketNo":20221202153322882,"applicationStatus":2}"#,
        );
        let b = idempotency_key(
            "bsk",
            br#"{"userId":"9054233544","tokenNo":"20221202153322882","applicationStatus":"2"}"#,
        );
        assert!(a.is_some());
        assert_eq!(a, b);
        let c = idempotency_key(
            "bsk",
            br#"{"userid":9054233544,"ticketNo":20221202153322882,"applicationStatus":3}"#,
        );
        assert_ne!(a, c);
        assert_eq!(
            idempotency_key("bsk", br#"{"userid":9054233544,"ticketNo":1}"#),
            None
        );
    }

    #[test]
    fn ist_date_turns_at_18_30_utc() {
        // 2022-12-01T18:29:59Z is 23:59:59 IST; a second later it is the 2nd in India.
        assert_eq!(ist_date(1_669_919_399), "2022-12-01");
        assert_eq!(ist_date(1_669_919_400), "2022-12-02");
        assert_eq!(ist_date(0), "1970-01-01");
    }

    /// A record whose ticket gives no date is filed under the day in India when it is
    /// received: the 1st up to 18:29:59Z, the 2nd from 18:30:00Z.
    #[test]
    fn undated_records_file_under_the_clocks_ist_day() {
        let rec = extract(br#"{"userid":9054233544,"ticketNo":"pending"}"#).unwrap();
        assert_eq!(rec.date, None);
        let clock = Clock::manual(1_669_919_399_999); // 2022-12-01T18:29:59.999Z
        assert_eq!(filing_date(rec.date.clone(), &clock), "2022-12-01");
        clock.advance(std::time::Duration::from_millis(1));
        assert_eq!(filing_date(rec.date, &clock), "2022-12-02");
        let dated = extract(br#"{"userid":9054233544,"ticketNo":20221130235959}"#).unwrap();
        assert_eq!(
            filing_date(dated.date, &clock),
            "2022-11-30",
            "the ticket's day wins"
        );
    }

    #[test]
    fn pull_accepts_the_documented_spellings() {
        for body in [
            r#"{"fromDate":"2022-12-10","toDate":"2022-12-22"}"#,
            r#"{"formDate":"2022-12-10","toDate":"2022-12-22"}"#,
            r#"{"From Date":"2022-12-10","To Date":"2022-12-22"}"#,
            r#"{"From_Date":"2022-12-10","To_Date":"2022-12-22"}"#,
            r#"{"fromdate":"2022-12-10","todate":"2022-12-22"}"#,
            r#"{"fromDate":" 2022-12-10 ","toDate":"2022-12-22\r\n"}"#,
        ] {
            let p = parse_pull(body.as_bytes()).unwrap();
            assert_eq!(
                (p.from.as_str(), p.to.as_str()),
                ("2022-12-10", "2022-12-22")
            );
            assert_eq!((p.offset, p.limit), (0, MAX_PULL));
        }
        let p = parse_pull(
            br#"{"fromDate":"2022-12-10","toDate":"2022-12-10","limit":"5","offset":10}"#,
        )
        .unwrap();
        assert_eq!((p.offset, p.limit), (10, 5));
        // The deployed department code's request: passcode inside, lower-case dates.
        let p = parse_pull(
            br#"{"passcode":"376423","fromdate":"2022-12-10","todate":"2022-12-22","limit":100,"offset":0}"#,
        )
        .unwrap();
        assert_eq!(
            p,
            Pull {
                from: "2022-12-10".into(),
                to: "2022-12-22".into(),
                offset: 0,
                limit: 100
            }
        );
        let p = parse_pull(
            br#"{"fromdate":"2022-12-10","todate":"2022-12-22","limit":" 100 ","offset":"20"}"#,
        )
        .unwrap();
        assert_eq!((p.offset, p.limit), (20, 100));
    }

    #[test]
    fn pull_refuses_what_it_cannot_answer_exactly() {
        for body in [
            r#"{"toDate":"2022-12-22"}"#,
            r#"{"fromDate":"2022-12-23","toDate":"2022-12-22"}"#,
            r#"{"fromDate":"2022-13-01","toDate":"2022-12-22"}"#,
            r#"{"fromDate":"10-12-2022","toDate":"2022-12-22"}"#,
            r#"{"fromDate":"2022-12-10","toDate":"2022-12-22","limit":0}"#,
            r#"{"fromDate":"2022-12-10","toDate":"2022-12-22","limit":-1}"#,
            r#"{"fromDate":"2022-12-10","toDate":"2022-12-22","limit":1.5}"#,
            r#"{"fromDate":"2022-12-10","toDate":"2022-12-22","limit":"ten"}"#,
            r#"{"fromDate":"2022-12-10","toDate":"2022-12-22","offset":"-1"}"#,
            r#"{"fromDate":"2022-12-10","toDate":"2022-12-22","limit":"১০০"}"#,
            // Two spellings of one date: which would win is not for us to guess.
            r#"{"fromDate":"2022-12-10","fromdate":"2022-12-11","toDate":"2022-12-22"}"#,
            // Non-ASCII text where the checks used to index bytes 4 and 7.
            r#"{"fromDate":"ÀÀÀÀÀ","toDate":"2022-12-22"}"#,
            r#"{"fromDate":"2022-À-10","toDate":"2022-12-22"}"#,
            r#"{"fromDate":"২০২২-১২-১০","toDate":"2022-12-22"}"#,
            r#"{"fromDate":"2022-12-1À","toDate":"2022-12-22"}"#,
            r#"[]"#,
        ] {
            assert!(parse_pull(body.as_bytes()).is_err(), "{body}");
        }
    }

    /// Every field's type is checked before a value is judged, so a body with a wrong
    /// type anywhere gets the malformed-body answer, whatever else is wrong with it.
    #[test]
    fn pull_refuses_a_wrong_type_before_judging_values() {
        let not_a_pull = Err("API-7 request must be a JSON object with fromDate and toDate");
        for body in [
            r#"{"fromDate":"2022-13-01","toDate":5}"#,
            r#"{"toDate":["2022-12-22"]}"#,
            r#"{"fromDate":"2022-12-10","toDate":"2022-12-22","todate":"2022-12-22"}"#,
            r#"{"fromDate":"2022-12-10","toDate":"2022-12-22","limit":1,"limit":2}"#,
        ] {
            assert_eq!(parse_pull(body.as_bytes()), not_a_pull, "{body}");
        }
        assert_eq!(
            parse_pull(br#"{"fromDate":null,"toDate":"2022-12-22"}"#),
            Err("fromDate is missing")
        );
        let p = parse_pull(br#"{"fromDate":"2022-12-10","toDate":"2022-12-22","limit":null}"#);
        assert_eq!(p.map(|p| p.limit), Ok(MAX_PULL), "null is an absent limit");
    }

    #[test]
    fn answer_is_a_json_array() {
        let a = answer(&[r#"{"a":1}"#.into(), r#"{"b":20221202153322882}"#.into()]);
        assert_eq!(a, r#"[{"a":1},{"b":20221202153322882}]"#);
        assert_eq!(answer(&[]), "[]");
    }
}
