//! `Store::complete`: a batch of completions in one transaction, in a fixed
//! number of statements however large the batch.
//!
//! The batch is decided in memory, in order, as if its completions applied one
//! after another: three statements first lock what it touches and read what it
//! needs (advisory locks on its state keys, its live leases, the stored state it
//! reads or adds to); then each completion is checked (lease, marker, read
//! checks, adds, in that order, as the memory adapter does) against that state
//! and the changes of the completions before it, and its changes join a
//! [`Plan`]; then a few statements apply the plan (`plan.rs`). Only a cron
//! marker takes statements of its own, since recording it is itself the check.
//! Any SQL error drops the transaction, so an `Err` means nothing of the batch
//! applied.
//!
//! Optimistic isolation across concurrent batches: every batch first takes
//! transaction-level advisory locks on the (tenant, key) pairs it reads, writes
//! or adds to, all of them, in one sorted order (so batches cannot deadlock on
//! them), which makes "check the read versions, then write" atomic. Lease rows
//! are locked next, in id order.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;

use sqlx::{PgConnection, Row};

use super::error::store_error;
use super::plan::Plan;
use super::rows::text_column;
use super::rows::{event_json, id_to, lock_key};
use crate::backend::{
    counter_bytes, cron_fire_settled, sum_adds, Action, Completion, Marker, Outcome, StoreError,
    Value, Write, CRON_FIRE_HORIZON,
};
use crate::time::Timestamp;

/// What a batch did, once its transaction commits.
pub(super) struct Applied {
    /// One per completion, in order.
    pub(super) outcomes: Vec<Outcome>,
    /// Whether it published deliveries (emits).
    pub(super) published: bool,
}

/// Applies a batch in the open transaction `conn`; the caller commits. If it
/// publishes deliveries, `wake` (a `pg_notify`'s channel and payload) tells
/// the other processes at the commit.
pub(super) async fn complete(
    conn: &mut PgConnection,
    schema: &str,
    batch: &[&Completion],
    wake: (&str, &str),
) -> Result<Applied, StoreError> {
    let mut live = lock(conn, schema, batch).await?;
    let mut view = StateView::load(conn, batch).await?;
    let mut plan = Plan::default();
    let mut outcomes = Vec::with_capacity(batch.len());
    for &c in batch {
        outcomes.push(decide(conn, &mut view, &mut live, &mut plan, c).await?);
    }
    let published = !plan.emits.is_empty() || plan.requeued;
    plan.apply(conn, published.then_some(wake)).await?;
    Ok(Applied {
        outcomes,
        published,
    })
}

/// The state keys of a commit: read, written or added to.
fn touched(c: &Completion) -> impl Iterator<Item = &str> {
    let (reads, writes, adds) = match &c.action {
        Action::Commit {
            reads,
            writes,
            adds,
            ..
        } => (&reads[..], &writes[..], &adds[..]),
        _ => (&[][..], &[][..], &[][..]),
    };
    reads
        .iter()
        .map(|r| r.key.as_str())
        .chain(writes.iter().map(|w| w.key.as_str()))
        .chain(adds.iter().map(|a| a.key.as_str()))
}

/// Takes the advisory locks of every state key the batch touches, sorted,
/// then locks the batch's input rows whose lease is still the one given, in id
/// order, and returns their ids: one statement, one round trip.
///
/// The lease rows are read `FOR UPDATE`, which sees each row's newest
/// version whatever the statement's snapshot; the state the batch reads comes
/// in the next statement, whose snapshot is taken once the locks are held.
async fn lock(
    conn: &mut PgConnection,
    schema: &str,
    batch: &[&Completion],
) -> Result<HashSet<i64>, StoreError> {
    let mut keys: Vec<i64> = batch
        .iter()
        .flat_map(|c| touched(c).map(|key| lock_key(&[schema, c.tenant.as_str(), key])))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let (ids, tokens): (Vec<i64>, Vec<i64>) = batch
        .iter()
        .filter_map(|c| c.input)
        .map(|lease| (id_to(lease.id), id_to(lease.token)))
        .unzip();
    if ids.is_empty() && keys.is_empty() {
        return Ok(HashSet::new());
    }
    // The locks are a one-time filter of the statement: taken before any
    // row is read, in the order of the sorted array.
    let rows = sqlx::query(
        "WITH locks AS MATERIALIZED ( \
           SELECT pg_advisory_xact_lock(k) FROM UNNEST($3::bigint[]) AS k) \
         SELECT d.id FROM deliveries d \
         JOIN UNNEST($1::bigint[], $2::bigint[]) AS u(id, token) \
           ON d.id = u.id AND d.token = u.token \
         WHERE d.leased AND (SELECT count(*) FROM locks) >= 0 \
         ORDER BY d.id FOR UPDATE OF d",
    )
    .bind(ids)
    .bind(tokens)
    .bind(keys)
    .fetch_all(&mut *conn)
    .await
    .map_err(store_error)?;
    rows.iter()
        .map(|row| row.try_get(0).map_err(store_error))
        .collect()
}

/// A key's version as the batch sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    /// As stored before the batch.
    Stored(u64),
    /// Changed by an earlier completion of the batch: no version read before
    /// the batch matches it.
    Changed,
}

/// The state the batch reads, as each completion of it sees it: stored values
/// overlaid with the changes of the completions before it.
struct StateView {
    keys: HashMap<(String, String), Option<(Value, Version)>>,
}

impl StateView {
    /// Reads every key the batch reads or adds to, in one statement.
    async fn load(conn: &mut PgConnection, batch: &[&Completion]) -> Result<Self, StoreError> {
        let mut tenants = Vec::new();
        let mut keys = Vec::new();
        for c in batch {
            if let Action::Commit { reads, adds, .. } = &c.action {
                for key in reads
                    .iter()
                    .map(|r| &r.key)
                    .chain(adds.iter().map(|a| &a.key))
                {
                    tenants.push(c.tenant.as_str());
                    keys.push(key.as_str());
                }
            }
        }
        let mut view = StateView {
            keys: HashMap::with_capacity(keys.len()),
        };
        if keys.is_empty() {
            return Ok(view);
        }
        let rows = sqlx::query(
            "SELECT s.tenant::text, s.key::text, s.value, s.version FROM state s \
             WHERE (s.tenant, s.key) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))",
        )
        .bind(tenants)
        .bind(keys)
        .fetch_all(&mut *conn)
        .await
        .map_err(store_error)?;
        for row in rows {
            let tenant: String = row.try_get(0).map_err(store_error)?;
            let key: String = row.try_get(1).map_err(store_error)?;
            let value: Vec<u8> = row.try_get(2).map_err(store_error)?;
            let version: i64 = row.try_get(3).map_err(store_error)?;
            let version =
                u64::try_from(version).map_err(|_| super::error::corrupt("a version", version))?;
            view.keys.insert(
                (tenant, key),
                Some((Value::from(value), Version::Stored(version))),
            );
        }
        Ok(view)
    }

    fn get(&self, tenant: &str, key: &str) -> Option<&(Value, Version)> {
        // Keys not loaded were absent (or are not read by the batch).
        self.keys
            .get(&(tenant.to_string(), key.to_string()))
            .and_then(Option::as_ref)
    }

    fn set(&mut self, tenant: &str, key: &str, value: Option<Value>) {
        self.keys.insert(
            (tenant.to_string(), key.to_string()),
            value.map(|v| (v, Version::Changed)),
        );
    }
}

/// Checks one completion against the batch's view and, if it applies, adds
/// its changes to the plan and the view.
async fn decide(
    conn: &mut PgConnection,
    view: &mut StateView,
    live: &mut HashSet<i64>,
    plan: &mut Plan,
    c: &Completion,
) -> Result<Outcome, StoreError> {
    if let Some(lease) = &c.input {
        // Removed when used, so a second completion of one lease is stale.
        if !live.contains(&id_to(lease.id)) {
            return Ok(Outcome::Stale);
        }
    }
    let mut newest = None;
    if let Some(Marker::CronFire { schedule, at }) = &c.marker {
        match cron_newest(conn, schedule.as_str(), *at).await? {
            Some(n) => newest = Some(n),
            None => return Ok(Outcome::Duplicate),
        }
    }
    let tenant = c.tenant.as_str();
    let mut changes = Vec::new();
    if let Action::Commit {
        reads,
        writes,
        adds,
        ..
    } = &c.action
    {
        let holds = reads.iter().all(|r| {
            let seen = view.get(tenant, &r.key).map(|(_, version)| *version);
            seen == r.version.map(Version::Stored)
        });
        if !holds {
            return Ok(Outcome::Conflict);
        }
        let lookup = |key: &str| Ok::<_, Infallible>(view.get(tenant, key).map(|(v, _)| v.clone()));
        let sums = match sum_adds(adds, writes, lookup) {
            Ok(Ok(sums)) => sums,
            Ok(Err(refused)) => return Ok(refused.outcome()),
            Err(never) => match never {},
        };
        changes = final_values(writes, sums);
    }
    // Checked but for the marker's record, which is its own check.
    let recorded = match (&c.marker, newest) {
        (Some(Marker::CronFire { schedule, at }), Some(newest)) => {
            record_cron_fire(conn, schedule.as_str(), *at, newest).await?
        }
        (Some(Marker::Delivery { key }), _) => record_delivery(conn, key).await?,
        _ => true,
    };
    if !recorded {
        return Ok(Outcome::Duplicate);
    }
    // From here on everything applies.
    for (key, value) in changes {
        view.set(tenant, &key, value.clone());
        plan.state(tenant, key, value);
    }
    let input = c.input.map(|lease| {
        live.remove(&id_to(lease.id));
        id_to(lease.id)
    });
    match &c.action {
        Action::Commit { emits, cancels, .. } => {
            for cancel in cancels {
                plan.cancel(tenant, cancel);
            }
            plan.emits.extend(emits.iter().cloned());
            if let Some(id) = input {
                plan.finished.push(id);
            }
        }
        Action::Retry { at, error } => {
            if let Some(id) = input {
                plan.retry(id, *at, error);
            }
        }
        Action::Defer { at } => {
            if let Some(id) = input {
                plan.defer(id, *at);
            }
        }
        Action::DeadLetter {
            error,
            at,
            kind,
            emits,
        } => {
            if let Some(id) = input {
                plan.dead_letter(id, *at, error, *kind);
                plan.emits.extend(emits.iter().cloned());
            }
        }
        // A broker's retries and dead letters are rare next to commits: one
        // statement each, not part of the set-based plan.
        Action::Requeue {
            delivery,
            attempts,
            first_attempt_at,
            error,
        } => {
            sqlx::query(
                "INSERT INTO deliveries (step, tenant, delivery_group, due_at, available_at, \
                 attempt, first_attempt_at, last_error, event, priority) \
                 VALUES ($1, $2, $3, $4, $4, $5, $6, $7, $8, $9)",
            )
            .bind(delivery.step.as_str())
            .bind(delivery.event.tenant.as_str())
            .bind(delivery.group.as_deref())
            .bind(delivery.due_at.as_millis())
            .bind(i32::try_from(*attempts).unwrap_or(i32::MAX))
            .bind(first_attempt_at.as_millis())
            .bind(text_column(error))
            .bind(event_json(&delivery.event)?)
            .bind(delivery.event.priority.as_i16())
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
            plan.requeued = true;
        }
        Action::Bury {
            delivery,
            attempts,
            first_attempt_at,
            error,
            at,
            kind,
            emits,
        } => {
            sqlx::query(
                "INSERT INTO dead_letters (step, tenant, delivery_group, attempts, \
                 first_attempt_at, failed_at, last_error, event, priority, kind) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(delivery.step.as_str())
            .bind(delivery.event.tenant.as_str())
            .bind(delivery.group.as_deref())
            .bind(i32::try_from(*attempts).unwrap_or(i32::MAX))
            .bind(first_attempt_at.as_millis())
            .bind(at.as_millis())
            .bind(text_column(error))
            .bind(event_json(&delivery.event)?)
            .bind(delivery.event.priority.as_i16())
            .bind(kind.as_str())
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
            plan.emits.extend(emits.iter().cloned());
        }
    }
    Ok(Outcome::Applied)
}

/// Records a broker delivery's marker; false if it was recorded already (by
/// a copy of the delivery that committed first).
async fn record_delivery(conn: &mut PgConnection, key: &str) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO delivery_markers (key, at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(key)
    .bind(Timestamp::system_now().as_millis())
    .execute(&mut *conn)
    .await
    .map_err(store_error)?;
    Ok(inserted.rows_affected() == 1)
}

/// For a cron fire at `at`: `None` if it is settled already, else the newest
/// fire of the schedule once this one is recorded.
async fn cron_newest(
    conn: &mut PgConnection,
    schedule: &str,
    at: Timestamp,
) -> Result<Option<Timestamp>, StoreError> {
    let row = sqlx::query(
        "SELECT COALESCE(bool_or(at = $2), false), max(at) FROM cron_fires WHERE schedule = $1",
    )
    .bind(schedule)
    .bind(at.as_millis())
    .fetch_one(&mut *conn)
    .await
    .map_err(store_error)?;
    let recorded: bool = row.try_get(0).map_err(store_error)?;
    let last: Option<i64> = row.try_get(1).map_err(store_error)?;
    let last = last.map(Timestamp::from_millis);
    if cron_fire_settled(at, recorded, last) {
        return Ok(None);
    }
    Ok(Some(last.map_or(at, |last| last.max(at))))
}

/// Records a cron fire and forgets fires beyond the horizon; false if another
/// engine recorded it since the check (and committed).
async fn record_cron_fire(
    conn: &mut PgConnection,
    schedule: &str,
    at: Timestamp,
    newest: Timestamp,
) -> Result<bool, StoreError> {
    let inserted =
        sqlx::query("INSERT INTO cron_fires (schedule, at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(schedule)
            .bind(at.as_millis())
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
    if inserted.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query("DELETE FROM cron_fires WHERE schedule = $1 AND at < $2")
        .bind(schedule)
        .bind((newest - CRON_FIRE_HORIZON).as_millis())
        .execute(&mut *conn)
        .await
        .map_err(store_error)?;
    Ok(true)
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
