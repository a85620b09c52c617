//! The outbox, dead letters, idempotency keys and API-7 journal on PostgreSQL
//! (`state.backend.postgres`), shared by every replica: a push accepted by one replica
//! that then dies is delivered by another, and API-7 on any replica answers from all.
//!
//! - Every call that changes state is one transaction; the `202` is sent after `COMMIT`.
//! - Idempotency is the primary key of `bsk_idempotency`: the second copy of a push,
//!   through any replica, finds the first's row and gets the first's answer.
//! - Delivery: a worker takes its peer's head row (the lowest id) with
//!   `SELECT … FOR UPDATE SKIP LOCKED` and holds that transaction open while it sends. A
//!   head locked by another replica is skipped *without* taking the next row, so a
//!   peer's pushes go out one at a time, oldest first, fleet-wide. A replica that dies
//!   mid-send loses its connection; PostgreSQL rolls back and the head is free again.
//! - Unreachable: calls fail within [`OP_TIMEOUT`] (egress answers 503
//!   `store_unavailable`); the pool reconnects by itself on the next call.
//!
//! Calls are timed in `bsk_sidecar_backend_duration_seconds{backend="postgres",op}` and
//! failures counted in `bsk_sidecar_backend_errors_total`.

pub mod schema;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio::sync::Notify;
use tokio_postgres::config::SslMode;

use super::entry::{Enqueued, JournalEntry, Push, Seen};
use crate::metrics::Metrics;
pub use schema::{PgError, PgSettings};

/// Longest one store call may take before it counts as a failure.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections per replica: one per peer held while sending, the rest for requests.
const POOL_SIZE: usize = 16;

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn encode(p: &Push) -> String {
    // A Push is plain data: serialising it cannot fail.
    serde_json::to_string(p).unwrap_or_default()
}

fn decode(id: i64, data: &str) -> Result<Push, PgError> {
    serde_json::from_str(data).map_err(|_| PgError::BadEntry(id))
}

/// The PostgreSQL store of one runtime.
pub struct PgStore {
    pool: Pool,
    settings: PgSettings,
    /// Set once the schema is known to be current (at start, or on the first connection).
    ready: AtomicBool,
    migrating: tokio::sync::Mutex<()>,
    metrics: OnceLock<Metrics>,
    wake: Mutex<HashMap<String, Arc<Notify>>>,
    sending: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A push being sent: its row stays locked (the transaction open) until the outcome is
/// written. Dropped without one, the connection is closed and PostgreSQL rolls back.
pub struct PgHead {
    conn: Option<Object>,
}

impl Drop for PgHead {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            drop(Object::take(c));
        }
    }
}

/// What the head of a peer's queue is.
#[allow(clippy::large_enum_variant)] // one per delivery step, moved, never stored
pub enum PgTaken {
    Empty,
    /// Another worker (any replica) is sending it.
    Busy,
    Head(Push, PgHead),
}

/// An idempotency key claimed by a send in this process and, for a synchronous send,
/// fleet-wide: a row in `bsk_claims` with a lease (the send's deadline), deleted again
/// when the claim is dropped. A replica that dies holding one leaves it to expire.
pub struct PgClaim {
    set: Arc<Mutex<HashSet<String>>>,
    key: String,
    /// The store and the lease's end, when claimed fleet-wide.
    lease: Option<(Arc<PgStore>, i64)>,
}

impl PgClaim {
    /// Deletes the fleet-wide claim now (a failure leaves it to its lease).
    pub async fn release(mut self) {
        if let Some((store, until)) = self.lease.take() {
            let _ = store.release_claim(&self.key, until).await;
        }
    }
}

impl Drop for PgClaim {
    fn drop(&mut self) {
        let mut s = self.set.lock().unwrap_or_else(|p| p.into_inner());
        s.remove(&self.key);
        let Some((store, until)) = self.lease.take() else {
            return;
        };
        let key = std::mem::take(&mut self.key);
        // Should this fail (or there be no runtime), the lease runs out by itself.
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                let _ = store.release_claim(&key, until).await;
            });
        }
    }
}

impl PgStore {
    /// Builds the pool and migrates (see [`schema::migrate_at_start`]).
    pub fn open(settings: &PgSettings) -> Result<PgStore, PgError> {
        let config = settings.connect_config()?;
        let mc = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = if config.get_ssl_mode() == SslMode::Disable {
            Manager::from_config(config, tokio_postgres::NoTls, mc)
        } else {
            Manager::from_config(config, schema::tls()?, mc)
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(OP_TIMEOUT))
            .create_timeout(Some(OP_TIMEOUT))
            .recycle_timeout(Some(OP_TIMEOUT))
            .build()?;
        schema::migrate_at_start(settings)?;
        Ok(PgStore {
            pool,
            settings: settings.clone(),
            ready: AtomicBool::new(true),
            migrating: tokio::sync::Mutex::new(()),
            metrics: OnceLock::new(),
            wake: Mutex::new(HashMap::new()),
            sending: Arc::new(Mutex::new(HashSet::new())),
        })
    }

    pub fn settings(&self) -> &PgSettings {
        &self.settings
    }

    /// Where call latency and failures are counted (set when delivery starts).
    pub fn set_metrics(&self, metrics: &Metrics) {
        let _ = self.metrics.set(metrics.clone());
    }

    pub fn waker(&self, peer: &str) -> Arc<Notify> {
        let mut w = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        w.entry(peer.to_string()).or_default().clone()
    }

    /// Claims `key` in this process and, with a `lease`, in every replica for that long
    /// at most (a synchronous send, which no row guards while it is under way). `None`:
    /// another request holds it.
    pub async fn claim(
        self: &Arc<Self>,
        key: &str,
        lease: Option<Duration>,
        now_ms: u64,
    ) -> Result<Option<PgClaim>, PgError> {
        let mut claim = {
            let mut s = self.sending.lock().unwrap_or_else(|p| p.into_inner());
            if !s.insert(key.to_string()) {
                return Ok(None);
            }
            PgClaim {
                set: self.sending.clone(),
                key: key.to_string(),
                lease: None,
            }
        };
        let Some(lease) = lease else {
            return Ok(Some(claim));
        };
        let now = i(now_ms);
        let until = now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        let got = self
            .timed("claim", async {
                let c = self.conn().await?;
                let row = c
                    .query_opt(
                        "INSERT INTO bsk_claims (key, until_ms) VALUES ($1, $2)
                         ON CONFLICT (key) DO UPDATE SET until_ms = EXCLUDED.until_ms
                         WHERE bsk_claims.until_ms < $3
                         RETURNING key",
                        &[&key, &until, &now],
                    )
                    .await?;
                Ok(row.is_some())
            })
            .await?;
        if !got {
            return Ok(None);
        }
        claim.lease = Some((self.clone(), until));
        Ok(Some(claim))
    }

    async fn release_claim(&self, key: &str, until: i64) -> Result<(), PgError> {
        self.timed("claim_release", async {
            let c = self.conn().await?;
            c.execute(
                "DELETE FROM bsk_claims WHERE key = $1 AND until_ms = $2",
                &[&key, &until],
            )
            .await?;
            Ok(())
        })
        .await
    }

    async fn conn(&self) -> Result<Object, PgError> {
        let mut c = self.pool.get().await?;
        if !self.ready.load(Ordering::Acquire) {
            let _one = self.migrating.lock().await;
            if !self.ready.load(Ordering::Acquire) {
                schema::migrate(&mut c).await?;
                self.ready.store(true, Ordering::Release);
            }
        }
        Ok(c)
    }

    /// Runs `f` with the deadline, recording latency and failures.
    async fn timed<T>(
        &self,
        op: &'static str,
        f: impl Future<Output = Result<T, PgError>>,
    ) -> Result<T, PgError> {
        let start = Instant::now();
        let result = match tokio::time::timeout(OP_TIMEOUT, f).await {
            Ok(r) => r,
            Err(_) => Err(PgError::Timeout(OP_TIMEOUT)),
        };
        if let Some(m) = self.metrics.get() {
            m.backend_seconds
                .with_label_values(&["postgres", op])
                .observe(start.elapsed().as_secs_f64());
            if result.is_err() {
                m.backend_errors.with_label_values(&["postgres", op]).inc();
            }
        }
        if let Err(e) = &result {
            tracing::warn!(op, error = %e, "PostgreSQL call failed");
            // A schema that changed under us (another replica migrated, or was rolled
            // back) is found again on the next connection.
            if matches!(e, PgError::SchemaTooNew { .. }) {
                self.ready.store(false, Ordering::Release);
            }
        }
        result
    }

    pub async fn seen(&self, key: &str) -> Result<Option<Seen>, PgError> {
        self.timed("seen", async {
            let c = self.conn().await?;
            let row = c
                .query_opt(
                    "SELECT id, delivered, at_ms FROM bsk_idempotency WHERE key = $1",
                    &[&key],
                )
                .await?;
            row.map(|r| seen_of(&r)).transpose()
        })
        .await
    }

    pub async fn has_queued(&self, peer: &str) -> Result<bool, PgError> {
        self.timed("has_queued", async {
            let c = self.conn().await?;
            let row = c
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM bsk_outbox WHERE peer = $1)",
                    &[&peer],
                )
                .await?;
            Ok(row.try_get(0)?)
        })
        .await
    }

    /// Writes `push` and its journal record in one transaction — unless its idempotency
    /// key is already there (queued or delivered, through any replica).
    pub async fn enqueue(
        &self,
        mut push: Push,
        journal: Option<JournalEntry>,
    ) -> Result<Enqueued, PgError> {
        self.timed("enqueue", async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let id: i64 = match &push.idem {
                Some(key) => {
                    let claimed = tx
                        .query_opt(
                            "INSERT INTO bsk_idempotency (key, id, delivered, at_ms)
                             VALUES ($1, nextval('bsk_push_id'), false, $2)
                             ON CONFLICT (key) DO NOTHING RETURNING id",
                            &[key, &i(push.created_ms)],
                        )
                        .await?;
                    match claimed {
                        Some(r) => r.try_get(0)?,
                        None => {
                            let r = tx
                                .query_one(
                                    "SELECT id, delivered, at_ms FROM bsk_idempotency WHERE key = $1",
                                    &[key],
                                )
                                .await?;
                            return Ok(Enqueued::Duplicate(seen_of(&r)?));
                        }
                    }
                }
                None => tx
                    .query_one("SELECT nextval('bsk_push_id')", &[])
                    .await?
                    .try_get(0)?,
            };
            push.id = u(id);
            if let Some(j) = &journal {
                tx.execute(
                    "INSERT INTO bsk_journal (peer, date, id, record) VALUES ($1, $2, $3, $4)",
                    &[&push.peer, &j.date, &id, &j.json],
                )
                .await?;
                push.journal_date = Some(j.date.clone());
            }
            let expires = i(push.queued_ms.saturating_add(push.max_age_ms));
            tx.execute(
                "INSERT INTO bsk_outbox (id, peer, queued_ms, expires_ms, data) VALUES ($1, $2, $3, $4, $5)",
                &[&id, &push.peer, &i(push.queued_ms), &expires, &encode(&push)],
            )
            .await?;
            tx.commit().await?;
            Ok(Enqueued::New(push.id))
        })
        .await
    }

    /// Records a push the peer accepted synchronously (key delivered, journal record).
    pub async fn record_delivered(
        &self,
        peer: &str,
        idem: Option<&str>,
        journal: Option<&JournalEntry>,
        now_ms: u64,
    ) -> Result<u64, PgError> {
        self.timed("record_delivered", async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let id: i64 = tx
                .query_one("SELECT nextval('bsk_push_id')", &[])
                .await?
                .try_get(0)?;
            if let Some(key) = idem {
                tx.execute(
                    "INSERT INTO bsk_idempotency (key, id, delivered, at_ms) VALUES ($1, $2, true, $3)
                     ON CONFLICT (key) DO UPDATE SET id = $2, delivered = true, at_ms = $3",
                    &[&key, &id, &i(now_ms)],
                )
                .await?;
            }
            if let Some(j) = journal {
                tx.execute(
                    "INSERT INTO bsk_journal (peer, date, id, record) VALUES ($1, $2, $3, $4)",
                    &[&peer, &j.date, &id, &j.json],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(u(id))
        })
        .await
    }

    /// Locks the head of `peer`'s queue for sending, unless another worker holds it.
    pub async fn take_head(&self, peer: &str) -> Result<PgTaken, PgError> {
        self.timed("take_head", async {
            let c = self.conn().await?;
            c.batch_execute("BEGIN").await?;
            let mut head = PgHead { conn: Some(c) };
            let Some(c) = head.conn.as_ref() else {
                return Ok(PgTaken::Empty);
            };
            let row = c
                .query_opt(
                    "SELECT id, data FROM bsk_outbox
                     WHERE id = (SELECT min(id) FROM bsk_outbox WHERE peer = $1)
                     FOR UPDATE SKIP LOCKED",
                    &[&peer],
                )
                .await?;
            if let Some(r) = row {
                let id: i64 = r.try_get(0)?;
                let push = decode(id, r.try_get(1)?)?;
                return Ok(PgTaken::Head(push, head));
            }
            let queued: bool = c
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM bsk_outbox WHERE peer = $1)",
                    &[&peer],
                )
                .await?
                .try_get(0)?;
            c.batch_execute("ROLLBACK").await?;
            drop(head.conn.take());
            Ok(if queued {
                PgTaken::Busy
            } else {
                PgTaken::Empty
            })
        })
        .await
    }

    /// Ends a head's transaction with `sql` (then `COMMIT`), or with `ROLLBACK`.
    async fn finish(
        &self,
        op: &'static str,
        mut head: PgHead,
        steps: Vec<(&'static str, Vec<Param>)>,
    ) -> Result<(), PgError> {
        self.timed(op, async {
            let Some(c) = head.conn.as_ref() else {
                return Ok(());
            };
            for (sql, params) in &steps {
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    params.iter().map(Param::as_sql).collect();
                c.execute(*sql, &refs).await?;
            }
            c.batch_execute(if steps.is_empty() {
                "ROLLBACK"
            } else {
                "COMMIT"
            })
            .await?;
            // Back to the pool, the transaction closed.
            drop(head.conn.take());
            Ok(())
        })
        .await
    }

    /// The peer accepted the head: it leaves the queue, its key is marked delivered.
    pub async fn delivered(&self, push: &Push, head: PgHead, now_ms: u64) -> Result<(), PgError> {
        let id = i(push.id);
        let mut steps = vec![("DELETE FROM bsk_outbox WHERE id = $1", vec![Param::I(id)])];
        if let Some(key) = &push.idem {
            steps.push((
                "UPDATE bsk_idempotency SET delivered = true, at_ms = $2 WHERE key = $1",
                vec![Param::S(key.clone()), Param::I(i(now_ms))],
            ));
        }
        self.finish("delivered", head, steps).await
    }

    /// A failed attempt: attempts, next try and last error are stored.
    pub async fn reschedule(&self, push: &Push, head: PgHead) -> Result<(), PgError> {
        let steps = vec![(
            "UPDATE bsk_outbox SET data = $2 WHERE id = $1",
            vec![Param::I(i(push.id)), Param::S(encode(push))],
        )];
        self.finish("reschedule", head, steps).await
    }

    /// The head goes to the dead-letter list with `reason`.
    pub async fn dead_letter(
        &self,
        push: &Push,
        head: PgHead,
        reason: &str,
    ) -> Result<(), PgError> {
        let mut dead = push.clone();
        dead.dead_reason = Some(reason.to_string());
        let id = i(push.id);
        let steps = vec![
            ("DELETE FROM bsk_outbox WHERE id = $1", vec![Param::I(id)]),
            (
                "INSERT INTO bsk_dead (id, peer, data) VALUES ($1, $2, $3)",
                vec![
                    Param::I(id),
                    Param::S(push.peer.clone()),
                    Param::S(encode(&dead)),
                ],
            ),
        ];
        self.finish("dead_letter", head, steps).await
    }

    /// Lets go of a head without changing it.
    pub async fn release(&self, head: PgHead) -> Result<(), PgError> {
        self.finish("release", head, Vec::new()).await
    }
}

/// A statement parameter of [`PgStore::finish`].
enum Param {
    I(i64),
    S(String),
}

impl Param {
    fn as_sql(&self) -> &(dyn tokio_postgres::types::ToSql + Sync) {
        match self {
            Param::I(v) => v,
            Param::S(v) => v,
        }
    }
}

fn seen_of(r: &tokio_postgres::Row) -> Result<Seen, PgError> {
    Ok(Seen {
        id: u(r.try_get(0)?),
        delivered: r.try_get(1)?,
        at_ms: u(r.try_get(2)?),
    })
}

mod admin;
