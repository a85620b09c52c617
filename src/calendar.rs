//! The calendar, on the `time` crate: India Standard Time dates, the spec's `ticketNo`
//! (`YYYYMMDDhhmmss[mmm]`, IST) ↔ instant conversions, `YYYY-MM-DD` dates, RFC 3339 stamps
//! and whole days to an instant. The only date arithmetic in the crate.
//!
//! IST is a fixed UTC+05:30 (India has kept no daylight saving since 1945).
//!
//! ```
//! use bsk_sidecar::calendar;
//! // 2022-12-02 15:33:22.882 IST is 10:03:22.882 UTC.
//! assert_eq!(calendar::ticket_to_unix("20221202153322882"), Some(1_669_975_402));
//! assert_eq!(calendar::unix_ms_to_ticket(1_669_975_402_882), "20221202153322882");
//! assert_eq!(calendar::ist_date(1_669_975_402), "2022-12-02");
//! assert_eq!(calendar::ticket_to_unix("20221302153322"), None); // month 13
//! ```

use std::time::{Duration, UNIX_EPOCH};

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// India Standard Time, UTC+05:30.
pub const IST: UtcOffset = match UtcOffset::from_hms(5, 30, 0) {
    Ok(o) => o,
    Err(_) => UtcOffset::UTC,
};

/// The digits of `s` in `range` as a number; `None` past the end or on a non-digit.
fn num<T: std::str::FromStr>(s: &str, range: std::ops::Range<usize>) -> Option<T> {
    s.get(range).and_then(|d| d.parse().ok())
}

/// A real calendar date from its year, month and day numbers.
fn date(year: i32, month: u8, day: u8) -> Option<Date> {
    Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()
}

/// The date of the first eight characters of `YYYYMMDD…`, when they are a real date.
fn date_of_digits(digits: &str) -> Option<Date> {
    date(num(digits, 0..4)?, num(digits, 4..6)?, num(digits, 6..8)?)
}

/// The instant a `ticketNo` names: 14 or 17 ASCII digits (`YYYYMMDDhhmmss[mmm]`, IST),
/// surrounding whitespace ignored; `None` if it is not a real date and time.
pub fn ticket_instant(ticket: &str) -> Option<OffsetDateTime> {
    let t = ticket.trim();
    if !(t.len() == 14 || t.len() == 17) || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let day = date_of_digits(t)?;
    let hms = Time::from_hms(num(t, 8..10)?, num(t, 10..12)?, num(t, 12..14)?).ok()?;
    let ms: u16 = if t.len() == 17 { num(t, 14..17)? } else { 0 };
    let at = PrimitiveDateTime::new(day, hms).assume_offset(IST);
    at.checked_add(time::Duration::milliseconds(i64::from(ms)))
}

/// Unix seconds of a `ticketNo` (its milliseconds dropped); `None` as for
/// [`ticket_instant`].
pub fn ticket_to_unix(ticket: &str) -> Option<i64> {
    ticket_instant(ticket).map(OffsetDateTime::unix_timestamp)
}

/// The 17-digit spelling of a `ticketNo`: a 14-digit one gains `000`, surrounding
/// whitespace goes; `None` as for [`ticket_instant`].
pub fn canonical_ticket(ticket: &str) -> Option<String> {
    ticket_instant(ticket)?;
    let t = ticket.trim();
    Some(if t.len() == 14 {
        format!("{t}000")
    } else {
        t.to_owned()
    })
}

/// The 17-digit `ticketNo` (IST, with milliseconds) for a Unix time in milliseconds.
/// Instants outside years 0000–9999 IST, which no ticket can spell, are clamped to
/// the nearest one it can.
pub fn unix_ms_to_ticket(unix_ms: i64) -> String {
    let at = ist_at_ms(unix_ms);
    format!(
        "{}{:02}{:02}{:02}{:03}",
        ymd(at.date(), ""),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}

/// The IST date and time at `unix_ms`, clamped to years 0000–9999.
fn ist_at_ms(unix_ms: i64) -> OffsetDateTime {
    let first = PrimitiveDateTime::new(Date::MIN, Time::MIDNIGHT);
    let lowest = date(0, 1, 1).map_or(first, |d| d.midnight());
    let highest = date(9999, 12, 31)
        .and_then(|d| d.with_hms_milli(23, 59, 59, 999).ok())
        .unwrap_or(PrimitiveDateTime::MAX);
    let (lowest, highest) = (lowest.assume_offset(IST), highest.assume_offset(IST));
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(if unix_ms < 0 { lowest } else { highest });
    at.clamp(lowest, highest).to_offset(IST)
}

/// `YYYY{sep}MM{sep}DD`.
fn ymd(d: Date, sep: &str) -> String {
    format!(
        "{:04}{sep}{:02}{sep}{:02}",
        d.year(),
        u8::from(d.month()),
        d.day()
    )
}

/// `YYYY-MM-DD`.
pub fn format_date(d: Date) -> String {
    ymd(d, "-")
}

/// The IST date a `ticketNo`'s first eight digits name, as the journal files it: 14 to
/// 17 ASCII digits, a real date in years 1970–9999 (the time of day is not judged).
pub fn ticket_date(ticket: &str) -> Option<Date> {
    if !(14..=17).contains(&ticket.len()) || !ticket.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    date_of_digits(ticket).filter(|d| d.year() >= 1970)
}

/// The date in India at Unix time `unix_secs`, as `YYYY-MM-DD`.
pub fn ist_date(unix_secs: u64) -> String {
    let ms = i64::try_from(unix_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    format_date(ist_at_ms(ms).date())
}

/// A `YYYY-MM-DD` date (ASCII digits, a real date in years 0000–9999); `None` otherwise.
pub fn parse_date(s: &str) -> Option<Date> {
    let mut parts = s.split('-');
    let (Some(y), Some(m), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(y, 4) && digits(m, 2) && digits(d, 2)) {
        return None;
    }
    date(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)
}

/// `2026-11-27T20:53:44Z`; the bare number for an instant before 1970.
pub fn rfc3339(unix_secs: i64) -> String {
    match u64::try_from(unix_secs) {
        Ok(s) => humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s)).to_string(),
        Err(_) => unix_secs.to_string(),
    }
}

/// Whole days from `now` until `at` (Unix seconds), rounded down: 0 in the last day,
/// negative once `at` has passed.
pub fn days_until(now: i64, at: i64) -> i64 {
    at.saturating_sub(now).div_euclid(86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_ist_and_refuse_what_is_not_a_real_instant() {
        // 2022-08-11 13:07:23 IST = 07:37:23 UTC.
        assert_eq!(ticket_to_unix("20220811130723"), Some(1_660_203_443));
        assert_eq!(ticket_to_unix("19700101053000"), Some(0));
        assert_eq!(ticket_to_unix("19700101052959999"), Some(-1));
        assert_eq!(
            ticket_to_unix(" 20221202153322882\r\n"),
            Some(1_669_975_402)
        );
        assert!(
            ticket_to_unix("00000101000000").is_some(),
            "year 0 is a year"
        );
        for bad in [
            "20230229000000",     // not a leap year
            "21000229000000",     // nor is 2100
            "2022081113072",      // 13 digits
            "202208111307231",    // 15
            "2022081113072312",   // 16
            "202208111307231234", // 18
            "2022081113072x",
            "20220811250723", // hour 25
            "20220811126023", // minute 60
            "20220811125960", // second 60
            "20221301000000",
            "20221200000000",
            "20221232000000",
            "２０２２０８１１１３０７２３",
            "",
        ] {
            assert_eq!(ticket_to_unix(bad), None, "{bad:?}");
            assert_eq!(canonical_ticket(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ticket_round_trip_including_leap_days_and_milliseconds() {
        assert_eq!(unix_ms_to_ticket(1_669_975_402_882), "20221202153322882");
        assert_eq!(unix_ms_to_ticket(0), "19700101053000000");
        for ms in [
            0i64,
            -1,
            951_782_400_000,   // 2000-02-29T00:00Z, a leap day of a leap century
            1_709_164_799_999, // 2024-02-28T23:59:59.999Z = 2024-02-29 05:29:59.999 IST
            1_709_231_399_123, // 2024-02-29T18:29:59.123Z, the last second of 29 Feb IST
            4_102_444_800_123,
            253_402_280_999_999, // the last millisecond a ticket can spell
        ] {
            let t = unix_ms_to_ticket(ms);
            assert_eq!(ticket_to_unix(&t), Some(ms.div_euclid(1000)), "{t}");
            let at = ticket_instant(&t).unwrap();
            assert_eq!(at.unix_timestamp_nanos() / 1_000_000, i128::from(ms), "{t}");
            assert_eq!(canonical_ticket(&t).as_deref(), Some(t.as_str()));
        }
        assert_eq!(unix_ms_to_ticket(1_709_231_399_123), "20240229235959123");
        assert_eq!(unix_ms_to_ticket(1_709_231_400_000), "20240301000000000");
        assert_eq!(unix_ms_to_ticket(i64::MAX), "99991231235959999");
        assert_eq!(unix_ms_to_ticket(i64::MIN), "00000101000000000");
    }

    proptest::proptest! {
        /// Every millisecond a ticket can spell, 0000-01-01 to 9999-12-31 IST, comes
        /// back from its ticket exactly.
        #[test]
        fn every_spellable_instant_round_trips(
            ms in -62_167_239_000_000i64..=253_402_280_999_999
        ) {
            let t = unix_ms_to_ticket(ms);
            proptest::prop_assert_eq!(t.len(), 17);
            let back = ticket_instant(&t).map(|at| at.unix_timestamp_nanos() / 1_000_000);
            proptest::prop_assert_eq!(back, Some(i128::from(ms)), "{}", t);
        }
    }

    #[test]
    fn fourteen_and_seventeen_digits_are_one_instant_when_the_milliseconds_are_zero() {
        assert_eq!(
            canonical_ticket("20221202153322").as_deref(),
            Some("20221202153322000")
        );
        assert_eq!(
            canonical_ticket(" 20221202153322000 ").as_deref(),
            Some("20221202153322000")
        );
        assert_eq!(
            ticket_instant("20221202153322"),
            ticket_instant("20221202153322000")
        );
        assert_ne!(
            ticket_instant("20221202153322"),
            ticket_instant("20221202153322882")
        );
    }

    #[test]
    fn ist_dates_turn_at_18_30_utc() {
        // 2022-12-01T18:29:59Z is 23:59:59 IST; a second later it is the 2nd in India.
        assert_eq!(ist_date(1_669_919_399), "2022-12-01");
        assert_eq!(ist_date(1_669_919_400), "2022-12-02");
        assert_eq!(ist_date(0), "1970-01-01");
        // 28 Feb 2024 18:30Z is 29 Feb in India; 29 Feb 18:30Z is 1 March.
        assert_eq!(ist_date(1_709_145_000), "2024-02-29");
        assert_eq!(ist_date(1_709_231_400), "2024-03-01");
        assert_eq!(ist_date(u64::MAX), "9999-12-31");
    }

    #[test]
    fn journal_ticket_dates_judge_only_the_date() {
        let d = |t: &str| ticket_date(t).map(format_date);
        assert_eq!(d("20240229101010").as_deref(), Some("2024-02-29"));
        assert_eq!(d("202402291010101").as_deref(), Some("2024-02-29"));
        assert_eq!(d("20240229999999").as_deref(), Some("2024-02-29"));
        assert_eq!(d("20230229101010"), None);
        assert_eq!(d("19691231101010"), None);
        assert_eq!(d("2022120215332"), None);
        assert_eq!(d("202212021533221234"), None);
        assert_eq!(d(" 20221202153322"), None);
        assert_eq!(d("2022x202153322"), None);
    }

    #[test]
    fn dates_are_strict() {
        assert_eq!(
            parse_date("2024-02-29").map(format_date).as_deref(),
            Some("2024-02-29")
        );
        assert!(parse_date("0000-01-01").is_some());
        for bad in [
            "2023-02-29",
            "2022-13-01",
            "2022-12-1",
            "22-12-10",
            "10-12-2022",
            "2022-12-10-",
            "2022/12/10",
            "2022-12-1À",
            "২০২২-১২-১০",
            "+022-12-10",
            "",
        ] {
            assert_eq!(parse_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn stamps_and_days() {
        assert_eq!(rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(-5), "-5");
        assert_eq!(days_until(0, 86_400), 1);
        assert_eq!(days_until(1, 86_400), 0);
        assert_eq!(days_until(86_400, 86_400), 0);
        assert_eq!(days_until(86_401, 86_400), -1);
        assert_eq!(days_until(i64::MIN, i64::MAX), i64::MAX / 86_400);
    }
}
