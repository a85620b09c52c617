//! The YAML configuration as written: serde structs that reject unknown keys.
//!
//! Nothing here is trusted yet; [`super::settings`] validates it into runtime types.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `host:port`, or `off` to run without the admin listener.
    pub listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub dir: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub max_in_flight: Option<usize>,
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
    pub clock_leeway: Option<RawDuration>,
    pub max_replay_entries: Option<usize>,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPeer {
    pub agid: String,
    pub passcode: Option<RawSecret>,
    pub jwt: Option<RawJwt>,
    pub aes: Option<RawAes>,
    pub allow: Option<Vec<String>>,
    pub rate: Option<RawRate>,
    /// Base URL for egress to this peer.
    pub url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    pub secret: RawSecret,
    pub algorithms: Option<Vec<String>>,
    pub require_exp: Option<bool>,
    pub leeway: Option<RawDuration>,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path: String,
    pub method: Option<String>,
    pub from: String,
    pub envelope: Vec<String>,
    pub ip_check: Option<bool>,
    pub upstream: String,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResponse {
    /// `pass` (default): the application's answer unchanged; `seal`: sealed for the caller.
    pub mode: String,
    /// Extra JSON fields around `encData` when sealing, e.g. `{status: S, statusCode: 200}`.
    pub wrap: Option<serde_json::Map<String, serde_json::Value>>,
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
