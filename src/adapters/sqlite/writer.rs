//! The one writer: applies a group of operations in one transaction.
//!
//! Every change to the file goes through [`Writer::run`], which the group commit
//! (`commit.rs`) calls with whatever operations queued up meanwhile: claims,
//! publishes, completions, releases, dead-letter replays. They share one
//! transaction and so one fsync; each runs inside its own savepoint, so one that
//! fails is undone alone and reported to its caller alone.
//!
//! The queue index changes only once the transaction has committed (the
//! `Effect`s), so a failed commit leaves memory and file in agreement. Claims are
//! the exception: they take their ids out of the index at once, so that two
//! claims in one group never pick the same delivery, and are given back if the
//! commit fails.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::acks::{DurableMark, Settled};
use super::cache::{Lookup, StateCache};
use super::index::{Attempts, Index, NewEntry};
use super::keymap::Logged;
use super::ops::{Change, Job, Op, Reply};
use super::rows::{id_from, id_to, read_envelope, step_name, store_error, EventParams};
use super::unsynced::Unsynced;
use crate::backend::{
    counter_bytes, cron_fire_settled, sum_adds, Action, Completion, Marker, Outcome, StoreError,
    Value, Versioned, CRON_FIRE_HORIZON,
};
use crate::backend::{ClaimBatch, ClaimRequest, Claimed, LeaseRef, NewDelivery};
use crate::time::Timestamp;

/// How often (in engine time) expired dead letters are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// A change to the index, applied once the transaction holding it commits.
#[derive(Debug)]
enum Effect {
    Insert(NewEntry),
    Finish(u64),
    Retry(LeaseRef, Timestamp),
    Release(LeaseRef),
    DeadLetters(i64),
}

/// What one group of operations has done so far.
#[derive(Debug, Default)]
struct Group {
    effects: Vec<Effect>,
    /// Deliveries a completion in this group already finished, rescheduled or
    /// released: a second completion of one of them is stale.
    consumed: HashSet<u64>,
    /// `consumed` in the order of insertion, to undo one operation's part.
    consumed_log: Vec<u64>,
    /// Leases claimed in this group, given back if the commit fails.
    claimed: Vec<LeaseRef>,
    /// Counter values this group's adds produced, written once per key when the
    /// group commits however many adds hit the key: dashboards and tallies are
    /// hot keys that most completions of a group add to.
    counters: Logged<i64>,
    /// The state keys this group changed, as written (`None`: deleted); they
    /// become the cache's values when the group commits.
    changed: Logged<Option<Versioned>>,
}

impl Group {
    /// Marks a delivery as done with in this group; false if it already was.
    fn consume(&mut self, id: u64) -> bool {
        let fresh = self.consumed.insert(id);
        if fresh {
            self.consumed_log.push(id);
        }
        fresh
    }
}

/// How long dead letters are kept.
#[derive(Clone, Copy, Debug)]
pub(super) struct Retention {
    pub(super) dead_letters: Option<Duration>,
}

/// The connection that writes, and the queue index it keeps in step with the file.
#[derive(Debug)]
pub(super) struct Writer {
    conn: Connection,
    index: Index,
    next_id: u64,
    state_version: u64,
    dead: u64,
    retention: Retention,
    last_prune: Option<Timestamp>,
    in_transaction: bool,
    /// Committed values and versions, updated by every commit (`cache.rs`):
    /// readers' gets and this writer's read checks. The process owns the file,
    /// so nothing else changes them, and a read check of a cached key needs no
    /// `SELECT`.
    cache: Arc<StateCache>,
    /// The keys of groups not yet synced, for readers (`unsynced.rs`); `None`
    /// when commits are as durable as they get once committed
    /// (`Durability::Normal`), so no read has anything to wait for.
    unsynced: Option<Arc<Unsynced>>,
    /// How far groups are durable; told of each group just before its `COMMIT`.
    durable: DurableMark,
    /// Groups that ran a transaction so far; the next one gets the next number.
    groups: u64,
}

/// Reads what a claim hands out: the last error, then the event's columns
/// (`rows::EVENT_COLUMNS`).
const CLAIM_READ: &str =
    "SELECT last_error, event_id, topic, tenant, trace_id, causation_id, group_key, \
    emitted_at, deliver_at, headers, payload FROM deliveries WHERE id = ?1";

/// Settles a retried delivery: due again at ?2 after error ?3, its attempts
/// (?4, ?5) now in its row. ?1 is the delivery.
const SETTLE_RETRY: &str = "UPDATE deliveries SET due_at = ?2, last_error = ?3, attempt = ?4, \
    first_attempt_at = ?5 WHERE id = ?1";

/// Copies a delivery given up on at ?2, with error ?3 and attempts (?4, ?5), to
/// the dead letters. ?1 is the delivery.
const SETTLE_DEAD_LETTER: &str = "INSERT INTO dead_letters (step, tenant, delivery_group, attempts, \
    first_attempt_at, failed_at, last_error, event_id, topic, trace_id, causation_id, group_key, \
    emitted_at, deliver_at, headers, payload) \
    SELECT step, tenant, delivery_group, ?4, coalesce(?5, ?2), ?2, ?3, event_id, topic, trace_id, \
    causation_id, group_key, emitted_at, deliver_at, headers, payload FROM deliveries WHERE id = ?1";

const INSERT_DELIVERY: &str = "INSERT INTO deliveries (id, step, delivery_group, due_at, \
    event_id, topic, tenant, trace_id, causation_id, group_key, emitted_at, deliver_at, headers, payload) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";

impl Writer {
    /// Loads the queue index from the file. Every lease found is void: the process
    /// that held it is gone (the file lock says so), so its deliveries are due
    /// again, with the attempt they used counted into their rows.
    pub(super) fn load(
        conn: Connection,
        retention: Retention,
        cache: Arc<StateCache>,
        unsynced: Option<Arc<Unsynced>>,
        durable: DurableMark,
    ) -> Result<Self, StoreError> {
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             UPDATE deliveries SET attempt = attempt + 1,
                 first_attempt_at = coalesce(first_attempt_at,
                     (SELECT claimed_at FROM leases WHERE leases.id = deliveries.id))
                 WHERE id IN (SELECT id FROM leases);
             DELETE FROM leases;
             COMMIT;",
        )
        .map_err(store_error)?;
        let mut index = Index::default();
        let mut max_id = 0;
        {
            let mut stmt = conn
                .prepare(
                    "SELECT id, step, tenant, delivery_group, due_at, emitted_at, attempt, first_attempt_at \
                     FROM deliveries ORDER BY id",
                )
                .map_err(store_error)?;
            let mut rows = stmt.query([]).map_err(store_error)?;
            while let Some(row) = rows.next().map_err(store_error)? {
                let id = id_from(row.get(0).map_err(store_error)?)?;
                let due_at = Timestamp::from_millis(row.get(4).map_err(store_error)?);
                let emitted_at = Timestamp::from_millis(row.get(5).map_err(store_error)?);
                let tenant: String = row.get(2).map_err(store_error)?;
                let group: Option<String> = row.get(3).map_err(store_error)?;
                let attempt: i64 = row.get(6).map_err(store_error)?;
                let first: Option<i64> = row.get(7).map_err(store_error)?;
                index.insert(NewEntry {
                    id,
                    step: step_name(row.get(1).map_err(store_error)?)?,
                    tenant: crate::event::TenantId::new(tenant)
                        .map_err(|e| StoreError::Corrupt(format!("a stored tenant: {e}")))?,
                    group: group.map(Into::into),
                    due_at,
                    immediate: due_at <= emitted_at,
                    attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                    first_attempt_at: first.map(Timestamp::from_millis),
                });
                max_id = id;
            }
        }
        let state_version: i64 = conn
            .query_row("SELECT coalesce(max(version), 0) FROM state", [], |r| {
                r.get(0)
            })
            .map_err(store_error)?;
        let dead: i64 = conn
            .query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0))
            .map_err(store_error)?;
        Ok(Writer {
            conn,
            index,
            next_id: max_id,
            // A deleted key may have held the largest version; no reader of the
            // process that saw it is alive, so starting from what remains is safe.
            state_version: u64::try_from(state_version).unwrap_or(0),
            dead: u64::try_from(dead).unwrap_or(0),
            retention,
            last_prune: None,
            in_transaction: false,
            cache,
            unsynced,
            durable,
            groups: 0,
        })
    }

    /// Applies a group of operations in one transaction and returns each
    /// caller's answer, for `Acks::settle` to send once the group is durable.
    pub(super) fn run(&mut self, jobs: Vec<Job>) -> Settled {
        if self.in_transaction {
            // A group that panicked midway left its transaction open: undo it.
            let _ = self.exec("ROLLBACK");
            self.in_transaction = false;
        }
        let mut group = Group::default();
        let mut answers: Vec<Option<Result<Reply, StoreError>>> = Vec::with_capacity(jobs.len());
        let mut senders = Vec::with_capacity(jobs.len());
        let mut depths = Vec::new();
        for Job { op, reply } in jobs {
            senders.push(reply);
            match op {
                Op::Change(change) => {
                    answers.push(Some(self.apply_in_savepoint(change, &mut group)));
                }
                Op::Depth(now) => {
                    depths.push((answers.len(), now));
                    answers.push(None);
                }
            }
        }
        let mut seq = 0;
        if self.in_transaction {
            self.in_transaction = false;
            self.groups += 1;
            seq = self.groups;
            let committed = self.write_counters(&mut group).and_then(|()| {
                // Before the commit can be seen: readers learn to wait for it.
                if let Some(unsynced) = &self.unsynced {
                    unsynced.announce(seq, self.durable.current(), group.changed.values.keys());
                }
                self.durable.committing(seq);
                self.exec("COMMIT")
            });
            if committed.is_ok() {
                self.record_commit(&mut group, seq);
            }
            if let Err(err) = committed {
                tracing::error!(error = %err, "commit failed; the group is undone");
                let _ = self.exec("ROLLBACK");
                for lease in &group.claimed {
                    self.index.release(lease);
                }
                group.effects.clear();
                for answer in answers.iter_mut().flatten() {
                    *answer = Err(StoreError::Backend(
                        format!("the transaction did not commit: {err}").into(),
                    ));
                }
            }
        }
        for effect in group.effects {
            match effect {
                Effect::Insert(entry) => self.index.insert(entry),
                Effect::Finish(id) => self.index.finish(id),
                Effect::Retry(lease, at) => self.index.retry(&lease, at),
                Effect::Release(lease) => self.index.release(&lease),
                Effect::DeadLetters(delta) => {
                    self.dead = self.dead.saturating_add_signed(delta);
                }
            }
        }
        for (slot, now) in depths {
            answers[slot] = Some(Ok(Reply::Depth(self.index.depth(now, self.dead))));
        }
        Settled {
            seq,
            answers: senders
                .into_iter()
                .zip(answers)
                .filter_map(|(sender, answer)| Some((sender, answer?)))
                .collect(),
        }
    }

    /// Makes a committed group's state changes known, through the cache, to
    /// readers and to this writer's later read checks.
    fn record_commit(&mut self, group: &mut Group, seq: u64) {
        if group.changed.values.len() > 0 {
            self.cache.commit(seq, group.changed.values.drain());
        }
    }

    fn exec(&self, sql: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(drop)
            .map_err(store_error)
    }

    /// Runs one operation inside a savepoint; on error, undoes it alone.
    fn apply_in_savepoint(
        &mut self,
        change: Change,
        group: &mut Group,
    ) -> Result<Reply, StoreError> {
        if !self.in_transaction {
            self.exec("BEGIN IMMEDIATE")?;
            self.in_transaction = true;
        }
        self.exec("SAVEPOINT op")?;
        let effects_before = group.effects.len();
        let claims_before = group.claimed.len();
        let consumed_before = group.consumed_log.len();
        let counters_before = group.counters.mark();
        let changed_before = group.changed.mark();
        let result = self.apply(change, group);
        match &result {
            Ok(_) => self.exec("RELEASE op")?,
            Err(err) => {
                tracing::warn!(error = %err, "an operation failed; undoing it alone");
                self.exec("ROLLBACK TO op")?;
                self.exec("RELEASE op")?;
                group.effects.truncate(effects_before);
                for lease in group.claimed.drain(claims_before..) {
                    self.index.release(&lease);
                }
                for id in group.consumed_log.drain(consumed_before..) {
                    group.consumed.remove(&id);
                }
                group.counters.undo_to(counters_before);
                group.changed.undo_to(changed_before);
            }
        }
        result
    }

    /// Writes the group's counter values, each once, at the next version.
    fn write_counters(&mut self, group: &mut Group) -> Result<(), StoreError> {
        for (tenant, key, value) in group.counters.values.drain() {
            let value = counter_bytes(value);
            let version = self.upsert_state(&tenant, &key, &value)?;
            group
                .changed
                .set(&tenant, &key, Some(Versioned { value, version }));
        }
        Ok(())
    }

    fn apply(&mut self, change: Change, group: &mut Group) -> Result<Reply, StoreError> {
        match change {
            Change::Publish(deliveries) => {
                for delivery in &deliveries {
                    self.insert_delivery(delivery, group)?;
                }
                Ok(Reply::Done)
            }
            Change::Claim(request) => self.claim(&request, group).map(Reply::Claimed),
            Change::Complete(batch) => {
                let mut outcomes = Vec::with_capacity(batch.len());
                for completion in batch {
                    outcomes.push(self.complete(completion, group)?);
                }
                Ok(Reply::Outcomes(outcomes))
            }
            Change::Release(leases) => {
                for lease in leases {
                    if self.index.leased_by(&lease) && group.consume(lease.id) {
                        self.forget_lease(lease.id)?;
                        group.effects.push(Effect::Release(lease));
                    }
                }
                Ok(Reply::Done)
            }
            Change::Replay(ids, now) => self.replay(&ids, now, group).map(Reply::Count),
            Change::Purge(ids) => {
                let mut purged = 0;
                for id in ids {
                    purged += self
                        .conn
                        .prepare_cached("DELETE FROM dead_letters WHERE id = ?1")
                        .and_then(|mut s| s.execute([id_to(id)]))
                        .map_err(store_error)?;
                }
                group.effects.push(Effect::DeadLetters(-(purged as i64)));
                Ok(Reply::Count(purged))
            }
        }
    }

    fn insert_delivery(
        &mut self,
        delivery: &NewDelivery,
        group: &mut Group,
    ) -> Result<(), StoreError> {
        self.next_id += 1;
        let id = self.next_id;
        let event = EventParams::new(&delivery.event)?;
        let head: [&dyn rusqlite::ToSql; 4] = [
            &id_to(id),
            &delivery.step.as_str(),
            &delivery.group.as_deref(),
            &delivery.due_at.as_millis(),
        ];
        let mut stmt = self
            .conn
            .prepare_cached(INSERT_DELIVERY)
            .map_err(store_error)?;
        // Bound one by one: no list of the 14 values to build per delivery.
        for (i, value) in head.into_iter().chain(event.values()).enumerate() {
            stmt.raw_bind_parameter(i + 1, value).map_err(store_error)?;
        }
        stmt.raw_execute().map_err(store_error)?;
        group.effects.push(Effect::Insert(NewEntry {
            id,
            step: delivery.step.clone(),
            tenant: delivery.event.tenant.clone(),
            group: delivery.group.clone(),
            due_at: delivery.due_at,
            immediate: delivery.due_at <= delivery.event.emitted_at,
            attempt: 0,
            first_attempt_at: None,
        }));
        Ok(())
    }

    fn claim(
        &mut self,
        request: &ClaimRequest,
        group: &mut Group,
    ) -> Result<ClaimBatch, StoreError> {
        self.prune(request.now, group)?;
        let picks = self.index.claim(request);
        group.claimed.extend(picks.iter().map(|p| p.lease));
        let mut deliveries = Vec::with_capacity(picks.len());
        let now = request.now.as_millis();
        for pick in picks {
            let id = id_to(pick.lease.id);
            let (last_error, event) = self
                .conn
                .prepare_cached(CLAIM_READ)
                .and_then(|mut s| {
                    s.query_row([id], |row| {
                        Ok((
                            row.get::<_, Option<String>>(0)?,
                            read_envelope(row, 1, Some(&pick.tenant)),
                        ))
                    })
                    .optional()
                })
                .map_err(store_error)?
                .ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "delivery {} is queued but has no row",
                        pick.lease.id
                    ))
                })?;
            if let Some(used) = pick.unrecorded_attempts {
                self.conn
                    .prepare_cached("UPDATE deliveries SET attempt = ?2 WHERE id = ?1")
                    .and_then(|mut s| s.execute(params![id, used]))
                    .map_err(store_error)?;
            }
            self.conn
                .prepare_cached("INSERT OR REPLACE INTO leases (id, claimed_at) VALUES (?1, ?2)")
                .and_then(|mut s| s.execute(params![id, now]))
                .map_err(store_error)?;
            deliveries.push(Claimed::new(
                pick.lease,
                pick.step,
                std::sync::Arc::new(event?),
                pick.attempt,
                pick.first_attempt_at,
                last_error,
            ));
        }
        Ok(ClaimBatch {
            deliveries,
            next_due: self.index.next_due(),
        })
    }

    /// Drops the record of a claim: the delivery is settled or given back.
    fn forget_lease(&self, id: u64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM leases WHERE id = ?1")
            .and_then(|mut s| s.execute([id_to(id)]))
            .map(drop)
            .map_err(store_error)
    }

    /// Deletes dead letters past their retention, at most once a minute.
    fn prune(&mut self, now: Timestamp, group: &mut Group) -> Result<(), StoreError> {
        let Some(keep) = self.retention.dead_letters else {
            return Ok(());
        };
        if self.last_prune.is_some_and(|last| now < last + PRUNE_EVERY) {
            return Ok(());
        }
        self.last_prune = Some(now);
        let pruned = self
            .conn
            .prepare_cached("DELETE FROM dead_letters WHERE failed_at < ?1")
            .and_then(|mut s| s.execute([(now - keep).as_millis()]))
            .map_err(store_error)?;
        if pruned > 0 {
            tracing::info!(pruned, "dead letters past their retention deleted");
            group.effects.push(Effect::DeadLetters(-(pruned as i64)));
        }
        Ok(())
    }

    fn complete(&mut self, c: Completion, group: &mut Group) -> Result<Outcome, StoreError> {
        if let Some(lease) = &c.input {
            if !self.index.leased_by(lease) || group.consumed.contains(&lease.id) {
                return Ok(Outcome::Stale);
            }
        }
        if let Some(Marker::CronFire { schedule, at }) = &c.marker {
            let (seen, newest): (bool, Option<i64>) = self
                .conn
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM cron_fires WHERE schedule = ?1 AND at = ?2), \
                     (SELECT max(at) FROM cron_fires WHERE schedule = ?1)",
                )
                .and_then(|mut s| {
                    s.query_row(params![schedule.as_str(), at.as_millis()], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                })
                .map_err(store_error)?;
            if cron_fire_settled(*at, seen, newest.map(Timestamp::from_millis)) {
                return Ok(Outcome::Duplicate);
            }
        }
        match c.action {
            Action::Commit {
                reads,
                writes,
                adds,
                emits,
            } => {
                for read in &reads {
                    // Added to earlier in this group: changed since it was read.
                    if group
                        .counters
                        .values
                        .get(c.tenant.as_str(), &read.key)
                        .is_some()
                    {
                        return Ok(Outcome::Conflict);
                    }
                    if self.current_version(c.tenant.as_str(), &read.key, group)? != read.version {
                        return Ok(Outcome::Conflict);
                    }
                }
                // Every add is worked out before anything is written, so a
                // rejected one leaves the completion unapplied.
                let sums = if adds.is_empty() {
                    Vec::new()
                } else {
                    let stored = |key: &str| match group.counters.values.get(c.tenant.as_str(), key)
                    {
                        Some(pending) => Ok(Some(counter_bytes(*pending))),
                        None => self.stored_value(c.tenant.as_str(), key, group),
                    };
                    match sum_adds(&adds, &writes, stored)? {
                        Ok(sums) => sums,
                        Err(rejected) => return Ok(Outcome::Rejected(rejected)),
                    }
                };
                for write in &writes {
                    group.counters.remove(c.tenant.as_str(), &write.key);
                    let written = match &write.value {
                        Some(value) => Some(Versioned {
                            version: self.upsert_state(c.tenant.as_str(), &write.key, value)?,
                            value: value.clone(),
                        }),
                        None => {
                            self.conn
                                .prepare_cached("DELETE FROM state WHERE tenant = ?1 AND key = ?2")
                                .and_then(|mut s| s.execute(params![c.tenant.as_str(), write.key]))
                                .map_err(store_error)?;
                            None
                        }
                    };
                    group.changed.set(c.tenant.as_str(), &write.key, written);
                }
                for (key, sum) in sums {
                    group.counters.set(c.tenant.as_str(), &key, sum);
                }
                for delivery in &emits {
                    self.insert_delivery(delivery, group)?;
                }
                if let Some(lease) = c.input {
                    self.delete_delivery(lease.id)?;
                    group.consume(lease.id);
                    group.effects.push(Effect::Finish(lease.id));
                }
            }
            Action::Retry { at, error } => {
                if let Some(lease) = c.input {
                    self.settle(SETTLE_RETRY, lease.id, at, &error)?;
                    self.forget_lease(lease.id)?;
                    group.consume(lease.id);
                    group.effects.push(Effect::Retry(lease, at));
                }
            }
            Action::DeadLetter { error, at } => {
                if let Some(lease) = c.input {
                    self.settle(SETTLE_DEAD_LETTER, lease.id, at, &error)?;
                    self.delete_delivery(lease.id)?;
                    group.consume(lease.id);
                    group.effects.push(Effect::Finish(lease.id));
                    group.effects.push(Effect::DeadLetters(1));
                }
            }
        }
        if let Some(Marker::CronFire { schedule, at }) = c.marker {
            self.conn
                .prepare_cached("INSERT INTO cron_fires (schedule, at) VALUES (?1, ?2)")
                .and_then(|mut s| s.execute(params![schedule.as_str(), at.as_millis()]))
                .map_err(store_error)?;
            // Keep a horizon behind the newest fire (this one, unless an engine
            // with a clock ahead of ours fired later instants).
            self.conn
                .prepare_cached(
                    "DELETE FROM cron_fires WHERE schedule = ?1 AND at < \
                     (SELECT max(at) FROM cron_fires WHERE schedule = ?1) - ?2",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        schedule.as_str(),
                        CRON_FIRE_HORIZON.as_millis() as i64
                    ])
                })
                .map_err(store_error)?;
        }
        Ok(Outcome::Applied)
    }

    /// A state key's bytes in this transaction, if it exists: as this group
    /// wrote it, as last committed (from the cache), or read from the file.
    fn stored_value(
        &self,
        tenant: &str,
        key: &str,
        group: &Group,
    ) -> Result<Option<Value>, StoreError> {
        if let Some(written) = group.changed.values.get(tenant, key) {
            return Ok(written.as_ref().map(|w| w.value.clone()));
        }
        if let Lookup::Hit(found, _) = self.cache.get(tenant, key) {
            return Ok(found.map(|f| f.value));
        }
        self.conn
            .prepare_cached("SELECT value FROM state WHERE tenant = ?1 AND key = ?2")
            .and_then(|mut s| {
                s.query_row(params![tenant, key], |r| r.get::<_, Vec<u8>>(0))
                    .optional()
            })
            .map(|found| found.map(Value::from))
            .map_err(store_error)
    }

    /// The version a key has now in this transaction: changed by this group,
    /// committed and cached, or read from the file.
    fn current_version(
        &self,
        tenant: &str,
        key: &str,
        group: &Group,
    ) -> Result<Option<u64>, StoreError> {
        if let Some(written) = group.changed.values.get(tenant, key) {
            return Ok(written.as_ref().map(|w| w.version));
        }
        if let Lookup::Hit(found, _) = self.cache.get(tenant, key) {
            return Ok(found.map(|f| f.version));
        }
        let version: Option<i64> = self
            .conn
            .prepare_cached("SELECT version FROM state WHERE tenant = ?1 AND key = ?2")
            .and_then(|mut s| s.query_row(params![tenant, key], |r| r.get(0)).optional())
            .map_err(store_error)?;
        Ok(version.map(|v| v as u64))
    }

    /// Writes a state key at the next version.
    fn upsert_state(&mut self, tenant: &str, key: &str, value: &[u8]) -> Result<u64, StoreError> {
        self.state_version += 1;
        self.conn
            .prepare_cached(
                "INSERT INTO state (tenant, key, value, version) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (tenant, key) DO UPDATE SET value = excluded.value, version = excluded.version",
            )
            .and_then(|mut s| s.execute(params![tenant, key, value, self.state_version as i64]))
            .map(|_| self.state_version)
            .map_err(store_error)
    }

    /// Deletes a finished delivery's row and the record of its claim.
    fn delete_delivery(&self, id: u64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM deliveries WHERE id = ?1")
            .and_then(|mut s| s.execute([id_to(id)]))
            .map_err(store_error)?;
        self.forget_lease(id)
    }

    /// Runs one of the `SETTLE_*` statements for a leased delivery.
    fn settle(&self, sql: &str, id: u64, at: Timestamp, error: &str) -> Result<(), StoreError> {
        let attempts = self.attempts(id)?;
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| {
                s.execute(params![
                    id_to(id),
                    at.as_millis(),
                    error,
                    attempts.attempt,
                    attempts.first_attempt_at.map(Timestamp::as_millis)
                ])
            })
            .map(drop)
            .map_err(store_error)
    }

    fn attempts(&self, id: u64) -> Result<Attempts, StoreError> {
        self.index
            .attempts(id)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery {id} is leased but not indexed")))
    }

    fn replay(
        &mut self,
        ids: &[u64],
        now: Timestamp,
        group: &mut Group,
    ) -> Result<usize, StoreError> {
        let mut replayed = 0;
        for &dead_id in ids {
            let id = self.next_id + 1;
            let row: Option<(String, String, Option<String>, i64)> = self
                .conn
                .prepare_cached(
                    "INSERT INTO deliveries (id, step, tenant, delivery_group, due_at, event_id, topic, \
                     trace_id, causation_id, group_key, emitted_at, deliver_at, headers, payload) \
                     SELECT ?2, step, tenant, delivery_group, ?3, event_id, topic, trace_id, causation_id, \
                     group_key, emitted_at, deliver_at, headers, payload FROM dead_letters WHERE id = ?1 \
                     RETURNING step, tenant, delivery_group, emitted_at",
                )
                .and_then(|mut s| {
                    s.query_row(params![id_to(dead_id), id_to(id), now.as_millis()], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })
                    .optional()
                })
                .map_err(store_error)?;
            let Some((step, tenant, delivery_group, _emitted_at)) = row else {
                continue; // unknown ids are skipped
            };
            self.next_id = id;
            self.conn
                .prepare_cached("DELETE FROM dead_letters WHERE id = ?1")
                .and_then(|mut s| s.execute([id_to(dead_id)]))
                .map_err(store_error)?;
            group.effects.push(Effect::Insert(NewEntry {
                id,
                step: step_name(step)?,
                tenant: crate::event::TenantId::new(tenant)
                    .map_err(|e| StoreError::Corrupt(format!("a stored tenant: {e}")))?,
                group: delivery_group.map(Into::into),
                due_at: now,
                immediate: true,
                attempt: 0,
                first_attempt_at: None,
            }));
            group.effects.push(Effect::DeadLetters(-1));
            replayed += 1;
        }
        Ok(replayed)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_claim_reads_the_event_columns_in_their_order() {
        let columns = super::CLAIM_READ
            .trim_start_matches("SELECT last_error, ")
            .split(" FROM ")
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(columns, super::super::rows::EVENT_COLUMNS);
    }
}
