//! What operators see and do with the outbox: `bsk-sidecar outbox list|retry|drop`, and
//! the same on the admin listener (`GET /outbox`, `POST /outbox/ID/retry`,
//! `POST /outbox/ID/drop`) for a running sidecar, which holds the store's lock.
//!
//! Listings never show a push's body (it may hold a citizen's personal data): only its
//! id, peer, route, timing, attempts, errors and idempotency key.

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use super::outbox::{Push, StoreError};
use super::store::Outbox;
use crate::clock::Clock;
use crate::error::{error_body, json_response};

fn describe(p: &Push, state: &str, now: u64) -> Value {
    json!({
        "id": p.id,
        "state": state,
        "peer": p.peer,
        "route": p.route,
        "remote": p.remote,
        "age_secs": now.saturating_sub(p.created_ms) / 1000,
        "attempts": p.attempts,
        "next_attempt_in_secs": p.next_attempt_ms.saturating_sub(now) / 1000,
        "last_error": p.last_error,
        "dead_reason": p.dead_reason,
        // userid / ticketNo / applicationStatus: operator and ticket ids, no citizen data.
        "key": p.idem.as_ref().map(|k| k.split('\u{1f}').skip(1).collect::<Vec<_>>().join("/")),
    })
}

/// `{"queued":[…],"dead":[…]}` without bodies.
pub async fn list(store: &Outbox, clock: &Clock) -> Result<Value, StoreError> {
    let (queued, dead) = store.list().await?;
    let now = clock.unix_ms();
    Ok(json!({
        "queued": queued.iter().map(|p| describe(p, "queued", now)).collect::<Vec<_>>(),
        "dead": dead.iter().map(|p| describe(p, "dead", now)).collect::<Vec<_>>(),
    }))
}

/// A fixed-width table of [`list`]'s JSON, as `outbox list` prints it.
pub fn render(v: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>8}  {:<6}  {:<10}  {:<20}  {:>8}  {:>8}  {:>10}  {:<24}  LAST ERROR",
        "ID", "STATE", "PEER", "ROUTE", "ATTEMPTS", "AGE(s)", "NEXT IN(s)", "KEY"
    );
    let mut n = 0;
    for state in ["queued", "dead"] {
        for p in v[state].as_array().into_iter().flatten() {
            n += 1;
            let s = |k: &str| p[k].as_str().unwrap_or("-").to_string();
            let err = match p["dead_reason"].as_str() {
                Some(r) => format!("{r}: {}", s("last_error")),
                None => s("last_error"),
            };
            let _ = writeln!(
                out,
                "{:>8}  {:<6}  {:<10}  {:<20}  {:>8}  {:>8}  {:>10}  {:<24}  {err}",
                p["id"],
                state,
                s("peer"),
                s("route"),
                p["attempts"],
                p["age_secs"],
                p["next_attempt_in_secs"],
                s("key"),
            );
        }
    }
    let _ = writeln!(out, "{n} push(es)");
    out
}

/// Makes push `id` due now (a dead letter goes back to its queue) and wakes its peer's
/// delivery task. Returns its peer, or `None` when there is no such push.
pub async fn retry(store: &Outbox, id: u64, clock: &Clock) -> Result<Option<String>, StoreError> {
    let peer = store.retry(id, clock.unix_ms()).await?;
    if let Some(p) = &peer {
        store.waker(p).notify_one();
    }
    Ok(peer)
}

/// Deletes push `id`, queued or dead. Returns whether it existed.
pub async fn drop_push(store: &Outbox, id: u64) -> Result<bool, StoreError> {
    store.drop_push(id).await
}

fn not_found(what: &str) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::NOT_FOUND,
        error_body(StatusCode::NOT_FOUND, what, "not_found", ""),
    )
}

/// The admin listener's `/outbox` endpoints; `None` when `path` is not one of them.
pub async fn admin(
    store: Option<&Outbox>,
    method: &Method,
    path: &str,
    clock: &Clock,
) -> Option<Response<Full<Bytes>>> {
    let rest = path.strip_prefix("/outbox")?;
    let Some(store) = store else {
        return Some(not_found("no egress configured"));
    };
    let failed = |e: StoreError| {
        tracing::error!(error = %e, "outbox operation failed");
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            error_body(
                StatusCode::SERVICE_UNAVAILABLE,
                "outbox store unavailable",
                "store_unavailable",
                "",
            ),
        )
    };
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let resp = match (method, parts.as_slice()) {
        (&Method::GET, []) => match list(store, clock).await {
            Ok(v) => json_response(StatusCode::OK, Bytes::from(v.to_string())),
            Err(e) => failed(e),
        },
        (&Method::POST, [id, action @ ("retry" | "drop")]) => {
            let Ok(id) = id.parse::<u64>() else {
                return Some(not_found("no such push"));
            };
            let done = if *action == "retry" {
                retry(store, id, clock).await.map(|p| p.is_some())
            } else {
                drop_push(store, id).await
            };
            match done {
                Ok(true) => json_response(
                    StatusCode::OK,
                    Bytes::from(json!({"statusCode": 200, "id": id, "done": action}).to_string()),
                ),
                Ok(false) => not_found("no such push"),
                Err(e) => failed(e),
            }
        }
        _ => not_found("use GET /outbox, POST /outbox/ID/retry or POST /outbox/ID/drop"),
    };
    Some(resp)
}
