//! The YAML configuration as written: serde structs that reject unknown keys.
//!
//! Nothing here is trusted yet; [`super::settings`] validates it into runtime types.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::de::{DeserializeOwned, Deserializer, Error as _, IntoDeserializer};
use serde::Deserialize;

use crate::envelope::Layer;
use crate::guard::admin_access::MetricsAccess;
use crate::guard::schema::{Api, Mode as SchemaMode};

/// A value of the closed set `T` (a serde enum), or serde's words for a spelling outside
/// it: "unknown variant `x`, expected one of `a`, `b`". An unknown spelling does not stop
/// the parse, so validation reports it at its field path together with every other problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OneOf<T> {
    Known(T),
    Unknown(String),
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for OneOf<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let written = String::deserialize(d)?;
        let parsed: Result<T, serde::de::value::Error> =
            T::deserialize(written.as_str().into_deserializer());
        Ok(match parsed {
            Ok(value) => OneOf::Known(value),
            Err(e) => OneOf::Unknown(e.to_string()),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub state: Option<RawState>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub peers: BTreeMap<String, RawPeer>,
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    /// How allowlisted DNS names are resolved.
    #[serde(default)]
    pub dns: Option<RawDns>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `host:port`, or `off` to run without the admin listener (default 127.0.0.1:9901).
    pub listen: Option<String>,
    /// Bearer token (or HTTP Basic password) for every admin endpoint but the health probes.
    pub token: Option<RawSecret>,
    /// `token` (default) or `open`: whether `/metrics` needs the token.
    pub metrics: Option<OneOf<MetricsAccess>>,
    /// Admin connections served at once (default 16).
    pub max_connections: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub dir: PathBuf,
    /// How long API-7 journal records (and push idempotency keys) are kept, e.g. `90d`.
    pub journal_retention: Option<RawDuration>,
    /// Where state shared by replicas lives: `embedded` (default) or engines.
    pub backend: Option<RawBackend>,
}

/// `embedded`, or the engines a fleet of replicas shares.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
#[allow(clippy::large_enum_variant)] // parsed once per load
pub enum RawBackend {
    Named(OneOf<RawBackendName>),
    Engines(RawEngines),
}

/// The backends written by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawBackendName {
    /// State in this process only (the default).
    Embedded,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEngines {
    /// `redis://` or `rediss://` URL (secret syntax: it may carry a password).
    pub redis: Option<RawSecret>,
    /// `postgres://` URL (secret syntax): outbox, dead letters, idempotency, API-7 journal.
    pub postgres: Option<RawSecret>,
    /// How many replicas share the limits (local fallback at rate / replicas).
    pub replicas: Option<u32>,
    /// Rate limits while Redis is unreachable: `local` (default), `open` or `closed`.
    pub on_redis_down: Option<OneOf<RawOnRedisDown>>,
    /// Deadline of one Redis call (default 250ms).
    pub redis_timeout: Option<RawDuration>,
    /// Prefix of every Redis key (default `bsk`).
    pub redis_prefix: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawOnRedisDown {
    Local,
    Open,
    Closed,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub max_in_flight: Option<usize>,
    /// Connection worker threads (default: one per core).
    pub workers: Option<usize>,
    pub header_read_timeout: Option<RawDuration>,
    pub max_header_bytes: Option<RawBytes>,
    pub keepalive_idle: Option<RawDuration>,
    pub body_read_timeout: Option<RawDuration>,
    pub max_body: Option<RawBytes>,
    pub upstream_connect_timeout: Option<RawDuration>,
    pub upstream_response_timeout: Option<RawDuration>,
    pub max_upstream_response: Option<RawBytes>,
    pub shutdown_grace: Option<RawDuration>,
    pub per_ip_rate: Option<RawRate>,
    pub max_tracked_ips: Option<usize>,
    /// Per-address buckets key IPv4 clients by this prefix length (default 32).
    pub per_ip_prefix_v4: Option<u8>,
    /// Per-address buckets key IPv6 clients by this prefix length (default 64: one
    /// customer's /64 cannot mint a fresh bucket per address).
    pub per_ip_prefix_v6: Option<u8>,
    pub clock_leeway: Option<RawDuration>,
    pub max_replay_entries: Option<usize>,
    pub json: Option<RawJsonBounds>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJsonBounds {
    pub max_depth: Option<usize>,
    pub max_values: Option<usize>,
    pub max_string: Option<usize>,
}

/// A secret: a literal string (tests and demos only), or where to read it from.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawSecret {
    Literal(String),
    From(RawSecretSource),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecretSource {
    pub env: Option<String>,
    pub file: Option<PathBuf>,
    /// A systemd credential: the file NAME in `$CREDENTIALS_DIRECTORY`.
    pub credential: Option<String>,
    /// Names a JWT secret (the JWS `kid` header); JWT secrets only.
    pub kid: Option<String>,
}

/// One secret, or several during a rotation (the first seals, all are accepted):
/// `passcode` and `jwt.secret`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawSecrets {
    One(RawSecret),
    Many(Vec<RawSecret>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPeer {
    pub agid: String,
    pub passcode: Option<RawSecrets>,
    pub jwt: Option<RawJwt>,
    pub aes: Option<RawAes>,
    pub allow: Option<Vec<String>>,
    pub rate: Option<RawRate>,
    /// Base URL for egress to this peer.
    pub url: Option<String>,
    /// Outbound TLS to `url`: private CA bundle, client certificate.
    pub tls: Option<RawPeerTls>,
    /// Ingress on an mTLS listener: the client certificate that is this peer's.
    pub tls_client: Option<RawTlsClient>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsClient {
    /// Subject CN or DNS SAN names, any of which the certificate must carry.
    pub names: Option<Vec<String>>,
    /// Base64 SHA-256 pins of the certificate's public key (SPKI), any of which must match.
    pub spki_sha256: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPeerTls {
    /// PEM CA bundle trusted for this peer instead of the system roots.
    pub ca: Option<PathBuf>,
    /// PEM certificate chain presented to the peer.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    pub secret: RawSecrets,
    pub algorithms: Option<Vec<OneOf<RawAlgorithm>>>,
    pub require_exp: Option<bool>,
    pub leeway: Option<RawDuration>,
    /// When sealing for this peer (egress), add `iat` and `exp` = now + this to the claims.
    pub sign_exp: Option<RawDuration>,
    /// The longest lifetime a token from this peer may claim: `exp` further ahead than
    /// this is refused (default 1h).
    pub max_lifetime: Option<RawDuration>,
    /// Accept a secret shorter than 32 bytes (a legacy counterparty); warned at start.
    pub allow_short_secret: Option<bool>,
}

/// The JWS algorithms a peer may use: HMAC only, never `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum RawAlgorithm {
    HS256,
    HS384,
    HS512,
}

impl RawAlgorithm {
    pub fn algorithm(self) -> jsonwebtoken::Algorithm {
        match self {
            RawAlgorithm::HS256 => jsonwebtoken::Algorithm::HS256,
            RawAlgorithm::HS384 => jsonwebtoken::Algorithm::HS384,
            RawAlgorithm::HS512 => jsonwebtoken::Algorithm::HS512,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAes {
    pub keys: Vec<RawAesKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAesKey {
    pub key: RawSecret,
    pub iv: RawSecret,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: String,
    pub listen: String,
    pub routes: Vec<RawRoute>,
    /// Serve HTTPS with this certificate (and optionally require client certificates).
    pub tls: Option<RawTls>,
    /// Load balancers whose `X-Forwarded-For` (or PROXY header) names the client.
    pub trusted_proxies: Option<Vec<String>>,
    /// Connections from `trusted_proxies` start with a PROXY protocol v1/v2 header.
    pub proxy_protocol: Option<bool>,
    /// Egress listeners: addresses (CIDR) the application may push from (default loopback).
    pub callers: Option<Vec<String>>,
    /// Egress listeners: a token the application must send as `X-Sidecar-Token`.
    pub caller_token: Option<RawSecret>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path: String,
    /// `POST` (default), `GET` or `PUT`, in any case.
    pub method: Option<OneOf<RawMethod>>,
    /// Ingress: the peer allowed to call this route.
    pub from: Option<String>,
    pub envelope: Vec<OneOf<Layer>>,
    pub ip_check: Option<bool>,
    /// Ingress: where the opened JSON goes.
    pub upstream: Option<String>,
    /// Ingress: answered by the sidecar itself instead of an upstream (`journal` = API-7).
    pub serve: Option<OneOf<RawServe>>,
    /// Egress: the peer the application's plain JSON is sealed for and sent to.
    pub to: Option<String>,
    /// Egress: path appended to the peer's `url`.
    pub remote: Option<String>,
    /// Egress: `direct` (default), `queued` or `fallback`.
    pub delivery: Option<OneOf<Delivery>>,
    /// Egress: a queued push older than this moves to the dead-letter list.
    pub max_age: Option<RawDuration>,
    /// Egress: backoff between delivery attempts of a queued push.
    pub retry: Option<RawRetry>,
    /// Egress: journal delivered/queued pushes for API-7 (default: on for queued/fallback).
    pub journal: Option<bool>,
    /// Egress: the peer's answer is `open`ed (must be sealed), `pass`ed, or `auto` (default).
    pub reply: Option<OneOf<Reply>>,
    pub response: Option<RawResponse>,
    pub max_body: Option<RawBytes>,
    pub body_timeout: Option<RawDuration>,
    pub upstream_timeout: Option<RawDuration>,
    pub rate: Option<RawRate>,
    /// Freshness window for `ticketNo` / JWT `iat`, e.g. `10m`; `off` to disable.
    pub fresh: Option<RawDuration>,
    /// Refuse a second request with the same (`userid`, `ticketNo`) or `jti` within the
    /// window. Defaults to on when `fresh` is set.
    pub replay: Option<bool>,
    /// `api1` … `api7`, `api5a`, `api5b`: check the payload against the spec's table.
    pub schema: Option<OneOf<Api>>,
    /// `enforce` (default) or `warn`.
    pub schema_mode: Option<OneOf<SchemaMode>>,
    /// Client headers forwarded to the application besides `Accept`, `Accept-Language` and
    /// `User-Agent`; every other client header is dropped.
    pub forward_headers: Option<Vec<String>>,
    /// The client's query string: `drop` (default) or `pass` to the application.
    pub query: Option<OneOf<RawQuery>>,
}

/// The request methods a route may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawMethod {
    Post,
    Get,
    Put,
}

impl RawMethod {
    const NAMES: &'static [&'static str] = &["POST", "GET", "PUT"];

    pub fn method(self) -> http::Method {
        match self {
            RawMethod::Post => http::Method::POST,
            RawMethod::Get => http::Method::GET,
            RawMethod::Put => http::Method::PUT,
        }
    }
}

/// Method names are case-insensitive (`post` is `POST`), which serde's derive cannot say.
impl<'de> Deserialize<'de> for RawMethod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let written = String::deserialize(d)?;
        match written.to_ascii_uppercase().as_str() {
            "POST" => Ok(RawMethod::Post),
            "GET" => Ok(RawMethod::Get),
            "PUT" => Ok(RawMethod::Put),
            _ => Err(D::Error::unknown_variant(&written, RawMethod::NAMES)),
        }
    }
}

/// What the sidecar answers itself instead of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawServe {
    /// API-7: the portal's pull of pushes from the egress journal.
    Journal,
}

/// What happens to a request's query string, which no envelope protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawQuery {
    Drop,
    Pass,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Wait after the first failed attempt (default 1s); doubles each time.
    pub initial: Option<RawDuration>,
    /// Longest wait between attempts (default 5m).
    pub max: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResponse {
    /// `pass` (default): the application's answer unchanged; `seal`: sealed for the caller.
    pub mode: OneOf<RawResponseMode>,
    /// Extra JSON fields around `encData` when sealing, e.g. `{status: S, statusCode: 200}`.
    pub wrap: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawResponseMode {
    Pass,
    Seal,
}

/// `30s`, `10m`, `1h 30m`, or a number of seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawDuration {
    Seconds(u64),
    Text(String),
}

/// `65536`, `64KiB`, `1MiB`, `1MB`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawBytes {
    Count(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle: when set, clients must present a certificate it issued (mTLS).
    pub client_ca: Option<PathBuf>,
    /// Default 10s.
    pub handshake_timeout: Option<RawDuration>,
    /// How often the files are checked for change (default 5s; `off` to rely on SIGHUP).
    pub watch: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    /// `host:port` of the servers to ask; default: the system's resolver.
    pub servers: Option<Vec<String>>,
    /// How often names are resolved again (default 60s).
    pub refresh: Option<RawDuration>,
    /// Per-query timeout (default 2s).
    pub timeout: Option<RawDuration>,
}

// Closed sets read straight into the types the rest of the sidecar uses.

/// How an egress route delivers (`delivery:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// Synchronous: the application gets the peer's answer, or a 502/504.
    Direct,
    /// Written durably first, `202` to the application, delivered in the background.
    Queued,
    /// Synchronous; queued (and `202`) when the peer is unreachable, slow or answers 5xx.
    Fallback,
}

impl Delivery {
    pub fn name(self) -> &'static str {
        match self {
            Delivery::Direct => "direct",
            Delivery::Queued => "queued",
            Delivery::Fallback => "fallback",
        }
    }
}

/// What to do with the peer's answer (`reply:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    /// The answer must open with the route's layers (502 otherwise).
    Open,
    /// The answer is returned unchanged.
    Pass,
    /// Opened when it is sealed, returned unchanged when it is plain JSON.
    Auto,
}

impl Reply {
    pub fn name(self) -> &'static str {
        match self {
            Reply::Open => "open",
            Reply::Pass => "pass",
            Reply::Auto => "auto",
        }
    }
}
