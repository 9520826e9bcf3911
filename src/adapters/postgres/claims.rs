//! Claims: due deliveries per step in request order, round robin across
//! tenants, FIFO group heads only, under `FOR UPDATE SKIP LOCKED` so that
//! concurrent claimers never wait for one another.
//!
//! Per step, a claim reads the candidates of each tenant (oldest first, at most
//! the step's limit each), picks from them as the memory adapter's rotation
//! does (at most `tenant_quantum` from one tenant while others wait, starting
//! after the tenant the previous claim served last), then locks and leases the
//! picked rows, skipping any another claimer holds. If some were skipped (or
//! taken meanwhile), one more pass picks replacements for them. The candidate
//! read takes no locks, so claimers of one step proceed side by side.

use std::collections::{HashMap, VecDeque};

use sqlx::{PgConnection, Row};

use super::deliveries::HEAD;
use super::error::store_error;
use super::rows::{attempt_from, event_from, id_from};
use crate::backend::{ClaimBatch, ClaimRequest, Claimed, LeaseRef, StepClaim, StoreError};
use crate::event::StepName;
use crate::time::Timestamp;

/// The claimable rows of one step, per tenant (a loose index scan over the
/// tenants, then each tenant's oldest), at most `$3` per tenant, none of `$4`.
fn candidates_sql() -> String {
    format!(
        "WITH RECURSIVE tenants(tenant) AS ( \
           (SELECT tenant FROM deliveries WHERE step = $1 ORDER BY tenant LIMIT 1) \
           UNION ALL \
           SELECT (SELECT d.tenant FROM deliveries d WHERE d.step = $1 AND d.tenant > t.tenant \
                   ORDER BY d.tenant LIMIT 1) \
           FROM tenants t WHERE t.tenant IS NOT NULL) \
         SELECT c.id, c.tenant FROM tenants t CROSS JOIN LATERAL ( \
           SELECT d.id, d.tenant FROM deliveries d \
           WHERE d.step = $1 AND d.tenant = t.tenant AND d.available_at <= $2 AND {HEAD} \
             AND NOT (d.id = ANY($4)) \
           ORDER BY d.available_at, d.id LIMIT $3) c \
         WHERE t.tenant IS NOT NULL"
    )
}

/// Leases the picked rows that are still claimable and not locked by another
/// claimer.
const LEASE: &str = "WITH locked AS ( \
       SELECT id FROM deliveries WHERE id = ANY($1) AND available_at <= $2 \
       FOR UPDATE SKIP LOCKED) \
     UPDATE deliveries d SET leased = true, token = d.token + 1, attempt = d.attempt + 1, \
       first_attempt_at = COALESCE(d.first_attempt_at, $2), available_at = $3 \
     FROM locked WHERE d.id = locked.id \
     RETURNING d.id, d.token, d.attempt, d.first_attempt_at, d.last_error, d.event";

/// Where the rotation of each step claimed from should go on: (step, tenant
/// served last).
pub(super) type Cursors = Vec<(StepName, String)>;

/// Claims due deliveries; returns them with the rotation cursors to store.
pub(super) async fn claim(
    conn: &mut PgConnection,
    request: &ClaimRequest,
) -> Result<(ClaimBatch, Cursors), StoreError> {
    let quantum = request.tenant_quantum.max(1);
    let mut deliveries = Vec::new();
    let mut cursors = Vec::new();
    let candidates_query = candidates_sql();
    let cursor_of = read_cursors(conn, &request.steps).await?;
    for sc in &request.steps {
        let mut cursor = cursor_of.get(sc.step.as_str()).cloned();
        let mut tried: Vec<i64> = Vec::new();
        let mut room = sc.max;
        // A second pass takes the place of rows another claimer locked or
        // took meanwhile, so contention does not leave work behind.
        for _pass in 0..2 {
            if room == 0 {
                break;
            }
            let lanes = candidates(conn, &candidates_query, sc, request.now, room, &tried).await?;
            let (picked, served) = pick(lanes, cursor.as_deref(), room, quantum);
            if picked.is_empty() {
                break;
            }
            if let Some(served) = served {
                cursor = Some(served);
            }
            let got = lease(conn, request.now, sc, &picked, &mut deliveries).await?;
            room = room.saturating_sub(got);
            if got == picked.len() {
                break;
            }
            tried.extend(picked);
        }
        if let Some(served) = cursor {
            cursors.push((sc.step.clone(), served));
        }
    }
    let next_due: Option<i64> =
        sqlx::query("SELECT min(available_at) FROM deliveries WHERE available_at > $1")
            .bind(request.now.as_millis())
            .fetch_one(&mut *conn)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(store_error)?;
    Ok((
        ClaimBatch {
            deliveries,
            next_due: next_due.map(Timestamp::from_millis),
        },
        cursors,
    ))
}

/// The claimable rows of one step per tenant, sorted by tenant, at most `room`
/// each, leaving out `tried`.
async fn candidates(
    conn: &mut PgConnection,
    query: &str,
    sc: &StepClaim,
    now: Timestamp,
    room: usize,
    tried: &[i64],
) -> Result<Vec<(String, VecDeque<i64>)>, StoreError> {
    let rows = sqlx::query(query)
        .bind(sc.step.as_str())
        .bind(now.as_millis())
        .bind(i64::try_from(room).unwrap_or(i64::MAX))
        .bind(tried)
        .fetch_all(&mut *conn)
        .await
        .map_err(store_error)?;
    let mut lanes: Vec<(String, VecDeque<i64>)> = Vec::new();
    for row in rows {
        let id: i64 = row.try_get(0).map_err(store_error)?;
        let tenant: String = row.try_get(1).map_err(store_error)?;
        match lanes.last_mut() {
            Some((last, ids)) if *last == tenant => ids.push_back(id),
            _ => lanes.push((tenant, VecDeque::from([id]))),
        }
    }
    Ok(lanes)
}

/// The rotation cursor of each of `steps` that has one.
async fn read_cursors(
    conn: &mut PgConnection,
    steps: &[StepClaim],
) -> Result<HashMap<String, String>, StoreError> {
    let names: Vec<&str> = steps.iter().map(|s| s.step.as_str()).collect();
    let rows = sqlx::query("SELECT step, tenant FROM claim_cursors WHERE step = ANY($1)")
        .bind(names)
        .fetch_all(&mut *conn)
        .await
        .map_err(store_error)?;
    rows.iter()
        .map(|row| {
            let step: String = row.try_get(0).map_err(store_error)?;
            let tenant: String = row.try_get(1).map_err(store_error)?;
            Ok((step, tenant))
        })
        .collect()
}

/// Round robin over the tenants' lanes (sorted by tenant), starting after
/// `cursor`: at most `quantum` from one lane while others wait. Returns the ids
/// picked, in order, and the tenant served last.
fn pick(
    lanes: Vec<(String, VecDeque<i64>)>,
    cursor: Option<&str>,
    max: usize,
    quantum: usize,
) -> (Vec<i64>, Option<String>) {
    let start = cursor.map_or(0, |c| {
        lanes.iter().take_while(|(t, _)| t.as_str() <= c).count()
    });
    let mut lanes = lanes;
    let start = start.min(lanes.len());
    lanes.rotate_left(start);
    let mut rotation: VecDeque<usize> = (0..lanes.len()).collect();
    let mut picked = Vec::new();
    let mut served = None;
    while picked.len() < max {
        let Some(lane) = rotation.pop_front() else {
            break;
        };
        let room = max - picked.len();
        let room = if rotation.is_empty() {
            room
        } else {
            room.min(quantum)
        };
        let (tenant, ids) = &mut lanes[lane];
        let n = room.min(ids.len());
        picked.extend(ids.drain(..n));
        served = Some(tenant.clone());
        if !ids.is_empty() {
            rotation.push_back(lane);
        }
    }
    (picked, served)
}

/// Leases `picked` (in that order) for `sc`, appending what it got to `out`;
/// returns how many it got.
async fn lease(
    conn: &mut PgConnection,
    now: Timestamp,
    sc: &StepClaim,
    picked: &[i64],
    out: &mut Vec<Claimed>,
) -> Result<usize, StoreError> {
    let rows = sqlx::query(LEASE)
        .bind(picked)
        .bind(now.as_millis())
        .bind((now + sc.lease).as_millis())
        .fetch_all(&mut *conn)
        .await
        .map_err(store_error)?;
    let order: HashMap<i64, usize> = picked.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut claimed = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row.try_get(0).map_err(store_error)?;
        let token: i64 = row.try_get(1).map_err(store_error)?;
        let attempt: i32 = row.try_get(2).map_err(store_error)?;
        let first: Option<i64> = row.try_get(3).map_err(store_error)?;
        let last_error: Option<String> = row.try_get(4).map_err(store_error)?;
        let event: String = row.try_get(5).map_err(store_error)?;
        let claim = Claimed::new(
            LeaseRef {
                id: id_from(id)?,
                token: id_from(token)?,
            },
            sc.step.clone(),
            event_from(&event)?,
            attempt_from(attempt)?,
            Timestamp::from_millis(first.unwrap_or(now.as_millis())),
            last_error,
        );
        claimed.push((order.get(&id).copied().unwrap_or(usize::MAX), claim));
    }
    claimed.sort_by_key(|(at, _)| *at);
    let got = claimed.len();
    out.extend(claimed.into_iter().map(|(_, c)| c));
    Ok(got)
}

/// Stores the rotation cursors of a claim.
pub(super) async fn store_cursors(
    conn: &mut PgConnection,
    cursors: Cursors,
) -> Result<(), StoreError> {
    if cursors.is_empty() {
        return Ok(());
    }
    let (steps, tenants): (Vec<String>, Vec<String>) = cursors
        .into_iter()
        .map(|(step, tenant)| (step.as_str().to_string(), tenant))
        .unzip();
    sqlx::query(
        "INSERT INTO claim_cursors (step, tenant) \
         SELECT * FROM UNNEST($1::text[], $2::text[]) \
         ON CONFLICT (step) DO UPDATE SET tenant = EXCLUDED.tenant",
    )
    .bind(steps)
    .bind(tenants)
    .execute(&mut *conn)
    .await
    .map_err(store_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::pick;
    use std::collections::VecDeque;

    fn lanes(spec: &[(&str, &[i64])]) -> Vec<(String, VecDeque<i64>)> {
        spec.iter()
            .map(|(t, ids)| (t.to_string(), ids.iter().copied().collect()))
            .collect()
    }

    #[test]
    fn picks_round_robin_from_after_the_cursor() {
        let spec: &[(&str, &[i64])] = &[("a", &[1, 2, 3]), ("b", &[4]), ("c", &[5, 6])];
        let (ids, served) = pick(lanes(spec), None, 5, 2);
        assert_eq!(ids, [1, 2, 4, 5, 6]);
        assert_eq!(served.as_deref(), Some("c"));
        let (ids, served) = pick(lanes(spec), Some("a"), 2, 1);
        assert_eq!(ids, [4, 5]);
        assert_eq!(served.as_deref(), Some("c"));
        let (ids, _) = pick(lanes(&[("a", &[1, 2, 3])]), Some("z"), 3, 1);
        assert_eq!(ids, [1, 2, 3], "a tenant alone takes the whole limit");
    }
}
