//! Delivery rows: publishing them, giving leases back, and counting where
//! they are.
//!
//! A row's `available_at` is when a claim may take it: its due time while it
//! waits, its lease's end while it is leased. A row with a FIFO group is held
//! back while an older row of the same (step, tenant, group) exists: only the
//! group's head is claimable ([`HEAD`]).

use sqlx::{PgConnection, Row};

use super::error::store_error;
use super::rows::{count_from, event_json, id_to, step_name};
use crate::backend::{LeaseRef, NewDelivery, QueueDepth, StepWork, StoreError};
use crate::event::StepName;
use crate::time::Timestamp;

/// True for a row `d` that is not waiting behind an older row of its FIFO group.
pub(super) const HEAD: &str = "(d.delivery_group IS NULL OR NOT EXISTS ( \
    SELECT 1 FROM deliveries o WHERE o.step = d.step AND o.tenant = d.tenant \
    AND o.delivery_group = d.delivery_group AND o.id < d.id))";

/// Rows per `INSERT` when publishing many deliveries.
pub(super) const INSERT_CHUNK: usize = 5_000;

/// How many arrays [`Columns`] binds.
pub(super) const INSERT_PARAMS: usize = 7;

/// An `INSERT INTO deliveries` of the [`INSERT_PARAMS`] arrays of
/// [`Columns`], bound from parameter `$first` on.
pub(super) fn insert_sql(first: usize) -> String {
    let p = |i: usize| first + i;
    format!(
        "INSERT INTO deliveries (step, tenant, delivery_group, due_at, available_at, event, priority, \
         cancel_key) \
         SELECT s, t, g, d, d, e, p, k \
         FROM UNNEST(${}::text[], ${}::text[], ${}::text[], ${}::bigint[], ${}::text[], ${}::smallint[], \
             ${}::text[]) WITH ORDINALITY AS u(s, t, g, d, e, p, k, n) \
         ORDER BY n",
        p(0),
        p(1),
        p(2),
        p(3),
        p(4),
        p(5),
        p(6)
    )
}

/// New deliveries as the columns an insert binds, in order.
pub(super) struct Columns {
    pub(super) steps: Vec<String>,
    pub(super) tenants: Vec<String>,
    pub(super) groups: Vec<Option<String>>,
    pub(super) due: Vec<i64>,
    pub(super) events: Vec<String>,
    pub(super) priorities: Vec<i16>,
    pub(super) keys: Vec<Option<String>>,
}

impl Columns {
    pub(super) fn of(deliveries: &[NewDelivery]) -> Result<Self, StoreError> {
        let mut c = Columns {
            steps: Vec::with_capacity(deliveries.len()),
            tenants: Vec::with_capacity(deliveries.len()),
            groups: Vec::with_capacity(deliveries.len()),
            due: Vec::with_capacity(deliveries.len()),
            events: Vec::with_capacity(deliveries.len()),
            priorities: Vec::with_capacity(deliveries.len()),
            keys: Vec::with_capacity(deliveries.len()),
        };
        for d in deliveries {
            c.steps.push(d.step.as_str().to_string());
            c.tenants.push(d.event.tenant.as_str().to_string());
            c.groups.push(d.group.as_deref().map(str::to_string));
            c.due.push(d.due_at.as_millis());
            c.events.push(event_json(&d.event)?);
            c.priorities.push(d.event.priority.as_i16());
            c.keys.push(d.key.as_deref().map(super::rows::text_column));
        }
        Ok(c)
    }
}

/// Inserts deliveries in the order given (their ids grow in that order).
pub(super) async fn insert(
    conn: &mut PgConnection,
    deliveries: &[NewDelivery],
) -> Result<(), StoreError> {
    let sql = insert_sql(1);
    for chunk in deliveries.chunks(INSERT_CHUNK) {
        let c = Columns::of(chunk)?;
        sqlx::query(&sql)
            .bind(c.steps)
            .bind(c.tenants)
            .bind(c.groups)
            .bind(c.due)
            .bind(c.events)
            .bind(c.priorities)
            .bind(c.keys)
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
    }
    Ok(())
}

/// Gives leased deliveries back, claimable at once, their attempt not counted.
/// Leases that are not live are ignored.
pub(super) async fn release(
    conn: &mut PgConnection,
    leases: &[LeaseRef],
) -> Result<(), StoreError> {
    if leases.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = leases.iter().map(|l| id_to(l.id)).collect();
    let tokens: Vec<i64> = leases.iter().map(|l| id_to(l.token)).collect();
    sqlx::query(
        "UPDATE deliveries SET leased = false, attempt = GREATEST(attempt - 1, 0), \
         available_at = due_at \
         WHERE leased AND (id, token) IN (SELECT * FROM UNNEST($1::bigint[], $2::bigint[]))",
    )
    .bind(ids)
    .bind(tokens)
    .execute(&mut *conn)
    .await
    .map_err(store_error)?;
    Ok(())
}

/// True when no row is leased and no head row is due by `now`. A leased row
/// is always its group's head (only heads are claimed, and ids grow), so the
/// first question needs no head check; each is an index probe
/// (`deliveries_leased`, `deliveries_by_time`) that stops at the first row.
pub(super) async fn is_drained(
    conn: &mut PgConnection,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let sql = format!(
        "SELECT NOT EXISTS (SELECT 1 FROM deliveries WHERE leased) \
           AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.available_at <= $1 AND {HEAD})"
    );
    sqlx::query_scalar(&sql)
        .bind(now.as_millis())
        .fetch_one(&mut *conn)
        .await
        .map_err(store_error)
}

/// How many deliveries are where as of `now`.
pub(super) async fn depth(
    conn: &mut PgConnection,
    now: Timestamp,
) -> Result<QueueDepth, StoreError> {
    let sql = format!(
        "SELECT \
           count(*) FILTER (WHERE head AND available_at <= $1), \
           count(*) FILTER (WHERE head AND available_at > $1 AND NOT leased), \
           count(*) FILTER (WHERE NOT head), \
           count(*) FILTER (WHERE head AND available_at > $1 AND leased), \
           (SELECT count(*) FROM dead_letters) \
         FROM (SELECT d.available_at, d.leased, {HEAD} AS head FROM deliveries d) x"
    );
    let row = sqlx::query(&sql)
        .bind(now.as_millis())
        .fetch_one(&mut *conn)
        .await
        .map_err(store_error)?;
    let get = |i: usize| -> Result<u64, StoreError> {
        count_from(row.try_get::<i64, _>(i).map_err(store_error)?)
    };
    Ok(QueueDepth {
        ready: get(0)?,
        delayed: get(1)?,
        waiting: get(2)?,
        in_flight: get(3)?,
        dead: get(4)?,
    })
}

/// The steps with unfinished deliveries as of `now`, in name order: how many,
/// and how many a claim could take.
pub(super) async fn steps_with_work(
    conn: &mut PgConnection,
    now: Timestamp,
) -> Result<Vec<StepWork>, StoreError> {
    let sql = format!(
        "SELECT d.step, count(*), count(*) FILTER (WHERE NOT d.leased AND d.available_at <= $1 AND {HEAD}), \
         count(*) FILTER (WHERE d.leased) FROM deliveries d GROUP BY d.step ORDER BY d.step"
    );
    let rows = sqlx::query(&sql)
        .bind(now.as_millis())
        .fetch_all(&mut *conn)
        .await
        .map_err(store_error)?;
    rows.iter()
        .map(|row| {
            let step: String = row.try_get(0).map_err(store_error)?;
            Ok(StepWork {
                step: step_name(&step)?,
                pending: count_from(row.try_get(1).map_err(store_error)?)?,
                ready: count_from(row.try_get(2).map_err(store_error)?)?,
                leased: count_from(row.try_get(3).map_err(store_error)?)?,
            })
        })
        .collect()
}

/// Moves the unleased deliveries of `from` to `to`, or deletes them.
pub(super) async fn move_to(
    conn: &mut PgConnection,
    from: &StepName,
    to: Option<&StepName>,
) -> Result<u64, StoreError> {
    let done = match to {
        Some(to) => sqlx::query("UPDATE deliveries SET step = $2 WHERE step = $1 AND NOT leased")
            .bind(from.as_str())
            .bind(to.as_str()),
        None => {
            sqlx::query("DELETE FROM deliveries WHERE step = $1 AND NOT leased").bind(from.as_str())
        }
    }
    .execute(&mut *conn)
    .await
    .map_err(store_error)?;
    Ok(done.rows_affected())
}
