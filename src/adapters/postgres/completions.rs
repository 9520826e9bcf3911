//! `Store::complete`: a batch of completions in one transaction.
//!
//! Each completion is checked before it changes anything (lease, marker, read
//! checks, adds, in that order, as the memory adapter does), so a completion
//! that fails a check leaves nothing to roll back and needs no savepoint; the
//! only check that races other transactions, the marker, is an
//! `INSERT .. ON CONFLICT DO NOTHING` made before any other change. Any SQL
//! error drops the transaction, so an `Err` means nothing of the batch applied.
//!
//! Optimistic isolation across concurrent batches: every batch first takes
//! transaction-level advisory locks on the (tenant, key) pairs it reads, writes
//! or adds to, all of them, in one sorted order (so batches cannot deadlock on
//! them), which makes "check the read versions, then write" atomic.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use sqlx::{PgConnection, Row};

use super::deliveries;
use super::error::store_error;
use super::rows::{id_to, lock_key};
use crate::backend::{
    counter_bytes, cron_fire_settled, sum_adds, Action, Completion, Marker, Outcome, StoreError,
    Value, Write, CRON_FIRE_HORIZON,
};
use crate::event::TenantId;
use crate::time::Timestamp;

/// Applies a batch in the open transaction `conn`; the caller commits.
pub(super) async fn complete(
    conn: &mut PgConnection,
    schema: &str,
    batch: Vec<Completion>,
) -> Result<Vec<Outcome>, StoreError> {
    lock_keys(conn, schema, &batch).await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for c in batch {
        outcomes.push(apply(conn, c).await?);
    }
    Ok(outcomes)
}

/// Takes the advisory locks of every state key the batch touches, sorted.
async fn lock_keys(
    conn: &mut PgConnection,
    schema: &str,
    batch: &[Completion],
) -> Result<(), StoreError> {
    let mut keys: Vec<i64> = Vec::new();
    for c in batch {
        if let Action::Commit {
            reads,
            writes,
            adds,
            ..
        } = &c.action
        {
            let tenant = c.tenant.as_str();
            let touched = reads
                .iter()
                .map(|r| &r.key)
                .chain(writes.iter().map(|w| &w.key))
                .chain(adds.iter().map(|a| &a.key));
            keys.extend(touched.map(|key| lock_key(&[schema, tenant, key])));
        }
    }
    if keys.is_empty() {
        return Ok(());
    }
    keys.sort_unstable();
    keys.dedup();
    sqlx::query("SELECT pg_advisory_xact_lock(k) FROM UNNEST($1::bigint[]) AS k")
        .bind(keys)
        .execute(&mut *conn)
        .await
        .map_err(store_error)?;
    Ok(())
}

async fn apply(conn: &mut PgConnection, c: Completion) -> Result<Outcome, StoreError> {
    if let Some(lease) = &c.input {
        let live = sqlx::query(
            "SELECT 1 FROM deliveries WHERE id = $1 AND token = $2 AND leased FOR UPDATE",
        )
        .bind(id_to(lease.id))
        .bind(id_to(lease.token))
        .fetch_optional(&mut *conn)
        .await
        .map_err(store_error)?;
        if live.is_none() {
            return Ok(Outcome::Stale);
        }
    }
    let mut newest = None;
    if let Some(Marker::CronFire { schedule, at }) = &c.marker {
        let row = sqlx::query(
            "SELECT COALESCE(bool_or(at = $2), false), max(at) FROM cron_fires WHERE schedule = $1",
        )
        .bind(schedule.as_str())
        .bind(at.as_millis())
        .fetch_one(&mut *conn)
        .await
        .map_err(store_error)?;
        let recorded: bool = row.try_get(0).map_err(store_error)?;
        let last: Option<i64> = row.try_get(1).map_err(store_error)?;
        let last = last.map(Timestamp::from_millis);
        if cron_fire_settled(*at, recorded, last) {
            return Ok(Outcome::Duplicate);
        }
        newest = Some(last.map_or(*at, |last| last.max(*at)));
    }
    let mut changes = Vec::new();
    if let Action::Commit {
        reads,
        writes,
        adds,
        ..
    } = &c.action
    {
        let keys: Vec<&str> = reads
            .iter()
            .map(|r| r.key.as_str())
            .chain(adds.iter().map(|a| a.key.as_str()))
            .collect();
        let stored = stored(conn, &c.tenant, &keys).await?;
        let holds = reads
            .iter()
            .all(|r| stored.get(&r.key).map(|(_, version)| *version) == r.version);
        if !holds {
            return Ok(Outcome::Conflict);
        }
        let lookup = |key: &str| Ok::<_, Infallible>(stored.get(key).map(|(v, _)| v.clone()));
        let sums = match sum_adds(adds, writes, lookup) {
            Ok(Ok(sums)) => sums,
            Ok(Err(rejected)) => return Ok(Outcome::Rejected(rejected)),
            Err(never) => match never {},
        };
        changes = final_values(writes, sums);
    }
    // Checked: from here on everything applies.
    if let (Some(Marker::CronFire { schedule, at }), Some(newest)) = (&c.marker, newest) {
        let inserted = sqlx::query(
            "INSERT INTO cron_fires (schedule, at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(schedule.as_str())
        .bind(at.as_millis())
        .execute(&mut *conn)
        .await
        .map_err(store_error)?;
        if inserted.rows_affected() == 0 {
            // Another engine recorded it since the check (and committed).
            return Ok(Outcome::Duplicate);
        }
        sqlx::query("DELETE FROM cron_fires WHERE schedule = $1 AND at < $2")
            .bind(schedule.as_str())
            .bind((newest - CRON_FIRE_HORIZON).as_millis())
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
    }
    write_state(conn, &c.tenant, changes).await?;
    match c.action {
        Action::Commit { emits, .. } => {
            deliveries::insert(conn, &emits).await?;
            if let Some(lease) = c.input {
                sqlx::query("DELETE FROM deliveries WHERE id = $1")
                    .bind(id_to(lease.id))
                    .execute(&mut *conn)
                    .await
                    .map_err(store_error)?;
            }
        }
        Action::Retry { at, error } => {
            if let Some(lease) = c.input {
                sqlx::query(
                    "UPDATE deliveries SET leased = false, due_at = $2, available_at = $2, \
                     last_error = $3 WHERE id = $1",
                )
                .bind(id_to(lease.id))
                .bind(at.as_millis())
                .bind(error)
                .execute(&mut *conn)
                .await
                .map_err(store_error)?;
            }
        }
        Action::DeadLetter { error, at } => {
            if let Some(lease) = c.input {
                sqlx::query(
                    "WITH gone AS (DELETE FROM deliveries WHERE id = $1 RETURNING *) \
                     INSERT INTO dead_letters (step, tenant, delivery_group, attempts, \
                         first_attempt_at, failed_at, last_error, event) \
                     SELECT step, tenant, delivery_group, attempt, \
                         COALESCE(first_attempt_at, $2), $2, $3, event FROM gone",
                )
                .bind(id_to(lease.id))
                .bind(at.as_millis())
                .bind(error)
                .execute(&mut *conn)
                .await
                .map_err(store_error)?;
            }
        }
    }
    Ok(Outcome::Applied)
}

/// The committed value and version of each of `keys` that exists.
async fn stored(
    conn: &mut PgConnection,
    tenant: &TenantId,
    keys: &[&str],
) -> Result<HashMap<String, (Value, u64)>, StoreError> {
    let mut out = HashMap::new();
    if keys.is_empty() {
        return Ok(out);
    }
    let rows =
        sqlx::query("SELECT key, value, version FROM state WHERE tenant = $1 AND key = ANY($2)")
            .bind(tenant.as_str())
            .bind(keys)
            .fetch_all(&mut *conn)
            .await
            .map_err(store_error)?;
    for row in rows {
        let key: String = row.try_get(0).map_err(store_error)?;
        let value: Vec<u8> = row.try_get(1).map_err(store_error)?;
        let version: i64 = row.try_get(2).map_err(store_error)?;
        let version =
            u64::try_from(version).map_err(|_| super::error::corrupt("a version", version))?;
        out.insert(key, (Arc::from(value), version));
    }
    Ok(out)
}

/// What each changed key ends as, in the order of its first change: the last
/// write of it, then the adds' sums.
fn final_values(writes: &[Write], sums: Vec<(String, i64)>) -> Vec<(String, Option<Value>)> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<(String, Option<Value>)> = Vec::new();
    let changes = writes
        .iter()
        .map(|w| (w.key.clone(), w.value.clone()))
        .chain(
            sums.into_iter()
                .map(|(key, sum)| (key, Some(counter_bytes(sum)))),
        );
    for (key, value) in changes {
        match index.get(&key) {
            Some(&i) => out[i].1 = value,
            None => {
                index.insert(key.clone(), out.len());
                out.push((key, value));
            }
        }
    }
    out
}

/// Applies the final values: one upsert for the keys set, one delete for the
/// keys deleted; every key set gets a new version from the schema's sequence.
async fn write_state(
    conn: &mut PgConnection,
    tenant: &TenantId,
    changes: Vec<(String, Option<Value>)>,
) -> Result<(), StoreError> {
    let mut set_keys = Vec::new();
    let mut set_values: Vec<Vec<u8>> = Vec::new();
    let mut deleted = Vec::new();
    for (key, value) in changes {
        match value {
            Some(value) => {
                set_keys.push(key);
                set_values.push(value.to_vec());
            }
            None => deleted.push(key),
        }
    }
    if !deleted.is_empty() {
        sqlx::query("DELETE FROM state WHERE tenant = $1 AND key = ANY($2)")
            .bind(tenant.as_str())
            .bind(deleted)
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
    }
    if !set_keys.is_empty() {
        sqlx::query(
            "INSERT INTO state (tenant, key, value, version) \
             SELECT $1, k, v, nextval('state_versions') \
             FROM UNNEST($2::text[], $3::bytea[]) AS u(k, v) \
             ON CONFLICT (tenant, key) DO UPDATE \
             SET value = EXCLUDED.value, version = EXCLUDED.version",
        )
        .bind(tenant.as_str())
        .bind(set_keys)
        .bind(set_values)
        .execute(&mut *conn)
        .await
        .map_err(store_error)?;
    }
    Ok(())
}
