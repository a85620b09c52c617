//! Validated runtime settings: built once from [`super::raw`], every problem reported
//! with its field path. Code after start-up sees only these types.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Uri};

pub use crate::forward::Upstream;

use super::egress::{peer_tls, PeerTls, Target};
use super::raw::*;
use super::values::{
    parse_bytes, parse_duration, positive, rate, resolve, secret, secrets, socket_addr,
};
use super::Check;
use crate::envelope::{aes::AesKey, jwt::JwtKey, PeerKeys, Stack};
use crate::guard::admin_access::AdminAccess;
use crate::guard::bounds::JsonBounds;
use crate::guard::caller::Callers;
use crate::guard::client_cert::CertBinding;
use crate::guard::fresh::Window;
use crate::guard::ip::AllowList;
use crate::guard::rate::RateSpec;
use crate::guard::schema::{Api, Mode as SchemaMode};

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
    pub postgres: Option<super::PgSettings>,
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
    /// Connection worker threads; `None`: one per core. Read at start (a reload keeps the
    /// workers running).
    pub workers: Option<NonZeroUsize>,
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
            workers: None,
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
    /// The name as the application receives it in `X-BSK-Peer`, made once.
    pub header: http::HeaderValue,
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

impl Settings {
    /// The allowlisted DNS names, each once, in order.
    pub fn dns_names(&self) -> Vec<String> {
        let names: std::collections::BTreeSet<&String> = (self.peers.values())
            .filter_map(|p| p.allow.as_ref())
            .flat_map(|a| a.names())
            .collect();
        names.into_iter().cloned().collect()
    }
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
    /// The envelope, outermost first.
    pub layers: Stack,
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

/// `admin.listen`: an address, `off`, or 127.0.0.1:9901 when not written.
pub(super) fn admin_listen(check: &mut Check<'_>, raw: Option<&RawAdmin>) -> Option<SocketAddr> {
    match raw.and_then(|a| a.listen.as_deref()) {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
        Some("off") => None,
        Some(listen) => socket_addr(check, "admin.listen", listen),
    }
}

/// `admin.token`, `admin.metrics`, `admin.max_connections`.
pub(super) fn admin_access(
    check: &mut Check<'_>,
    raw: Option<&RawAdmin>,
    base: &Path,
) -> AdminAccess {
    let mut access = AdminAccess::default();
    let Some(raw) = raw else { return access };
    access.token = raw
        .token
        .as_ref()
        .and_then(|t| secret(check, "admin.token", t, base));
    if let Some(metrics) = raw
        .metrics
        .as_ref()
        .and_then(|m| check.known("admin.metrics", m))
    {
        access.metrics = metrics;
    }
    match raw.max_connections {
        None => {}
        Some(0) => check.err("admin.max_connections", "must be at least 1"),
        Some(n) => access.max_connections = n,
    }
    access
}

/// What the `state` block validates to.
pub(super) struct State {
    pub(super) dir: PathBuf,
    pub(super) journal_retention: Duration,
    pub(super) redis: Option<crate::fleet::RedisSettings>,
    pub(super) postgres: Option<super::PgSettings>,
}

/// `state`: where state lives, how long the journal keeps, what replicas share.
pub(super) fn state(check: &mut Check<'_>, raw: Option<RawState>, base: &Path) -> State {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    let journal_retention = match raw.as_ref().and_then(|s| s.journal_retention.as_ref()) {
        None => 90 * DAY,
        Some(d) => match check.ok("state.journal_retention", parse_duration(d)) {
            Some(d) if d >= DAY => d,
            Some(_) => {
                check.err("state.journal_retention", "must be at least 1d");
                Duration::ZERO
            }
            None => Duration::ZERO,
        },
    };
    let redis = raw
        .as_ref()
        .and_then(|s| s.backend.as_ref())
        .and_then(|b| backend(check, b, base));
    let postgres = raw
        .as_ref()
        .and_then(|s| s.backend.as_ref())
        .and_then(|b| postgres_backend(check, b, base));
    let dir = raw
        .map(|s| resolve(base, &s.dir))
        .unwrap_or_else(|| PathBuf::from("/var/lib/bsk-sidecar"));
    State {
        dir,
        journal_retention,
        redis,
        postgres,
    }
}

/// `state.backend`: `embedded`, or `{ redis: URL, ... }` (with or without `postgres`).
fn backend(
    check: &mut Check<'_>,
    raw: &RawBackend,
    base: &Path,
) -> Option<crate::fleet::RedisSettings> {
    use crate::fleet::{OnRedisDown, RedisSettings};
    let e = match raw {
        RawBackend::Named(OneOf::Known(RawBackendName::Embedded)) => return None,
        RawBackend::Named(OneOf::Unknown(msg)) => {
            check.err(
                "state.backend",
                format!(
                    "{msg}; for shared state write `{{ redis: URL }}` and/or `{{ postgres: URL }}`"
                ),
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
    let timeout = e
        .redis_timeout
        .as_ref()
        .and_then(|d| positive(check, "state.backend.redis_timeout".into(), d))
        .unwrap_or(Duration::from_millis(250));
    let on_down = match e
        .on_redis_down
        .as_ref()
        .and_then(|d| check.known("state.backend.on_redis_down", d))
    {
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
) -> Option<super::PgSettings> {
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
    let settings = super::PgSettings { url };
    if let Err(e) = settings.connect_config() {
        check.err("state.backend.postgres", e.to_string());
        return None;
    }
    Some(settings)
}

/// `limits`: the defaults with what the file writes, each value in range.
pub(super) fn limits(check: &mut Check<'_>, l: &RawLimits) -> Limits {
    let mut limits = Limits::default();
    limit_times_and_sizes(check, l, &mut limits);
    limit_counts(check, l, &mut limits);
    if let Some(j) = l.json {
        limits.json = json_bounds(check, j, limits.json);
    }
    if l.per_ip_rate.is_some() {
        limits.per_ip_rate = rate(check, "limits.per_ip_rate", l.per_ip_rate);
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
    match l.workers {
        Some(0) => check.err(
            "limits.workers",
            "must be at least 1 (leave it out for one per core)",
        ),
        Some(n) => limits.workers = NonZeroUsize::new(n),
        None => {}
    }
    if limits.max_header_bytes < 1024 {
        check.err("limits.max_header_bytes", "must be at least 1KiB");
    }
    limits
}

/// The `limits` written as durations and sizes.
fn limit_times_and_sizes(check: &mut Check<'_>, l: &RawLimits, limits: &mut Limits) {
    for (name, raw, slot) in [
        (
            "header_read_timeout",
            &l.header_read_timeout,
            &mut limits.header_read_timeout,
        ),
        (
            "keepalive_idle",
            &l.keepalive_idle,
            &mut limits.keepalive_idle,
        ),
        (
            "body_read_timeout",
            &l.body_read_timeout,
            &mut limits.body_read_timeout,
        ),
        (
            "upstream_connect_timeout",
            &l.upstream_connect_timeout,
            &mut limits.upstream_connect_timeout,
        ),
        (
            "upstream_response_timeout",
            &l.upstream_response_timeout,
            &mut limits.upstream_response_timeout,
        ),
        (
            "shutdown_grace",
            &l.shutdown_grace,
            &mut limits.shutdown_grace,
        ),
        ("clock_leeway", &l.clock_leeway, &mut limits.clock_leeway),
    ] {
        if let Some(d) = raw {
            if let Some(v) = check.ok(format!("limits.{name}"), parse_duration(d)) {
                *slot = v;
            }
        }
    }
    for (name, raw, slot) in [
        (
            "max_header_bytes",
            &l.max_header_bytes,
            &mut limits.max_header_bytes,
        ),
        ("max_body", &l.max_body, &mut limits.max_body),
        (
            "max_upstream_response",
            &l.max_upstream_response,
            &mut limits.max_upstream_response,
        ),
    ] {
        if let Some(b) = raw {
            if let Some(v) = check.ok(format!("limits.{name}"), parse_bytes(b)) {
                *slot = v;
            }
        }
    }
}

/// The `limits` written as counts and prefix lengths.
fn limit_counts(check: &mut Check<'_>, l: &RawLimits, limits: &mut Limits) {
    for (raw, slot) in [
        (l.max_connections, &mut limits.max_connections),
        (l.max_connections_per_ip, &mut limits.max_connections_per_ip),
        (l.max_in_flight, &mut limits.max_in_flight),
        (l.max_tracked_ips, &mut limits.max_tracked_ips),
        (l.max_replay_entries, &mut limits.max_replay_entries),
    ] {
        if let Some(n) = raw {
            *slot = n;
        }
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
}

/// `limits.json`: each bound at least 1.
fn json_bounds(check: &mut Check<'_>, j: RawJsonBounds, default: JsonBounds) -> JsonBounds {
    for (name, v) in [
        ("max_depth", j.max_depth),
        ("max_values", j.max_values),
        ("max_string", j.max_string),
    ] {
        if v == Some(0) {
            check.err(format!("limits.json.{name}"), "must be at least 1");
        }
    }
    JsonBounds {
        max_depth: j.max_depth.unwrap_or(default.max_depth),
        max_values: j.max_values.unwrap_or(default.max_values),
        max_string: j.max_string.unwrap_or(default.max_string),
    }
}

/// Every peer that validates, and the names of those that did not: routes naming a
/// broken peer are not reported again.
pub(super) fn peers(
    check: &mut Check<'_>,
    raw: BTreeMap<String, RawPeer>,
    base: &Path,
) -> (BTreeMap<String, Arc<Peer>>, HashSet<String>) {
    let mut peers = BTreeMap::new();
    let mut broken = HashSet::new();
    for (name, rp) in raw {
        match peer(check, &name, rp, base) {
            Some(p) => {
                peers.insert(name, Arc::new(p));
            }
            None => {
                broken.insert(name);
            }
        }
    }
    (peers, broken)
}

/// `peers.NAME`: `None` when any of its fields has a problem.
fn peer(check: &mut Check<'_>, name: &str, raw: RawPeer, base: &Path) -> Option<Peer> {
    let p = format!("peers.{name}");
    let before = check.count();
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
        .and_then(|d| positive(check, format!("{p}.jwt.sign_exp"), d));
    let max_token_lifetime = raw
        .jwt
        .as_ref()
        .and_then(|j| j.max_lifetime.as_ref())
        .and_then(|d| positive(check, format!("{p}.jwt.max_lifetime"), d))
        .unwrap_or(DEFAULT_TOKEN_LIFETIME);
    let (jwt, short_jwt_secret) = match raw.jwt {
        Some(j) => peer_jwt(check, &p, j, base),
        None => (None, false),
    };
    let aes = raw
        .aes
        .map(|a| aes_keys(check, &p, a, base))
        .unwrap_or_default();
    let allow = raw.allow.map(|entries| allow_list(check, &p, &entries));
    let rate = rate(check, &format!("{p}.rate"), raw.rate);
    let url = raw.url.and_then(|u| peer_url(check, &p, u));
    let tls = peer_tls(check, &p, raw.tls, base);
    let client_cert = raw.tls_client.map(|t| cert_binding(check, &p, t));
    let header = http::HeaderValue::from_str(name).ok();
    if header.is_none() {
        check.err(
            p.clone(),
            "the name is sent to the application in the X-BSK-Peer header, so it must not \
             hold a control character",
        );
    }
    if check.count() > before {
        return None;
    }
    Some(Peer {
        name: name.to_string(),
        header: header?,
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

/// `peers.NAME.jwt`: the key, and whether its secret is short by explicit permission.
fn peer_jwt(check: &mut Check<'_>, p: &str, j: RawJwt, base: &Path) -> (Option<JwtKey>, bool) {
    let jp = format!("{p}.jwt");
    let secret = secrets(check, &format!("{jp}.secret"), &j.secret, base, true);
    let mut short = false;
    if let Some(s) = secret.as_ref().filter(|s| s.shortest() < MIN_JWT_SECRET) {
        if j.allow_short_secret == Some(true) {
            short = true;
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
    let algorithms = algorithms(check, &jp, j.algorithms.as_deref());
    let leeway = match &j.leeway {
        None => Duration::from_secs(30),
        Some(d) => check
            .ok(format!("{jp}.leeway"), parse_duration(d))
            .unwrap_or(Duration::ZERO),
    };
    let key = secret.map(|secret| JwtKey {
        secret,
        algorithms,
        require_exp: j.require_exp.unwrap_or(true),
        leeway_secs: leeway.as_secs(),
    });
    (key, short)
}

/// `jwt.algorithms`: HS256 when not written; at least one.
fn algorithms(
    check: &mut Check<'_>,
    jp: &str,
    raw: Option<&[OneOf<RawAlgorithm>]>,
) -> Vec<jsonwebtoken::Algorithm> {
    let algorithms: Vec<jsonwebtoken::Algorithm> = match raw {
        None => vec![jsonwebtoken::Algorithm::HS256],
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, a)| check.known(format!("{jp}.algorithms[{i}]"), a))
            .map(RawAlgorithm::algorithm)
            .collect(),
    };
    if algorithms.is_empty() {
        check.err(
            format!("{jp}.algorithms"),
            "at least one algorithm is required",
        );
    }
    algorithms
}

/// `peers.NAME.aes.keys`: 32-character keys with 16-character IVs, current first.
fn aes_keys(check: &mut Check<'_>, p: &str, raw: RawAes, base: &Path) -> Vec<AesKey> {
    if raw.keys.is_empty() {
        check.err(format!("{p}.aes.keys"), "list at least one key");
    }
    let mut aes = Vec::new();
    for (i, k) in raw.keys.iter().enumerate() {
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
    aes
}

/// `peers.NAME.allow`: addresses, CIDR blocks and names the peer connects from.
fn allow_list(check: &mut Check<'_>, p: &str, entries: &[String]) -> AllowList {
    let mut list = AllowList::default();
    for (i, e) in entries.iter().enumerate() {
        if let Err(msg) = list.push_str(e) {
            check.err(format!("{p}.allow[{i}]"), msg);
        }
    }
    list
}

/// `peers.NAME.url`: the http(s) base URL egress sends to.
fn peer_url(check: &mut Check<'_>, p: &str, u: String) -> Option<Uri> {
    match u.parse::<Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some() =>
        {
            Some(uri)
        }
        _ => {
            check.err(format!("{p}.url"), format!("`{u}` is not an http(s) URL"));
            None
        }
    }
}

/// The freshness window of an ingress route that does not write one (API-2: 24h).
pub const DEFAULT_FRESH_WINDOW: Duration = Duration::from_secs(600);

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
