//! Dead letters: listing them oldest first, replaying them as fresh
//! deliveries, purging them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::{Connection, PgConnection, Row};

use super::error::store_error;
use super::rows::{attempt_from, event_from, event_json, id_from, id_to, step_name};
use crate::backend::{
    DeadLetter, DeadLetterQuery, FailureKind, StoreError, DELIVERY_MARKER_RETENTION,
};
use crate::event::Payload;
use crate::time::Timestamp;

/// Lists dead letters oldest first (in the order they were dead-lettered),
/// filtered as `query` says, at most `limit`.
pub(super) async fn list(
    conn: &mut PgConnection,
    query: &DeadLetterQuery,
) -> Result<Vec<DeadLetter>, StoreError> {
    let limit = query.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
    let rows = sqlx::query(
        "SELECT id, step, delivery_group, attempts, first_attempt_at, failed_at, last_error, event, \
         kind FROM dead_letters \
         WHERE ($1::text IS NULL OR step = $1) AND ($2::text IS NULL OR tenant = $2) \
         AND ($4::text IS NULL OR kind = $4) AND ($5::bigint IS NULL OR failed_at >= $5) \
         AND ($6::bigint IS NULL OR failed_at < $6) AND ($7::bigint IS NULL OR id > $7) \
         ORDER BY id LIMIT $3",
    )
    .bind(query.step.as_ref().map(|s| s.as_str()))
    .bind(query.tenant.as_ref().map(|t| t.as_str()))
    .bind(limit)
    .bind(query.kind.map(FailureKind::as_str))
    .bind(query.since.map(Timestamp::as_millis))
    .bind(query.until.map(Timestamp::as_millis))
    .bind(query.after.map(id_to))
    .fetch_all(&mut *conn)
    .await
    .map_err(store_error)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row.try_get(0).map_err(store_error)?;
        let step: String = row.try_get(1).map_err(store_error)?;
        let group: Option<String> = row.try_get(2).map_err(store_error)?;
        let attempts: i32 = row.try_get(3).map_err(store_error)?;
        let first: i64 = row.try_get(4).map_err(store_error)?;
        let failed: i64 = row.try_get(5).map_err(store_error)?;
        let last_error: String = row.try_get(6).map_err(store_error)?;
        let event: String = row.try_get(7).map_err(store_error)?;
        let kind: String = row.try_get(8).map_err(store_error)?;
        out.push(
            DeadLetter::new(
                id_from(id)?,
                step_name(&step)?,
                event_from(&event)?,
                group.map(std::sync::Arc::from),
                attempt_from(attempts)?,
                Timestamp::from_millis(first),
                Timestamp::from_millis(failed),
                last_error,
            )
            .with_kind(FailureKind::from_stored(&kind)),
        );
    }
    Ok(out)
}

/// Replaces the payload of dead letter `id`'s event; false if there is no
/// such dead letter.
pub(super) async fn amend(
    conn: &mut PgConnection,
    id: u64,
    payload: Payload,
) -> Result<bool, StoreError> {
    let mut tx = conn.begin().await.map_err(store_error)?;
    let stored: Option<String> =
        sqlx::query_scalar("SELECT event FROM dead_letters WHERE id = $1 FOR UPDATE")
            .bind(id_to(id))
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
    let Some(stored) = stored else {
        return Ok(false);
    };
    let mut event = Arc::unwrap_or_clone(event_from(&stored)?);
    event.payload = payload;
    sqlx::query("UPDATE dead_letters SET event = $2 WHERE id = $1")
        .bind(id_to(id))
        .bind(event_json(&event)?)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    tx.commit().await.map_err(store_error)?;
    Ok(true)
}

/// Moves dead letters back into the queue as fresh deliveries due at `now`, in
/// dead-letter order; unknown ids are skipped. Returns how many moved.
pub(super) async fn replay(
    conn: &mut PgConnection,
    ids: &[u64],
    now: Timestamp,
) -> Result<usize, StoreError> {
    let ids: Vec<i64> = ids.iter().map(|id| id_to(*id)).collect();
    let done = sqlx::query(
        "WITH gone AS (DELETE FROM dead_letters WHERE id = ANY($1) RETURNING *) \
         INSERT INTO deliveries (step, tenant, delivery_group, due_at, available_at, event, priority) \
         SELECT step, tenant, delivery_group, $2, $2, event, priority FROM gone ORDER BY id",
    )
    .bind(ids)
    .bind(now.as_millis())
    .execute(&mut *conn)
    .await
    .map_err(store_error)?;
    Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
}

/// How often (in engine time) dead letters past their retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Dead letters' retention, and when this backend last pruned.
#[derive(Debug)]
pub(super) struct Pruning {
    keep: Option<Duration>,
    last: Mutex<Option<Timestamp>>,
}

impl Pruning {
    pub(super) fn new(keep: Option<Duration>) -> Self {
        Pruning {
            keep,
            last: Mutex::new(None),
        }
    }

    /// Deletes the dead letters that failed more than the retention before
    /// `now` (the engine's time, from a claim), and broker delivery markers
    /// older than `DELIVERY_MARKER_RETENTION`, at most once a minute. Engines
    /// sharing the schema each prune; the deletes are idempotent.
    pub(super) async fn maybe_prune(
        &self,
        conn: &mut PgConnection,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| now < at + PRUNE_EVERY) {
                return Ok(());
            }
            *last = Some(now);
        }
        sqlx::query("DELETE FROM delivery_markers WHERE at < $1")
            .bind((now - DELIVERY_MARKER_RETENTION).as_millis())
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
        let Some(keep) = self.keep else {
            return Ok(());
        };
        let done = sqlx::query("DELETE FROM dead_letters WHERE failed_at < $1")
            .bind((now - keep).as_millis())
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
        if done.rows_affected() > 0 {
            tracing::info!(
                pruned = done.rows_affected(),
                "dead letters past their retention deleted"
            );
        }
        Ok(())
    }
}

/// Deletes dead letters; unknown ids are skipped. Returns how many went.
pub(super) async fn purge(conn: &mut PgConnection, ids: &[u64]) -> Result<usize, StoreError> {
    let ids: Vec<i64> = ids.iter().map(|id| id_to(*id)).collect();
    let done = sqlx::query("DELETE FROM dead_letters WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut *conn)
        .await
        .map_err(store_error)?;
    Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
}
