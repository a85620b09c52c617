//! Freshness: a request's `ticketNo` (an IST timestamp) and JWT `iat` must fall inside
//! the route's window around the sidecar's clock.
//!
//! `ticketNo` is `YYYYMMDDHHmmSS`, sometimes followed by three digits of milliseconds,
//! in India Standard Time (UTC+05:30).
//!
//! ```
//! use bsk_sidecar::guard::fresh::ticket_to_unix;
//! // 2022-12-02 15:33:22.882 IST is 10:03:22 UTC.
//! assert_eq!(ticket_to_unix("20221202153322882"), Some(1_669_975_402));
//! assert_eq!(ticket_to_unix("20221302153322"), None); // month 13
//! ```

use std::time::Duration;

/// IST is UTC+05:30.
const IST_OFFSET_SECS: i64 = 5 * 3600 + 30 * 60;

/// Why a request is not fresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Stale {
    #[error("no ticketNo or iat to judge freshness by")]
    MissingTimestamp,
    #[error("ticketNo is not a YYYYMMDDHHmmSS[mmm] timestamp")]
    BadTicket,
    #[error("older than the route's window")]
    TooOld,
    #[error("dated in the future beyond the leeway")]
    FutureDated,
}

impl Stale {
    pub fn reason(self) -> &'static str {
        match self {
            Stale::MissingTimestamp => "missing_timestamp",
            Stale::BadTicket => "bad_ticket",
            Stale::TooOld => "stale",
            Stale::FutureDated => "future_dated",
        }
    }
}

/// A route's freshness rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// How old a request may be.
    pub max_age: Duration,
    /// How far in the future a timestamp may be (clock skew).
    pub leeway: Duration,
}

impl Window {
    /// Checks every timestamp the request carries; at least one is required.
    pub fn check(
        &self,
        now_unix: i64,
        ticket: Option<&str>,
        iat: Option<i64>,
    ) -> Result<(), Stale> {
        if ticket.is_none() && iat.is_none() {
            return Err(Stale::MissingTimestamp);
        }
        if let Some(t) = ticket {
            let at = ticket_to_unix(t).ok_or(Stale::BadTicket)?;
            self.within(now_unix, at)?;
        }
        if let Some(at) = iat {
            self.within(now_unix, at)?;
        }
        Ok(())
    }

    /// Checks one instant (a JWT `iat`, a ticket's second) against the window.
    pub fn within(&self, now: i64, at: i64) -> Result<(), Stale> {
        let max_age = i64::try_from(self.max_age.as_secs()).unwrap_or(i64::MAX);
        let leeway = i64::try_from(self.leeway.as_secs()).unwrap_or(i64::MAX);
        if at > now.saturating_add(leeway) {
            Err(Stale::FutureDated)
        } else if at < now.saturating_sub(max_age) {
            Err(Stale::TooOld)
        } else {
            Ok(())
        }
    }
}

/// Unix seconds of a `ticketNo` (14 or 17 digits, IST); `None` if it is not a real
/// date and time.
pub fn ticket_to_unix(ticket: &str) -> Option<i64> {
    let t = ticket.trim();
    if !(t.len() == 14 || t.len() == 17) || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| t.get(r).and_then(|d| d.parse::<i64>().ok());
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, s) = (num(8..10)?, num(10..12)?, num(12..14)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    Some(days * 86_400 + h * 3600 + mi * 60 + s - IST_OFFSET_SECS)
}

/// The spelling of a `ticketNo` that replay protection keys on: the 17 digits of its
/// instant. `20221202153322` and `20221202153322000` are one instant, so a sender cannot
/// replay one as the other; `20221202153322882` is another. `None` if it is not a real
/// date and time.
///
/// ```
/// use bsk_sidecar::guard::fresh::canonical_ticket;
/// assert_eq!(canonical_ticket("20221202153322").as_deref(), Some("20221202153322000"));
/// assert_eq!(canonical_ticket(" 20221202153322000 ").as_deref(), Some("20221202153322000"));
/// assert_eq!(canonical_ticket("20221202153322882").as_deref(), Some("20221202153322882"));
/// assert_eq!(canonical_ticket("2022120215332"), None);
/// ```
pub fn canonical_ticket(ticket: &str) -> Option<String> {
    ticket_to_unix(ticket)?;
    let t = ticket.trim();
    Some(if t.len() == 14 {
        format!("{t}000")
    } else {
        t.to_owned()
    })
}

/// The 17-digit `ticketNo` (IST, with milliseconds) for a Unix time in milliseconds.
pub fn unix_ms_to_ticket(unix_ms: i64) -> String {
    let ist_ms = unix_ms + IST_OFFSET_SECS * 1000;
    let (secs, ms) = (ist_ms.div_euclid(1000), ist_ms.rem_euclid(1000));
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}{ms:03}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Window = Window {
        max_age: Duration::from_secs(600),
        leeway: Duration::from_secs(60),
    };

    #[test]
    fn ticket_numbers_are_ist() {
        // 2022-08-11 13:07:23 IST = 07:37:23 UTC.
        assert_eq!(ticket_to_unix("20220811130723"), Some(1_660_203_443));
        assert_eq!(ticket_to_unix("19700101053000"), Some(0));
        assert!(ticket_to_unix("20240229000000").is_some());
        assert_eq!(ticket_to_unix("20230229000000"), None);
        assert_eq!(ticket_to_unix("2022081113072"), None);
        assert_eq!(ticket_to_unix("2022081113072x"), None);
        assert_eq!(ticket_to_unix("20220811250723"), None);
    }

    #[test]
    fn ticket_round_trip() {
        assert_eq!(unix_ms_to_ticket(1_669_975_402_882), "20221202153322882");
        for ms in [0i64, 951_782_400_000, 1_709_164_799_999, 4_102_444_800_123] {
            let t = unix_ms_to_ticket(ms);
            assert_eq!(ticket_to_unix(&t), Some(ms.div_euclid(1000)), "{t}");
        }
    }

    #[test]
    fn window_edges() {
        let now = ticket_to_unix("20221202153322").unwrap();
        assert_eq!(W.check(now, Some("20221202153322"), None), Ok(()));
        assert_eq!(
            W.check(now, Some("20221202152322"), None),
            Ok(()),
            "exactly 10 minutes old"
        );
        assert_eq!(
            W.check(now, Some("20221202152321"), None),
            Err(Stale::TooOld)
        );
        assert_eq!(
            W.check(now, Some("20221202153422"), None),
            Ok(()),
            "a minute ahead is skew"
        );
        assert_eq!(
            W.check(now, Some("20221202153423"), None),
            Err(Stale::FutureDated)
        );
        assert_eq!(W.check(now, None, Some(now - 601)), Err(Stale::TooOld));
        assert_eq!(W.check(now, None, Some(now)), Ok(()));
        assert_eq!(W.check(now, None, None), Err(Stale::MissingTimestamp));
        assert_eq!(W.check(now, Some("garbage"), None), Err(Stale::BadTicket));
    }

    #[test]
    fn both_timestamps_must_be_fresh() {
        let now = ticket_to_unix("20221202153322").unwrap();
        assert_eq!(
            W.check(now, Some("20221202153322"), Some(now - 3600)),
            Err(Stale::TooOld)
        );
    }
}
