//! Freshness: a request's `ticketNo` (an IST timestamp) and JWT `iat` must fall inside
//! the route's window around the sidecar's clock.
//!
//! `ticketNo` is `YYYYMMDDHHmmSS`, sometimes followed by three digits of milliseconds,
//! in India Standard Time (UTC+05:30).
//!
//! ```
//! use bsk_sidecar::calendar::ticket_to_unix;
//! // 2022-12-02 15:33:22.882 IST is 10:03:22 UTC.
//! assert_eq!(ticket_to_unix("20221202153322882"), Some(1_669_975_402));
//! assert_eq!(ticket_to_unix("20221302153322"), None); // month 13
//! ```

use std::time::Duration;

use crate::calendar::ticket_to_unix;

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

#[cfg(test)]
mod tests {
    use super::*;

    const W: Window = Window {
        max_age: Duration::from_secs(600),
        leeway: Duration::from_secs(60),
    };

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

    /// The pipeline judges at its runtime's clock: stepped here to each edge of the
    /// window around one ticket, to the millisecond.
    #[test]
    fn window_edges_on_a_manual_clock() {
        use crate::clock::Clock;
        let ticket = "20221202153322882";
        let issued_ms = 1_669_975_402_882;
        let clock = Clock::manual(issued_ms);
        let judge = |clock: &Clock| W.check(clock.unix_secs_i64(), Some(ticket), None);
        assert_eq!(judge(&clock), Ok(()));
        // Ten minutes later, to the last millisecond of the ticket's second: still fresh.
        clock.set_ms(1_669_975_402_000 + 600_999);
        assert_eq!(judge(&clock), Ok(()));
        clock.advance(Duration::from_millis(1));
        assert_eq!(judge(&clock), Err(Stale::TooOld));
        // A sender whose clock runs a minute ahead is tolerated; a minute and a second not.
        clock.set_ms(1_669_975_402_000 - 60_000);
        assert_eq!(judge(&clock), Ok(()));
        clock.set_ms(1_669_975_402_000 - 60_001);
        assert_eq!(judge(&clock), Err(Stale::FutureDated));
        // The JWT `iat` is held to the same edges.
        clock.set_ms(issued_ms);
        let iat = clock.unix_secs_i64();
        clock.advance(Duration::from_secs(600));
        assert_eq!(W.check(clock.unix_secs_i64(), None, Some(iat)), Ok(()));
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            W.check(clock.unix_secs_i64(), None, Some(iat)),
            Err(Stale::TooOld)
        );
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
