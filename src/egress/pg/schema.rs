//! `state.backend.postgres`: the URL as validated, the TLS connector, and the tables the
//! sidecar creates and migrates itself.
//!
//! Migrations are numbered; each runs once, inside one transaction that first takes a
//! transaction-scoped advisory lock, so two replicas starting at once apply them one after
//! the other (the second finds them done). `bsk_schema_version` records which ran. A
//! database whose schema is newer than this binary knows is refused: an older binary
//! would write rows a newer one does not expect.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::config::SslMode;

pub use crate::config::PgSettings;

/// Why PostgreSQL could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(transparent)]
    Url(#[from] crate::config::PgUrlError),
    #[error("no CA certificates found on this system to verify PostgreSQL's TLS certificate")]
    NoRoots,
    #[error("TLS set-up: {0}")]
    Tls(#[from] rustls::Error),
    #[error("connection pool: {0}")]
    Build(#[from] deadpool_postgres::BuildError),
    #[error("PostgreSQL unreachable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("PostgreSQL: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the database's schema is version {found}, newer than this bsk-sidecar knows ({known}): run the newer bsk-sidecar, or point state.backend.postgres at another database")]
    SchemaTooNew { found: i32, known: i32 },
    #[error("PostgreSQL holds push {0} in a form this version cannot read")]
    BadEntry(i64),
    #[error("start-up check failed: {0}")]
    Startup(#[from] std::io::Error),
}

/// The migrations, oldest first: migration `n` is `MIGRATIONS[n - 1]`. Never edit one
/// that shipped; add the next.
const MIGRATIONS: &[&str] = &[
    // 1: the outbox (per-peer order is id order), dead letters, idempotency keys (one row
    // per key: the unique constraint makes a push through two replicas one push), journal.
    "CREATE SEQUENCE bsk_push_id;
     CREATE TABLE bsk_outbox (
         id BIGINT PRIMARY KEY,
         peer TEXT NOT NULL,
         queued_ms BIGINT NOT NULL,
         expires_ms BIGINT NOT NULL,
         data TEXT NOT NULL);
     CREATE INDEX bsk_outbox_peer_id ON bsk_outbox (peer, id);
     CREATE TABLE bsk_dead (
         id BIGINT PRIMARY KEY,
         peer TEXT NOT NULL,
         data TEXT NOT NULL);
     CREATE TABLE bsk_idempotency (
         key TEXT PRIMARY KEY,
         id BIGINT NOT NULL,
         delivered BOOLEAN NOT NULL,
         at_ms BIGINT NOT NULL);
     CREATE INDEX bsk_idempotency_delivered ON bsk_idempotency (at_ms) WHERE delivered;
     CREATE TABLE bsk_journal (
         peer TEXT NOT NULL,
         date TEXT NOT NULL,
         id BIGINT NOT NULL,
         record TEXT NOT NULL,
         PRIMARY KEY (peer, date, id));
     CREATE TABLE bsk_claims (
         key TEXT PRIMARY KEY,
         until_ms BIGINT NOT NULL);",
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Key of the advisory lock migrations hold (any constant; "bsk-sidecar" in ASCII).
const MIGRATION_LOCK: i64 = 0x6273_6b2d_7369_6463;

/// rustls with ring, TLS 1.3/1.2, the system's CAs; the server's name is verified.
pub fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, PgError> {
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) =
        roots.add_parsable_certificates(super::super::client::system_roots().iter().cloned());
    if added == 0 {
        return Err(PgError::NoRoots);
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Brings the schema up to [`SCHEMA_VERSION`]; returns the version found before.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<i32, PgError> {
    let tx = client.transaction().await?;
    tx.query_one("SELECT pg_advisory_xact_lock($1)::text", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS bsk_schema_version (
             version INT PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await?;
    let found: i32 = tx
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM bsk_schema_version",
            &[],
        )
        .await?
        .try_get(0)?;
    if found > SCHEMA_VERSION {
        return Err(PgError::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (n, sql) in (1..)
        .zip(MIGRATIONS.iter())
        .skip_while(|(n, _)| *n <= found)
    {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO bsk_schema_version (version) VALUES ($1)",
            &[&n],
        )
        .await?;
        tracing::info!(version = n, "PostgreSQL schema migrated");
    }
    tx.commit().await?;
    Ok(found)
}

/// One connection outside the pool (start-up, `check --online`), on the caller's runtime.
pub async fn connect(settings: &PgSettings) -> Result<tokio_postgres::Client, PgError> {
    let config = settings.connect_config()?;
    let (client, conn) = if config.get_ssl_mode() == SslMode::Disable {
        let (c, conn) = config.connect(tokio_postgres::NoTls).await?;
        (
            c,
            tokio::spawn(async move {
                conn.await.ok();
            }),
        )
    } else {
        let (c, conn) = config.connect(tls()?).await?;
        (
            c,
            tokio::spawn(async move {
                conn.await.ok();
            }),
        )
    };
    drop(conn);
    Ok(client)
}

/// `check --online`: connects and reports the schema version found (0: none yet).
pub async fn probe(settings: &PgSettings) -> Result<i32, PgError> {
    let client = connect(settings).await?;
    let exists: bool = client
        .query_one("SELECT to_regclass('bsk_schema_version') IS NOT NULL", &[])
        .await?
        .try_get(0)?;
    if !exists {
        return Ok(0);
    }
    Ok(client
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM bsk_schema_version",
            &[],
        )
        .await?
        .try_get(0)?)
}

/// At start: migrates on a runtime of its own (the caller may be sync or async), so a
/// newer schema refuses start-up. Unreachable is not fatal here: the store migrates on
/// its first connection, and egress answers 503 until then.
pub fn migrate_at_start(settings: &PgSettings) -> Result<(), PgError> {
    let settings = settings.clone();
    let run = move || -> Result<i32, PgError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let mut client = tokio::time::timeout(Duration::from_secs(5), connect(&settings))
                .await
                .map_err(|_| PgError::Timeout(Duration::from_secs(5)))??;
            migrate(&mut client).await
        })
    };
    let outcome = std::thread::scope(|s| s.spawn(run).join());
    match outcome {
        Ok(Ok(found)) => {
            tracing::info!(found, version = SCHEMA_VERSION, "PostgreSQL store ready");
            Ok(())
        }
        Ok(Err(e @ (PgError::SchemaTooNew { .. } | PgError::Url(_)))) => Err(e),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "PostgreSQL not reachable at start; egress answers 503 until it is");
            Ok(())
        }
        Err(_) => Err(PgError::Startup(std::io::Error::other(
            "the start-up migration thread failed",
        ))),
    }
}
