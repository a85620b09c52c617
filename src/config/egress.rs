//! The egress half of the configuration: what a route does with a request (its
//! [`Target`]), how a push to a peer is delivered, and the peer's outbound TLS material.
//!
//! A route has exactly one shape, checked here with field-path errors:
//!
//! ```yaml
//! - { path: /bsk/status, from: bsk, envelope: [token, jwt], upstream: http://127.0.0.1:8080/s }  # ingress
//! - { path: /bsk/missed, from: bsk, envelope: [token, jwt], serve: journal }                      # API-7
//! - { path: /push, to: bsk, remote: /push, envelope: [token, jwt], delivery: fallback }          # egress
//! ```

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use super::raw::{Delivery, Reply};
use super::raw::{RawPeerTls, RawRetry, RawRoute, RawServe};
use super::values::{positive, resolve};
use super::Check;
use crate::forward::Upstream;

/// What a route does once a request has passed its checks.
#[derive(Debug, Clone)]
pub enum Target {
    /// Ingress: forward the opened JSON to the legacy application.
    Upstream(Upstream),
    /// Ingress: answer the portal's API-7 pull from the egress journal.
    Journal,
    /// Egress: seal the application's plain JSON for the route's peer and send it there.
    Remote(Remote),
}

impl Target {
    pub fn is_egress(&self) -> bool {
        matches!(self, Target::Remote(_))
    }
}

/// Where and how an egress route sends.
#[derive(Debug, Clone)]
pub struct Remote {
    /// Path appended to the peer's `url`, e.g. `/push`.
    pub path: String,
    pub delivery: Delivery,
    /// A queued push older than this moves to the dead-letter list.
    pub max_age: Duration,
    pub backoff: Backoff,
    /// Record delivered / queued pushes in the API-7 journal.
    pub journal: bool,
    pub reply: Reply,
}

/// Exponential backoff between delivery attempts (with jitter, see `egress::deliver`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

/// Default dead-letter age of a queued push: the spec keeps API-2 retries for 7 days.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Outbound TLS material for one peer, read at start-up. `Debug` hides the key.
#[derive(Clone, Default)]
pub struct PeerTls {
    /// Trusted roots for this peer; `None` means the system's roots.
    pub ca: Option<Vec<CertificateDer<'static>>>,
    /// Certificate chain and key presented to the peer.
    pub client: Option<ClientIdentity>,
}

#[derive(Clone)]
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTls")
            .field("ca", &self.ca.as_ref().map(|c| c.len()))
            .field("client_cert", &self.client.as_ref().map(|c| c.chain.len()))
            .field("client_key", &self.client.as_ref().map(|_| "***"))
            .finish()
    }
}

fn certs(check: &mut Check<'_>, path: &str, file: &Path) -> Option<Vec<CertificateDer<'static>>> {
    let iter = match CertificateDer::pem_file_iter(file) {
        Ok(i) => i,
        Err(e) => {
            check.err(path, format!("cannot read {}: {e}", file.display()));
            return None;
        }
    };
    let mut out = Vec::new();
    for c in iter {
        match c {
            Ok(c) => out.push(c),
            Err(e) => {
                check.err(
                    path,
                    format!("{}: not a PEM certificate: {e}", file.display()),
                );
                return None;
            }
        }
    }
    if out.is_empty() {
        check.err(path, format!("{} holds no PEM certificate", file.display()));
        return None;
    }
    Some(out)
}

/// Reads `peers.NAME.tls`.
pub(super) fn peer_tls(
    check: &mut Check<'_>,
    p: &str,
    raw: Option<RawPeerTls>,
    base: &Path,
) -> PeerTls {
    let Some(raw) = raw else {
        return PeerTls::default();
    };
    let ca = raw
        .ca
        .as_ref()
        .and_then(|f| certs(check, &format!("{p}.tls.ca"), &resolve(base, f)));
    let client = match (&raw.client_cert, &raw.client_key) {
        (None, None) => None,
        (Some(c), Some(k)) => {
            let chain = certs(check, &format!("{p}.tls.client_cert"), &resolve(base, c));
            let key_file = resolve(base, k);
            let key = match PrivateKeyDer::from_pem_file(&key_file) {
                Ok(k) => Some(k),
                Err(e) => {
                    check.err(
                        format!("{p}.tls.client_key"),
                        format!("{}: no usable PEM private key: {e}", key_file.display()),
                    );
                    None
                }
            };
            match (chain, key) {
                (Some(chain), Some(key)) => Some(ClientIdentity {
                    chain,
                    key: Arc::new(key),
                }),
                _ => None,
            }
        }
        (Some(_), None) => {
            check.err(
                format!("{p}.tls.client_key"),
                "client_cert needs client_key",
            );
            None
        }
        (None, Some(_)) => {
            check.err(
                format!("{p}.tls.client_cert"),
                "client_key needs client_cert",
            );
            None
        }
    };
    PeerTls { ca, client }
}

/// Decides the route's target from its fields; every misplaced field is an error at
/// its own path. `egress` is whether the route names `to:`; `peer_url` the peer's `url`.
pub(super) fn route_target(
    check: &mut Check<'_>,
    rp: &str,
    rr: &RawRoute,
    egress: bool,
    peer_url: Option<Option<&http::Uri>>,
) -> Option<Target> {
    if egress {
        egress_target(check, rp, rr, peer_url).map(Target::Remote)
    } else {
        ingress_target(check, rp, rr)
    }
}

/// Reports each of `fields` (name, written) that is written, as belonging to `side`.
fn only_on(check: &mut Check<'_>, rp: &str, side: &str, fields: &[(&str, bool)]) {
    for (field, written) in fields {
        if *written {
            check.err(
                format!("{rp}.{field}"),
                format!("`{field}` applies to {side} routes only"),
            );
        }
    }
}

/// A `from:` route: `upstream: URL` or `serve: journal`.
fn ingress_target(check: &mut Check<'_>, rp: &str, rr: &RawRoute) -> Option<Target> {
    only_on(
        check,
        rp,
        "egress (`to:`)",
        &[
            ("remote", rr.remote.is_some()),
            ("delivery", rr.delivery.is_some()),
            ("max_age", rr.max_age.is_some()),
            ("retry", rr.retry.is_some()),
            ("journal", rr.journal.is_some()),
            ("reply", rr.reply.is_some()),
        ],
    );
    match (&rr.upstream, &rr.serve) {
        (Some(u), None) => check
            .ok(format!("{rp}.upstream"), Upstream::parse(u))
            .map(Target::Upstream),
        (None, Some(serve)) => match check.known(format!("{rp}.serve"), serve)? {
            RawServe::Journal => Some(Target::Journal),
        },
        (Some(_), Some(_)) => {
            check.err(
                format!("{rp}.serve"),
                "a route has either `upstream` or `serve`, not both",
            );
            None
        }
        (None, None) => {
            check.err(
                format!("{rp}.upstream"),
                "missing: an ingress route needs `upstream: http://...` or `serve: journal`",
            );
            None
        }
    }
}

/// A `to:` route: where on the peer it sends, how it delivers, what it does with replies.
fn egress_target(
    check: &mut Check<'_>,
    rp: &str,
    rr: &RawRoute,
    peer_url: Option<Option<&http::Uri>>,
) -> Option<Remote> {
    only_on(
        check,
        rp,
        "ingress (`from:`)",
        &[
            ("upstream", rr.upstream.is_some()),
            ("serve", rr.serve.is_some()),
            ("response", rr.response.is_some()),
            ("fresh", rr.fresh.is_some()),
            ("replay", rr.replay.is_some()),
        ],
    );
    if rr.ip_check == Some(true) {
        check.err(
            format!("{rp}.ip_check"),
            "an egress route takes the local application's requests; bind its listener to loopback instead",
        );
    }
    if let Some(None) = peer_url {
        check.err(
            format!("{rp}.to"),
            "the peer has no `url`; egress needs peers.NAME.url",
        );
    }
    let path = remote_path(check, rp, rr.remote.as_deref());
    let delivery = rr
        .delivery
        .as_ref()
        .and_then(|d| check.known(format!("{rp}.delivery"), d))
        .unwrap_or(Delivery::Direct);
    let max_age = rr
        .max_age
        .as_ref()
        .and_then(|d| positive(check, format!("{rp}.max_age"), d))
        .unwrap_or(DEFAULT_MAX_AGE);
    let backoff = rr
        .retry
        .as_ref()
        .map(|r| backoff(check, rp, r))
        .unwrap_or_default();
    if delivery == Delivery::Direct && (rr.max_age.is_some() || rr.retry.is_some()) {
        check.err(
            format!("{rp}.delivery"),
            "max_age and retry apply to queued and fallback delivery only",
        );
    }
    let reply = rr
        .reply
        .as_ref()
        .and_then(|r| check.known(format!("{rp}.reply"), r))
        .unwrap_or(Reply::Auto);
    Some(Remote {
        path: path?,
        delivery,
        max_age,
        backoff,
        journal: rr.journal.unwrap_or(delivery != Delivery::Direct),
        reply,
    })
}

/// `remote`: the path appended to the peer's `url`.
fn remote_path(check: &mut Check<'_>, rp: &str, remote: Option<&str>) -> Option<String> {
    match remote {
        Some(r) if r.starts_with('/') && r.parse::<http::uri::PathAndQuery>().is_ok() => {
            Some(r.to_owned())
        }
        Some(r) => {
            check.err(
                format!("{rp}.remote"),
                format!("`{r}` is not a path starting with /"),
            );
            None
        }
        None => {
            check.err(
                format!("{rp}.remote"),
                "missing: an egress route needs `remote: /path` (appended to the peer's url)",
            );
            None
        }
    }
}

/// `retry`: the first wait and the longest, the longest at least the first.
fn backoff(check: &mut Check<'_>, rp: &str, r: &RawRetry) -> Backoff {
    let mut backoff = Backoff::default();
    if let Some(d) = r
        .initial
        .as_ref()
        .and_then(|d| positive(check, format!("{rp}.retry.initial"), d))
    {
        backoff.initial = d;
    }
    if let Some(d) = r
        .max
        .as_ref()
        .and_then(|d| positive(check, format!("{rp}.retry.max"), d))
    {
        backoff.max = d;
    }
    if backoff.max < backoff.initial {
        check.err(format!("{rp}.retry.max"), "must be at least retry.initial");
    }
    backoff
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::{from_yaml, ConfigError, Settings};

    fn yaml(peer_extra: &str, routes: &str) -> String {
        format!(
            r#"
admin: {{ listen: "off" }}
state: {{ dir: /tmp/bsk-egress-config-test, journal_retention: 30d }}
peers:
  bsk:
    agid: BSK
    passcode: "376423"
    jwt: {{ secret: "jwt-secret-for-tests-0123456789abcdef", sign_exp: 5m }}
{peer_extra}
listeners:
  - name: egress
    listen: 127.0.0.1:0
    routes:
{routes}
"#
        )
    }

    fn ok(y: &str) -> Settings {
        from_yaml(y, "t.yaml", Path::new(".")).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn errs(y: &str) -> Vec<String> {
        from_yaml(y, "t.yaml", Path::new("."))
            .err()
            .unwrap_or_default()
            .iter()
            .map(ConfigError::to_string)
            .collect()
    }

    const URL: &str = "    url: https://bsk.example/api";

    #[test]
    fn each_route_shape_validates_into_its_target() {
        let s = ok(&yaml(
            URL,
            r#"      - { path: /push, to: bsk, remote: /push, envelope: [token, jwt], delivery: fallback, max_age: 2d, retry: { initial: 2s, max: 1m } }
      - { path: /api6, to: bsk, remote: /auth, envelope: [token, jwt] }
      - { path: /missed, from: bsk, envelope: [token, jwt], ip_check: false, serve: journal }"#,
        ));
        assert_eq!(s.journal_retention, Duration::from_secs(30 * 86_400));
        assert_eq!(s.peers["bsk"].sign_exp, Some(Duration::from_secs(300)));
        let r = &s.listeners[0].routes;
        let Target::Remote(push) = &r[0].target else {
            panic!("{:?}", r[0].target)
        };
        assert_eq!(push.path, "/push");
        assert_eq!(push.delivery, Delivery::Fallback);
        assert_eq!(push.max_age, Duration::from_secs(2 * 86_400));
        assert_eq!(push.backoff.initial, Duration::from_secs(2));
        assert!(push.journal, "pushes are journaled by default");
        assert!(!r[0].ip_check && r[0].fresh.is_none() && !r[0].replay);
        let Target::Remote(direct) = &r[1].target else {
            panic!()
        };
        assert_eq!((direct.delivery, direct.journal), (Delivery::Direct, false));
        assert_eq!(direct.max_age, DEFAULT_MAX_AGE);
        assert_eq!(direct.reply, Reply::Auto);
        assert!(matches!(r[2].target, Target::Journal));
        let text = s.describe();
        assert!(
            text.contains("to bsk [token,jwt] -> https://bsk.example/api/push delivery=fallback"),
            "{text}"
        );
    }

    #[test]
    fn every_delivery_and_reply_spelling_validates() {
        for (delivery, want) in [
            ("direct", Delivery::Direct),
            ("queued", Delivery::Queued),
            ("fallback", Delivery::Fallback),
        ] {
            for (reply, want_reply) in [
                ("open", Reply::Open),
                ("pass", Reply::Pass),
                ("auto", Reply::Auto),
            ] {
                let s = ok(&yaml(
                    URL,
                    &format!("      - {{ path: /p, to: bsk, remote: /p, envelope: [token, jwt], delivery: {delivery}, reply: {reply} }}"),
                ));
                let Target::Remote(r) = &s.listeners[0].routes[0].target else {
                    panic!("{:?}", s.listeners[0].routes[0].target)
                };
                assert_eq!((r.delivery, r.reply), (want, want_reply));
                assert_eq!((r.delivery.name(), r.reply.name()), (delivery, reply));
            }
        }
    }

    #[test]
    fn a_route_has_exactly_one_shape() {
        let cases = [
            (
                "      - { path: /a, to: bsk, from: bsk, remote: /p, envelope: [token, jwt] }",
                "listeners[0].routes[0].to: a route has either `from` (ingress) or `to` (egress)",
            ),
            (
                "      - { path: /a, envelope: [token, jwt], upstream: http://127.0.0.1:1/a }",
                "listeners[0].routes[0].from: missing",
            ),
            (
                "      - { path: /a, to: bsk, envelope: [token, jwt] }",
                "listeners[0].routes[0].remote: missing",
            ),
            (
                "      - { path: /a, to: bsk, remote: /p, envelope: [token, jwt], upstream: http://127.0.0.1:1/a }",
                "listeners[0].routes[0].upstream: `upstream` applies to ingress",
            ),
            (
                "      - { path: /a, to: bsk, remote: /p, envelope: [token, jwt], fresh: 10m }",
                "listeners[0].routes[0].fresh: `fresh` applies to ingress",
            ),
            (
                "      - { path: /a, from: bsk, ip_check: false, envelope: [token, jwt], remote: /p, upstream: http://127.0.0.1:1/a }",
                "listeners[0].routes[0].remote: `remote` applies to egress",
            ),
            (
                "      - { path: /a, from: bsk, ip_check: false, envelope: [token, jwt], serve: files }",
                "listeners[0].routes[0].serve: unknown variant `files`, expected `journal`",
            ),
            (
                "      - { path: /a, from: bsk, ip_check: false, envelope: [token, jwt], serve: journal, upstream: http://127.0.0.1:1/a }",
                "listeners[0].routes[0].serve: a route has either `upstream` or `serve`",
            ),
            (
                "      - { path: /a, to: bsk, remote: /p, envelope: [token, jwt], delivery: later }",
                "listeners[0].routes[0].delivery: unknown variant `later`, expected one of `direct`, `queued`, `fallback`",
            ),
            (
                "      - { path: /a, to: bsk, remote: /p, envelope: [token, jwt], max_age: 1d }",
                "listeners[0].routes[0].delivery: max_age and retry apply to queued and fallback",
            ),
            (
                "      - { path: /a, to: bsk, remote: /p, envelope: [token, jwt], delivery: queued, retry: { initial: 10s, max: 1s } }",
                "listeners[0].routes[0].retry.max: must be at least retry.initial",
            ),
            (
                "      - { path: /a, to: bsk, remote: p, envelope: [token, jwt] }",
                "listeners[0].routes[0].remote: `p` is not a path",
            ),
            (
                "      - { path: /a, to: bsk, remote: /p, envelope: [token, jwt], ip_check: true }",
                "listeners[0].routes[0].ip_check: an egress route",
            ),
            (
                "      - { path: /a, to: nobody, remote: /p, envelope: [token, jwt] }",
                "listeners[0].routes[0].to: no peer named `nobody`",
            ),
        ];
        for (route, want) in cases {
            let e = errs(&yaml(URL, route));
            assert!(
                e.iter().any(|m| m.contains(want)),
                "{route}\nwant {want}\ngot {e:#?}"
            );
        }
    }

    #[test]
    fn egress_needs_the_peers_url_and_readable_tls_files() {
        let route = "      - { path: /a, to: bsk, remote: /p, envelope: [token, jwt] }";
        let e = errs(&yaml("", route));
        assert!(
            e.iter()
                .any(|m| m.contains("routes[0].to: the peer has no `url`")),
            "{e:#?}"
        );
        let e = errs(&yaml(
            &format!(
                "{URL}\n    tls: {{ ca: /nonexistent/ca.pem, client_cert: /nonexistent/c.pem }}"
            ),
            route,
        ));
        assert!(
            e.iter()
                .any(|m| m.contains("peers.bsk.tls.ca: cannot read /nonexistent/ca.pem")),
            "{e:#?}"
        );
        assert!(
            e.iter()
                .any(|m| m.contains("peers.bsk.tls.client_key: client_cert needs client_key")),
            "{e:#?}"
        );
        let e = errs(&yaml(URL, route).replace("journal_retention: 30d", "journal_retention: 1h"));
        assert!(
            e.iter()
                .any(|m| m.contains("state.journal_retention: must be at least 1d")),
            "{e:#?}"
        );
        let e = errs(&yaml(URL, route).replace("sign_exp: 5m", "sign_exp: soon"));
        assert!(
            e.iter().any(|m| m.contains("peers.bsk.jwt.sign_exp")),
            "{e:#?}"
        );
    }
}
