//! State a fleet of replicas shares on Redis: the replay cache and the per-peer and
//! per-route rate limits (`state.backend.redis`). The embedded default keeps both in the
//! process; this module is used only when a config names Redis.
//!
//! - **Replay**: `SET key 1 NX PX ttl`, key = route + peer + the request's fingerprint, so
//!   a body accepted by one replica is a replay on every other. Redis unreachable: replay
//!   protected routes **fail closed** (503 `replay_store_unavailable`) — accepting would
//!   reopen the replay window the route exists to close.
//! - **Rate limits**: GCRA in one Lua script per check (the theoretical arrival time kept
//!   in one key, Redis's own clock), so the budget is the fleet's, not each replica's.
//!   Redis unreachable: `on_redis_down: local` (default) falls back to local buckets at
//!   `rate / replicas`; `open` admits; `closed` answers 503 `rate_store_unavailable`.
//!   The per-address limit stays local: it protects each replica's own CPU, and making it
//!   fleet-wide would cost every forged request a Redis round trip.
//!
//! The connection is redis-rs's `ConnectionManager` (one multiplexed connection that
//! reconnects by itself); each call has a deadline (`timeout`, default 250ms), so a slow
//! Redis degrades to the outage behaviour instead of stalling requests. Recovery needs no
//! restart: the next call after Redis is back uses it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::guard::rate::RateSpec;
use crate::guard::replay::ReplayKey;
use crate::metrics::Metrics;
use crate::secret::Secret;

/// What to do with rate limits while Redis cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnRedisDown {
    /// Local buckets at `rate / replicas` (the default).
    Local,
    /// Admit every request (limits off until Redis is back).
    Open,
    /// Refuse with 503 until Redis is back.
    Closed,
}

impl OnRedisDown {
    pub fn name(self) -> &'static str {
        match self {
            OnRedisDown::Local => "local",
            OnRedisDown::Open => "open",
            OnRedisDown::Closed => "closed",
        }
    }
}

/// `state.backend.redis` as validated. `Debug` hides the URL (it may hold a password).
#[derive(Clone, Debug)]
pub struct RedisSettings {
    pub url: Secret,
    /// Replicas sharing the limits: the local fallback runs at `rate / replicas`.
    pub replicas: u32,
    pub on_down: OnRedisDown,
    /// Deadline for one Redis call.
    pub timeout: Duration,
    /// Prefix of every key, so several fleets can share one Redis.
    pub prefix: String,
}

/// Redis did not answer in time, refused the connection, or answered an error.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("redis failed within the last second; not asked again yet")]
    Down,
    #[error("redis did not answer within the deadline")]
    Timeout,
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// What a limit check decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// Refused; a token is available after this long.
    Wait(Duration),
}

/// The GCRA step: one key holds the theoretical arrival time (µs, Redis's clock).
/// ARGV[1]: emission interval in µs; ARGV[2]: burst. Returns 0 (admitted) or the µs to
/// wait.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - tolerance
if now < allow_at then
  return math.ceil(allow_at - now)
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 0
";

/// The shared state of one fleet. Cheap to clone behind an `Arc`; kept across reloads
/// while the settings stay the same.
pub struct Fleet {
    settings: RedisSettings,
    client: redis::Client,
    conn: ArcSwapOption<ConnectionManager>,
    connecting: tokio::sync::Mutex<()>,
    script: redis::Script,
    /// After a failure, calls fail at once until this instant (ms since `epoch`): an
    /// outage costs each request nothing, not a deadline each.
    down_until_ms: AtomicU64,
    epoch: Instant,
}

/// How long calls fail fast after one failed.
const BACKOFF: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Parses the URL; connects lazily on first use (and again after an outage).
    pub fn new(settings: RedisSettings) -> Result<Fleet, FleetError> {
        let url = String::from_utf8_lossy(settings.url.expose()).into_owned();
        let client = redis::Client::open(url)?;
        Ok(Fleet {
            settings,
            client,
            conn: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            script: redis::Script::new(GCRA),
            down_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// For `check --online`: connects (TLS as the URL says), sends `PING` and loads the
    /// rate-limit script (a Redis that refuses scripts cannot hold the limits). Returns
    /// the server's version.
    pub async fn probe(&self) -> Result<String, FleetError> {
        let mut conn = self.connection().await?;
        let deadline = self.settings.timeout;
        let answer = async {
            let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
            if pong != "PONG" {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::ResponseError,
                    "PING was not answered PONG",
                )));
            }
            let _sha: String = self.script.prepare_invoke().load_async(&mut conn).await?;
            let info: String = redis::cmd("INFO")
                .arg("server")
                .query_async(&mut conn)
                .await?;
            Ok(info
                .lines()
                .find_map(|l| l.strip_prefix("redis_version:"))
                .unwrap_or("unknown")
                .trim()
                .to_string())
        };
        tokio::time::timeout(deadline, answer)
            .await
            .map_err(|_| FleetError::Timeout)?
            .map_err(FleetError::from)
    }

    async fn connection(&self) -> Result<ConnectionManager, FleetError> {
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.settings.timeout)
            .set_response_timeout(self.settings.timeout)
            .set_number_of_retries(1);
        let c = tokio::time::timeout(
            self.settings.timeout,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| FleetError::Timeout)??;
        self.conn.store(Some(Arc::new(c.clone())));
        Ok(c)
    }

    /// Runs `op` with the deadline, recording latency and errors in `metrics`.
    async fn call<T, F, Fut>(
        &self,
        metrics: &Metrics,
        op: &'static str,
        f: F,
    ) -> Result<T, FleetError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        let start = Instant::now();
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        if now_ms < self.down_until_ms.load(Ordering::Relaxed) {
            metrics
                .backend_errors
                .with_label_values(&["redis", op])
                .inc();
            return Err(FleetError::Down);
        }
        let result = async {
            let conn = self.connection().await?;
            tokio::time::timeout(self.settings.timeout, f(conn))
                .await
                .map_err(|_| FleetError::Timeout)?
                .map_err(FleetError::from)
        }
        .await;
        metrics
            .backend_seconds
            .with_label_values(&["redis", op])
            .observe(start.elapsed().as_secs_f64());
        if let Err(e) = &result {
            let until = now_ms.saturating_add(u64::try_from(BACKOFF.as_millis()).unwrap_or(1000));
            self.down_until_ms.store(until, Ordering::Relaxed);
            metrics
                .backend_errors
                .with_label_values(&["redis", op])
                .inc();
            tracing::warn!(op, error = %e, "redis call failed");
        }
        result
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.settings.prefix)
    }

    /// Records `key` until `ttl` from now; `Ok(false)` when it was already there.
    pub async fn reserve(
        &self,
        metrics: &Metrics,
        key: ReplayKey,
        ttl: Duration,
    ) -> Result<bool, FleetError> {
        let k = self.key("replay", &key.to_hex());
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.call(metrics, "replay_reserve", |mut c| async move {
            let set: Option<String> = redis::cmd("SET")
                .arg(&k)
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(ms)
                .query_async(&mut c)
                .await?;
            Ok(set.is_some())
        })
        .await
    }

    /// Forgets `key` (a request that never reached the application).
    pub async fn forget(&self, metrics: &Metrics, key: ReplayKey) -> Result<(), FleetError> {
        let k = self.key("replay", &key.to_hex());
        self.call(metrics, "replay_forget", |mut c| async move {
            redis::cmd("DEL").arg(&k).query_async::<()>(&mut c).await
        })
        .await
    }

    /// One GCRA step on the fleet-wide bucket `name` with `spec`.
    pub async fn check_rate(
        &self,
        metrics: &Metrics,
        name: &str,
        spec: RateSpec,
    ) -> Result<Verdict, FleetError> {
        let k = self.key("rate", name);
        let interval_us = 1_000_000 / u64::from(spec.per_second.get()).max(1);
        let burst = spec.burst.get();
        let script = &self.script;
        let wait_us: u64 = self
            .call(metrics, "rate_check", |mut c| async move {
                script
                    .key(&k)
                    .arg(interval_us.max(1))
                    .arg(burst)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(if wait_us == 0 {
            Verdict::Admit
        } else {
            Verdict::Wait(Duration::from_micros(wait_us))
        })
    }
}

/// A replay record on Redis that is deleted again unless kept (see
/// [`crate::guard::replay::Reservation`] for the embedded one).
#[must_use = "dropping a reservation forgets the key"]
pub struct FleetReservation {
    fleet: Arc<Fleet>,
    metrics: Metrics,
    key: ReplayKey,
    kept: bool,
}

impl FleetReservation {
    pub fn new(fleet: Arc<Fleet>, metrics: Metrics, key: ReplayKey) -> Self {
        FleetReservation {
            fleet,
            metrics,
            key,
            kept: false,
        }
    }

    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for FleetReservation {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let (fleet, metrics, key) = (self.fleet.clone(), self.metrics.clone(), self.key);
        // Drop cannot wait: the delete runs beside the request. Should it fail, the key
        // expires with its window, which errs on the side of refusing.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = fleet.forget(&metrics, key).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_never_printed() {
        let f = Fleet::new(RedisSettings {
            url: Secret::new("redis://:hunter2@127.0.0.1:6379/0"),
            replicas: 2,
            on_down: OnRedisDown::Local,
            timeout: Duration::from_millis(250),
            prefix: "bsk".into(),
        })
        .unwrap();
        assert!(!format!("{f:?}").contains("hunter2"));
    }

    #[test]
    fn a_bad_url_is_an_error() {
        let bad = RedisSettings {
            url: Secret::new("http://not-redis"),
            replicas: 1,
            on_down: OnRedisDown::Closed,
            timeout: Duration::from_millis(250),
            prefix: "bsk".into(),
        };
        assert!(Fleet::new(bad).is_err());
    }
}
