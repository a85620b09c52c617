//! `state.backend.postgres` as a plain value: the URL (a secret, since it may carry a
//! password) and how it reads — TLS (`sslmode=require`) unless it says `sslmode=disable`.
//! The pool, migrations and queries built from it live in `egress::pg`.

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::SslMode;

use crate::secret::Secret;

/// `state.backend.postgres` as validated. `Debug` hides the URL.
#[derive(Clone, Debug)]
pub struct PgSettings {
    pub url: Secret,
}

/// Why a `state.backend.postgres` URL is refused.
#[derive(Debug, thiserror::Error)]
pub enum PgUrlError {
    #[error(
        "not a PostgreSQL URL (postgres://user:password@host:port/database?sslmode=require): {0}"
    )]
    Url(#[source] tokio_postgres::Error),
    #[error(
        "sslmode={0} is not supported: write sslmode=require (TLS, the default) or sslmode=disable"
    )]
    SslMode(&'static str),
}

impl PgSettings {
    /// The connection settings the URL spells: TLS required unless it says
    /// `sslmode=disable`, a 3 s connect timeout unless it writes one.
    pub fn connect_config(&self) -> Result<tokio_postgres::Config, PgUrlError> {
        let text = String::from_utf8_lossy(self.url.expose());
        let mut config = tokio_postgres::Config::from_str(&text).map_err(PgUrlError::Url)?;
        match config.get_ssl_mode() {
            SslMode::Disable | SslMode::Require => {}
            SslMode::Prefer if text.contains("sslmode=prefer") => {
                return Err(PgUrlError::SslMode("prefer"))
            }
            // Absent: the safe default.
            SslMode::Prefer => {
                config.ssl_mode(SslMode::Require);
            }
            _ => return Err(PgUrlError::SslMode("(unknown)")),
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(3));
        }
        config.application_name("bsk-sidecar");
        Ok(config)
    }

    /// Whether the URL turns TLS off (a relaxation `check` lists).
    pub fn tls_disabled(&self) -> bool {
        self.connect_config()
            .is_ok_and(|c| c.get_ssl_mode() == SslMode::Disable)
    }
}
