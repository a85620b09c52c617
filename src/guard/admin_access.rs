//! Who may use the admin listener: no browser (`Origin` refused), no DNS rebinding (`Host`
//! must name the listener or loopback), and the `admin.token` for everything except the
//! health probes and — when `admin.metrics: open` — `/metrics`.
//!
//! The token is accepted as `Authorization: Bearer TOKEN` or as the password of HTTP
//! Basic (any user name), so an operator's browser can open the admin pages after a
//! password prompt. Without a configured token the protected endpoints stay closed.
//!
//! ```
//! use bsk_sidecar::guard::admin_access::{AdminAccess, Refusal};
//! use bsk_sidecar::secret::Secret;
//! use http::HeaderMap;
//!
//! let access = AdminAccess { token: Some(Secret::new("s3cret")), ..AdminAccess::default() };
//! let listen = "127.0.0.1:9901".parse().unwrap();
//! let mut h = HeaderMap::new();
//! h.insert("host", "127.0.0.1:9901".parse().unwrap());
//! assert_eq!(access.check(&[listen], "/healthz", &h), Ok(()));
//! assert_eq!(access.check(&[listen], "/outbox", &h), Err(Refusal::Unauthorized));
//! h.insert("authorization", "Bearer s3cret".parse().unwrap());
//! assert_eq!(access.check(&[listen], "/outbox", &h), Ok(()));
//! ```

use std::net::SocketAddr;

use base64::Engine;
use http::{header, HeaderMap, StatusCode};

use crate::secret::Secret;

/// Whether `/metrics` needs the admin token (`admin.metrics:`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsAccess {
    /// The safe default: Prometheus sends the token (`authorization: { credentials_file }`).
    #[default]
    Token,
    /// Anyone who can reach the admin listener may scrape (an explicit relaxation).
    Open,
}

impl MetricsAccess {
    pub fn name(self) -> &'static str {
        match self {
            MetricsAccess::Token => "token",
            MetricsAccess::Open => "open",
        }
    }
}

/// The admin listener's access settings (`admin.token`, `admin.metrics`,
/// `admin.max_connections`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminAccess {
    /// `None`: every protected endpoint answers 403 saying `admin.token` is not configured.
    pub token: Option<Secret>,
    pub metrics: MetricsAccess,
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
}

impl Default for AdminAccess {
    fn default() -> Self {
        AdminAccess {
            token: None,
            metrics: MetricsAccess::Token,
            max_connections: 16,
        }
    }
}

/// Why an admin request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The request carries `Origin`: it comes from a web page, never from an operator tool.
    #[error("{}", self.message())]
    CrossOrigin,
    /// `Host` names something other than this listener or loopback (DNS rebinding).
    #[error("{}", self.message())]
    BadHost,
    /// The endpoint needs the token and none is configured.
    #[error("{}", self.message())]
    NoToken,
    /// No token, or the wrong one.
    #[error("{}", self.message())]
    Unauthorized,
}

impl Refusal {
    /// The bounded `reason` in the JSON answer.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::CrossOrigin => "cross_origin",
            Refusal::BadHost => "bad_host",
            Refusal::NoToken => "admin_token_not_configured",
            Refusal::Unauthorized => "unauthorized",
        }
    }

    /// What the JSON answer tells the operator.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::CrossOrigin => {
                "admin requests from web pages (an Origin header) are refused"
            }
            Refusal::BadHost => "the Host header must name the admin listener's address or localhost",
            Refusal::NoToken => "admin.token is not configured; this endpoint stays closed until it is",
            Refusal::Unauthorized => {
                "admin token required (Authorization: Bearer TOKEN, or Basic with the token as password)"
            }
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
            Refusal::CrossOrigin | Refusal::BadHost | Refusal::NoToken => StatusCode::FORBIDDEN,
        }
    }
}

/// The `WWW-Authenticate` value of a 401, so a browser asks for the token.
pub const CHALLENGE: &str = r#"Basic realm="bsk-sidecar admin""#;

impl AdminAccess {
    /// Decides one request for `path`. `listen` holds the addresses that name this
    /// listener: as configured, and as the connection was accepted on.
    pub fn check(
        &self,
        listen: &[SocketAddr],
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        if headers.contains_key(header::ORIGIN) {
            return Err(Refusal::CrossOrigin);
        }
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        if !host.is_some_and(|h| host_is_ours(h, listen)) {
            return Err(Refusal::BadHost);
        }
        let open = match path {
            "/healthz" | "/readyz" => true,
            "/metrics" => self.metrics == MetricsAccess::Open,
            _ => false,
        };
        if open {
            return Ok(());
        }
        let Some(token) = &self.token else {
            return Err(Refusal::NoToken);
        };
        // Every Authorization header is looked at: one right token among them is enough.
        let presented = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| presented_token(v.as_bytes()));
        let mut ok = false;
        for p in presented {
            ok |= token.matches(&p);
        }
        if ok {
            Ok(())
        } else {
            Err(Refusal::Unauthorized)
        }
    }
}

/// The token in `Bearer TOKEN` or the password in `Basic base64(user:password)`.
fn presented_token(value: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = text.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.as_bytes().to_vec());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        return decoded.get(colon + 1..).map(<[u8]>::to_vec);
    }
    None
}

/// `Host` is one of `listen` (`ip:port`), or a loopback name with or without a port.
fn host_is_ours(host: &str, listen: &[SocketAddr]) -> bool {
    let host = host.trim();
    if let Ok(addr) = host.parse::<SocketAddr>() {
        if listen.contains(&addr) || addr.ip().is_loopback() {
            return true;
        }
    }
    // Without a port, or a name: strip a `:port` suffix, keeping `[::1]` whole.
    let name = match host.rsplit_once(':') {
        Some((n, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (n.starts_with('[') || !n.contains(':')) =>
        {
            n
        }
        _ => host,
    };
    name.eq_ignore_ascii_case("localhost") || matches!(name, "127.0.0.1" | "[::1]")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTEN: &str = "127.0.0.1:9901";

    fn access(metrics: MetricsAccess) -> AdminAccess {
        AdminAccess {
            token: Some(Secret::new("admin-token-123")),
            metrics,
            max_connections: 16,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn check(a: &AdminAccess, path: &str, pairs: &[(&str, &str)]) -> Result<(), Refusal> {
        a.check(&[LISTEN.parse().unwrap()], path, &headers(pairs))
    }

    fn basic(user: &str, pass: &str) -> String {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        format!("Basic {b}")
    }

    #[test]
    fn token_as_bearer_or_basic_password() {
        let a = access(MetricsAccess::Token);
        let host = ("host", LISTEN);
        assert_eq!(check(&a, "/outbox", &[host]), Err(Refusal::Unauthorized));
        assert_eq!(
            check(
                &a,
                "/outbox",
                &[host, ("authorization", "Bearer admin-token-123")]
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &a,
                "/outbox",
                &[host, ("authorization", "bearer admin-token-123")]
            ),
            Ok(())
        );
        let b = basic("anyone", "admin-token-123");
        assert_eq!(check(&a, "/outbox", &[host, ("authorization", &b)]), Ok(()));
        // A password holding a colon is still one password.
        let colon = AdminAccess {
            token: Some(Secret::new("a:b")),
            ..a.clone()
        };
        let b = basic("", "a:b");
        assert_eq!(check(&colon, "/", &[host, ("authorization", &b)]), Ok(()));
        for wrong in [
            "Bearer admin-token-12",
            "Bearer admin-token-1234",
            "Bearer ",
            "Token admin-token-123",
            "admin-token-123",
            &basic("admin-token-123", "x"),
            "Basic not*base64",
        ] {
            assert_eq!(
                check(&a, "/outbox", &[host, ("authorization", wrong)]),
                Err(Refusal::Unauthorized),
                "{wrong}"
            );
        }
    }

    #[test]
    fn health_is_open_metrics_per_setting() {
        let host = ("host", LISTEN);
        let closed = access(MetricsAccess::Token);
        assert_eq!(check(&closed, "/healthz", &[host]), Ok(()));
        assert_eq!(check(&closed, "/readyz", &[host]), Ok(()));
        assert_eq!(
            check(&closed, "/metrics", &[host]),
            Err(Refusal::Unauthorized)
        );
        assert_eq!(
            check(&access(MetricsAccess::Open), "/metrics", &[host]),
            Ok(())
        );
        // Unknown paths are protected too: a 404 would tell what exists.
        assert_eq!(check(&closed, "/nope", &[host]), Err(Refusal::Unauthorized));
    }

    #[test]
    fn without_a_token_protected_paths_stay_closed() {
        let a = AdminAccess::default();
        let host = ("host", LISTEN);
        assert_eq!(
            check(&a, "/outbox", &[host, ("authorization", "Bearer ")]),
            Err(Refusal::NoToken)
        );
        assert_eq!(check(&a, "/metrics", &[host]), Err(Refusal::NoToken));
        assert_eq!(check(&a, "/healthz", &[host]), Ok(()));
        assert_eq!(Refusal::NoToken.status(), StatusCode::FORBIDDEN);
        assert_eq!(Refusal::Unauthorized.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn origin_is_refused_even_with_the_token() {
        let a = access(MetricsAccess::Open);
        let auth = ("authorization", "Bearer admin-token-123");
        for path in ["/outbox", "/healthz", "/metrics"] {
            assert_eq!(
                check(
                    &a,
                    path,
                    &[("host", LISTEN), auth, ("origin", "http://evil.example")]
                ),
                Err(Refusal::CrossOrigin)
            );
        }
        assert_eq!(
            check(&a, "/outbox", &[("host", LISTEN), auth, ("origin", "null")]),
            Err(Refusal::CrossOrigin)
        );
    }

    #[test]
    fn host_must_be_the_listener_or_loopback() {
        let a = access(MetricsAccess::Open);
        for good in [
            LISTEN,
            "localhost",
            "LocalHost:9901",
            "localhost:8080",
            "127.0.0.1",
            "127.0.0.1:1234",
            "[::1]",
            "[::1]:9901",
        ] {
            assert_eq!(check(&a, "/healthz", &[("host", good)]), Ok(()), "{good}");
        }
        for bad in [
            "evil.example",
            "evil.example:9901",
            "localhost.evil.example",
            "127.0.0.1.nip.io:9901",
            "10.0.0.5:9901",
            "",
        ] {
            assert_eq!(
                check(&a, "/healthz", &[("host", bad)]),
                Err(Refusal::BadHost),
                "{bad}"
            );
        }
        assert_eq!(check(&a, "/healthz", &[]), Err(Refusal::BadHost));
        // A listener on every address answers to the address the client connected to.
        let accepted: SocketAddr = "10.0.0.5:9901".parse().unwrap();
        let h = headers(&[("host", "10.0.0.5:9901")]);
        assert_eq!(
            a.check(&["0.0.0.0:9901".parse().unwrap(), accepted], "/healthz", &h),
            Ok(())
        );
    }
}
