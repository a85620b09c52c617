//! The PostgreSQL store's queue upkeep and operator calls: expiry, counts, `outbox
//! list|retry|drop`, the API-7 journal read, and pruning past the retention.

use super::{decode, encode, i, u, PgError, PgStore};
use crate::egress::entry::{PeerStats, Push};

impl PgStore {
    /// Moves every queued push of `peer` past its `max_age` to the dead-letter list,
    /// except one being sent right now (its worker dead-letters it itself).
    pub async fn expire(&self, peer: &str, now_ms: u64) -> Result<Vec<Push>, PgError> {
        self.timed("expire", async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let rows = tx
                .query(
                    "DELETE FROM bsk_outbox WHERE id IN (
                         SELECT id FROM bsk_outbox WHERE peer = $1 AND expires_ms <= $2
                         FOR UPDATE SKIP LOCKED)
                     RETURNING id, data",
                    &[&peer, &i(now_ms)],
                )
                .await?;
            let mut expired = Vec::with_capacity(rows.len());
            for r in &rows {
                let id: i64 = r.try_get(0)?;
                let mut p = decode(id, r.try_get(1)?)?;
                p.dead_reason = Some("max_age".into());
                tx.execute(
                    "INSERT INTO bsk_dead (id, peer, data) VALUES ($1, $2, $3)",
                    &[&id, &p.peer, &encode(&p)],
                )
                .await?;
                expired.push(p);
            }
            tx.commit().await?;
            expired.sort_by_key(|p| p.id);
            Ok(expired)
        })
        .await
    }

    /// Counts for one peer, fleet-wide.
    pub async fn stats(&self, peer: &str) -> Result<PeerStats, PgError> {
        self.timed("stats", async {
            let c = self.conn().await?;
            let q = c
                .query_one(
                    "SELECT count(*), min(queued_ms) FROM bsk_outbox WHERE peer = $1",
                    &[&peer],
                )
                .await?;
            let d = c
                .query_one("SELECT count(*) FROM bsk_dead WHERE peer = $1", &[&peer])
                .await?;
            Ok(PeerStats {
                queued: u(q.try_get(0)?),
                oldest_queued_ms: q.try_get::<_, Option<i64>>(1)?.map(u),
                dead: u(d.try_get(0)?),
            })
        })
        .await
    }

    /// Every queued push (per peer in delivery order), then every dead letter.
    pub async fn list(&self) -> Result<(Vec<Push>, Vec<Push>), PgError> {
        self.timed("list", async {
            let c = self.conn().await?;
            let mut out = (Vec::new(), Vec::new());
            for r in c
                .query("SELECT id, data FROM bsk_outbox ORDER BY peer, id", &[])
                .await?
            {
                out.0.push(decode(r.try_get(0)?, r.try_get(1)?)?);
            }
            for r in c
                .query("SELECT id, data FROM bsk_dead ORDER BY id", &[])
                .await?
            {
                out.1.push(decode(r.try_get(0)?, r.try_get(1)?)?);
            }
            Ok(out)
        })
        .await
    }

    /// Makes push `id` due now: a dead letter goes back to its queue with a fresh
    /// `max_age`; a queued one skips its backoff. Returns its peer, or `None`.
    pub async fn retry(&self, id: u64, now_ms: u64) -> Result<Option<String>, PgError> {
        self.timed("retry", async {
            let id = i(id);
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let dead = tx
                .query_opt("DELETE FROM bsk_dead WHERE id = $1 RETURNING data", &[&id])
                .await?;
            let peer = if let Some(r) = dead {
                let mut p = decode(id, r.try_get(0)?)?;
                p.dead_reason = None;
                p.queued_ms = now_ms;
                p.attempts = 0;
                p.next_attempt_ms = 0;
                let expires = i(now_ms.saturating_add(p.max_age_ms));
                tx.execute(
                    "INSERT INTO bsk_outbox (id, peer, queued_ms, expires_ms, data) VALUES ($1, $2, $3, $4, $5)",
                    &[&id, &p.peer, &i(now_ms), &expires, &encode(&p)],
                )
                .await?;
                Some(p.peer)
            } else if let Some(r) = tx
                .query_opt("SELECT data FROM bsk_outbox WHERE id = $1 FOR UPDATE", &[&id])
                .await?
            {
                let mut p = decode(id, r.try_get(0)?)?;
                p.next_attempt_ms = 0;
                tx.execute(
                    "UPDATE bsk_outbox SET data = $2 WHERE id = $1",
                    &[&id, &encode(&p)],
                )
                .await?;
                Some(p.peer)
            } else {
                None
            };
            tx.commit().await?;
            Ok(peer)
        })
        .await
    }

    /// Removes push `id` for good (queued or dead), with its journal record and its
    /// idempotency key. Returns whether it existed.
    pub async fn drop_push(&self, id: u64) -> Result<bool, PgError> {
        self.timed("drop", async {
            let id = i(id);
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let mut row = tx
                .query_opt("DELETE FROM bsk_dead WHERE id = $1 RETURNING data", &[&id])
                .await?;
            if row.is_none() {
                row = tx
                    .query_opt(
                        "DELETE FROM bsk_outbox WHERE id = $1 RETURNING data",
                        &[&id],
                    )
                    .await?;
            }
            let Some(r) = row else {
                return Ok(false);
            };
            let p = decode(id, r.try_get(0)?)?;
            if let Some(key) = &p.idem {
                tx.execute("DELETE FROM bsk_idempotency WHERE key = $1", &[key])
                    .await?;
            }
            if let Some(date) = &p.journal_date {
                tx.execute(
                    "DELETE FROM bsk_journal WHERE peer = $1 AND date = $2 AND id = $3",
                    &[&p.peer, date, &id],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    /// Journal records of `peer` dated `from..=to`, in date then arrival order, paged.
    pub async fn journal(
        &self,
        peer: &str,
        from: &str,
        to: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<String>, PgError> {
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.timed("journal", async {
            let c = self.conn().await?;
            let rows = c
                .query(
                    "SELECT record FROM bsk_journal WHERE peer = $1 AND date >= $2 AND date <= $3
                     ORDER BY date, id OFFSET $4 LIMIT $5",
                    &[&peer, &from, &to, &offset, &limit],
                )
                .await?;
            rows.iter()
                .map(|r| r.try_get::<_, String>(0).map_err(PgError::from))
                .collect()
        })
        .await
    }

    /// Forgets journal records dated before `oldest_date` and delivered idempotency keys
    /// recorded before `oldest_ms`. Returns how many journal records went.
    pub async fn prune(&self, oldest_date: &str, oldest_ms: u64) -> Result<u64, PgError> {
        self.timed("prune", async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let n = tx
                .execute("DELETE FROM bsk_journal WHERE date < $1", &[&oldest_date])
                .await?;
            tx.execute(
                "DELETE FROM bsk_idempotency WHERE delivered AND at_ms < $1",
                &[&i(oldest_ms)],
            )
            .await?;
            // Claims left by a replica that died mid-send (their lease long over).
            tx.execute(
                "DELETE FROM bsk_claims WHERE until_ms < $1",
                &[&i(oldest_ms)],
            )
            .await?;
            tx.commit().await?;
            Ok(n)
        })
        .await
    }
}
