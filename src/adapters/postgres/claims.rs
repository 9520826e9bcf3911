//! Claims: due deliveries per step in request order, round robin across
//! tenants, FIFO group heads only, under `FOR UPDATE SKIP LOCKED` so that
//! concurrent claimers never wait for one another.
//!
//! A claim is one statement for all the steps asked for (one round trip, no
//! transaction around it): per step, it reads each tenant's oldest claimable
//! rows of each priority (a loose index scan over the step's tenants, at most
//! the step's limit per tenant and priority), orders them as the memory
//! adapter's rotation does (turns of at most `tenant_quantum` rows per tenant,
//! each tenant's highest priority first, starting after the tenant the
//! previous claim served last), keeps the step's limit, then locks and leases them,
//! skipping any another claimer holds. The statement also returns how many rows
//! it picked and the next time a row becomes claimable. If it could not lease
//! all it picked (another claimer held some), one more pass takes their place,
//! so contention does not leave work behind.
//!
//! Where each step's rotation goes on is kept in memory, per backend: engines
//! in other processes rotate on their own, each fair over the tenants it serves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use sqlx::{PgConnection, Row};

use super::deliveries::HEAD;
use super::error::store_error;
use super::rows::{attempt_from, event_from, id_from};
use crate::backend::{ClaimBatch, ClaimRequest, Claimed, LeaseRef, StoreError};
use crate::event::Priority;
use crate::time::Timestamp;

/// A tenant's candidate rows when any row has a priority other than normal:
/// each priority read as a range of due times of its own (see migration 4 in
/// `schema.rs`), the others from a partial index that `priority <> 0` selects.
fn by_priority() -> String {
    let other_priorities = Priority::ALL
        .iter()
        .filter(|p| !p.is_normal())
        .map(|p| format!("({}::smallint)", p.as_i16()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "(SELECT d.id, d.tenant, d.priority, d.available_at FROM deliveries d \
          WHERE d.step = t.step AND d.tenant = t.tenant AND d.priority = 0 \
            AND d.available_at <= $5 AND {HEAD} \
          ORDER BY d.available_at, d.id LIMIT r.room) \
         UNION ALL \
         (SELECT o.* FROM (VALUES {other_priorities}) AS v(priority) CROSS JOIN LATERAL ( \
            SELECT d.id, d.tenant, d.priority, d.available_at FROM deliveries d \
            WHERE d.step = t.step AND d.tenant = t.tenant AND d.priority <> 0 \
              AND d.priority = v.priority AND d.available_at <= $5 AND {HEAD} \
            ORDER BY d.available_at, d.id LIMIT r.room) o)"
    )
}

/// A tenant's candidate rows while every row is of normal priority: one range
/// of due times, each taken as normal (the parent statement's very scan).
/// Exact then, and cheaper to plan (PostgreSQL plans the claim afresh for its
/// parameters every time, and planning is half its cost).
fn in_due_order() -> String {
    format!(
        "SELECT d.id, d.tenant, 0::smallint AS priority, d.available_at FROM deliveries d \
         WHERE d.step = t.step AND d.tenant = t.tenant AND d.available_at <= $5 AND {HEAD} \
         ORDER BY d.available_at, d.id LIMIT r.room"
    )
}

/// Claims and leases, for steps `$1` with limits `$2`, lease ends `$3` and
/// rotation cursors `$4`, at `$5`, with turns of `$6` rows per tenant, each
/// tenant's rows chosen by `candidates`.
///
/// Returns one row per delivery leased (its request position `ord` and its
/// place `pos` in the step's order), then one summary row with `id = -1`, the
/// number of rows picked in `token`, the next claimable time in
/// `first_attempt_at`, and in `ord` 1 if any row has a priority other than
/// normal (else 0). That check is a first row by priority, which only the
/// partial index of prioritised rows provides in order (not an `EXISTS`,
/// which drops its `ORDER BY`): else a planner that estimates `priority <> 0`
/// as common (no statistics yet) reads the whole table at every claim in
/// search of a row that is not there.
fn claim_sql(candidates: &str) -> String {
    format!(
        "WITH RECURSIVE \
         req AS MATERIALIZED ( \
           SELECT r.step COLLATE \"C\" AS step, r.room, r.lease_until, \
                  r.cursor COLLATE \"C\" AS cursor, r.ord \
           FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[]) \
             WITH ORDINALITY AS r(step, room, lease_until, cursor, ord)), \
         tenants(step, tenant) AS ( \
           SELECT r.step, (SELECT d.tenant FROM deliveries d WHERE d.step = r.step \
                           ORDER BY d.tenant LIMIT 1) FROM req r \
           UNION ALL \
           SELECT t.step, (SELECT d.tenant FROM deliveries d \
                           WHERE d.step = t.step AND d.tenant > t.tenant \
                           ORDER BY d.tenant LIMIT 1) \
           FROM tenants t WHERE t.tenant IS NOT NULL), \
         cand AS ( \
           SELECT c.id, t.step, c.tenant, c.priority, c.available_at, \
                  COALESCE(c.tenant <= r.cursor, false) AS wrapped \
           FROM tenants t JOIN req r ON r.step = t.step CROSS JOIN LATERAL ( \
             {candidates}) c \
           WHERE t.tenant IS NOT NULL), \
         turns AS ( \
           SELECT c.*, (row_number() OVER (PARTITION BY c.step, c.tenant \
                          ORDER BY c.priority DESC, c.available_at, c.id) - 1) / $6 AS turn \
           FROM cand c), \
         ranked AS ( \
           SELECT t.id, t.step, row_number() OVER (PARTITION BY t.step \
                    ORDER BY t.turn, t.wrapped, t.tenant, t.priority DESC, t.available_at, t.id) AS pos \
           FROM turns t), \
         picked AS MATERIALIZED ( \
           SELECT k.id, k.pos, r.ord, r.lease_until FROM ranked k \
           JOIN req r ON r.step = k.step WHERE k.pos <= r.room), \
         locked AS MATERIALIZED ( \
           SELECT d.id, p.pos, p.ord, p.lease_until FROM deliveries d JOIN picked p ON p.id = d.id \
           WHERE d.available_at <= $5 ORDER BY d.id FOR UPDATE OF d SKIP LOCKED), \
         leased AS ( \
           UPDATE deliveries d SET leased = true, token = d.token + 1, \
             attempt = d.attempt + 1, first_attempt_at = COALESCE(d.first_attempt_at, $5), \
             available_at = l.lease_until \
           FROM locked l WHERE d.id = l.id \
           RETURNING d.id, d.token, d.attempt, d.first_attempt_at, d.last_error, d.event, \
             l.ord, l.pos, d.tenant::text, d.delivery_group) \
         SELECT * FROM leased \
         UNION ALL \
         SELECT -1, (SELECT count(*) FROM picked), NULL, \
           (SELECT min(available_at) FROM deliveries WHERE available_at > $5), \
           NULL, NULL, \
           CASE WHEN (SELECT priority FROM deliveries WHERE priority <> 0 \
                      ORDER BY priority LIMIT 1) IS NULL THEN 0 ELSE 1 END, \
           NULL, NULL, NULL"
    )
}

/// The two forms of the claim, made once.
fn statements() -> &'static [String; 2] {
    static STATEMENTS: OnceLock<[String; 2]> = OnceLock::new();
    STATEMENTS.get_or_init(|| [claim_sql(&in_due_order()), claim_sql(&by_priority())])
}

/// Whether any of `deliveries` has another priority than normal.
pub(super) fn any_prioritised(deliveries: &[crate::backend::NewDelivery]) -> bool {
    deliveries.iter().any(|d| !d.event.priority.is_normal())
}

/// Whether claims read priorities: while no row has another priority than
/// normal, the claim orders by due time alone. Every claim reports whether
/// such rows exist, and this process's publishes and commits of one say so at
/// once; so a claim reads priorities whenever the previous claim or this
/// process saw any. The first claim after another process first stores one
/// may still take it in due order.
#[derive(Debug)]
pub(super) struct PriorityUse {
    in_use: AtomicBool,
    /// Publishes of prioritised deliveries so far: a claim that saw none
    /// turns `in_use` off only if none was published while it ran.
    published: AtomicU64,
}

impl Default for PriorityUse {
    /// Unknown until the first claim: read them.
    fn default() -> Self {
        PriorityUse {
            in_use: AtomicBool::new(true),
            published: AtomicU64::new(0),
        }
    }
}

impl PriorityUse {
    /// Notes that prioritised deliveries are being published (or were just).
    pub(super) fn publishing(&self) {
        self.published.fetch_add(1, Ordering::SeqCst);
        self.in_use.store(true, Ordering::SeqCst);
    }

    /// Takes what a claim that began after `published` publishes saw.
    fn saw(&self, any: bool, published: u64) {
        let quiet = self.published.load(Ordering::SeqCst) == published;
        self.in_use.store(any || !quiet, Ordering::SeqCst);
    }
}

/// Per step, the tenant a claim served last: the next claim's round robin
/// starts after it.
#[derive(Debug, Default)]
pub(super) struct Rotation {
    served: Mutex<HashMap<String, String>>,
}

impl Rotation {
    fn cursors(&self, request: &ClaimRequest) -> Vec<Option<String>> {
        let served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        request
            .steps
            .iter()
            .map(|s| served.get(s.step.as_str()).cloned())
            .collect()
    }

    fn advance(&self, request: &ClaimRequest, last: HashMap<usize, (i64, String)>) {
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        for (at, (_, tenant)) in last {
            if let Some(step) = request.steps.get(at) {
                served.insert(step.step.as_str().to_string(), tenant);
            }
        }
    }
}

/// What one pass of the claim statement returned.
struct Pass {
    /// (request position, place in the step's order, delivery).
    claimed: Vec<(usize, i64, Claimed)>,
    picked: u64,
    next_due: Option<i64>,
    /// Whether any row has another priority than normal.
    priorities: bool,
}

/// Claims due deliveries for `request`.
pub(super) async fn claim(
    conn: &mut PgConnection,
    rotation: &Rotation,
    priorities: &PriorityUse,
    request: &ClaimRequest,
) -> Result<ClaimBatch, StoreError> {
    let [in_due_order, by_priority] = statements();
    let published = priorities.published.load(Ordering::SeqCst);
    let sql = if priorities.in_use.load(Ordering::SeqCst) {
        by_priority
    } else {
        in_due_order
    };
    let mut rooms: Vec<usize> = request.steps.iter().map(|s| s.max).collect();
    let mut claimed: Vec<(usize, i64, Claimed)> = Vec::new();
    let mut next_due = None;
    // The second pass takes the place of rows another claimer held.
    for _pass in 0..2 {
        if rooms.iter().all(|r| *r == 0) {
            break;
        }
        let pass = run_pass(conn, sql, rotation, request, &rooms).await?;
        next_due = pass.next_due;
        priorities.saw(pass.priorities, published);
        let got = pass.claimed.len() as u64;
        for (at, _, _) in &pass.claimed {
            rooms[*at] = rooms[*at].saturating_sub(1);
        }
        let offset = claimed.iter().map(|(_, pos, _)| *pos).max().unwrap_or(0);
        claimed.extend(
            pass.claimed
                .into_iter()
                .map(|(at, pos, c)| (at, pos + offset, c)),
        );
        if got >= pass.picked {
            break;
        }
    }
    claimed.sort_by_key(|(at, pos, _)| (*at, *pos));
    Ok(ClaimBatch {
        deliveries: claimed.into_iter().map(|(_, _, c)| c).collect(),
        next_due: next_due.map(Timestamp::from_millis),
    })
}

async fn run_pass(
    conn: &mut PgConnection,
    sql: &str,
    rotation: &Rotation,
    request: &ClaimRequest,
    rooms: &[usize],
) -> Result<Pass, StoreError> {
    let now = request.now;
    let steps: Vec<&str> = request.steps.iter().map(|s| s.step.as_str()).collect();
    let limits: Vec<i64> = rooms
        .iter()
        .map(|r| i64::try_from(*r).unwrap_or(i64::MAX))
        .collect();
    let lease_ends: Vec<i64> = request
        .steps
        .iter()
        .map(|s| (now + s.lease).as_millis())
        .collect();
    let quantum = i64::try_from(request.tenant_quantum.max(1)).unwrap_or(i64::MAX);
    let rows = sqlx::query(sql)
        .bind(steps)
        .bind(limits)
        .bind(lease_ends)
        .bind(rotation.cursors(request))
        .bind(now.as_millis())
        .bind(quantum)
        .fetch_all(&mut *conn)
        .await
        .map_err(store_error)?;
    let mut pass = Pass {
        claimed: Vec::with_capacity(rows.len().saturating_sub(1)),
        picked: 0,
        next_due: None,
        priorities: false,
    };
    // Per request position: the last place served and its tenant.
    let mut last: HashMap<usize, (i64, String)> = HashMap::new();
    for row in rows {
        let id: i64 = row.try_get(0).map_err(store_error)?;
        if id < 0 {
            let picked: i64 = row.try_get(1).map_err(store_error)?;
            pass.picked = u64::try_from(picked).unwrap_or(0);
            pass.next_due = row.try_get(3).map_err(store_error)?;
            let priorities: Option<i64> = row.try_get(6).map_err(store_error)?;
            pass.priorities = priorities.unwrap_or(0) != 0;
            continue;
        }
        let token: i64 = row.try_get(1).map_err(store_error)?;
        let attempt: i32 = row.try_get(2).map_err(store_error)?;
        let first: Option<i64> = row.try_get(3).map_err(store_error)?;
        let last_error: Option<String> = row.try_get(4).map_err(store_error)?;
        let event: String = row.try_get(5).map_err(store_error)?;
        let ord: i64 = row.try_get(6).map_err(store_error)?;
        let pos: i64 = row.try_get(7).map_err(store_error)?;
        let tenant: String = row.try_get(8).map_err(store_error)?;
        let group: Option<String> = row.try_get(9).map_err(store_error)?;
        // `ord` counts the request's steps from 1.
        let at =
            usize::try_from(ord - 1).map_err(|_| super::error::corrupt("a step index", ord))?;
        let Some(step) = request.steps.get(at) else {
            return Err(super::error::corrupt("a step index", ord));
        };
        match last.get(&at) {
            Some((p, _)) if *p > pos => {}
            _ => {
                last.insert(at, (pos, tenant));
            }
        }
        let claim = Claimed::new(
            LeaseRef {
                id: id_from(id)?,
                token: id_from(token)?,
            },
            step.step.clone(),
            event_from(&event)?,
            attempt_from(attempt)?,
            Timestamp::from_millis(first.unwrap_or(now.as_millis())),
            last_error,
        )
        .with_group(group.map(Arc::from));
        pass.claimed.push((at, pos, claim));
    }
    rotation.advance(request, last);
    Ok(pass)
}
