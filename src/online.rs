//! `bsk-sidecar check --online`: what validation cannot see. Resolves every allowlisted
//! DNS name, connects to every upstream and every peer `url` (TLS handshake included),
//! reads certificate expiry (listeners' and peers'), and the clock's offset from each
//! peer's `Date` header. One [`Finding`] per item; any failure fails the check.

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, SystemTime};

use crate::calendar;
use crate::clock::Clock;
use crate::config::Settings;
use crate::guard::dns::Resolver;

/// A certificate expiring sooner than this is reported as a failure: a renewal is due.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 86_400);

/// One line of the report: `ok   what: detail` or `FAIL what: detail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub ok: bool,
    pub what: String,
    pub detail: String,
}

impl Finding {
    fn ok(what: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding {
            ok: true,
            what: what.into(),
            detail: detail.into(),
        }
    }

    fn fail(what: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding {
            ok: false,
            what: what.into(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = if self.ok { "ok  " } else { "FAIL" };
        write!(f, "{mark} {}: {}", self.what, self.detail)
    }
}

/// `expires 2027-01-01T00:00:00Z (in 31 days)`, failing when expired or within
/// [`EXPIRY_WARNING`] of `now` (unix seconds).
fn expiry(what: String, not_after: Option<i64>, now: i64) -> Finding {
    let Some(at) = not_after else {
        return Finding::fail(what, "cannot read the certificate's expiry");
    };
    let left = at.saturating_sub(now);
    let when = calendar::rfc3339(at);
    let days = calendar::days_until(now, at);
    if left <= 0 {
        Finding::fail(what, format!("certificate expired {when}"))
    } else if u64::try_from(left).unwrap_or(0) < EXPIRY_WARNING.as_secs() {
        Finding::fail(
            what,
            format!("certificate expires {when} (in {days} days): renew it"),
        )
    } else {
        Finding::ok(what, format!("certificate expires {when} (in {days} days)"))
    }
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Every check, in the order of the report: listener certificates, DNS names,
/// upstreams, the shared Redis and PostgreSQL, peers.
pub async fn probe(settings: &Settings, clock: &Clock) -> Vec<Finding> {
    let mut out = listener_certificates(settings, clock);
    out.extend(dns_names(settings).await);
    out.extend(upstreams(settings).await);
    if let Some(r) = &settings.redis {
        out.push(redis(r).await);
    }
    if let Some(pg) = &settings.postgres {
        out.push(postgres(pg).await);
    }
    out.extend(peers(settings, clock).await);
    out
}

/// Each listener's certificate loads and is not about to expire.
fn listener_certificates(settings: &Settings, clock: &Clock) -> Vec<Finding> {
    let mut out = Vec::new();
    for l in &settings.listeners {
        if let Some(tls) = &l.tls {
            let what = format!("listener {} tls.cert {}", l.name, tls.cert.display());
            match crate::tls::load(tls) {
                Ok(loaded) => out.push(expiry(what, loaded.not_after, clock.unix_secs_i64())),
                Err(e) => out.push(Finding::fail(what, e.to_string())),
            }
        }
    }
    out
}

/// Every allowlisted DNS name resolves.
async fn dns_names(settings: &Settings) -> Vec<Finding> {
    let mut out = Vec::new();
    let names = settings.dns_names();
    if names.is_empty() {
        return out;
    }
    match Resolver::new(&settings.dns) {
        Ok(resolver) => {
            for name in &names {
                let what = format!("dns {name}");
                match resolver.lookup(name).await {
                    Ok(addrs) => {
                        let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                        out.push(Finding::ok(what, list.join(", ")));
                    }
                    Err(e) => out.push(Finding::fail(what, e)),
                }
            }
        }
        Err(e) => out.push(Finding::fail("dns resolver", e.to_string())),
    }
    out
}

/// Every upstream accepts a connection (each address once).
async fn upstreams(settings: &Settings) -> Vec<Finding> {
    let mut out = Vec::new();
    let connect_timeout = settings.limits.upstream_connect_timeout;
    let mut seen = BTreeSet::new();
    for l in &settings.listeners {
        for r in &l.routes {
            let Some(up) = r.upstream() else { continue };
            let addr = up.connect_addr();
            if !seen.insert(addr.clone()) {
                continue;
            }
            let what = format!("upstream {addr} (listener {} route {})", l.name, r.path);
            let started = std::time::Instant::now();
            match tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(&addr)).await
            {
                Ok(Ok(_)) => out.push(Finding::ok(
                    what,
                    format!("connected in {}", millis(started.elapsed())),
                )),
                Ok(Err(e)) => out.push(Finding::fail(what, format!("cannot connect: {e}"))),
                Err(_) => out.push(Finding::fail(
                    what,
                    format!(
                        "no connection within {}",
                        humantime::format_duration(connect_timeout)
                    ),
                )),
            }
        }
    }
    out
}

/// Every peer with a `url` answers, with a certificate not about to expire and a clock
/// close to ours.
async fn peers(settings: &Settings, clock: &Clock) -> Vec<Finding> {
    let mut out = Vec::new();
    let connect_timeout = settings.limits.upstream_connect_timeout;
    for p in settings.peers.values() {
        let Some(url) = &p.url else { continue };
        let what = format!("peer {} {url}", p.name);
        // The handshake and the answer to HEAD, as a delivery would get them.
        let bound = connect_timeout + Duration::from_secs(5);
        match crate::egress::client::probe(p, bound, clock).await {
            Err(e) => out.push(Finding::fail(what, e.to_string())),
            Ok(found) => {
                let tls = if found.cert_not_after.is_some() {
                    " (TLS)"
                } else {
                    ""
                };
                out.push(Finding::ok(
                    what.clone(),
                    format!(
                        "connected to {}{tls} in {}; HEAD answered {}",
                        found.addr,
                        millis(found.connected_in),
                        found.status
                    ),
                ));
                if url.scheme_str() == Some("https") {
                    out.push(expiry(
                        format!("peer {} certificate", p.name),
                        found.cert_not_after,
                        clock.unix_secs_i64(),
                    ));
                }
                out.push(clock_offset(p, found.date, settings.limits.clock_leeway));
            }
        }
    }
    out
}

/// `state.backend.redis`: connects (TLS as the URL says), `PING`, and loads the
/// rate-limit script.
async fn redis(settings: &crate::fleet::RedisSettings) -> Finding {
    let what = "state.backend.redis";
    let started = std::time::Instant::now();
    let fleet = match crate::fleet::Fleet::new(settings.clone()) {
        Ok(f) => f,
        Err(e) => return Finding::fail(what, e.to_string()),
    };
    match fleet.probe().await {
        Ok(version) => Finding::ok(
            what,
            format!(
                "connected in {}; PING answered, rate-limit script loaded; Redis {version}",
                millis(started.elapsed())
            ),
        ),
        Err(e) => Finding::fail(what, e.to_string()),
    }
}

/// `state.backend.postgres`: connects (TLS as the URL says) and reads the schema version.
async fn postgres(pg: &crate::egress::pg::PgSettings) -> Finding {
    use crate::egress::pg::schema::{probe, SCHEMA_VERSION};
    let what = "state.backend.postgres";
    let started = std::time::Instant::now();
    match tokio::time::timeout(Duration::from_secs(10), probe(pg)).await {
        Err(_) => Finding::fail(what, "no answer within 10s"),
        Ok(Err(e)) => Finding::fail(what, e.to_string()),
        Ok(Ok(found)) if found > SCHEMA_VERSION => Finding::fail(
            what,
            format!("schema v{found} is newer than this binary knows (v{SCHEMA_VERSION})"),
        ),
        Ok(Ok(found)) => Finding::ok(
            what,
            format!(
                "connected in {}; schema v{found} (this binary: v{SCHEMA_VERSION}{})",
                millis(started.elapsed()),
                if found < SCHEMA_VERSION {
                    ", migrates at start"
                } else {
                    ""
                }
            ),
        ),
    }
}

/// The clock's offset from a peer's `Date`: beyond the leeway its tokens (`exp`, `iat`)
/// and ours would be refused.
fn clock_offset(
    p: &crate::config::Peer,
    date: Option<(SystemTime, SystemTime)>,
    clock_leeway: Duration,
) -> Finding {
    let what = format!("peer {} clock", p.name);
    let Some((theirs, ours)) = date else {
        return Finding::fail(what, "no Date header in its answer: cannot compare clocks");
    };
    let leeway = p
        .keys
        .jwt
        .as_ref()
        .map(|j| Duration::from_secs(j.leeway_secs))
        .unwrap_or(clock_leeway)
        .min(clock_leeway);
    // `Date` has whole seconds: an offset below 1 s is noise.
    let (sign, offset) = match theirs.duration_since(ours) {
        Ok(ahead) => ("+", ahead),
        Err(e) => ("-", e.duration()),
    };
    let detail = format!(
        "{sign}{:.0} s from its Date header (tolerated: {} s)",
        offset.as_secs_f64(),
        leeway.as_secs()
    );
    if offset > leeway + Duration::from_secs(1) {
        Finding::fail(what, format!("{detail}: fix the clock (NTP)"))
    } else {
        Finding::ok(what, detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `check --online` ages a certificate by the clock it is given: ok with a week
    /// left, a failure inside the last week, expired from `notAfter` on.
    #[test]
    fn certificate_expiry_at_chosen_instants() {
        let at = 1_936_742_400; // 2031-05-17T00:00:00Z
        let clock = Clock::manual((at - 7 * 86_400) as u64 * 1000);
        let judge = |clock: &Clock| expiry("cert".into(), Some(at), clock.unix_secs_i64());
        let f = judge(&clock);
        assert!(f.ok, "{f}");
        assert_eq!(
            f.detail,
            "certificate expires 2031-05-17T00:00:00Z (in 7 days)"
        );
        clock.advance(Duration::from_secs(1));
        let f = judge(&clock);
        assert!(!f.ok);
        assert_eq!(
            f.detail,
            "certificate expires 2031-05-17T00:00:00Z (in 6 days): renew it"
        );
        clock.set_ms(at as u64 * 1000 - 1);
        assert!(judge(&clock).detail.ends_with("(in 0 days): renew it"));
        clock.advance(Duration::from_millis(1));
        let f = judge(&clock);
        assert!(!f.ok);
        assert_eq!(f.detail, "certificate expired 2031-05-17T00:00:00Z");
        assert!(!expiry("cert".into(), None, 0).ok);
    }
}
