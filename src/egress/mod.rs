//! Egress: the legacy application's own calls to a remote peer (API-2 pushes, API-6),
//! sealed by the sidecar, and the journal that answers the portal's API-7 pull.
//!
//! An egress route (`to: PEER`, `remote: /path`) takes plain JSON from the application on
//! loopback. After the pipeline's route, rate and body stages ([`crate::pipeline`]), a
//! push goes one of three ways (`delivery:`):
//!
//! - `direct`: sealed ([`exchange`]), sent over HTTPS ([`client`]), the peer's answer
//!   opened and returned (502 / 504 JSON when the peer cannot be reached);
//! - `queued`: written durably to the [`outbox`] first, `202 {"statusCode":202,
//!   "message":"Queued","id":"…"}`, then delivered in order with backoff ([`deliver`]);
//! - `fallback`: sent at once; queued with the same `202` when the peer is unreachable,
//!   slow or answers 5xx (or older pushes for it are still queued, which it must not
//!   overtake).
//!
//! A push carrying (`userid`, `ticketNo`, `applicationStatus`) is queued or delivered
//! once: a second copy is answered from the record of the first. Pushes queued or
//! delivered are journaled ([`journal`]: transactional fields only), and an ingress route
//! with `serve: journal` answers API-7 from it ([`serve_journal`]).
//!
//! Where that state lives is [`store::Outbox`]: the embedded [`outbox`] file by default,
//! or PostgreSQL ([`pg`], `state.backend.postgres`) shared by a fleet of replicas.

pub mod client;
pub mod deliver;
pub mod entry;
pub mod exchange;
pub mod journal;
pub mod ops;
pub mod outbox;
pub mod pg;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::config::{Delivery, Remote, Route, Settings, Target};
use crate::error::{json_response, tag_request_id, RateScope, Reject};
use crate::guard::rate::Limiter;
use crate::metrics::Metrics;
use client::{ClientError, PeerClients};
use exchange::ExchangeError;
use outbox::{Enqueued, JournalEntry, Push, Seen, Store, StoreError};
use store::Outbox;

/// Why egress could not be set up at start-up.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Egress state shared by every request of one runtime.
pub struct Egress {
    pub store: Outbox,
    pub clients: Arc<PeerClients>,
    /// Outbound rate limits (`peers.NAME.rate`), separate from the inbound buckets.
    limiters: HashMap<String, Arc<Limiter>>,
    retention: std::time::Duration,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Journal dates, outbox timestamps, what is sealed for a peer.
    pub clock: Clock,
}

impl Drop for Egress {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(|p| p.into_inner());
        for t in tasks.drain(..) {
            t.abort();
        }
    }
}

/// Runs `f` on the blocking pool: store calls wait on disk (`fsync`).
pub(crate) async fn blocking<T, F>(store: &Arc<Store>, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
{
    let s = store.clone();
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(StoreError::Task)?
}

impl Egress {
    /// Builds egress for `settings` when a route needs it: opens the outbox (a corrupt
    /// store is an error, never an empty start) and the peers' TLS clients.
    pub fn new(settings: &Settings, clock: Clock) -> Result<Option<Egress>, EgressError> {
        let needed = settings
            .listeners
            .iter()
            .flat_map(|l| &l.routes)
            .any(|r| matches!(r.target, Target::Remote(_) | Target::Journal));
        if !needed {
            return Ok(None);
        }
        let store = match &settings.postgres {
            Some(pg) => {
                Outbox::Postgres(Arc::new(pg::PgStore::open(pg).map_err(StoreError::from)?))
            }
            None => Outbox::Embedded(Store::open(&settings.state_dir)?),
        };
        let limits = &settings.limits;
        let mut clients = PeerClients::new(
            settings.peers.values(),
            limits.upstream_connect_timeout,
            limits.max_upstream_response,
        )?;
        clients.clock = clock.clone();
        let limiters = settings
            .peers
            .iter()
            .filter_map(|(n, p)| p.rate.map(|r| (n.clone(), Arc::new(Limiter::new(r)))))
            .collect();
        Ok(Some(Egress {
            store,
            clients: Arc::new(clients),
            limiters,
            retention: settings.journal_retention,
            tasks: Mutex::new(Vec::new()),
            clock,
        }))
    }

    /// Starts a delivery task for every peer with a `url`, and the journal's pruning.
    /// Stopped when this `Egress` is dropped.
    pub fn start(&self, settings: &Settings, metrics: &Metrics) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if !tasks.is_empty() {
            return;
        }
        if let Outbox::Postgres(p) = &self.store {
            p.set_metrics(metrics);
        }
        for peer in settings.peers.values().filter(|p| p.url.is_some()) {
            let worker = deliver::Worker {
                store: self.store.clone(),
                clients: self.clients.clone(),
                peer: peer.clone(),
                limiter: self.limiters.get(&peer.name).cloned(),
                metrics: metrics.clone(),
                gauges_at: None,
                clock: self.clock.clone(),
            };
            tasks.push(tokio::spawn(worker.run()));
        }
        tasks.push(tokio::spawn(deliver::prune_forever(
            self.store.clone(),
            self.retention,
            self.clock.clone(),
        )));
    }
}

/// What the pipeline's log line learns from an egress request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    /// The peer's HTTP status, when it answered.
    pub peer_status: Option<u16>,
}

fn answer(status: StatusCode, message: &str, id: u64, request_id: &str) -> Response<Full<Bytes>> {
    let body = format!(
        r#"{{"statusCode":{},"message":{},"id":"{id}"}}"#,
        status.as_u16(),
        serde_json::Value::from(message)
    );
    let mut r = json_response(status, Bytes::from(body));
    tag_request_id(r.headers_mut(), request_id);
    r
}

fn accepted(id: u64, request_id: &str) -> Response<Full<Bytes>> {
    answer(StatusCode::ACCEPTED, "Queued", id, request_id)
}

fn duplicate(seen: Seen, request_id: &str) -> Response<Full<Bytes>> {
    if seen.delivered {
        answer(StatusCode::OK, "Already delivered", seen.id, request_id)
    } else {
        accepted(seen.id, request_id)
    }
}

fn peer_reply(resp: Response<Bytes>, request_id: &str) -> Response<Full<Bytes>> {
    let (parts, body) = resp.into_parts();
    let mut out = Response::new(Full::new(body));
    *out.status_mut() = parts.status;
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
        out.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
    }
    tag_request_id(out.headers_mut(), request_id);
    out
}

fn store_failed(e: StoreError) -> Reject {
    tracing::error!(error = %e, "outbox write failed; push refused");
    Reject::StoreUnavailable
}

/// A push from the application on egress route `cfg`: `plain` is its JSON body.
pub async fn push(
    egress: &Egress,
    metrics: &Metrics,
    cfg: &Route,
    remote: &Remote,
    plain: Bytes,
    request_id: &str,
) -> Result<(Response<Full<Bytes>>, Outcome), Reject> {
    if serde_json::from_slice::<serde::de::IgnoredAny>(&plain).is_err() {
        return Err(Reject::NotJson);
    }
    let peer = &cfg.peer;
    let idem = match remote.delivery {
        Delivery::Direct => None,
        Delivery::Queued | Delivery::Fallback => journal::idempotency_key(&peer.name, &plain),
    };
    // A concurrent copy of the same push waits its turn instead of racing this one.
    let claim = match &idem {
        Some(k) => Some(
            egress
                .store
                .claim(k, fallback_lease(remote, cfg), egress.clock.unix_ms())
                .await
                .map_err(store_failed)?
                .ok_or(Reject::PushInProgress)?,
        ),
        None => None,
    };
    let push_ctx = PushCtx {
        egress,
        metrics,
        cfg,
        remote,
        plain: &plain,
        idem: idem.as_deref(),
        request_id,
    };
    let out = push_ctx.run().await;
    // Released before the answer: the application's next copy finds the outcome.
    if let Some(c) = claim {
        c.release().await;
    }
    out
}

impl PushCtx<'_> {
    /// Queues, sends, or (`fallback`) sends and queues on failure.
    async fn run(&self) -> Result<(Response<Full<Bytes>>, Outcome), Reject> {
        match self.remote.delivery {
            Delivery::Queued => Ok((self.enqueue(None).await?, Outcome::default())),
            Delivery::Direct => self.send_now().await,
            Delivery::Fallback => {
                if let Some(k) = self.idem {
                    let seen = self.egress.store.seen(k).await.map_err(store_failed)?;
                    if let Some(seen) = seen {
                        return Ok((duplicate(seen, self.request_id), Outcome::default()));
                    }
                }
                let behind = self
                    .egress
                    .store
                    .has_queued(&self.cfg.peer.name)
                    .await
                    .map_err(store_failed)?;
                if behind {
                    return Ok((
                        self.enqueue(Some("older pushes queued")).await?,
                        Outcome::default(),
                    ));
                }
                match self.send_now().await {
                    Ok((resp, outcome)) if !resp.status().is_server_error() => Ok((resp, outcome)),
                    Ok((resp, outcome)) => {
                        let why = format!("peer answered {}", resp.status().as_u16());
                        Ok((self.enqueue(Some(&why)).await?, outcome))
                    }
                    Err(
                        Reject::PeerUnavailable | Reject::PeerTimeout | Reject::RateLimited { .. },
                    ) => Ok((
                        self.enqueue(Some("peer unreachable")).await?,
                        Outcome::default(),
                    )),
                    Err(e) => Err(e),
                }
            }
        }
    }
}

/// How long a fallback push's claim holds fleet-wide: its send, then the writes after.
fn fallback_lease(remote: &Remote, cfg: &Route) -> Option<std::time::Duration> {
    (remote.delivery == Delivery::Fallback).then(|| cfg.upstream_timeout + pg::OP_TIMEOUT * 2)
}

struct PushCtx<'a> {
    egress: &'a Egress,
    metrics: &'a Metrics,
    cfg: &'a Route,
    remote: &'a Remote,
    plain: &'a Bytes,
    idem: Option<&'a str>,
    request_id: &'a str,
}

impl PushCtx<'_> {
    fn journal_entry(&self) -> Option<JournalEntry> {
        if !self.remote.journal {
            return None;
        }
        let rec = journal::extract(self.plain)?;
        let date = journal::filing_date(rec.date, &self.egress.clock);
        Some(JournalEntry {
            date,
            json: rec.json,
        })
    }

    /// Writes the push durably, then answers 202 (or the first copy's answer).
    async fn enqueue(&self, why: Option<&str>) -> Result<Response<Full<Bytes>>, Reject> {
        let now = self.egress.clock.unix_ms();
        let push = Push {
            id: 0,
            peer: self.cfg.peer.name.clone(),
            route: self.cfg.path.clone(),
            remote: self.remote.path.clone(),
            layers: self
                .cfg
                .layers
                .iter()
                .map(|l| l.name().to_string())
                .collect(),
            body: String::from_utf8_lossy(self.plain).into_owned(),
            created_ms: now,
            queued_ms: now,
            attempts: 0,
            next_attempt_ms: 0,
            last_error: why.map(str::to_string),
            max_age_ms: self.remote.max_age.as_millis() as u64,
            backoff_initial_ms: self.remote.backoff.initial.as_millis() as u64,
            backoff_max_ms: self.remote.backoff.max.as_millis() as u64,
            timeout_ms: self.cfg.upstream_timeout.as_millis() as u64,
            idem: self.idem.map(str::to_string),
            journal_date: None,
            dead_reason: None,
        };
        let journal = self.journal_entry();
        let done = self
            .egress
            .store
            .enqueue(push, journal)
            .await
            .map_err(store_failed)?;
        match done {
            Enqueued::New(id) => {
                let peer = &self.cfg.peer.name;
                self.metrics
                    .outbox_enqueued
                    .with_label_values(&[peer])
                    .inc();
                self.egress.store.waker(peer).notify_one();
                tracing::info!(request_id = self.request_id, peer = %peer, id, reason = why, "push queued");
                Ok(accepted(id, self.request_id))
            }
            Enqueued::Duplicate(seen) => Ok(duplicate(seen, self.request_id)),
        }
    }

    /// Seals, sends and opens the answer now.
    async fn send_now(&self) -> Result<(Response<Full<Bytes>>, Outcome), Reject> {
        let peer = &self.cfg.peer;
        if let Some(l) = self.egress.limiters.get(&peer.name) {
            l.check().map_err(|retry_after| Reject::RateLimited {
                scope: RateScope::Peer,
                retry_after,
            })?;
        }
        let sent = exchange::send(
            &self.egress.clients,
            peer,
            &self.cfg.layers,
            &self.remote.path,
            self.plain,
            self.request_id,
            self.cfg.upstream_timeout,
        )
        .await;
        let resp = sent.map_err(|e| {
            tracing::info!(request_id = self.request_id, peer = %peer.name, error = %e, "peer not reached");
            match e {
                ExchangeError::Seal(f) => {
                    tracing::error!(request_id = self.request_id, error = %f, "sealing the push failed");
                    Reject::Internal
                }
                ExchangeError::Send(client::SendError::Timeout) => Reject::PeerTimeout,
                ExchangeError::Send(_) => Reject::PeerUnavailable,
            }
        })?;
        let status = resp.status();
        let outcome = Outcome {
            peer_status: Some(status.as_u16()),
        };
        if status.is_success() {
            self.metrics
                .outbox_deliveries
                .with_label_values(&[&peer.name, self.remote.delivery.name()])
                .inc();
            let journal = self.journal_entry();
            if journal.is_some() || self.idem.is_some() {
                let written = self
                    .egress
                    .store
                    .record_delivered(&peer.name, self.idem, journal, self.egress.clock.unix_ms())
                    .await;
                // Delivered already: the application gets the peer's answer either way.
                if let Err(e) = written {
                    tracing::error!(request_id = self.request_id, error = %e, "recording a delivered push failed");
                }
            }
        }
        let opened = exchange::open_reply(&self.cfg.layers, peer, self.remote.reply, resp, &self.egress.clock)
            .map_err(|e| {
                tracing::warn!(request_id = self.request_id, peer = %peer.name, error = %e, "peer answer refused");
                Reject::PeerBadResponse
            })?;
        Ok((peer_reply(opened, self.request_id), outcome))
    }
}

/// API-7: the journal records of the route's peer for the asked dates, as the spec's
/// JSON array (the pipeline then answers it like an upstream's, sealed if configured).
pub async fn serve_journal(
    egress: &Egress,
    cfg: &Route,
    plain: &[u8],
) -> Result<Response<Bytes>, Reject> {
    let pull = journal::parse_pull(plain).map_err(Reject::BadRequest)?;
    let peer = journal_peer(cfg);
    let records = egress
        .store
        .journal(&peer, &pull.from, &pull.to, pull.offset, pull.limit)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "reading the journal failed");
            Reject::StoreUnavailable
        })?;
    let mut resp = Response::new(Bytes::from(journal::answer(&records)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Whose pushes an API-7 route serves: the pushes sent *to* the peer that asks.
fn journal_peer(cfg: &Route) -> String {
    cfg.peer.name.clone()
}

#[cfg(test)]
mod tests;
