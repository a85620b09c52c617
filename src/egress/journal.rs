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
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

const USERID: &[&str] = &["userid", "userId"];
const TICKET: &[&str] = &["ticketNo", "ticketno", "tokenNo"];
const STATUS: &[&str] = &["applicationStatus"];

/// Fields kept, in the spec's order; each row lists the spellings seen in the spec. An
/// allowlist: a citizen's `name`/`citizenname`, `mobile`/`citizenmobile`,
/// `email`/`citizenemail`, gender, age or address is never stored (nor logged).
const KEPT: &[&[&str]] = &[
    USERID,
    TICKET,
    &["serviceCode", "ServiceCode"],
    &["appNo"],
    &["appSubTime", " appSubTime "],
    &["deptPayRefNo"],
    &["transNo"],
    &["bankRefNo"],
    &["paidAmt"],
    &["message"],
    STATUS,
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

type Fields<'a> = HashMap<Cow<'a, str>, &'a RawValue>;

fn fields(plain: &[u8]) -> Option<Fields<'_>> {
    serde_json::from_slice::<Fields<'_>>(plain).ok()
}

fn first<'a>(f: &Fields<'a>, names: &[&str]) -> Option<(&'a RawValue, usize)> {
    names
        .iter()
        .enumerate()
        .find_map(|(i, n)| f.get(*n).map(|v| (*v, i)))
}

/// A scalar's text: a number's digits, a string's content; `None` for anything else or a
/// string with characters an id never has.
fn scalar(v: &RawValue) -> Option<String> {
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
    let f = fields(plain)?;
    let (_, _) = first(&f, USERID)?;
    let (ticket, _) = first(&f, TICKET)?;
    let mut json = String::from("{");
    for names in KEPT {
        for n in *names {
            if let Some(v) = f.get(*n) {
                if json.len() > 1 {
                    json.push(',');
                }
                json.push_str(&serde_json::Value::from(*n).to_string());
                json.push(':');
                json.push_str(v.get().trim());
                break;
            }
        }
    }
    json.push('}');
    let date = scalar(ticket).and_then(|t| date_of_ticket(&t));
    Some(Record { json, date })
}

/// (`userid`, `ticketNo`, `applicationStatus`) of a push, normalised so a number and the
/// same digits as a string are one key. `None` when any is missing.
pub fn idempotency_key(peer: &str, plain: &[u8]) -> Option<String> {
    let f = fields(plain)?;
    let user = scalar(first(&f, USERID)?.0)?;
    let ticket = scalar(first(&f, TICKET)?.0)?;
    let status = scalar(first(&f, STATUS)?.0)?;
    Some(format!("{peer}\u{1f}{user}\u{1f}{ticket}\u{1f}{status}"))
}

/// `YYYY-MM-DD` of a `YYYYMMDDHHmmSS[mmm]` ticket, when it is a real calendar date.
pub fn date_of_ticket(ticket: &str) -> Option<String> {
    if !(14..=17).contains(&ticket.len()) || !ticket.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let y: u32 = ticket.get(0..4)?.parse().ok()?;
    let m: u32 = ticket.get(4..6)?.parse().ok()?;
    let d: u32 = ticket.get(6..8)?.parse().ok()?;
    valid_date(y, m, d).then(|| format!("{y:04}-{m:02}-{d:02}"))
}

fn valid_date(y: u32, m: u32, d: u32) -> bool {
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1970..=9999).contains(&y) && (1..=days).contains(&d)
}

/// The date in India (UTC+05:30) at Unix time `unix_secs`, as `YYYY-MM-DD`.
pub fn ist_date(unix_secs: u64) -> String {
    let days = (unix_secs + 5 * 3600 + 1800) / 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Howard Hinnant's days-to-civil: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
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
    #[derive(Deserialize)]
    struct Raw<'a> {
        #[serde(
            rename = "fromDate",
            alias = "formDate",
            alias = "From Date",
            alias = "From_Date",
            alias = "fromdate",
            alias = "from_date",
            borrow
        )]
        from: Option<Cow<'a, str>>,
        #[serde(
            rename = "toDate",
            alias = "To Date",
            alias = "To_Date",
            alias = "todate",
            alias = "to_date",
            borrow
        )]
        to: Option<Cow<'a, str>>,
        #[serde(borrow)]
        limit: Option<&'a RawValue>,
        #[serde(borrow)]
        offset: Option<&'a RawValue>,
    }
    let raw: Raw<'_> = serde_json::from_slice(plain)
        .map_err(|_| "API-7 request must be a JSON object with fromDate and toDate")?;
    let date = |d: Option<Cow<'_, str>>, missing: &'static str| -> Result<String, &'static str> {
        let d = d.ok_or(missing)?;
        let d = d.trim();
        if is_date(d) {
            Ok(d.to_string())
        } else {
            Err("dates must be YYYY-MM-DD")
        }
    };
    let from = date(raw.from, "fromDate is missing")?;
    let to = date(raw.to, "toDate is missing")?;
    if from > to {
        return Err("fromDate is after toDate");
    }
    let number = |v: Option<&RawValue>, default: usize| -> Result<usize, &'static str> {
        match v {
            None => Ok(default),
            Some(v) => whole_number(v).ok_or("limit and offset must be whole numbers"),
        }
    };
    let limit = number(raw.limit, MAX_PULL)?;
    let offset = number(raw.offset, 0)?;
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

/// `YYYY-MM-DD`, a real calendar date.
fn is_date(d: &str) -> bool {
    let mut parts = d.split('-');
    let (Some(y), Some(m), Some(dd), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(y, 4) && digits(m, 2) && digits(dd, 2)) {
        return false;
    }
    matches!((y.parse(), m.parse(), dd.parse()), (Ok(y), Ok(m), Ok(dd)) if valid_date(y, m, dd))
}

/// A JSON number of digits (`100`) or a string of them (`"100"`, stray spaces tolerated).
fn whole_number(v: &RawValue) -> Option<usize> {
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

    #[test]
    fn answer_is_a_json_array() {
        let a = answer(&[r#"{"a":1}"#.into(), r#"{"b":20221202153322882}"#.into()]);
        assert_eq!(a, r#"[{"a":1},{"b":20221202153322882}]"#);
        assert_eq!(answer(&[]), "[]");
    }
}
