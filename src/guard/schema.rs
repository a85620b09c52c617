//! Payload schemas: the field tables of the spec's seven APIs, checked on the opened JSON.
//!
//! Tolerant of the spellings real peers use (`spec/NOTES.md`: `userid`/`userId`,
//! `ticketNo`/`ticketno`/`tokenNo`, `otpId`/`otpld`, `fromDate`/`formDate`/`From Date`/
//! `fromdate`, and API-1's `citizenname`/`citizenmobile`/`citizenemail` for
//! `name`/`mobile`/`email`, …) and of extra fields; a number may also arrive as a string of digits, and string
//! values may carry stray surrounding spaces or CR LF. The payload is never rewritten:
//! this only reads it.
//!
//! ```
//! use bsk_sidecar::guard::schema::{check, Api};
//! let ok = br#"{"userId": 9054233544, "tokenNo": 20220811050723, "serviceCode": "AMD/003", "applicationNo": "AP7373633/003"}"#;
//! assert!(check(Api::Api3, ok).is_ok());
//! let bad = br#"{"userid": 12345, "ticketNo": 20220811050723, "serviceCode": "XYZ001"}"#;
//! let problems = check(Api::Api3, bad).unwrap_err();
//! let fields: Vec<&str> = problems.iter().map(|p| p.field).collect();
//! assert_eq!(fields, ["userid", "serviceCode", "applicationNo"]);
//! ```

use std::fmt;

use serde_json::Value;

use super::fields::{self, APPLICATION_STATUS, APP_SUB_TIME, SERVICE_CODE, TICKET_NO, USERID};
use crate::calendar::{parse_date, ticket_to_unix};

/// One of the spec's APIs, as named in a route's `schema:`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    Api1,
    Api2,
    Api3,
    Api4,
    Api5a,
    Api5b,
    Api6,
    Api7,
}

impl Api {
    pub fn parse(s: &str) -> Option<Api> {
        Some(match s {
            "api1" => Api::Api1,
            "api2" => Api::Api2,
            "api3" => Api::Api3,
            "api4" => Api::Api4,
            "api5a" => Api::Api5a,
            "api5b" => Api::Api5b,
            "api6" => Api::Api6,
            "api7" => Api::Api7,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Api::Api1 => "api1",
            Api::Api2 => "api2",
            Api::Api3 => "api3",
            Api::Api4 => "api4",
            Api::Api5a => "api5a",
            Api::Api5b => "api5b",
            Api::Api6 => "api6",
            Api::Api7 => "api7",
        }
    }

    fn fields(self) -> &'static [Field] {
        match self {
            Api::Api1 => API1,
            Api::Api2 => API2,
            Api::Api3 => API3,
            Api::Api4 => API4,
            Api::Api5a => API5A,
            Api::Api5b => API5B,
            Api::Api6 => API6,
            Api::Api7 => API7,
        }
    }
}

/// What to do with a payload that does not match (a route's `schema_mode:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// 400 with the failing fields; the application sees nothing.
    Enforce,
    /// Forward anyway; a metric and a log line name the fields.
    Warn,
}

/// One failing field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The field's canonical name (from the spec's table, never from the payload).
    pub field: &'static str,
    pub what: &'static str,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.what)
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// 10-digit mobile number, number or string.
    UserId,
    /// `YYYYMMDDHHmmSS[mmm]`, number or string.
    Timestamp,
    /// 3-letter department code (section 14.4) + 3 digits, optionally with `/`.
    ServiceCode,
    /// A department code alone.
    DeptCode,
    Text,
    /// A JSON number, or a string holding one.
    Number,
    /// An integer from the given set.
    OneOf(&'static [i64]),
    /// `YYYY-MM-DD`.
    Date,
}

struct Field {
    /// The spec's name for the field, as problems report it.
    name: &'static str,
    /// Other accepted spellings; a shared list from [`fields`] may hold `name` too.
    aliases: &'static [&'static str],
    kind: Kind,
    required: bool,
}

const fn req(name: &'static str, aliases: &'static [&'static str], kind: Kind) -> Field {
    Field {
        name,
        aliases,
        kind,
        required: true,
    }
}

const fn opt(name: &'static str, aliases: &'static [&'static str], kind: Kind) -> Field {
    Field {
        name,
        aliases,
        kind,
        required: false,
    }
}

/// `applicationStatus`: 0 default, 1 initiated, 2 draft, 3 final, 4 search, 5 download.
const APPLICATION_STATUSES: &[i64] = &[0, 1, 2, 3, 4, 5];
/// `documentType`: 0 default, 1 URL, 2 base64, 3 image, 4–6 other formats.
const DOCUMENT_TYPES: &[i64] = &[0, 1, 2, 3, 4, 5, 6];

const NONE: &[&str] = &[];

// Only what identifies the service entry is required: (`userid`, `ticketNo`) is jointly
// unique (section 11.1). The section-15 sample, and the department code written to receive
// it, send `{"userid","ticketno","citizenmobile","citizenname","citizenemail"}`: no
// `serviceCode`, no gender or age, `citizen…` spellings of name, mobile and email.
const API1: &[Field] = &[
    req("userid", USERID, Kind::UserId),
    req("ticketNo", TICKET_NO, Kind::Timestamp),
    opt("serviceCode", SERVICE_CODE, Kind::ServiceCode),
    opt("name", &["citizenname"], Kind::Text),
    opt(
        "applicationStatus",
        APPLICATION_STATUS,
        Kind::OneOf(APPLICATION_STATUSES),
    ),
    opt("mobile", &["citizenmobile"], Kind::Text),
    opt("email", &["citizenemail"], Kind::Text),
    opt("gender", NONE, Kind::Text),
    opt("age", NONE, Kind::Number),
];

const API2: &[Field] = &[
    req("userid", USERID, Kind::UserId),
    req("ticketNo", TICKET_NO, Kind::Timestamp),
    req("serviceCode", SERVICE_CODE, Kind::ServiceCode),
    req("appNo", NONE, Kind::Text),
    req("appSubTime", APP_SUB_TIME, Kind::Timestamp),
    opt("deptPayRefNo", NONE, Kind::Text),
    opt("transNo", NONE, Kind::Text),
    opt("bankRefNo", NONE, Kind::Text),
    opt("paidAmt", NONE, Kind::Number),
    opt("message", NONE, Kind::Text),
    req(
        "applicationStatus",
        APPLICATION_STATUS,
        Kind::OneOf(&[2, 3]),
    ),
    opt("statusCode", NONE, Kind::Number),
];

const API3: &[Field] = &[
    req("userid", USERID, Kind::UserId),
    req("ticketNo", TICKET_NO, Kind::Timestamp),
    req("serviceCode", SERVICE_CODE, Kind::ServiceCode),
    req("applicationNo", NONE, Kind::Text),
    opt(
        "applicationStatus",
        APPLICATION_STATUS,
        Kind::OneOf(APPLICATION_STATUSES),
    ),
];

const API4: &[Field] = &[
    req("userid", USERID, Kind::UserId),
    req("ticketNo", TICKET_NO, Kind::Timestamp),
    req("serviceCode", SERVICE_CODE, Kind::ServiceCode),
    // The table says documentNo; the example request sends applicationNo.
    req("documentNo", &["applicationNo"], Kind::Text),
    opt("documentType", NONE, Kind::OneOf(DOCUMENT_TYPES)),
    opt(
        "applicationStatus",
        APPLICATION_STATUS,
        Kind::OneOf(APPLICATION_STATUSES),
    ),
];

const API5A: &[Field] = &[
    req("otpId", &["otpld", "otpid"], Kind::Number),
    req("documentNo", NONE, Kind::Text),
];

const API5B: &[Field] = &[
    req("otpId", &["otpld", "otpid"], Kind::Number),
    req("userTypedOtp", NONE, Kind::Number),
];

const API6: &[Field] = &[
    req("userId", USERID, Kind::UserId),
    req("deptCode", NONE, Kind::DeptCode),
    req("accessCode", NONE, Kind::Number),
];

const API7: &[Field] = &[
    req("fromDate", fields::FROM_DATE, Kind::Date),
    req("toDate", fields::TO_DATE, Kind::Date),
];

/// Department codes of section 14.4.
pub const DEPARTMENT_CODES: [&str; 57] = [
    "AMD", "AGD", "ARD", "BCW", "CMO", "CSO", "COA", "COD", "CAD", "DMC", "ENV", "FIN", "FES",
    "FIS", "FSD", "FPH", "FOR", "GSD", "HFW", "HED", "HHA", "HOU", "ICE", "ICA", "ITE", "IWD",
    "JUD", "LAB", "LND", "LAW", "LAS", "MEL", "MSM", "MAM", "NCE", "NBD", "PRD", "PAD", "PUA",
    "PAR", "PSP", "POD", "PEI", "PHE", "PWD", "SED", "STB", "SHE", "SAD", "TET", "TOU", "TRA",
    "TDD", "UDM", "WRI", "WCD", "YSS",
];

/// Checks `plain` against `api`'s table; every failing field is reported.
pub fn check(api: Api, plain: &[u8]) -> Result<(), Vec<Problem>> {
    let value: Value = match serde_json::from_slice(plain) {
        Ok(v) => v,
        Err(_) => {
            return Err(vec![Problem {
                field: "(body)",
                what: "not a JSON document",
            }])
        }
    };
    let Value::Object(obj) = value else {
        return Err(vec![Problem {
            field: "(body)",
            what: "not a JSON object",
        }]);
    };
    let mut problems = Vec::new();
    let mut dates = (None, None);
    for f in api.fields() {
        let aliases = f.aliases.iter().copied().filter(|a| *a != f.name);
        let found: Vec<&Value> = std::iter::once(f.name)
            .chain(aliases)
            .filter_map(|k| obj.get(k))
            .collect();
        let v = match found.as_slice() {
            [] if f.required => {
                problems.push(Problem {
                    field: f.name,
                    what: "missing",
                });
                continue;
            }
            [] => continue,
            [v] => *v,
            [first, rest @ ..] => {
                if rest.iter().any(|v| v != first) {
                    problems.push(Problem {
                        field: f.name,
                        what: "given twice under different spellings, with different values",
                    });
                    continue;
                }
                *first
            }
        };
        if let Err(what) = check_kind(f.kind, v) {
            problems.push(Problem {
                field: f.name,
                what,
            });
        } else if let Kind::Date = f.kind {
            let d = v.as_str().map(str::trim).map(str::to_string);
            match f.name {
                "fromDate" => dates.0 = d,
                _ => dates.1 = d,
            }
        }
    }
    if let (Some(from), Some(to)) = dates {
        // Valid YYYY-MM-DD strings order correctly as text.
        if from > to {
            problems.push(Problem {
                field: "fromDate",
                what: "after toDate",
            });
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The digits of a number or a string of digits (surrounding whitespace tolerated).
fn digits(v: &Value) -> Option<String> {
    let s = match v {
        Value::Number(n) if n.is_u64() => n.to_string(),
        Value::String(s) => s.trim().to_string(),
        _ => return None,
    };
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then_some(s)
}

fn check_kind(kind: Kind, v: &Value) -> Result<(), &'static str> {
    match kind {
        Kind::UserId => match digits(v) {
            Some(d) if d.len() == 10 => Ok(()),
            _ => Err("not a 10-digit mobile number"),
        },
        Kind::Timestamp => match digits(v) {
            Some(d) if ticket_to_unix(&d).is_some() => Ok(()),
            _ => Err("not a YYYYMMDDHHmmSS timestamp"),
        },
        Kind::ServiceCode => {
            const SHAPE: &str = "not a service code like AMD001 or AMD/003";
            let s = v.as_str().map(str::trim).ok_or("not a string")?;
            // `split_at_checked` refuses a cut inside a multi-byte character.
            let (dept, rest) = s.split_at_checked(3).ok_or(SHAPE)?;
            let seq = rest.strip_prefix('/').unwrap_or(rest);
            if seq.len() != 3 || !seq.bytes().all(|b| b.is_ascii_digit()) {
                return Err(SHAPE);
            }
            if !DEPARTMENT_CODES.contains(&dept) {
                return Err("unknown department code");
            }
            Ok(())
        }
        Kind::DeptCode => {
            let s = v.as_str().map(str::trim).ok_or("not a string")?;
            if DEPARTMENT_CODES.contains(&s) {
                Ok(())
            } else {
                Err("unknown department code")
            }
        }
        Kind::Text => match v {
            Value::String(_) => Ok(()),
            // Numbers are common for ids the tables call strings (appNo: 123456).
            Value::Number(_) => Ok(()),
            _ => Err("not a string"),
        },
        Kind::Number => match v {
            Value::Number(_) => Ok(()),
            Value::String(s) if s.trim().parse::<f64>().is_ok() => Ok(()),
            _ => Err("not a number"),
        },
        Kind::OneOf(set) => {
            let n = digits(v)
                .and_then(|d| d.parse::<i64>().ok())
                .ok_or("not an integer")?;
            if set.contains(&n) {
                Ok(())
            } else {
                Err("value not allowed here")
            }
        }
        Kind::Date => {
            let s = v.as_str().map(str::trim).ok_or("not a YYYY-MM-DD date")?;
            if is_date(s) {
                Ok(())
            } else {
                Err("not a YYYY-MM-DD date")
            }
        }
    }
}

/// `YYYY-MM-DD`, a real calendar date.
fn is_date(s: &str) -> bool {
    parse_date(s).is_some()
}

#[cfg(test)]
mod tests;
