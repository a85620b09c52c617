//! Validated runtime settings: built once from [`super::raw`], every problem reported
//! with its field path. Code after start-up sees only these types.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery};
use http::{Method, Uri};

use super::egress::{peer_tls, route_target, PeerTls, Target};
use super::raw::*;
use super::ConfigError;
use crate::envelope::{self, aes::AesKey, jwt::JwtKey, Layer, PeerKeys};
use crate::guard::admin_access::{AdminAccess, MetricsAccess};
use crate::guard::bounds::JsonBounds;
use crate::guard::caller::Callers;
use crate::guard::client_cert::CertBinding;
use crate::guard::fresh::Window;
use crate::guard::ip::AllowList;
use crate::guard::rate::RateSpec;
use crate::guard::schema::{Api, Mode as SchemaMode};
use crate::secret::Secret;

/// The whole validated configuration.
#[derive(Debug)]
pub struct Settings {
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`); `None` when set to `off`.
    pub admin: Option<SocketAddr>,
    /// Who may use the admin listener: token, `/metrics` access, connection cap.
    pub admin_access: AdminAccess,
    pub state_dir: PathBuf,
    /// How long API-7 journal records and push idempotency keys are kept.
    pub journal_retention: Duration,
    /// State shared by replicas: `None` = embedded (in this process only).
    pub redis: Option<crate::fleet::RedisSettings>,
    /// `state.backend.postgres`: the outbox and journal shared by replicas (`None` = redb).
    pub postgres: Option<crate::egress::pg::PgSettings>,
    pub limits: Limits,
    pub peers: BTreeMap<String, Arc<Peer>>,
    pub listeners: Vec<ListenerSettings>,
    /// How allowlisted DNS names are resolved.
    pub dns: crate::guard::dns::DnsSettings,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_in_flight: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub keepalive_idle: Duration,
    pub body_read_timeout: Duration,
    pub max_body: usize,
    pub upstream_connect_timeout: Duration,
    pub upstream_response_timeout: Duration,
    pub max_upstream_response: usize,
    pub shutdown_grace: Duration,
    pub per_ip_rate: Option<RateSpec>,
    pub max_tracked_ips: usize,
    /// Prefix lengths that key per-address buckets: (IPv4, IPv6).
    pub per_ip_prefix: (u8, u8),
    /// Clock skew tolerated on future-dated `ticketNo` / `iat`.
    pub clock_leeway: Duration,
    pub max_replay_entries: usize,
    /// Structural bounds on every opened payload.
    pub json: JsonBounds,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_connections_per_ip: 256,
            max_in_flight: 1024,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            keepalive_idle: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(30),
            max_body: 1024 * 1024,
            upstream_connect_timeout: Duration::from_secs(2),
            upstream_response_timeout: Duration::from_secs(30),
            max_upstream_response: 32 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
            per_ip_rate: Some(RateSpec::new(nz(50), nz(100))),
            max_tracked_ips: 100_000,
            per_ip_prefix: (32, 64),
            clock_leeway: Duration::from_secs(60),
            max_replay_entries: 1_000_000,
            json: JsonBounds::default(),
        }
    }
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// One counterparty: its keys, where it may connect from, how fast.
#[derive(Debug)]
pub struct Peer {
    pub name: String,
    pub keys: PeerKeys,
    pub allow: Option<AllowList>,
    pub rate: Option<RateSpec>,
    pub url: Option<Uri>,
    /// Outbound TLS to `url` (egress).
    pub tls: PeerTls,
    /// When sealing for this peer, sign `iat` and `exp` = now + this into the JWT.
    pub sign_exp: Option<Duration>,
    /// `jwt.max_lifetime`: a token whose `exp` lies further ahead is refused.
    pub max_token_lifetime: Duration,
    /// `jwt.allow_short_secret: true` was needed for this peer's secret (warned at start).
    pub short_jwt_secret: bool,
    /// Ingress over mTLS: the client certificate bound to this peer (`tls_client`).
    pub client_cert: Option<CertBinding>,
}

/// `jwt.max_lifetime` when not written.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The shortest HS256 secret accepted without `jwt.allow_short_secret` (RFC 7518 §3.2).
pub const MIN_JWT_SECRET: usize = 32;

#[derive(Debug)]
pub struct ListenerSettings {
    pub name: String,
    pub addr: SocketAddr,
    pub routes: Vec<Arc<Route>>,
    /// HTTPS on this listener.
    pub tls: Option<crate::tls::TlsSettings>,
    /// Hops whose `X-Forwarded-For` / PROXY header names the client.
    pub trusted_proxies: Option<AllowList>,
    /// Trusted hops send a PROXY protocol header first.
    pub proxy_protocol: bool,
    /// Who may push on this listener's egress routes (unused without them).
    pub callers: Arc<Callers>,
}

impl ListenerSettings {
    /// The allowlist to enforce before reading a byte: only when every route on the
    /// listener checks the address, the union of their peers' lists.
    pub fn accept_allowlist(&self) -> Option<AllowList> {
        if self.routes.is_empty() || self.routes.iter().any(|r| !r.ip_check) {
            return None;
        }
        let mut union = AllowList::default();
        for r in &self.routes {
            union.extend(r.peer.allow.as_ref()?);
        }
        Some(union)
    }
}

/// One path on one listener.
#[derive(Debug)]
pub struct Route {
    pub path: String,
    pub method: Method,
    pub peer: Arc<Peer>,
    pub layers: Vec<Layer>,
    pub ip_check: bool,
    /// What the route does: forward to an upstream, answer from the journal, or egress.
    pub target: Target,
    pub response: ResponseMode,
    pub max_body: usize,
    pub body_timeout: Duration,
    pub upstream_timeout: Duration,
    pub rate: Option<RateSpec>,
    /// Freshness window, when the route checks one.
    pub fresh: Option<Window>,
    /// Whether a repeated request within the window is refused.
    pub replay: bool,
    /// Which timestamp the freshness window judges.
    pub fresh_on: FreshOn,
    /// The spec table the payload is checked against, and what to do on a mismatch.
    pub schema: Option<(Api, SchemaMode)>,
    /// Client headers forwarded besides the default set (`forward_headers`).
    pub forward_headers: Vec<http::HeaderName>,
    /// `query: pass`: the client's query string reaches the application.
    pub pass_query: bool,
}

/// The payload field that dates a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreshOn {
    /// `ticketNo` (and JWT `iat`): when the service entry was made (API-1).
    Ticket,
    /// `appSubTime` (and JWT `iat`): when this draft or final submission was made (API-2,
    /// whose `ticketNo` may be days older for a final submission).
    AppSubTime,
}

impl Route {
    /// The application this route forwards to, when it is an ordinary ingress route.
    pub fn upstream(&self) -> Option<&Upstream> {
        match &self.target {
            Target::Upstream(u) => Some(u),
            Target::Journal | Target::Remote(_) => None,
        }
    }

    /// How long a replay record for this route must be kept.
    pub fn replay_ttl(&self) -> Duration {
        self.fresh
            .map(|w| w.max_age + 2 * w.leeway)
            .unwrap_or_default()
    }
}

/// A plain-HTTP upstream on loopback or the local network.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub authority: Authority,
    pub path_and_query: PathAndQuery,
}

impl Upstream {
    pub fn parse(s: &str) -> Result<Upstream, String> {
        let uri: Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(format!(
                    "scheme `{other}` not supported for upstreams; use http://"
                ))
            }
            None => return Err("missing scheme; write http://host:port/path".into()),
        }
        let authority = uri.authority().cloned().ok_or("missing host")?;
        let path_and_query = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Ok(Upstream {
            authority,
            path_and_query,
        })
    }

    /// `host:port` to connect to (port 80 when none is written).
    pub fn connect_addr(&self) -> String {
        let host = self.authority.host();
        let port = self.authority.port_u16().unwrap_or(80);
        if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }
}

#[derive(Debug, Clone)]
pub enum ResponseMode {
    /// The application's answer goes back unchanged.
    Pass,
    /// The application's JSON answer is sealed with the route's layers; `wrap` adds fields
    /// around `encData` (a JSON object answer instead of the request's own shape).
    Seal {
        wrap: Option<serde_json::Map<String, serde_json::Value>>,
    },
}

/// Collects problems with their field paths while building.
pub(super) struct Check<'a> {
    origin: &'a str,
    errors: Vec<ConfigError>,
}

impl Check<'_> {
    pub(super) fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.errors.push(ConfigError {
            origin: self.origin.to_string(),
            line: None,
            path: path.into(),
            message: msg.into(),
        });
    }
}

pub fn parse_duration(raw: &RawDuration) -> Result<Duration, String> {
    match raw {
        RawDuration::Seconds(n) => Ok(Duration::from_secs(*n)),
        RawDuration::Text(t) => humantime::parse_duration(t.trim())
            .map_err(|e| format!("`{t}` is not a duration like 30s or 10m ({e})")),
    }
}

pub fn parse_bytes(raw: &RawBytes) -> Result<usize, String> {
    let n: u64 = match raw {
        RawBytes::Count(n) => *n,
        RawBytes::Text(t) => {
            let t = t.trim();
            let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (num, unit) = t.split_at(split);
            let num: u64 = num
                .parse()
                .map_err(|_| format!("`{t}` is not a size like 65536, 64KiB or 1MiB"))?;
            let mult: u64 = match unit.trim() {
                "" | "B" => 1,
                "KB" | "kB" => 1000,
                "KiB" => 1024,
                "MB" => 1000 * 1000,
                "MiB" => 1024 * 1024,
                "GB" => 1000 * 1000 * 1000,
                "GiB" => 1024 * 1024 * 1024,
                other => {
                    return Err(format!(
                        "unknown size unit `{other}` (use B, KiB, MiB, GiB)"
                    ))
                }
            };
            num.checked_mul(mult)
                .ok_or_else(|| format!("`{t}` is too large"))?
        }
    };
    usize::try_from(n).map_err(|_| "size too large".to_string())
}

fn rate(check: &mut Check<'_>, path: &str, raw: Option<RawRate>) -> Option<RateSpec> {
    let raw = raw?;
    match (NonZeroU32::new(raw.per_second), NonZeroU32::new(raw.burst)) {
        (Some(p), Some(b)) => Some(RateSpec::new(p, b)),
        _ => {
            check.err(path, "per_second and burst must both be at least 1");
            None
        }
    }
}

/// Reads a secret from where the config says. `base` resolves relative file paths.
pub fn load_secret(raw: &RawSecret, base: &Path) -> Result<Secret, String> {
    match raw {
        RawSecret::Literal(s) => Ok(Secret::new(s.as_bytes().to_vec())),
        RawSecret::From(RawSecretSource {
            env: Some(name),
            file: None,
            credential: None,
            ..
        }) => std::env::var(name)
            .map(|v| Secret::new(v.into_bytes()))
            .map_err(|_| format!("environment variable `{name}` is not set")),
        RawSecret::From(RawSecretSource {
            env: None,
            file: None,
            credential: Some(name),
            ..
        }) => super::ops::credential(name),
        RawSecret::From(RawSecretSource {
            env: None,
            file: Some(file),
            credential: None,
            ..
        }) => {
            let path = if file.is_absolute() {
                file.clone()
            } else {
                base.join(file)
            };
            let mut bytes = std::fs::read(&path)
                .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
            // `echo secret > file` leaves a newline that is not part of the secret.
            while matches!(bytes.last(), Some(b'\n' | b'\r')) {
                bytes.pop();
            }
            Ok(Secret::new(bytes))
        }
        RawSecret::From(_) => {
            Err("write exactly one of `env: NAME`, `file: PATH` or `credential: NAME`".into())
        }
    }
}

fn secret(check: &mut Check<'_>, path: &str, raw: &RawSecret, base: &Path) -> Option<Secret> {
    if let RawSecret::From(RawSecretSource { kid: Some(_), .. }) = raw {
        check.err(path, "`kid` names JWT secrets only (jwt.secret)");
        return None;
    }
    match load_secret(raw, base) {
        Ok(s) if s.is_empty() => {
            check.err(path, "secret is empty");
            None
        }
        Ok(s) => Some(s),
        Err(e) => {
            check.err(path, e);
            None
        }
    }
}

/// `passcode` or `jwt.secret`: one secret, or a list during a rotation (the first seals,
/// all are accepted). `kids`: whether entries may carry a `kid` (JWT secrets).
fn secrets(
    check: &mut Check<'_>,
    path: &str,
    raw: &RawSecrets,
    base: &Path,
    kids: bool,
) -> Option<Secret> {
    let list: Vec<(String, &RawSecret)> = match raw {
        RawSecrets::One(one) => vec![(path.to_owned(), one)],
        RawSecrets::Many(many) => many
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("{path}[{i}]"), r))
            .collect(),
    };
    if list.is_empty() {
        check.err(path, "list at least one secret");
        return None;
    }
    let mut loaded = Vec::new();
    let mut seen_kids = std::collections::BTreeSet::new();
    for (at, raw) in list {
        let kid = match raw {
            RawSecret::From(RawSecretSource { kid: Some(kid), .. }) => {
                if !kids {
                    check.err(&at, "`kid` names JWT secrets only (jwt.secret)");
                    continue;
                }
                if kid.is_empty() || !seen_kids.insert(kid.clone()) {
                    check.err(&at, format!("kid `{kid}` is empty or used twice"));
                    continue;
                }
                Some(kid.clone())
            }
            _ => None,
        };
        let plain = match raw {
            RawSecret::From(src) => RawSecret::From(RawSecretSource {
                kid: None,
                ..src.clone()
            }),
            other => other.clone(),
        };
        if let Some(s) = secret(check, &at, &plain, base) {
            loaded.push(match kid {
                Some(k) => s.with_kid(k),
                None => s,
            });
        }
    }
    let duplicate = loaded
        .iter()
        .enumerate()
        .any(|(i, a)| loaded.iter().skip(i + 1).any(|b| a.matches(b.expose())));
    if duplicate {
        check.err(path, "the same secret is listed twice");
    }
    Secret::rotating(loaded)
}

/// `admin.token`, `admin.metrics`, `admin.max_connections`.
fn admin_access(check: &mut Check<'_>, raw: Option<&RawAdmin>, base: &Path) -> AdminAccess {
    let mut access = AdminAccess::default();
    let Some(raw) = raw else { return access };
    access.token = raw
        .token
        .as_ref()
        .and_then(|t| secret(check, "admin.token", t, base));
    match raw.metrics.as_deref() {
        None | Some("token") => {}
        Some("open") => access.metrics = MetricsAccess::Open,
        Some(other) => check.err("admin.metrics", format!("`{other}` is not token or open")),
    }
    match raw.max_connections {
        None => {}
        Some(0) => check.err("admin.max_connections", "must be at least 1"),
        Some(n) => access.max_connections = n,
    }
    access
}

/// A listener's `callers` and `caller_token`: only where it has egress routes.
fn callers(
    check: &mut Check<'_>,
    lp: &str,
    rl: &RawListener,
    egress: bool,
    base: &Path,
) -> Callers {
    let mut callers = Callers::default();
    if !egress {
        for (field, set) in [
            ("callers", rl.callers.is_some()),
            ("caller_token", rl.caller_token.is_some()),
        ] {
            if set {
                check.err(
                    format!("{lp}.{field}"),
                    "only a listener with egress routes (`to:`) has callers",
                );
            }
        }
        return callers;
    }
    if let Some(entries) = &rl.callers {
        callers.nets.clear();
        for (i, e) in entries.iter().enumerate() {
            match Callers::parse_entry(e) {
                Ok(net) => callers.nets.push(net),
                Err(msg) => check.err(format!("{lp}.callers[{i}]"), msg),
            }
        }
        if entries.is_empty() {
            check.err(
                format!("{lp}.callers"),
                "list at least one address or block",
            );
        }
    }
    callers.token = rl
        .caller_token
        .as_ref()
        .and_then(|t| secret(check, &format!("{lp}.caller_token"), t, base));
    callers
}

fn socket_addr(check: &mut Check<'_>, path: &str, s: &str) -> Option<SocketAddr> {
    match s.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            check.err(
                path,
                format!("`{s}` is not an address like 127.0.0.1:8443 or [::1]:8443"),
            );
            None
        }
    }
}

fn peer(check: &mut Check<'_>, name: &str, raw: RawPeer, base: &Path) -> Option<Peer> {
    let p = format!("peers.{name}");
    let before = check.errors.len();
    if raw.agid.trim().is_empty() {
        check.err(format!("{p}.agid"), "agid must not be empty");
    }
    let passcode = raw
        .passcode
        .as_ref()
        .and_then(|s| secrets(check, &format!("{p}.passcode"), s, base, false));
    let sign_exp = raw
        .jwt
        .as_ref()
        .and_then(|j| j.sign_exp.as_ref())
        .and_then(|d| match parse_duration(d) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                check.err(format!("{p}.jwt.sign_exp"), "must be longer than 0s");
                None
            }
            Err(e) => {
                check.err(format!("{p}.jwt.sign_exp"), e);
                None
            }
        });
    let max_token_lifetime = match raw.jwt.as_ref().and_then(|j| j.max_lifetime.as_ref()) {
        None => DEFAULT_TOKEN_LIFETIME,
        Some(d) => match parse_duration(d) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                check.err(format!("{p}.jwt.max_lifetime"), "must be longer than 0s");
                DEFAULT_TOKEN_LIFETIME
            }
            Err(e) => {
                check.err(format!("{p}.jwt.max_lifetime"), e);
                DEFAULT_TOKEN_LIFETIME
            }
        },
    };
    let mut short_jwt_secret = false;
    let jwt = raw.jwt.and_then(|j| {
        let jp = format!("{p}.jwt");
        let secret = secrets(check, &format!("{jp}.secret"), &j.secret, base, true);
        if let Some(s) = &secret {
            if s.shortest() < MIN_JWT_SECRET {
                if j.allow_short_secret == Some(true) {
                    short_jwt_secret = true;
                } else {
                    check.err(
                        format!("{jp}.secret"),
                        format!(
                            "the JWT secret is {} bytes; HMAC-SHA256 needs at least {MIN_JWT_SECRET} (RFC 7518 3.2). Use a longer one (bsk-sidecar keygen), or set `jwt.allow_short_secret: true` for a legacy counterparty",
                            s.len()
                        ),
                    );
                }
            }
        }
        let mut algorithms = Vec::new();
        for (i, a) in j
            .algorithms
            .unwrap_or_else(|| vec!["HS256".into()])
            .iter()
            .enumerate()
        {
            match a.as_str() {
                "HS256" => algorithms.push(jsonwebtoken::Algorithm::HS256),
                "HS384" => algorithms.push(jsonwebtoken::Algorithm::HS384),
                "HS512" => algorithms.push(jsonwebtoken::Algorithm::HS512),
                other => check.err(
                    format!("{jp}.algorithms[{i}]"),
                    format!("`{other}` is not supported; use HS256, HS384 or HS512 (never none)"),
                ),
            }
        }
        if algorithms.is_empty() {
            check.err(
                format!("{jp}.algorithms"),
                "at least one algorithm is required",
            );
        }
        let leeway = match j.leeway.as_ref().map(parse_duration).transpose() {
            Ok(l) => l.unwrap_or(Duration::from_secs(30)),
            Err(e) => {
                check.err(format!("{jp}.leeway"), e);
                Duration::ZERO
            }
        };
        Some(JwtKey {
            secret: secret?,
            algorithms,
            require_exp: j.require_exp.unwrap_or(true),
            leeway_secs: leeway.as_secs(),
        })
    });
    let mut aes = Vec::new();
    if let Some(a) = raw.aes {
        if a.keys.is_empty() {
            check.err(format!("{p}.aes.keys"), "list at least one key");
        }
        for (i, k) in a.keys.iter().enumerate() {
            let kp = format!("{p}.aes.keys[{i}]");
            let key = secret(check, &format!("{kp}.key"), &k.key, base);
            let iv = secret(check, &format!("{kp}.iv"), &k.iv, base);
            if let Some(key) = &key {
                if key.len() != 32 {
                    check.err(
                        format!("{kp}.key"),
                        format!("AES-256 key must be 32 characters, got {}", key.len()),
                    );
                }
            }
            if let Some(iv) = &iv {
                if iv.len() != 16 {
                    check.err(
                        format!("{kp}.iv"),
                        format!("IV must be 16 characters, got {}", iv.len()),
                    );
                }
            }
            if let (Some(key), Some(iv)) = (key, iv) {
                if let Ok(k) = AesKey::new(key.expose(), iv.expose()) {
                    aes.push(k);
                }
            }
        }
    }
    let allow = raw.allow.map(|entries| {
        let mut list = AllowList::default();
        for (i, e) in entries.iter().enumerate() {
            if let Err(msg) = list.push_str(e) {
                check.err(format!("{p}.allow[{i}]"), msg);
            }
        }
        list
    });
    let rate = rate(check, &format!("{p}.rate"), raw.rate);
    let url = raw.url.and_then(|u| match u.parse::<Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some() =>
        {
            Some(uri)
        }
        _ => {
            check.err(format!("{p}.url"), format!("`{u}` is not an http(s) URL"));
            None
        }
    });
    let tls = peer_tls(check, &p, raw.tls, base);
    let client_cert = raw.tls_client.map(|t| cert_binding(check, &p, t));
    if check.errors.len() > before {
        return None;
    }
    Some(Peer {
        name: name.to_string(),
        keys: PeerKeys {
            agid: raw.agid,
            passcode,
            jwt,
            aes,
        },
        allow,
        rate,
        url,
        tls,
        sign_exp,
        max_token_lifetime,
        short_jwt_secret,
        client_cert,
    })
}

/// `state.backend`: `embedded`, or `{ redis: URL, ... }`.
fn backend(
    check: &mut Check<'_>,
    raw: &RawBackend,
    base: &Path,
) -> Option<crate::fleet::RedisSettings> {
    use crate::fleet::{OnRedisDown, RedisSettings};
    let e = match raw {
        RawBackend::Named(n) if n == "embedded" => return None,
        RawBackend::Named(n) => {
            check.err(
                "state.backend",
                format!("`{n}` is not `embedded`; for shared state write `{{ redis: URL }}` and/or `{{ postgres: URL }}`"),
            );
            return None;
        }
        RawBackend::Engines(e) => e,
    };
    let Some(raw_url) = &e.redis else {
        if e.postgres.is_none() {
            check.err(
                "state.backend.redis",
                "missing: the Redis URL the replicas share",
            );
        }
        return None;
    };
    let url = secret(check, "state.backend.redis", raw_url, base)?;
    let text = String::from_utf8_lossy(url.expose()).into_owned();
    if !(text.starts_with("redis://") || text.starts_with("rediss://")) {
        check.err(
            "state.backend.redis",
            "must be a redis:// or rediss:// (TLS) URL",
        );
        return None;
    }
    let replicas = match e.replicas {
        None => 2,
        Some(0) => {
            check.err("state.backend.replicas", "must be at least 1");
            1
        }
        Some(n) => n,
    };
    let timeout = match e.redis_timeout.as_ref().map(parse_duration).transpose() {
        Ok(Some(d)) if !d.is_zero() => d,
        Ok(Some(_)) => {
            check.err("state.backend.redis_timeout", "must be longer than 0s");
            Duration::from_millis(250)
        }
        Ok(None) => Duration::from_millis(250),
        Err(msg) => {
            check.err("state.backend.redis_timeout", msg);
            Duration::from_millis(250)
        }
    };
    let on_down = match e.on_redis_down {
        None | Some(RawOnRedisDown::Local) => OnRedisDown::Local,
        Some(RawOnRedisDown::Open) => OnRedisDown::Open,
        Some(RawOnRedisDown::Closed) => OnRedisDown::Closed,
    };
    Some(RedisSettings {
        url,
        replicas,
        on_down,
        timeout,
        prefix: e.redis_prefix.clone().unwrap_or_else(|| "bsk".into()),
    })
}

/// `state.backend.postgres`: a `postgres://` URL that parses, TLS unless it says
/// `sslmode=disable`. The URL is never printed (it may carry a password).
fn postgres_backend(
    check: &mut Check<'_>,
    raw: &RawBackend,
    base: &Path,
) -> Option<crate::egress::pg::PgSettings> {
    let RawBackend::Engines(e) = raw else {
        return None;
    };
    let url = secret(check, "state.backend.postgres", e.postgres.as_ref()?, base)?;
    let text = String::from_utf8_lossy(url.expose()).into_owned();
    if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
        check.err(
            "state.backend.postgres",
            "must be a postgres:// URL (postgres://user:password@host:port/database?sslmode=require)",
        );
        return None;
    }
    let settings = crate::egress::pg::PgSettings { url };
    if let Err(e) = crate::egress::pg::schema::parse(&settings.url) {
        check.err("state.backend.postgres", e.to_string());
        return None;
    }
    Some(settings)
}

/// The freshness window of an ingress route that does not write one (API-2: 24h).
pub const DEFAULT_FRESH_WINDOW: Duration = Duration::from_secs(600);

/// Headers the sidecar writes itself, or that describe one hop or carry credentials: a
/// route cannot ask for the client's copy of these.
const NEVER_FORWARDED: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "authorization",
    "proxy-authorization",
    "x-passcode",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
    "x-request-id",
    "x-bsk-peer",
    "x-sidecar-token",
];

fn forward_headers(
    check: &mut Check<'_>,
    rp: &str,
    raw: Option<&[String]>,
) -> Vec<http::HeaderName> {
    let mut out = Vec::new();
    for (i, name) in raw.unwrap_or_default().iter().enumerate() {
        let path = format!("{rp}.forward_headers[{i}]");
        match http::HeaderName::from_bytes(name.trim().as_bytes()) {
            // CGI, PHP and WSGI read `X_A` as `X-A`: an underscore name is a spoofing tool.
            Ok(h) if h.as_str().contains('_') => check.err(
                path,
                format!("`{name}` has an underscore, which CGI/PHP read as `-`; not forwarded"),
            ),
            Ok(h) if NEVER_FORWARDED.contains(&h.as_str()) => check.err(
                path,
                format!(
                    "`{name}` is set by the sidecar or carries credentials; it is never forwarded"
                ),
            ),
            Ok(h) => out.push(h),
            Err(_) => check.err(path, format!("`{name}` is not a header name")),
        }
    }
    out
}

/// A peer's `tls_client`: names and/or SPKI pins, at least one.
fn cert_binding(check: &mut Check<'_>, p: &str, raw: RawTlsClient) -> CertBinding {
    let mut b = CertBinding::default();
    for (i, n) in raw.names.iter().flatten().enumerate() {
        let n = n.trim();
        if n.is_empty() {
            check.err(format!("{p}.tls_client.names[{i}]"), "empty name");
        }
        b.names.push(n.to_ascii_lowercase());
    }
    for (i, pin) in raw.spki_sha256.iter().flatten().enumerate() {
        match CertBinding::parse_pin(pin) {
            Ok(d) => b.spki_sha256.push(d),
            Err(e) => check.err(format!("{p}.tls_client.spki_sha256[{i}]"), e),
        }
    }
    if raw.names.iter().chain(&raw.spki_sha256).all(Vec::is_empty) {
        check.err(
            format!("{p}.tls_client"),
            "list `names` (subject CN / DNS SAN) or `spki_sha256` pins",
        );
    }
    b
}

/// Validates the raw config. `origin` names the file in messages; `base` resolves
/// relative secret paths.
pub fn build(raw: RawConfig, origin: &str, base: &Path) -> Result<Settings, Vec<ConfigError>> {
    let mut check = Check {
        origin,
        errors: Vec::new(),
    };

    let admin = match raw.admin.as_ref().and_then(|a| a.listen.as_deref()) {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
        Some("off") => None,
        Some(listen) => socket_addr(&mut check, "admin.listen", listen),
    };
    let admin_access = admin_access(&mut check, raw.admin.as_ref(), base);
    let journal_retention = match raw
        .state
        .as_ref()
        .and_then(|s| s.journal_retention.as_ref())
        .map(parse_duration)
    {
        None => Duration::from_secs(90 * 24 * 3600),
        Some(Ok(d)) if d >= Duration::from_secs(24 * 3600) => d,
        Some(Ok(_)) => {
            check.err("state.journal_retention", "must be at least 1d");
            Duration::ZERO
        }
        Some(Err(e)) => {
            check.err("state.journal_retention", e);
            Duration::ZERO
        }
    };
    let redis = raw
        .state
        .as_ref()
        .and_then(|s| s.backend.as_ref())
        .and_then(|b| backend(&mut check, b, base));
    let postgres = raw
        .state
        .as_ref()
        .and_then(|s| s.backend.as_ref())
        .and_then(|b| postgres_backend(&mut check, b, base));
    let state_dir = raw
        .state
        .map(|s| {
            if s.dir.is_absolute() {
                s.dir
            } else {
                base.join(s.dir)
            }
        })
        .unwrap_or_else(|| PathBuf::from("/var/lib/bsk-sidecar"));

    let mut limits = Limits::default();
    let l = raw.limits;
    macro_rules! dur {
        ($field:ident) => {
            if let Some(d) = &l.$field {
                match parse_duration(d) {
                    Ok(v) => limits.$field = v,
                    Err(e) => check.err(concat!("limits.", stringify!($field)), e),
                }
            }
        };
    }
    macro_rules! size {
        ($field:ident) => {
            if let Some(d) = &l.$field {
                match parse_bytes(d) {
                    Ok(v) => limits.$field = v,
                    Err(e) => check.err(concat!("limits.", stringify!($field)), e),
                }
            }
        };
    }
    dur!(header_read_timeout);
    dur!(keepalive_idle);
    dur!(body_read_timeout);
    dur!(upstream_connect_timeout);
    dur!(upstream_response_timeout);
    dur!(shutdown_grace);
    dur!(clock_leeway);
    size!(max_header_bytes);
    size!(max_body);
    size!(max_upstream_response);
    if let Some(n) = l.max_connections {
        limits.max_connections = n;
    }
    if let Some(n) = l.max_connections_per_ip {
        limits.max_connections_per_ip = n;
    }
    if let Some(n) = l.max_in_flight {
        limits.max_in_flight = n;
    }
    if let Some(n) = l.max_tracked_ips {
        limits.max_tracked_ips = n;
    }
    for (name, v, max, slot) in [
        (
            "per_ip_prefix_v4",
            l.per_ip_prefix_v4,
            32,
            &mut limits.per_ip_prefix.0,
        ),
        (
            "per_ip_prefix_v6",
            l.per_ip_prefix_v6,
            128,
            &mut limits.per_ip_prefix.1,
        ),
    ] {
        match v {
            Some(v) if v == 0 || v > max => {
                check.err(format!("limits.{name}"), format!("must be 1 to {max}"))
            }
            Some(v) => *slot = v,
            None => {}
        }
    }
    if let Some(n) = l.max_replay_entries {
        limits.max_replay_entries = n;
    }
    if let Some(j) = l.json {
        for (name, v) in [
            ("max_depth", j.max_depth),
            ("max_values", j.max_values),
            ("max_string", j.max_string),
        ] {
            if v == Some(0) {
                check.err(format!("limits.json.{name}"), "must be at least 1");
            }
        }
        limits.json = JsonBounds {
            max_depth: j.max_depth.unwrap_or(limits.json.max_depth),
            max_values: j.max_values.unwrap_or(limits.json.max_values),
            max_string: j.max_string.unwrap_or(limits.json.max_string),
        };
    }
    if l.per_ip_rate.is_some() {
        limits.per_ip_rate = rate(&mut check, "limits.per_ip_rate", l.per_ip_rate);
    }
    for (name, v) in [
        ("max_connections", limits.max_connections),
        ("max_connections_per_ip", limits.max_connections_per_ip),
        ("max_in_flight", limits.max_in_flight),
        ("max_tracked_ips", limits.max_tracked_ips),
        ("max_replay_entries", limits.max_replay_entries),
    ] {
        if v == 0 {
            check.err(format!("limits.{name}"), "must be at least 1");
        }
    }
    if limits.max_header_bytes < 1024 {
        check.err("limits.max_header_bytes", "must be at least 1KiB");
    }

    let mut peers = BTreeMap::new();
    for (name, rp) in raw.peers {
        if let Some(p) = peer(&mut check, &name, rp, base) {
            peers.insert(name, Arc::new(p));
        }
    }
    // Names of peers that failed validation: routes naming them are not reported twice.
    let broken: HashSet<String> = check
        .errors
        .iter()
        .filter_map(|e| {
            e.path
                .strip_prefix("peers.")
                .and_then(|r| r.split('.').next())
        })
        .map(str::to_string)
        .collect();

    if raw.listeners.is_empty() {
        check.err("listeners", "configure at least one listener");
    }
    let mut listeners = Vec::new();
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    for (li, rl) in raw.listeners.into_iter().enumerate() {
        let lp = format!("listeners[{li}]");
        if !names.insert(rl.name.clone()) {
            check.err(
                format!("{lp}.name"),
                format!("listener name `{}` is used twice", rl.name),
            );
        }
        let addr = socket_addr(&mut check, &format!("{lp}.listen"), &rl.listen);
        if let Some(a) = addr {
            // Port 0 asks the OS for a free port: two of those never collide.
            if a.port() != 0 && !addrs.insert(a) {
                check.err(
                    format!("{lp}.listen"),
                    format!("{a} is used by another listener"),
                );
            }
        }
        let callers = callers(
            &mut check,
            &lp,
            &rl,
            rl.routes.iter().any(|r| r.to.is_some()),
            base,
        );
        let mut routes = Vec::new();
        let mut seen = HashSet::new();
        for (ri, rr) in rl.routes.into_iter().enumerate() {
            let rp = format!("{lp}.routes[{ri}]");
            if !rr.path.starts_with('/') {
                check.err(format!("{rp}.path"), "path must start with /");
            }
            let method = match rr
                .method
                .as_deref()
                .unwrap_or("POST")
                .to_ascii_uppercase()
                .as_str()
            {
                "POST" => Some(Method::POST),
                "GET" => Some(Method::GET),
                "PUT" => Some(Method::PUT),
                other => {
                    check.err(
                        format!("{rp}.method"),
                        format!("`{other}` is not one of POST, GET, PUT"),
                    );
                    None
                }
            };
            if !seen.insert(rr.path.clone()) {
                check.err(
                    format!("{rp}.path"),
                    format!("path `{}` is configured twice on this listener", rr.path),
                );
            }
            // Exactly one direction: `from` (ingress) or `to` (egress).
            let (peer_name, peer_field, egress) = match (&rr.from, &rr.to) {
                (Some(f), None) => (Some(f.clone()), "from", false),
                (None, Some(t)) => (Some(t.clone()), "to", true),
                (Some(_), Some(_)) => {
                    check.err(
                        format!("{rp}.to"),
                        "a route has either `from` (ingress) or `to` (egress), not both",
                    );
                    (None, "from", false)
                }
                (None, None) => {
                    check.err(
                        format!("{rp}.from"),
                        "missing: write `from: PEER` (ingress) or `to: PEER` (egress)",
                    );
                    (None, "from", false)
                }
            };
            let peer = peer_name.and_then(|n| match peers.get(&n) {
                Some(p) => Some(p.clone()),
                None if broken.contains(&n) => None,
                None => {
                    check.err(format!("{rp}.{peer_field}"), format!("no peer named `{n}`"));
                    None
                }
            });
            let target = route_target(
                &mut check,
                &rp,
                &rr,
                egress,
                peer.as_ref().map(|p| p.url.as_ref()),
            );
            let mut layers = Vec::new();
            for (i, l) in rr.envelope.iter().enumerate() {
                match Layer::parse(l) {
                    Some(layer) => layers.push(layer),
                    None => check.err(
                        format!("{rp}.envelope[{i}]"),
                        format!("`{l}` is not a layer (form, aes, token, bearer, jwt, passcode)"),
                    ),
                }
            }
            if let Some(p) = &peer {
                if layers.len() == rr.envelope.len() {
                    for problem in envelope::validate_stack(&layers, &p.keys) {
                        check.err(format!("{rp}.envelope"), problem);
                    }
                }
            }
            let ip_check = rr.ip_check.unwrap_or(!egress) && !egress;
            if let Some(p) = &peer {
                if ip_check && p.allow.is_none() {
                    check.err(
                        format!("{rp}.ip_check"),
                        format!(
                            "peer `{}` has no `allow` list; add one, or set `ip_check: false` on this route to accept any address",
                            p.name
                        ),
                    );
                }
            }
            let response = match rr.response {
                None => ResponseMode::Pass,
                Some(r) => match r.mode.as_str() {
                    "pass" if r.wrap.is_some() => {
                        check.err(format!("{rp}.response.wrap"), "wrap needs mode: seal");
                        ResponseMode::Pass
                    }
                    "pass" => ResponseMode::Pass,
                    "seal" => {
                        if let Some(w) = &r.wrap {
                            if w.contains_key("encData") {
                                check.err(
                                    format!("{rp}.response.wrap"),
                                    "encData is added by the sidecar; remove it",
                                );
                            }
                        }
                        ResponseMode::Seal { wrap: r.wrap }
                    }
                    other => {
                        check.err(
                            format!("{rp}.response.mode"),
                            format!("`{other}` is not pass or seal"),
                        );
                        ResponseMode::Pass
                    }
                },
            };
            let max_body = match rr.max_body.as_ref().map(parse_bytes).transpose() {
                Ok(v) => v.unwrap_or(limits.max_body),
                Err(e) => {
                    check.err(format!("{rp}.max_body"), e);
                    0
                }
            };
            let body_timeout = match rr.body_timeout.as_ref().map(parse_duration).transpose() {
                Ok(v) => v.unwrap_or(limits.body_read_timeout),
                Err(e) => {
                    check.err(format!("{rp}.body_timeout"), e);
                    Duration::ZERO
                }
            };
            let upstream_timeout =
                match rr.upstream_timeout.as_ref().map(parse_duration).transpose() {
                    Ok(v) => v.unwrap_or(limits.upstream_response_timeout),
                    Err(e) => {
                        check.err(format!("{rp}.upstream_timeout"), e);
                        Duration::ZERO
                    }
                };
            let rate = rate(&mut check, &format!("{rp}.rate"), rr.rate);
            let schema_api = match rr.schema.as_deref() {
                None => None,
                Some(name) => match Api::parse(name) {
                    Some(api) => Some(api),
                    None => {
                        check.err(
                            format!("{rp}.schema"),
                            format!("`{name}` is not one of api1, api2, api3, api4, api5a, api5b, api6, api7"),
                        );
                        None
                    }
                },
            };
            let schema_mode = match rr.schema_mode.as_deref() {
                None | Some("enforce") => SchemaMode::Enforce,
                Some("warn") => SchemaMode::Warn,
                Some(other) => {
                    check.err(
                        format!("{rp}.schema_mode"),
                        format!("`{other}` is not enforce or warn"),
                    );
                    SchemaMode::Enforce
                }
            };
            if rr.schema_mode.is_some() && schema_api.is_none() && rr.schema.is_none() {
                check.err(format!("{rp}.schema_mode"), "schema_mode needs a schema");
            }
            // Every ingress route is protected unless it says `fresh: off`: a JWT route by
            // the token's `iat`/`exp` (each token once), any other by its `ticketNo` (or an
            // API-2 record's `appSubTime`, whose ticket may be days older).
            let default_fresh = match schema_api {
                Some(Api::Api2) => Some(Duration::from_secs(24 * 3600)),
                _ => Some(DEFAULT_FRESH_WINDOW),
            };
            let fresh_on = if schema_api == Some(Api::Api2) {
                FreshOn::AppSubTime
            } else {
                FreshOn::Ticket
            };
            let fresh = match &rr.fresh {
                None => default_fresh.map(|max_age| Window {
                    max_age,
                    leeway: limits.clock_leeway,
                }),
                Some(RawDuration::Text(t)) if t.trim() == "off" => None,
                Some(d) => match parse_duration(d) {
                    Ok(max_age) if !max_age.is_zero() => Some(Window {
                        max_age,
                        leeway: limits.clock_leeway,
                    }),
                    Ok(_) => {
                        check.err(
                            format!("{rp}.fresh"),
                            "window must be longer than 0s (or `off`)",
                        );
                        None
                    }
                    Err(e) => {
                        check.err(format!("{rp}.fresh"), e);
                        None
                    }
                },
            };
            let replay = rr.replay.unwrap_or(fresh.is_some());
            if replay && fresh.is_none() {
                check.err(
                    format!("{rp}.replay"),
                    "replay protection needs a `fresh` window to bound it",
                );
            }
            let forward_headers = forward_headers(&mut check, &rp, rr.forward_headers.as_deref());
            let pass_query = rr.query == Some(RawQuery::Pass);
            // Freshness and replay judge what a peer sent; an egress route has no such input.
            let (fresh, replay) = if egress {
                (None, false)
            } else {
                (fresh, replay)
            };
            if let (Some(method), Some(peer), Some(target)) = (method, peer, target) {
                routes.push(Arc::new(Route {
                    path: rr.path,
                    method,
                    peer,
                    layers,
                    ip_check,
                    target,
                    response,
                    max_body,
                    body_timeout,
                    upstream_timeout,
                    rate,
                    fresh,
                    replay,
                    fresh_on,
                    schema: schema_api.map(|a| (a, schema_mode)),
                    forward_headers,
                    pass_query,
                }));
            }
        }
        let (ops, problems) =
            super::ops::listener(&lp, rl.tls, rl.trusted_proxies, rl.proxy_protocol, base);
        for (path, msg) in problems {
            check.err(path, msg);
        }
        // A certificate bound to a peer needs a listener that asks for certificates.
        if !ops.tls.as_ref().is_some_and(|t| t.client_ca.is_some()) {
            for r in routes.iter().filter(|r| !r.target.is_egress()) {
                if r.peer.client_cert.is_some() {
                    check.err(
                        format!("{lp}.tls.client_ca"),
                        format!(
                            "route {} is from peer `{}`, which binds a client certificate (tls_client): this listener must require client certificates",
                            r.path, r.peer.name
                        ),
                    );
                }
            }
        }
        if let Some(addr) = addr {
            listeners.push(ListenerSettings {
                name: rl.name,
                addr,
                routes,
                tls: ops.tls,
                trusted_proxies: ops.trusted_proxies,
                proxy_protocol: ops.proxy_protocol,
                callers: Arc::new(callers),
            });
        }
    }

    let (dns, problems) = super::ops::dns(raw.dns);
    for (path, msg) in problems {
        check.err(path, msg);
    }

    if check.errors.is_empty() {
        Ok(Settings {
            admin,
            admin_access,
            state_dir,
            journal_retention,
            redis,
            postgres,
            limits,
            peers,
            listeners,
            dns,
        })
    } else {
        Err(check.errors)
    }
}
