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
                    not_after = loaded.not_after.map(crate::calendar::rfc3339).as_deref().unwrap_or("unknown"),
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

/// The leaf certificate's `notAfter` as unix seconds. `None` if the certificate does not
/// parse.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(cert.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::days_until;
    use crate::clock::Clock;

    fn cert_expiring(y: i32, m: u8, d: u8) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(y, m, d);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn not_after_of_a_generated_certificate() {
        // 2031-05-17T00:00:00Z, written as UTCTime.
        assert_eq!(not_after(&cert_expiring(2031, 5, 17)), Some(1_936_742_400));
        // GeneralizedTime after 2049.
        assert_eq!(not_after(&cert_expiring(2051, 1, 2)), Some(2_556_230_400));
        assert_eq!(not_after(&CertificateDer::from(vec![0x30, 0x00])), None);
        assert_eq!(not_after(&CertificateDer::from(Vec::new())), None);
    }

    /// Days to expiry as `check --online` and `probe` report them, at chosen instants.
    #[test]
    fn days_to_expiry_at_chosen_instants() {
        let at = not_after(&cert_expiring(2031, 5, 17)).unwrap();
        let clock = Clock::manual(1_936_742_400_000 - 31 * 86_400_000);
        assert_eq!(days_until(clock.unix_secs_i64(), at), 31);
        clock.advance(std::time::Duration::from_secs(1));
        assert_eq!(days_until(clock.unix_secs_i64(), at), 30);
        clock.set_ms(1_936_742_399_999);
        assert_eq!(days_until(clock.unix_secs_i64(), at), 0, "the last second");
        clock.set_ms(1_936_742_400_000);
        assert_eq!(days_until(clock.unix_secs_i64(), at), 0);
        clock.advance(std::time::Duration::from_secs(1));
        assert_eq!(days_until(clock.unix_secs_i64(), at), -1, "expired");
        assert_eq!(crate::calendar::rfc3339(at), "2031-05-17T00:00:00Z");
    }
}
