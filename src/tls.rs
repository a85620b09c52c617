//! TLS for listeners: rustls with the ring provider, TLS 1.2 and 1.3 only, optional
//! client-certificate verification (mTLS), and certificate reload that keeps the last
//! good certificate.
//!
//! A listener's [`TlsState`] holds the current `ServerConfig` behind an `ArcSwap`: each
//! new connection takes the current one, a reload swaps it whole. A reload is attempted
//! on SIGHUP and when the certificate, key or CA files change (polled); a new
//! certificate that does not load — unreadable, not PEM, key not matching — is refused
//! with a log line and `bsk_sidecar_tls_reloads_total{outcome="error"}`, and the running
//! one stays.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::metrics::Metrics;

/// A listener's `tls:` block, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM bundle of CAs whose client certificates are accepted; `None`: no client
    /// certificate asked for.
    pub client_ca: Option<PathBuf>,
    /// The whole handshake must complete within this.
    pub handshake_timeout: Duration,
    /// How often the files are checked for change; `None` disables the check (SIGHUP
    /// still reloads).
    pub watch: Option<Duration>,
}

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// A file held no usable PEM block of the expected kind.
    #[error("{path}: {what}")]
    Pem { path: PathBuf, what: String },
    /// rustls refused the certificate, key or CA bundle (e.g. the key does not match).
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA bundle could not become a verifier.
    #[error("client_ca {path}: {what}")]
    ClientCa { path: PathBuf, what: String },
}

/// The crypto provider every TLS config uses: ring, TLS 1.2 and 1.3 only.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what: format!("not a PEM certificate file ({e})"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "no PEM certificate found".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: format!("no usable PEM private key ({e})"),
    })
}

/// A private key any local user can read is a finding, though not a reason to stop.
fn warn_if_readable_by_others(key: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = fs::metadata(key) {
        if m.permissions().mode() & 0o004 != 0 {
            tracing::warn!(
                key = %key.display(),
                "TLS private key is readable by every local user; chmod 0640 (group bsk-sidecar)"
            );
        }
    }
}

/// A ready server config and the leaf certificate's expiry (unix seconds).
pub struct Loaded {
    pub config: Arc<ServerConfig>,
    pub not_after: Option<i64>,
}

/// Builds the server config from the files: TLS 1.2/1.3, HTTP/1.1 ALPN, and client
/// certificates verified against `client_ca` when set.
pub fn load(s: &TlsSettings) -> Result<Loaded, TlsError> {
    let provider = provider();
    let certs = read_certs(&s.cert)?;
    let key = read_key(&s.key)?;
    let not_after = certs.first().and_then(not_after);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match &s.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs(ca)? {
                roots.add(c).map_err(|e| TlsError::ClientCa {
                    path: ca.clone(),
                    what: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: ca.clone(),
                    what: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    warn_if_readable_by_others(&s.key);
    // `with_single_cert` also checks that the key belongs to the certificate.
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Loaded {
        config: Arc::new(config),
        not_after,
    })
}

/// What identifies the files' current contents without reading them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp(Vec<Option<(SystemTime, u64)>>);

fn stamp(s: &TlsSettings) -> Stamp {
    let files = [Some(&s.cert), Some(&s.key), s.client_ca.as_ref()];
    Stamp(
        files
            .iter()
            .flatten()
            .map(|p| {
                fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
            })
            .collect(),
    )
}

/// One listener's TLS: the current config, swapped whole on a successful reload.
pub struct TlsState {
    listener: String,
    settings: TlsSettings,
    current: ArcSwap<ServerConfig>,
    stamp: Mutex<Stamp>,
    metrics: Metrics,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("listener", &self.listener)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl TlsState {
    /// Loads the files for listener `listener`; fails when they do not load.
    pub fn new(
        listener: &str,
        settings: TlsSettings,
        metrics: Metrics,
    ) -> Result<Arc<TlsState>, TlsError> {
        let st = stamp(&settings);
        let loaded = load(&settings)?;
        let state = TlsState {
            listener: listener.to_string(),
            settings,
            current: ArcSwap::new(loaded.config),
            stamp: Mutex::new(st),
            metrics,
        };
        state.record_expiry(loaded.not_after);
        // Both outcomes exist from the start, so `increase()` sees the first failure.
        for outcome in ["ok", "error"] {
            state
                .metrics
                .ops
                .tls_reloads
                .with_label_values(&[&state.listener, outcome]);
        }
        Ok(Arc::new(state))
    }

    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// An acceptor on the current certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    pub fn handshake_timeout(&self) -> Duration {
        self.settings.handshake_timeout
    }

    /// Reloads the files. On failure the running certificate stays; the reason is
    /// logged and counted. Returns whether a new certificate is in use.
    pub fn reload(&self, why: &str) -> bool {
        let st = stamp(&self.settings);
        let result = load(&self.settings);
        // Remember the stamp either way: a broken file is reported once, not every poll.
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = st;
        match result {
            Ok(loaded) => {
                self.current.store(loaded.config);
                self.record_expiry(loaded.not_after);
                self.count("ok");
                tracing::info!(
                    listener = %self.listener,
                    cert = %self.settings.cert.display(),
                    trigger = why,
                    not_after = loaded.not_after.map(format_unix).as_deref().unwrap_or("unknown"),
                    "TLS certificate loaded"
                );
                true
            }
            Err(e) => {
                self.count("error");
                tracing::error!(
                    listener = %self.listener,
                    cert = %self.settings.cert.display(),
                    trigger = why,
                    error = %e,
                    "TLS certificate reload failed; keeping the last good certificate"
                );
                false
            }
        }
    }

    /// Reloads when a file changed since the last load or attempt.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.settings);
        let changed = *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) != now;
        changed && self.reload("file changed")
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .ops
            .tls_reloads
            .with_label_values(&[&self.listener, outcome])
            .inc();
    }

    fn record_expiry(&self, not_after: Option<i64>) {
        if let Some(t) = not_after {
            self.metrics
                .ops
                .tls_cert_expiry
                .with_label_values(&[&self.listener])
                .set(t);
        }
    }
}

/// `2026-11-27T20:53:44Z` for a log line.
fn format_unix(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The leaf certificate's `notAfter` as unix seconds, read straight from the DER
/// (`Certificate → tbsCertificate → validity → notAfter`). `None` if it cannot be read.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (tag, cert_body, _) = der_tlv(cert.as_ref())?;
    if tag != 0x30 {
        return None;
    }
    let (tag, mut tbs, _) = der_tlv(cert_body)?;
    if tag != 0x30 {
        return None;
    }
    // [0] EXPLICIT version is optional.
    if tbs.first() == Some(&0xa0) {
        tbs = der_tlv(tbs)?.2;
    }
    // serialNumber, signature, issuer.
    for _ in 0..3 {
        tbs = der_tlv(tbs)?.2;
    }
    let (tag, validity, _) = der_tlv(tbs)?;
    if tag != 0x30 {
        return None;
    }
    let rest = der_tlv(validity)?.2;
    let (tag, time, _) = der_tlv(rest)?;
    parse_der_time(tag, time)
}

/// One DER tag-length-value: (tag, content, what follows).
fn der_tlv(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *buf.first()?;
    let first = *buf.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for b in buf.get(2..2 + n)? {
            len = (len << 8) | usize::from(*b);
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((tag, buf.get(header..end)?, buf.get(end..)?))
}

/// UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, 0x18).
fn parse_der_time(tag: u8, s: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(s).ok()?.strip_suffix('Z')?;
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (year, rest) = match tag {
        0x17 if s.len() == 12 => {
            let yy = num(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        0x18 if s.len() == 14 => (num(0..4)?, 4),
        _ => return None,
    };
    let month = num(rest..rest + 2)?;
    let day = num(rest + 2..rest + 4)?;
    let hour = num(rest + 4..rest + 6)?;
    let min = num(rest + 6..rest + 8)?;
    let sec = num(rest + 8..rest + 10)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_times_both_forms() {
        assert_eq!(parse_der_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(parse_der_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(
            parse_der_time(0x18, b"20260101000000Z"),
            Some(1_767_225_600)
        );
        assert_eq!(parse_der_time(0x18, b"2026010100000Z"), None);
        assert_eq!(parse_der_time(0x17, b"261301000000Z"), None);
    }

    #[test]
    fn civil_round_trip() {
        for days in [-1, 0, 59, 10_957, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(format_unix(1_767_225_600), "2026-01-01T00:00:00Z");
    }

    #[test]
    fn der_lengths_past_the_buffer_are_refused() {
        assert!(der_tlv(&[0x30, 0x05, 1, 2]).is_none());
        assert!(der_tlv(&[0x30, 0x85, 0, 0, 0, 0, 1]).is_none());
        assert_eq!(
            der_tlv(&[0x02, 0x01, 7, 9]),
            Some((0x02, &[7u8][..], &[9u8][..]))
        );
    }

    #[test]
    fn not_after_of_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            not_after(cert.der()),
            Some(days_from_civil(2031, 5, 17) * 86_400)
        );
        // GeneralizedTime after 2049.
        params.not_after = rcgen::date_time_ymd(2051, 1, 2);
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            not_after(cert.der()),
            Some(days_from_civil(2051, 1, 2) * 86_400)
        );
        assert_eq!(not_after(&CertificateDer::from(vec![0x30, 0x00])), None);
    }
}
