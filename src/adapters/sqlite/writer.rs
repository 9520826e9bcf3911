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

use rusqlite::{params, Connection};

use super::acks::{DurableMark, Settled};
use super::cache::StateCache;
use super::index::{Index, NewEntry};
use super::keymap::Logged;
use super::ops::{Change, Job, Op, Reply};
use super::rows::{id_from, id_to, priority_from, step_name, store_error};
use super::unsynced::Unsynced;
use crate::backend::{counter_bytes, LeaseRef, StoreError, Versioned};
use crate::time::Timestamp;

/// A change to the index, applied once the transaction holding it commits.
#[derive(Debug)]
pub(super) enum Effect {
    Insert(NewEntry),
    Finish(u64),
    Retry(LeaseRef, Timestamp),
    Defer(LeaseRef, Timestamp),
    Release(LeaseRef),
    DeadLetters(i64),
}

/// What one group of operations has done so far.
#[derive(Debug, Default)]
pub(super) struct Group {
    pub(super) effects: Vec<Effect>,
    /// Deliveries a completion in this group already finished, rescheduled or
    /// released: a second completion of one of them is stale.
    pub(super) consumed: HashSet<u64>,
    /// `consumed` in the order of insertion, to undo one operation's part.
    consumed_log: Vec<u64>,
    /// Leases claimed in this group, given back if the commit fails.
    pub(super) claimed: Vec<LeaseRef>,
    /// Counter values this group's adds produced, written once per key when the
    /// group commits however many adds hit the key: dashboards and tallies are
    /// hot keys that most completions of a group add to.
    pub(super) counters: Logged<i64>,
    /// The state keys this group changed, as written (`None`: deleted); they
    /// become the cache's values when the group commits.
    pub(super) changed: Logged<Option<Versioned>>,
}

impl Group {
    /// Marks a delivery as done with in this group; false if it already was.
    pub(super) fn consume(&mut self, id: u64) -> bool {
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
    pub(super) conn: Connection,
    pub(super) index: Index,
    pub(super) next_id: u64,
    pub(super) state_version: u64,
    dead: u64,
    pub(super) retention: Retention,
    pub(super) last_prune: Option<Timestamp>,
    in_transaction: bool,
    /// Committed values and versions, updated by every commit (`cache.rs`):
    /// readers' gets and this writer's read checks. The process owns the file,
    /// so nothing else changes them, and a read check of a cached key needs no
    /// `SELECT`.
    pub(super) cache: Arc<StateCache>,
    /// The keys of groups not yet synced, for readers (`unsynced.rs`); `None`
    /// when commits are as durable as they get once committed
    /// (`Durability::Normal`), so no read has anything to wait for.
    unsynced: Option<Arc<Unsynced>>,
    /// How far groups are durable; told of each group just before its `COMMIT`.
    durable: DurableMark,
    /// Groups that ran a transaction so far; the next one gets the next number.
    groups: u64,
}

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
                    "SELECT id, step, tenant, delivery_group, due_at, emitted_at, attempt, first_attempt_at, \
                     priority FROM deliveries ORDER BY id",
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
                let priority = priority_from(row.get(8).map_err(store_error)?)?;
                index.insert(NewEntry {
                    id,
                    step: step_name(row.get(1).map_err(store_error)?)?,
                    tenant: crate::event::TenantId::from_stored(&tenant)
                        .map_err(|e| StoreError::Corrupt(format!("a stored tenant: {e}")))?,
                    group: group.map(Into::into),
                    due_at,
                    immediate: due_at <= emitted_at,
                    priority,
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
        let mut works = Vec::new();
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
                Op::Work(now) => {
                    works.push((answers.len(), now));
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
                Effect::Defer(lease, at) => self.index.defer(&lease, at),
                Effect::Release(lease) => self.index.release(&lease),
                Effect::DeadLetters(delta) => {
                    self.dead = self.dead.saturating_add_signed(delta);
                }
            }
        }
        for (slot, now) in depths {
            answers[slot] = Some(Ok(Reply::Depth(self.index.depth(now, self.dead))));
        }
        for (slot, now) in works {
            answers[slot] = Some(Ok(Reply::Work(self.index.steps_with_work(now))));
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
            Change::Move(from, to) => self.move_deliveries(&from, to.as_ref(), group),
            Change::Amend(id, payload) => self
                .conn
                .prepare_cached("UPDATE dead_letters SET payload = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id_to(id), payload.as_json()]))
                .map(Reply::Count)
                .map_err(store_error),
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
}
