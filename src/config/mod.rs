//! Configuration: YAML on disk ([`raw`]) validated once into runtime [`settings`].
//!
//! ```no_run
//! let settings = bsk_sidecar::config::load(std::path::Path::new("config/department.yaml"))
//!     .unwrap_or_else(|errs| { for e in errs { eprintln!("{e}"); } std::process::exit(64) });
//! ```

pub mod egress;
pub mod ops;
mod postgres;
pub mod raw;
mod routes;
pub mod settings;
mod values;

use std::fmt;
use std::path::Path;

pub use egress::{Backoff, Delivery, Remote, Reply, Target};
pub use postgres::{PgSettings, PgUrlError};
pub use settings::{Limits, ListenerSettings, Peer, ResponseMode, Route, Settings, Upstream};

/// One problem in a config file, located by field path (and line when the parser knows it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: String,
    pub line: Option<usize>,
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.path.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.path, self.message)
        }
    }
}

/// Collects every problem in one config file with its field path: the one way
/// validation reports, so a sysadmin sees all mistakes at once.
struct Check<'a> {
    origin: &'a str,
    errors: Vec<ConfigError>,
}

impl<'a> Check<'a> {
    fn new(origin: &'a str) -> Self {
        Check {
            origin,
            errors: Vec::new(),
        }
    }

    /// Records a problem at a field path (`peers.bsk.aes.keys[0].key`; empty: the file).
    fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.err_at(None, path, msg);
    }

    fn err_at(&mut self, line: Option<usize>, path: impl Into<String>, msg: impl Into<String>) {
        self.errors.push(ConfigError {
            origin: self.origin.to_string(),
            line,
            path: path.into(),
            message: msg.into(),
        });
    }

    /// The value, or `None` with the error recorded at `path`.
    fn ok<T>(&mut self, path: impl Into<String>, r: Result<T, String>) -> Option<T> {
        r.map_err(|e| self.err(path, e)).ok()
    }

    /// The value of a closed set, or `None` with serde's words for the spelling recorded.
    fn known<T: Copy>(&mut self, path: impl Into<String>, v: &raw::OneOf<T>) -> Option<T> {
        match v {
            raw::OneOf::Known(v) => Some(*v),
            raw::OneOf::Unknown(msg) => {
                self.err(path, msg.clone());
                None
            }
        }
    }

    /// How many problems so far: a step compares before and after to see if it failed.
    fn count(&self) -> usize {
        self.errors.len()
    }

    /// `value` when nothing was recorded, else every problem.
    fn finish<T>(self, value: T) -> Result<T, Vec<ConfigError>> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(self.errors)
        }
    }
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Settings, Vec<ConfigError>> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        let mut check = Check::new(&origin);
        check.err("", format!("cannot read: {e}"));
        check.errors
    })?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    from_yaml(&text, &origin, base)
}

/// Validates YAML text; `origin` names it in messages, `base` resolves relative paths.
pub fn from_yaml(text: &str, origin: &str, base: &Path) -> Result<Settings, Vec<ConfigError>> {
    let de = serde_yaml::Deserializer::from_str(text);
    let raw: raw::RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let line = inner.location().map(|l| l.line());
        let mut message = inner.to_string();
        // serde_yaml appends "at line N column M"; the line is reported separately.
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        // ... and may prefix its own rendering of the path, which we also report.
        if let Some((prefix, rest)) = message.split_once(": ") {
            if path.starts_with(prefix) {
                message = rest.to_string();
            }
        }
        let mut check = Check::new(origin);
        check.err_at(
            line,
            if path == "." { String::new() } else { path },
            message,
        );
        check.errors
    })?;
    build(raw, origin, base)
}

impl Settings {
    /// A human summary of the effective routes, as `bsk-sidecar check` prints it.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let mut out = self.describe_admin();
        let _ = writeln!(out, "state    {}", self.state_dir.display());
        let workers = crate::workers::count(self.limits.workers);
        let _ = match self.limits.workers {
            Some(_) => writeln!(out, "workers  {workers} (limits.workers)"),
            None => writeln!(out, "workers  {workers} (one per core)"),
        };
        if let Some(r) = &self.redis {
            let _ = writeln!(
                out,
                "shared   redis (replay cache, peer and route limits) replicas={} on_redis_down={} timeout={}",
                r.replicas,
                r.on_down.name(),
                humantime::format_duration(r.timeout)
            );
        }
        if let Some(p) = &self.postgres {
            let tls = if p.tls_disabled() {
                "off (sslmode=disable)"
            } else {
                "require"
            };
            let _ = writeln!(
                out,
                "shared   postgres (outbox, dead letters, idempotency keys, API-7 journal) tls={tls}"
            );
        }
        if !self.dns_names().is_empty() {
            let _ = writeln!(out, "dns      {}", describe_dns(&self.dns));
        }
        for (name, p) in &self.peers {
            out.push_str(&describe_peer(name, p));
        }
        for l in &self.listeners {
            let accept = if l.accept_allowlist().is_some() {
                " (allowlist checked at accept)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "listener {} on {}{accept}{}",
                l.name,
                l.addr,
                describe_listener(l)
            );
            for r in &l.routes {
                let _ = writeln!(out, "  {}", describe_route(r));
            }
        }
        for w in self.relaxations() {
            let _ = writeln!(out, "warning  {w}");
        }
        out
    }

    /// The `admin` line of [`Settings::describe`].
    fn describe_admin(&self) -> String {
        let Some(a) = self.admin else {
            return "admin    off\n".to_string();
        };
        let access = &self.admin_access;
        let protection = if access.token.is_some() {
            "protected by admin.token"
        } else {
            "no admin.token: /outbox (and /metrics unless open) answer 403"
        };
        format!(
            "admin    http://{a} (/metrics /healthz /readyz /outbox) {protection}; metrics={} max_connections={}\n",
            access.metrics.name(),
            access.max_connections
        )
    }

    /// Every place this config runs with less than the safe default, in words: what
    /// `check` prints and `run` logs at start.
    pub fn relaxations(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self
            .redis
            .as_ref()
            .is_some_and(|r| r.on_down == crate::fleet::OnRedisDown::Open)
        {
            out.push(
                "state.backend: rate limits are off while Redis is unreachable (on_redis_down: open)"
                    .to_string(),
            );
        }
        if self.postgres.as_ref().is_some_and(PgSettings::tls_disabled) {
            out.push(
                "state.backend.postgres: traffic to PostgreSQL is not encrypted (sslmode=disable)"
                    .to_string(),
            );
        }
        for (name, p) in &self.peers {
            if p.short_jwt_secret {
                out.push(format!(
                    "peer {name}: JWT secret shorter than 32 bytes (jwt.allow_short_secret)"
                ));
            }
        }
        for l in &self.listeners {
            for r in &l.routes {
                if r.target.is_egress() {
                    continue;
                }
                let at = format!("listener {} route {}", l.name, r.path);
                if r.fresh.is_none() {
                    out.push(format!(
                        "{at}: no freshness or replay protection (fresh: off); a captured request can be replayed"
                    ));
                } else if !r.replay {
                    out.push(format!(
                        "{at}: no replay protection (replay: false); a captured request can be replayed within its window"
                    ));
                }
                if r.pass_query {
                    out.push(format!(
                        "{at}: the client's query string reaches the application (query: pass); no envelope protects it"
                    ));
                }
                if !r.forward_headers.is_empty() {
                    let names: Vec<&str> = r.forward_headers.iter().map(|h| h.as_str()).collect();
                    out.push(format!(
                        "{at}: forwards client headers {} (forward_headers); no envelope protects them",
                        names.join(", ")
                    ));
                }
            }
        }
        out
    }
}

/// Validates the raw config, one step per section. `origin` names the file in messages;
/// `base` resolves relative secret paths.
fn build(raw: raw::RawConfig, origin: &str, base: &Path) -> Result<Settings, Vec<ConfigError>> {
    let mut check = Check::new(origin);
    let admin = settings::admin_listen(&mut check, raw.admin.as_ref());
    let admin_access = settings::admin_access(&mut check, raw.admin.as_ref(), base);
    let state = settings::state(&mut check, raw.state, base);
    let limits = settings::limits(&mut check, &raw.limits);
    let (peers, broken) = settings::peers(&mut check, raw.peers, base);
    let listeners = routes::listeners(
        &mut check,
        raw.listeners,
        &routes::Known {
            peers: &peers,
            broken: &broken,
            limits: &limits,
            base,
        },
    );
    let dns = ops::dns(&mut check, raw.dns);
    check.finish(Settings {
        admin,
        admin_access,
        state_dir: state.dir,
        journal_retention: state.journal_retention,
        redis: state.redis,
        postgres: state.postgres,
        limits,
        peers,
        listeners,
        dns,
    })
}

/// ` tls (client certificates required) trusted_proxies=[…] proxy_protocol` for `check`.
fn describe_listener(l: &ListenerSettings) -> String {
    let mut out = String::new();
    if let Some(t) = &l.tls {
        out.push_str(&format!(" tls={}", t.cert.display()));
        if t.client_ca.is_some() {
            out.push_str(" (client certificates required)");
        }
    }
    if l.routes.iter().any(|r| r.target.is_egress()) {
        out.push_str(&format!(" callers={}", l.callers));
    }
    if let Some(p) = &l.trusted_proxies {
        out.push_str(&format!(" trusted_proxies={p}"));
        if l.proxy_protocol {
            out.push_str(" proxy_protocol");
        }
    }
    out
}

/// `system resolver, refresh 60s` or `servers [..], refresh 60s`.
fn describe_dns(d: &crate::guard::dns::DnsSettings) -> String {
    let servers = if d.servers.is_empty() {
        "system resolver".to_string()
    } else {
        let list: Vec<String> = d.servers.iter().map(|s| s.to_string()).collect();
        format!("servers [{}]", list.join(", "))
    };
    format!(
        "{servers}, refresh {}s, timeout {}ms",
        d.refresh.as_secs(),
        d.timeout.as_millis()
    )
}

#[cfg(test)]
mod tests;

/// The `peer` line(s) of [`Settings::describe`].
fn describe_peer(name: &str, p: &Peer) -> String {
    let allow = match &p.allow {
        Some(a) => a.to_string(),
        None => "(none)".into(),
    };
    let rate = p
        .rate
        .map(|r| r.to_string())
        .unwrap_or_else(|| "unlimited".into());
    let mut out = format!(
        "peer     {name}: agId={} aes_keys={} jwt={} passcode={} allow={allow} rate={rate}\n",
        p.keys.agid,
        p.keys.aes.len(),
        present(p.keys.jwt.as_ref().map(|j| &j.secret)),
        present(p.keys.passcode.as_ref()),
    );
    if let Some(b) = &p.client_cert {
        out.push_str(&format!(
            "         {name}: client certificate bound: names [{}], {} key pin(s)\n",
            b.names.join(", "),
            b.spki_sha256.len()
        ));
    }
    out
}

/// One route of [`Settings::describe`]: method, path, where it goes, its protection.
fn describe_route(r: &Route) -> String {
    let layers: Vec<&str> = r.layers.iter().map(|l| l.name()).collect();
    let response = match &r.response {
        ResponseMode::Pass => "pass",
        ResponseMode::Seal { wrap: None } => "seal",
        ResponseMode::Seal { wrap: Some(_) } => "seal+wrap",
    };
    let target = match &r.target {
        Target::Upstream(u) => format!(
            "from {} [{}] ip_check={} -> http://{}{} response={response}",
            r.peer.name,
            layers.join(","),
            r.ip_check,
            u.authority,
            u.path_and_query,
        ),
        Target::Journal => format!(
            "from {} [{}] ip_check={} -> API-7 from the journal response={response}",
            r.peer.name,
            layers.join(","),
            r.ip_check,
        ),
        Target::Remote(rm) => format!(
            "to {} [{}] -> {}{} delivery={} reply={} journal={}",
            r.peer.name,
            layers.join(","),
            r.peer
                .url
                .as_ref()
                .map(|u| u.to_string().trim_end_matches('/').to_string())
                .unwrap_or_default(),
            rm.path,
            rm.delivery.name(),
            rm.reply.name(),
            rm.journal,
        ),
    };
    let protection = match (&r.target, &r.fresh) {
        (Target::Remote(_), _) => String::new(),
        (_, None) => " fresh=OFF".to_string(),
        (_, Some(w)) => format!(
            " fresh={} replay={}",
            humantime::format_duration(w.max_age),
            if r.replay { "on" } else { "OFF" }
        ),
    };
    format!(
        "{} {} {target} max_body={}{protection}",
        r.method, r.path, r.max_body,
    )
}

/// `yes`, `no`, or during a rotation `yes (3 accepted, the first seals)`.
fn present(secret: Option<&crate::secret::Secret>) -> String {
    match secret.map(|s| s.accepted().count()) {
        None => "no".into(),
        Some(1) => "yes".into(),
        Some(n) => format!("yes ({n} accepted, the first seals)"),
    }
}
