//! Validation of the operations blocks: a listener's `tls`, `trusted_proxies` and
//! `proxy_protocol`, the top-level `dns`, and `{ credential: NAME }` secrets.
//!
//! Each function returns what it built and records every problem in the config's `Check`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::raw::{RawDns, RawDuration, RawTls};
use super::values::{parse_duration, resolve};
use super::Check;
use crate::guard::dns::DnsSettings;
use crate::guard::ip::AllowList;
use crate::tls::TlsSettings;

/// What a listener's operations keys validate to.
#[derive(Debug, Default)]
pub struct ListenerOps {
    pub tls: Option<TlsSettings>,
    pub trusted_proxies: Option<AllowList>,
    pub proxy_protocol: bool,
}

fn duration_or(
    check: &mut Check<'_>,
    path: String,
    raw: Option<&RawDuration>,
    default: Duration,
) -> Duration {
    raw.and_then(|d| check.ok(path, parse_duration(d)))
        .unwrap_or(default)
}

/// `lp` is the listener's field path (`listeners[0]`); `base` resolves relative paths.
pub(super) fn listener(
    check: &mut Check<'_>,
    lp: &str,
    tls: Option<RawTls>,
    trusted_proxies: Option<Vec<String>>,
    proxy_protocol: Option<bool>,
    base: &Path,
) -> ListenerOps {
    let tls = tls.map(|t| listener_tls(check, &format!("{lp}.tls"), t, base));
    let trusted = trusted_proxies.map(|entries| proxies(check, lp, &entries));
    let proxy_protocol = proxy_protocol.unwrap_or(false);
    if proxy_protocol && trusted.is_none() {
        check.err(
            format!("{lp}.proxy_protocol"),
            "needs `trusted_proxies`: only those hops may send a PROXY header",
        );
    }
    ListenerOps {
        tls,
        trusted_proxies: trusted,
        proxy_protocol,
    }
}

/// A listener's `tls`, loaded once now so `check` and start-up report a bad certificate
/// by field. `tp` is its field path.
fn listener_tls(check: &mut Check<'_>, tp: &str, t: RawTls, base: &Path) -> TlsSettings {
    let handshake_timeout = duration_or(
        check,
        format!("{tp}.handshake_timeout"),
        t.handshake_timeout.as_ref(),
        Duration::from_secs(10),
    );
    if handshake_timeout.is_zero() {
        check.err(format!("{tp}.handshake_timeout"), "must be longer than 0s");
    }
    let watch = match &t.watch {
        Some(RawDuration::Text(s)) if s.trim() == "off" => None,
        other => Some(duration_or(
            check,
            format!("{tp}.watch"),
            other.as_ref(),
            Duration::from_secs(5),
        ))
        .filter(|d| !d.is_zero()),
    };
    let settings = TlsSettings {
        cert: resolve(base, &t.cert),
        key: resolve(base, &t.key),
        client_ca: t.client_ca.as_deref().map(|p| resolve(base, p)),
        handshake_timeout,
        watch,
    };
    if let Err(e) = crate::tls::load(&settings) {
        let field = match &e {
            crate::tls::TlsError::ClientCa { .. } => "client_ca",
            crate::tls::TlsError::Read { path, .. } | crate::tls::TlsError::Pem { path, .. }
                if Some(path) == settings.client_ca.as_ref() =>
            {
                "client_ca"
            }
            crate::tls::TlsError::Read { path, .. } | crate::tls::TlsError::Pem { path, .. }
                if *path == settings.key =>
            {
                "key"
            }
            _ => "cert",
        };
        check.err(format!("{tp}.{field}"), e.to_string());
    }
    settings
}

/// A listener's `trusted_proxies`: addresses and blocks, never names.
fn proxies(check: &mut Check<'_>, lp: &str, entries: &[String]) -> AllowList {
    let mut list = AllowList::default();
    for (i, e) in entries.iter().enumerate() {
        let path = format!("{lp}.trusted_proxies[{i}]");
        // Names are not accepted here: a proxy's address must not follow DNS.
        if crate::guard::dns::is_host_name(e.trim()) {
            check.err(
                path,
                format!("`{e}`: list proxies by address or CIDR block"),
            );
        } else if let Err(msg) = list.push_str(e) {
            check.err(path, msg);
        }
    }
    list
}

/// The top-level `dns:` block.
pub(super) fn dns(check: &mut Check<'_>, raw: Option<RawDns>) -> DnsSettings {
    let mut s = DnsSettings::default();
    let Some(raw) = raw else {
        return s;
    };
    for (i, server) in raw.servers.unwrap_or_default().iter().enumerate() {
        match server.parse::<SocketAddr>() {
            Ok(a) => s.servers.push(a),
            Err(_) => match server.parse::<std::net::IpAddr>() {
                Ok(ip) => s.servers.push(SocketAddr::new(ip, 53)),
                Err(_) => check.err(
                    format!("dns.servers[{i}]"),
                    format!("`{server}` is not an address like 192.0.2.53 or 127.0.0.1:5353"),
                ),
            },
        }
    }
    s.refresh = duration_or(check, "dns.refresh".into(), raw.refresh.as_ref(), s.refresh);
    s.timeout = duration_or(check, "dns.timeout".into(), raw.timeout.as_ref(), s.timeout);
    if s.refresh < Duration::from_secs(1) {
        check.err("dns.refresh", "must be at least 1s");
    }
    if s.timeout.is_zero() {
        check.err("dns.timeout", "must be longer than 0s");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::values::credential;

    /// The field paths of the problems recorded.
    fn paths(check: &Check<'_>) -> Vec<String> {
        check.errors.iter().map(|e| e.path.clone()).collect()
    }

    #[test]
    fn dns_block_defaults_ports_and_errors() {
        let mut check = Check::new("t.yaml");
        let d = dns(&mut check, None);
        assert_eq!(d, DnsSettings::default());
        assert_eq!(check.count(), 0);
        let raw = RawDns {
            servers: Some(vec![
                "192.0.2.53".into(),
                "127.0.0.1:5353".into(),
                "ns1".into(),
            ]),
            refresh: Some(RawDuration::Text("500ms".into())),
            timeout: Some(RawDuration::Text("soon".into())),
        };
        let d = dns(&mut check, Some(raw));
        assert_eq!(
            d.servers,
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "127.0.0.1:5353".parse().unwrap()
            ]
        );
        assert_eq!(
            paths(&check),
            ["dns.servers[2]", "dns.timeout", "dns.refresh"]
        );
    }

    #[test]
    fn credential_names_cannot_leave_the_directory() {
        for bad in ["", "..", ".", "../etc/shadow", "a/b"] {
            let e = credential(bad).unwrap_err();
            assert!(e.contains("is not a credential name"), "{bad}: {e}");
        }
    }

    #[test]
    fn tls_problems_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let raw = RawTls {
            cert: "missing.crt".into(),
            key: "missing.key".into(),
            client_ca: None,
            handshake_timeout: Some(RawDuration::Seconds(0)),
            watch: Some(RawDuration::Text("off".into())),
        };
        let mut check = Check::new("t.yaml");
        let ops = listener(
            &mut check,
            "listeners[0]",
            Some(raw),
            None,
            None,
            dir.path(),
        );
        let tls = ops.tls.unwrap();
        assert_eq!(tls.watch, None);
        assert_eq!(tls.cert, dir.path().join("missing.crt"));
        assert_eq!(
            paths(&check),
            [
                "listeners[0].tls.handshake_timeout",
                "listeners[0].tls.cert"
            ]
        );
    }
}
