//! Stage: token lifetime, freshness and replay — run on what the peer really signed or
//! encrypted, so a forger can neither pass it nor fill the replay cache.
//!
//! Freshness is judged on the request's own time, never on a ticket it merely refers to
//! (API-3/4/7 legitimately name tickets weeks old):
//! - a route with a `jwt` layer: the token's `iat` within the window when present, and its
//!   `exp` no further ahead than the peer's `jwt.max_lifetime` (checked on every JWT route,
//!   fresh or not); a token with neither is refused. Replay key: `jti`, else the
//!   signature — each token is used once — kept until `exp`;
//! - any other route (API-1's `[form, aes]` landing): the `ticketNo` (an API-2 record's
//!   `appSubTime`). Replay key: (`userid`, `ticketNo` as 17 digits — the 14-digit
//!   spelling of one instant is the same key —, `applicationStatus`) —
//!   a draft and the final submission of one ticket are two requests.
//!
//! Keys are scoped per peer and route: API-3 polled twice with two fresh tokens is two
//! requests, and so is API-3 then API-1 on one ticket.

use std::time::Duration;

use crate::calendar::canonical_ticket;
use crate::config::settings::FreshOn;
use crate::config::Route;
use crate::envelope::{Failure, Layer, Opened, TokenProblem};
use crate::error::Reject;
use crate::fleet::FleetReservation;
use crate::guard::fresh::Stale;
use crate::guard::replay::{ReplayCache, ReplayKey, Reservation};
use crate::runtime::Runtime;

/// The stage: lifetime, freshness, then the replay record (held until the request is
/// known to have reached the application, see [`Held`]).
pub(super) async fn check<'a>(
    rt: &'a Runtime,
    cfg: &Route,
    opened: &Opened,
    now: u64,
) -> Result<Option<Held<'a>>, Reject> {
    check_lifetime(cfg, opened, now, rt.settings.limits.clock_leeway)?;
    match admit(cfg, opened, now)? {
        Some((key, expiry)) => Ok(Some(hold(rt, key, now, expiry).await?)),
        None => Ok(None),
    }
}

/// Refuses a token that claims to live longer than its peer allows.
fn check_lifetime(cfg: &Route, opened: &Opened, now: u64, leeway: Duration) -> Result<(), Reject> {
    let Some(exp) = opened.jwt_exp else {
        return Ok(());
    };
    let limit = now
        .saturating_add(cfg.peer.max_token_lifetime.as_secs())
        .saturating_add(leeway.as_secs());
    if u64::try_from(exp).is_ok_and(|exp| exp > limit) {
        return Err(Reject::Envelope(Failure::BadToken(
            TokenProblem::LifetimeTooLong,
        )));
    }
    Ok(())
}

/// A replay record held for one request: forgotten again unless kept (on a refusal after
/// this stage, an undelivered forward, a panic).
pub(super) enum Held<'a> {
    Local(Reservation<'a>),
    Fleet(Box<FleetReservation>),
}

impl Held<'_> {
    /// Whether the request already waited for the end of its worker's turn here (a
    /// journal write shared with the turn's other requests).
    pub(super) fn waited_for_its_turn(&self) -> bool {
        match self {
            Held::Local(r) => r.waited_for_its_turn(),
            Held::Fleet(_) => false,
        }
    }

    /// The request reached the application (or may have): the record stays.
    pub(super) fn keep(self) {
        match self {
            Held::Local(r) => r.keep(),
            Held::Fleet(r) => r.keep(),
        }
    }
}

/// Records `key` until `expiry` in the process's cache, or the fleet's Redis when the
/// config names one (unreachable: 503, never an unprotected request).
async fn hold(rt: &Runtime, key: ReplayKey, now: u64, expiry: u64) -> Result<Held<'_>, Reject> {
    if let Some(fleet) = &rt.fleet {
        let ttl = Duration::from_secs(expiry.saturating_sub(now).max(1));
        // Boxed, as in the rate stage: only a fleet's requests pay for the room.
        return match Box::pin(fleet.reserve(&rt.metrics, key, ttl)).await {
            Ok(true) => Ok(Held::Fleet(Box::new(FleetReservation::new(
                fleet.clone(),
                rt.metrics.clone(),
                key,
            )))),
            Ok(false) => Err(Reject::Replayed),
            Err(_) => Err(Reject::StateUnavailable("replay_store_unavailable")),
        };
    }
    let cache: &ReplayCache = rt.replay.as_deref().ok_or(Reject::Internal)?;
    cache
        .reserve(key, now, expiry)
        .await
        .map(Held::Local)
        .map_err(|_| Reject::Replayed)
}

/// Checks freshness; returns the replay key and until when it is held, when the route
/// refuses replays.
fn admit(cfg: &Route, opened: &Opened, now: u64) -> Result<Option<(ReplayKey, u64)>, Reject> {
    let Some(window) = &cfg.fresh else {
        return Ok(None);
    };
    let now_i = i64::try_from(now).unwrap_or(i64::MAX);
    let leeway = window.leeway.as_secs();
    // The key hashes its parts where they lie: the route's path, then the token's id, or
    // the user, ticket and status the payload names. Freshness is checked either way; the
    // key is made only when the route refuses replays.
    let path = cfg.path.as_str();
    let held = |kind: &str, parts: &[&[u8]], until: u64| {
        cfg.replay
            .then(|| (ReplayKey::new(&cfg.peer.name, kind, parts), until))
    };
    if cfg.layers.contains(&Layer::Jwt) {
        if opened.jwt_iat.is_none() && opened.jwt_exp.is_none() {
            return Err(Reject::Stale(Stale::MissingTimestamp));
        }
        if let Some(iat) = opened.jwt_iat {
            window.within(now_i, iat)?;
        }
        let (kind, id) = match (&opened.jwt_jti, &opened.jwt_signature) {
            (Some(jti), _) => ("jti", jti.as_bytes()),
            (None, Some(sig)) => ("sig", sig.as_bytes()),
            (None, None) => return Err(Reject::Internal),
        };
        // Held while the token could still be accepted: until `exp`, else as long as its
        // `iat` stays inside the window.
        let until = match (opened.jwt_exp, opened.jwt_iat) {
            (Some(exp), _) => u64::try_from(exp).unwrap_or(0).saturating_add(leeway),
            (None, Some(iat)) => u64::try_from(iat)
                .unwrap_or(0)
                .saturating_add(window.max_age.as_secs())
                .saturating_add(leeway),
            (None, None) => now,
        };
        Ok(held(
            kind,
            &[path.as_bytes(), id],
            until.max(now.saturating_add(1)),
        ))
    } else {
        let ids = &opened.ids;
        let stamp = match cfg.fresh_on {
            FreshOn::Ticket => ids.ticket_no.as_deref(),
            FreshOn::AppSubTime => ids.app_sub_time.as_deref(),
        };
        window.check(now_i, stamp, None)?;
        let ticket = ids
            .ticket_no
            .as_deref()
            .ok_or(Reject::Stale(Stale::MissingTimestamp))?;
        let ticket = canonical_ticket(ticket).ok_or(Reject::Stale(Stale::BadTicket))?;
        let until = now
            .saturating_add(window.max_age.as_secs())
            .saturating_add(2 * leeway);
        let user = ids.userid.as_ref().map_or(&[][..], |u| u.as_bytes());
        let status = (ids.application_status.as_ref()).map_or(&[][..], |s| s.as_bytes());
        let parts = [path.as_bytes(), user, ticket.as_bytes(), status];
        Ok(held("ticket", &parts, until))
    }
}
