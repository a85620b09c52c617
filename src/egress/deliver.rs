//! The outbox's delivery task, one per peer: sends the oldest queued push until the
//! peer answers 2xx, in order (a push never overtakes an older one for the same peer),
//! with exponential backoff and jitter between attempts, and moves a push to the
//! dead-letter list once it is older than its route's `max_age` or the peer refuses it
//! for good (a 4xx other than 401/403/408/425/429).
//!
//! Delivery is at least once: a push whose answer was lost (timeout, crash between the
//! peer's 2xx and the commit) is sent again. Peers de-duplicate on (`userid`,
//! `ticketNo`), which the spec makes unique.

use std::sync::Arc;
use std::time::Duration;

use super::client::PeerClients;
use super::exchange::{self, ExchangeError};
use super::journal;
use super::outbox::StoreError;
use super::store::{Head, Outbox, Taken};
use crate::clock::Clock;
use crate::config::Peer;
use crate::envelope::Layer;
use crate::guard::rate::Limiter;
use crate::metrics::Metrics;

/// Longest a task sleeps before looking at its queue again, whatever it expects.
const IDLE_CHECK: Duration = Duration::from_secs(30);

/// How soon to look again when another replica is sending the peer's head.
const BUSY_RETRY: Duration = Duration::from_millis(200);

/// Wait before attempt `attempts + 1`: `initial · 2^(attempts-1)` capped at `max`, of
/// which a random half is taken off ("equal jitter") so peers recovering from an outage
/// are not hit by every sidecar at the same instant. `random` is any u64.
pub fn backoff_delay(initial: Duration, max: Duration, attempts: u32, random: u64) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let base = initial.saturating_mul(1u32 << exp).min(max);
    let half = base / 2;
    let span = half.as_millis() as u64;
    let jitter = if span == 0 { 0 } else { random % (span + 1) };
    half + Duration::from_millis(jitter)
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::getrandom(&mut b);
    u64::from_le_bytes(b)
}

/// Delivers one peer's queue until aborted.
pub(crate) struct Worker {
    pub store: Outbox,
    pub clients: Arc<PeerClients>,
    pub peer: Arc<Peer>,
    pub limiter: Option<Arc<Limiter>>,
    pub metrics: Metrics,
    /// When the gauges were last read from the store (reading them scans the queue).
    pub gauges_at: Option<std::time::Instant>,
    /// When a push is due, expired, delivered.
    pub clock: Clock,
}

enum Next {
    /// Look at the queue again now.
    Again,
    /// Nothing due: wait for a new push or this long.
    Wait(Duration),
}

impl Worker {
    pub async fn run(mut self) {
        let wake = self.store.waker(&self.peer.name);
        loop {
            let next = match self.step().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(peer = %self.peer.name, error = %e, "outbox delivery failed; retrying");
                    Next::Wait(Duration::from_secs(1))
                }
            };
            if let Next::Wait(d) = next {
                let idle = self.store.idle_check(IDLE_CHECK);
                let _ = tokio::time::timeout(d.min(idle), wake.notified()).await;
            }
        }
    }

    /// Refreshes the peer's gauges from the store.
    async fn gauges(&self) {
        if let Ok(stats) = self.store.stats(&self.peer.name).await {
            let name = &self.peer.name;
            self.metrics
                .outbox_depth
                .with_label_values(&[name])
                .set(stats.queued as i64);
            self.metrics
                .outbox_dead_depth
                .with_label_values(&[name])
                .set(stats.dead as i64);
            let age = stats
                .oldest_queued_ms
                .map(|o| self.clock.unix_ms().saturating_sub(o) as f64 / 1000.0)
                .unwrap_or(0.0);
            self.metrics
                .outbox_oldest_age
                .with_label_values(&[name])
                .set(age);
        }
    }

    /// Dead-letters every push past its `max_age`, wherever it sits in the queue.
    async fn expire(&self) -> Result<(), StoreError> {
        let gone = self
            .store
            .expire(&self.peer.name, self.clock.unix_ms())
            .await?;
        for p in &gone {
            self.metrics
                .outbox_attempts
                .with_label_values(&[&self.peer.name, "dead"])
                .inc();
            self.metrics
                .outbox_dead_letters
                .with_label_values(&[&self.peer.name, "max_age"])
                .inc();
            tracing::warn!(peer = %self.peer.name, id = p.id, attempts = p.attempts, reason = "max_age", "push moved to the dead-letter list");
        }
        Ok(())
    }

    async fn dead(&self, head: Head, reason: &str) -> Result<(), StoreError> {
        let (id, attempts) = (head.push.id, head.push.attempts);
        self.store.dead_letter(head, reason).await?;
        self.metrics
            .outbox_attempts
            .with_label_values(&[&self.peer.name, "dead"])
            .inc();
        self.metrics
            .outbox_dead_letters
            .with_label_values(&[&self.peer.name, reason_label(reason)])
            .inc();
        tracing::warn!(peer = %self.peer.name, id, attempts, reason, "push moved to the dead-letter list");
        Ok(())
    }

    /// One turn of the peer's queue: take the head, and send it when it is due.
    async fn step(&mut self) -> Result<Next, StoreError> {
        // One sender per peer queue, even while an old runtime drains after a reload.
        let _held = self.store.delivery_guard(&self.peer.name).await;
        self.refresh_gauges().await?;
        let head = match self.store.take_head(&self.peer.name).await? {
            Taken::Head(h) => h,
            Taken::Busy => return Ok(Next::Wait(BUSY_RETRY)),
            Taken::Empty => {
                self.gauges().await;
                return Ok(Next::Wait(IDLE_CHECK));
            }
        };
        match self.due(head).await? {
            Due::Send(head, layers) => self.attempt(*head, &layers).await,
            Due::Not(next) => Ok(next),
        }
    }

    /// Expires old pushes and refreshes the queue gauges, at most once a second while
    /// draining a backlog (the count scans the queue).
    async fn refresh_gauges(&mut self) -> Result<(), StoreError> {
        let stale = match self.gauges_at {
            None => true,
            Some(t) => t.elapsed() >= Duration::from_secs(1),
        };
        if stale {
            self.expire().await?;
            self.gauges().await;
            self.gauges_at = Some(std::time::Instant::now());
        }
        Ok(())
    }

    /// Whether the head goes out now: not past its age, its retry time come, the peer's
    /// rate not spent, its layers readable. Otherwise it is released or dead-lettered.
    async fn due(&mut self, head: Head) -> Result<Due, StoreError> {
        let now = self.clock.unix_ms();
        let push = &head.push;
        if now >= push.queued_ms.saturating_add(push.max_age_ms) {
            self.dead(head, "max_age").await?;
            return Ok(Due::Not(Next::Again));
        }
        if push.next_attempt_ms > now {
            let wait = Duration::from_millis(push.next_attempt_ms - now);
            self.store.release(head).await?;
            return Ok(Due::Not(Next::Wait(wait)));
        }
        if let Some(l) = &self.limiter {
            if let Err(wait) = l.check() {
                self.store.release(head).await?;
                return Ok(Due::Not(Next::Wait(wait.max(Duration::from_millis(5)))));
            }
        }
        let layers: Option<Vec<Layer>> = push.layers.iter().map(|l| Layer::parse(l)).collect();
        match layers {
            Some(layers) => Ok(Due::Send(Box::new(head), layers)),
            None => {
                self.dead(head, "bad_layers").await?;
                Ok(Due::Not(Next::Again))
            }
        }
    }

    /// Sends the head once and files the outcome: delivered, dead-lettered (a refusal
    /// that no retry mends), or rescheduled with backoff.
    async fn attempt(&mut self, mut head: Head, layers: &[Layer]) -> Result<Next, StoreError> {
        let push = &mut head.push;
        let request_id = format!("outbox-{}-{}", push.id, push.attempts + 1);
        let sent = exchange::send(
            &self.clients,
            &self.peer,
            layers,
            &push.remote,
            push.body.as_bytes(),
            &request_id,
            Duration::from_millis(push.timeout_ms),
        )
        .await;
        let failure = match sent {
            Ok(resp) if resp.status().is_success() => {
                self.delivered(head, resp.status().as_u16()).await?;
                return Ok(Next::Again);
            }
            Ok(resp) if exchange::permanent(resp.status()) => {
                push.last_error = Some(format!("peer answered {}", resp.status().as_u16()));
                push.attempts += 1;
                self.dead(head, &format!("rejected_{}", resp.status().as_u16()))
                    .await?;
                return Ok(Next::Again);
            }
            Ok(resp) => format!("peer answered {}", resp.status().as_u16()),
            Err(e @ ExchangeError::Seal(_)) => {
                push.last_error = Some(e.to_string());
                self.dead(head, "seal_failed").await?;
                return Ok(Next::Again);
            }
            Err(e) => e.to_string(),
        };
        self.retry_later(head, failure).await
    }

    /// The peer took the push: it leaves the queue (and joins the journal).
    async fn delivered(&mut self, head: Head, status: u16) -> Result<(), StoreError> {
        let (id, attempts) = (head.push.id, head.push.attempts);
        self.store.delivered(head, self.clock.unix_ms()).await?;
        self.metrics
            .outbox_attempts
            .with_label_values(&[&self.peer.name, "delivered"])
            .inc();
        self.metrics
            .outbox_deliveries
            .with_label_values(&[&self.peer.name, "outbox"])
            .inc();
        tracing::info!(peer = %self.peer.name, id, attempts = attempts + 1, status, "queued push delivered");
        Ok(())
    }

    /// A failure worth retrying: the next attempt after a jittered, growing delay.
    async fn retry_later(&mut self, mut head: Head, failure: String) -> Result<Next, StoreError> {
        let push = &mut head.push;
        push.attempts += 1;
        let wait = backoff_delay(
            Duration::from_millis(push.backoff_initial_ms),
            Duration::from_millis(push.backoff_max_ms),
            push.attempts,
            random_u64(),
        );
        push.next_attempt_ms = self.clock.unix_ms() + wait.as_millis() as u64;
        tracing::info!(peer = %self.peer.name, id = push.id, attempts = push.attempts, retry_in_ms = wait.as_millis() as u64, error = %failure, "push not delivered; will retry");
        push.last_error = Some(failure);
        self.store.reschedule(head).await?;
        self.metrics
            .outbox_attempts
            .with_label_values(&[&self.peer.name, "retry"])
            .inc();
        Ok(Next::Wait(wait))
    }
}

/// What [`Worker::due`] decided about the head it was given.
enum Due {
    /// Boxed: a head holds a whole push (and, on PostgreSQL, its open transaction).
    Send(Box<Head>, Vec<Layer>),
    Not(Next),
}

/// Bounded label for a dead-letter reason.
fn reason_label(reason: &str) -> &'static str {
    match reason {
        "max_age" => "max_age",
        "bad_layers" | "seal_failed" => "seal_failed",
        _ => "rejected",
    }
}

/// Forgets journal records and delivered idempotency keys past the retention, hourly.
pub(crate) async fn prune_forever(store: Outbox, retention: Duration, clock: Clock) {
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    loop {
        every.tick().await;
        let now = clock.unix_ms();
        let oldest_ms = now.saturating_sub(retention.as_millis() as u64);
        let oldest_date = journal::ist_date(oldest_ms / 1000);
        match store.prune(&oldest_date, oldest_ms).await {
            Ok(n) if n > 0 => tracing::info!(removed = n, "journal records past retention removed"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning the journal failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let (i, m) = (Duration::from_millis(100), Duration::from_millis(1000));
        for (attempts, base) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let lo = backoff_delay(i, m, attempts, 0);
            let hi = backoff_delay(i, m, attempts, u64::MAX - 1);
            assert_eq!(lo, Duration::from_millis(base / 2), "attempt {attempts}");
            assert!(
                hi <= Duration::from_millis(base) && hi >= lo,
                "attempt {attempts}"
            );
        }
        assert_eq!(
            backoff_delay(Duration::ZERO, Duration::ZERO, 3, 7),
            Duration::ZERO
        );
    }

    #[test]
    fn only_hopeless_refusals_dead_letter_at_once() {
        use http::StatusCode;
        for s in [400, 404, 413, 422] {
            assert!(exchange::permanent(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 401, 403, 408, 429, 500, 502, 503] {
            assert!(
                !exchange::permanent(StatusCode::from_u16(s).unwrap()),
                "{s}"
            );
        }
    }
}
