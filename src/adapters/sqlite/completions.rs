//! The writer's completions: read checks, state writes, counter adds, cron
//! markers, and the retries and dead letters a completion settles its input with.

use rusqlite::{params, OptionalExtension};

use super::cache::Lookup;
use super::deliveries::Tried;
use super::index::Attempts;
use super::rows::{id_to, store_error};
use super::writer::{Effect, Group, Writer};
use crate::backend::{
    counter_bytes, cron_fire_settled, sum_adds, Action, Completion, FailureKind, Marker, Outcome,
    StoreError, Value, Versioned, CRON_FIRE_HORIZON,
};
use crate::time::Timestamp;

/// Settles a retried delivery: due again at ?2 after error ?3, its attempts
/// (?4, ?5) now in its row. ?1 is the delivery.
const SETTLE_RETRY: &str = "UPDATE deliveries SET due_at = ?2, last_error = ?3, attempt = ?4, \
    first_attempt_at = ?5 WHERE id = ?1";

/// Makes a delivery due again at ?2 with ?3 attempts counted (first at ?4):
/// deferred by flow control, the claim not counted.
const SETTLE_DEFER: &str =
    "UPDATE deliveries SET due_at = ?2, attempt = ?3, first_attempt_at = ?4 WHERE id = ?1";

/// Copies a delivery given up on at ?2, with error ?3 and attempts (?4, ?5), to
/// the dead letters. ?1 is the delivery.
const SETTLE_DEAD_LETTER: &str = "INSERT INTO dead_letters (step, tenant, delivery_group, attempts, \
    first_attempt_at, failed_at, last_error, event_id, topic, trace_id, causation_id, group_key, \
    emitted_at, deliver_at, headers, payload, priority, kind) \
    SELECT step, tenant, delivery_group, ?4, coalesce(?5, ?2), ?2, ?3, event_id, topic, trace_id, \
    causation_id, group_key, emitted_at, deliver_at, headers, payload, priority, ?6 FROM deliveries \
    WHERE id = ?1";

impl Writer {
    pub(super) fn complete(
        &mut self,
        c: Completion,
        group: &mut Group,
    ) -> Result<Outcome, StoreError> {
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
        if let Some(Marker::Delivery { key }) = &c.marker {
            if self.delivery_marked(key)? {
                return Ok(Outcome::Duplicate);
            }
        }
        match c.action {
            Action::Commit {
                reads,
                writes,
                adds,
                emits,
                cancels,
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
                        Err(refused) => return Ok(refused.outcome()),
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
                for cancel in &cancels {
                    self.cancel(c.tenant.as_str(), cancel, group)?;
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
            Action::Defer { at } => {
                if let Some(lease) = c.input {
                    self.defer(lease.id, at)?;
                    self.forget_lease(lease.id)?;
                    group.consume(lease.id);
                    group.effects.push(Effect::Defer(lease, at));
                }
            }
            Action::DeadLetter {
                error,
                at,
                kind,
                emits,
            } => {
                if let Some(lease) = c.input {
                    self.dead_letter(lease.id, at, &error, kind)?;
                    for delivery in &emits {
                        self.insert_delivery(delivery, group)?;
                    }
                    self.delete_delivery(lease.id)?;
                    group.consume(lease.id);
                    group.effects.push(Effect::Finish(lease.id));
                    group.effects.push(Effect::DeadLetters(1));
                }
            }
            Action::Requeue {
                delivery,
                attempts,
                first_attempt_at,
                error,
            } => {
                let tried = Tried {
                    attempts,
                    first_attempt_at,
                    error: &error,
                };
                self.insert_tried_delivery(&delivery, Some(tried), group)?;
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
                let tried = Tried {
                    attempts,
                    first_attempt_at,
                    error: &error,
                };
                self.insert_dead_letter(&delivery, tried, at, kind, group)?;
                for delivery in &emits {
                    self.insert_delivery(delivery, group)?;
                }
            }
        }
        if let Some(Marker::Delivery { key }) = &c.marker {
            self.conn
                .prepare_cached("INSERT INTO delivery_markers (key, at) VALUES (?1, ?2)")
                .and_then(|mut s| s.execute(params![&**key, Timestamp::system_now().as_millis()]))
                .map_err(store_error)?;
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
    pub(super) fn upsert_state(
        &mut self,
        tenant: &str,
        key: &str,
        value: &[u8],
    ) -> Result<u64, StoreError> {
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

    /// Copies delivery `id`, given up on at `at` with `error` for the reason
    /// `kind`, to the dead letters.
    fn dead_letter(
        &self,
        id: u64,
        at: Timestamp,
        error: &str,
        kind: FailureKind,
    ) -> Result<(), StoreError> {
        let attempts = self.attempts(id)?;
        self.conn
            .prepare_cached(SETTLE_DEAD_LETTER)
            .and_then(|mut s| {
                s.execute(params![
                    id_to(id),
                    at.as_millis(),
                    error,
                    attempts.attempt,
                    attempts.first_attempt_at.map(Timestamp::as_millis),
                    kind.as_str(),
                ])
            })
            .map(drop)
            .map_err(store_error)
    }

    /// Writes a deferred delivery's new due time and its attempts less the
    /// claim that deferred it.
    fn defer(&self, id: u64, at: Timestamp) -> Result<(), StoreError> {
        let attempts = self.attempts(id)?.unclaimed();
        self.conn
            .prepare_cached(SETTLE_DEFER)
            .and_then(|mut s| {
                s.execute(params![
                    id_to(id),
                    at.as_millis(),
                    attempts.attempt,
                    attempts.first_attempt_at.map(Timestamp::as_millis)
                ])
            })
            .map(drop)
            .map_err(store_error)
    }

    /// Whether a broker delivery's marker is in the file.
    fn delivery_marked(&self, key: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM delivery_markers WHERE key = ?1)")
            .and_then(|mut s| s.query_row([key], |r| r.get(0)))
            .map_err(store_error)
    }

    fn attempts(&self, id: u64) -> Result<Attempts, StoreError> {
        self.index
            .attempts(id)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery {id} is leased but not indexed")))
    }
}
