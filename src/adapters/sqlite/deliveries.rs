//! The writer's delivery rows: inserting them, claiming them, and deleting them
//! once settled.

use rusqlite::{params, OptionalExtension};

use super::index::NewEntry;
use super::ops::Reply;
use super::rows::{id_from, id_to, read_envelope, store_error, EventParams};
use super::writer::{Effect, Group, Writer};
use crate::backend::{
    Cancel, ClaimBatch, ClaimRequest, Claimed, FailureKind, NewDelivery, StoreError,
};
use crate::event::StepName;
use crate::time::Timestamp;

/// Reads what a claim hands out: the last error, then the event's columns
/// (`rows::EVENT_COLUMNS`).
const CLAIM_READ: &str =
    "SELECT last_error, event_id, topic, tenant, trace_id, causation_id, group_key, \
    emitted_at, deliver_at, headers, payload, priority FROM deliveries WHERE id = ?1";

const INSERT_DELIVERY: &str = "INSERT INTO deliveries (id, step, delivery_group, due_at, \
    event_id, topic, tenant, trace_id, causation_id, group_key, emitted_at, deliver_at, headers, payload, \
    priority) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)";

/// Inserts a dead letter: the six values of its head, then the event's.
const INSERT_DEAD_LETTER: &str = "INSERT INTO dead_letters (step, delivery_group, attempts, \
    first_attempt_at, failed_at, last_error, kind, event_id, topic, tenant, trace_id, causation_id, \
    group_key, emitted_at, deliver_at, headers, payload, priority) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)";

/// The attempts a delivery used before it came to this file.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tried<'a> {
    pub(super) attempts: u32,
    pub(super) first_attempt_at: Timestamp,
    pub(super) error: &'a str,
}

impl Writer {
    pub(super) fn insert_delivery(
        &mut self,
        delivery: &NewDelivery,
        group: &mut Group,
    ) -> Result<(), StoreError> {
        self.insert_tried_delivery(delivery, None, group)
    }

    /// Inserts a delivery, with the attempts it already used elsewhere (a
    /// broker's retry, [`Action::Requeue`](crate::backend::Action::Requeue)).
    pub(super) fn insert_tried_delivery(
        &mut self,
        delivery: &NewDelivery,
        tried: Option<Tried<'_>>,
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
        // Bound one by one: no list of the 15 values to build per delivery.
        for (i, value) in head.into_iter().chain(event.values()).enumerate() {
            stmt.raw_bind_parameter(i + 1, value).map_err(store_error)?;
        }
        stmt.raw_execute().map_err(store_error)?;
        drop(stmt);
        // Rare (timers, reminders): a statement of its own keeps the insert
        // every delivery runs as it was.
        if let Some(key) = &delivery.key {
            self.conn
                .prepare_cached("UPDATE deliveries SET cancel_key = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id_to(id), &**key]))
                .map_err(store_error)?;
        }
        if let Some(tried) = &tried {
            self.conn
                .prepare_cached(
                    "UPDATE deliveries SET attempt = ?2, first_attempt_at = ?3, last_error = ?4 \
                     WHERE id = ?1",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        id_to(id),
                        tried.attempts,
                        tried.first_attempt_at.as_millis(),
                        tried.error
                    ])
                })
                .map_err(store_error)?;
        }
        group.effects.push(Effect::Insert(NewEntry {
            id,
            step: delivery.step.clone(),
            tenant: delivery.event.tenant.clone(),
            group: delivery.group.clone(),
            due_at: delivery.due_at,
            immediate: delivery.due_at <= delivery.event.emitted_at,
            priority: delivery.event.priority,
            attempt: tried.as_ref().map_or(0, |t| t.attempts),
            first_attempt_at: tried.map(|t| t.first_attempt_at),
        }));
        Ok(())
    }

    /// Records a dead letter for a delivery that was never in this file's
    /// queue ([`Action::Bury`](crate::backend::Action::Bury)).
    pub(super) fn insert_dead_letter(
        &mut self,
        delivery: &NewDelivery,
        tried: Tried<'_>,
        failed_at: Timestamp,
        kind: FailureKind,
        group: &mut Group,
    ) -> Result<(), StoreError> {
        let event = EventParams::new(&delivery.event)?;
        let head: [&dyn rusqlite::ToSql; 7] = [
            &delivery.step.as_str(),
            &delivery.group.as_deref(),
            &tried.attempts,
            &tried.first_attempt_at.as_millis(),
            &failed_at.as_millis(),
            &tried.error,
            &kind.as_str(),
        ];
        let mut stmt = self
            .conn
            .prepare_cached(INSERT_DEAD_LETTER)
            .map_err(store_error)?;
        for (i, value) in head.into_iter().chain(event.values()).enumerate() {
            stmt.raw_bind_parameter(i + 1, value).map_err(store_error)?;
        }
        stmt.raw_execute().map_err(store_error)?;
        group.effects.push(Effect::DeadLetters(1));
        Ok(())
    }

    pub(super) fn claim(
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
            deliveries.push(
                Claimed::new(
                    pick.lease,
                    pick.step,
                    std::sync::Arc::new(event?),
                    pick.attempt,
                    pick.first_attempt_at,
                    last_error,
                )
                .with_group(pick.group),
            );
        }
        Ok(ClaimBatch {
            deliveries,
            next_due: self.index.next_due(),
        })
    }

    /// Drops the record of a claim: the delivery is settled or given back.
    pub(super) fn forget_lease(&self, id: u64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM leases WHERE id = ?1")
            .and_then(|mut s| s.execute([id_to(id)]))
            .map(drop)
            .map_err(store_error)
    }

    /// Deletes a finished delivery's row and the record of its claim.
    /// Deletes `tenant`'s waiting deliveries that `cancel` names; leased
    /// ones (in the index, or finished earlier in this group) run on.
    pub(super) fn cancel(
        &mut self,
        tenant: &str,
        cancel: &Cancel,
        group: &mut Group,
    ) -> Result<(), StoreError> {
        let ids: Vec<i64> = self
            .conn
            .prepare_cached(
                "SELECT id FROM deliveries WHERE tenant = ?1 AND step = ?2 AND cancel_key = ?3",
            )
            .and_then(|mut s| {
                s.query_map(params![tenant, cancel.step.as_str(), &*cancel.key], |r| {
                    r.get(0)
                })?
                .collect()
            })
            .map_err(store_error)?;
        for id in ids {
            let id = id_from(id)?;
            if self.index.is_leased(id) || group.consumed.contains(&id) {
                continue;
            }
            self.conn
                .prepare_cached("DELETE FROM deliveries WHERE id = ?1")
                .and_then(|mut s| s.execute([id_to(id)]))
                .map_err(store_error)?;
            group.effects.push(Effect::Finish(id));
        }
        Ok(())
    }

    /// Moves the unleased deliveries of `from` to `to`, or deletes them.
    pub(super) fn move_deliveries(
        &mut self,
        from: &StepName,
        to: Option<&StepName>,
        group: &mut Group,
    ) -> Result<Reply, StoreError> {
        let mut moved = 0;
        for mut entry in self.index.movable(from) {
            if group.consumed.contains(&entry.id) {
                continue;
            }
            let id = id_to(entry.id);
            match to {
                Some(to) => {
                    self.conn
                        .prepare_cached("UPDATE deliveries SET step = ?2 WHERE id = ?1")
                        .and_then(|mut s| s.execute(params![id, to.as_str()]))
                        .map_err(store_error)?;
                    group.effects.push(Effect::Finish(entry.id));
                    entry.step = to.clone();
                    group.effects.push(Effect::Insert(entry));
                }
                None => {
                    self.conn
                        .prepare_cached("DELETE FROM deliveries WHERE id = ?1")
                        .and_then(|mut s| s.execute([id]))
                        .map_err(store_error)?;
                    group.effects.push(Effect::Finish(entry.id));
                }
            }
            moved += 1;
        }
        Ok(Reply::Count(moved))
    }

    pub(super) fn delete_delivery(&self, id: u64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM deliveries WHERE id = ?1")
            .and_then(|mut s| s.execute([id_to(id)]))
            .map_err(store_error)?;
        self.forget_lease(id)
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
