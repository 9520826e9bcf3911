//! The writer's dead letters: replaying them, and pruning them (and broker
//! delivery markers) past their retention.

use std::time::Duration;

use rusqlite::{params, OptionalExtension};

use super::index::NewEntry;
use super::rows::{id_to, priority_from, step_name, store_error};
use super::writer::{Effect, Group, Writer};
use crate::backend::{StoreError, DELIVERY_MARKER_RETENTION};
use crate::time::Timestamp;

/// How often (in engine time) expired dead letters are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

impl Writer {
    /// Deletes dead letters past their retention, at most once a minute.
    pub(super) fn prune(&mut self, now: Timestamp, group: &mut Group) -> Result<(), StoreError> {
        if self.last_prune.is_some_and(|last| now < last + PRUNE_EVERY) {
            return Ok(());
        }
        self.last_prune = Some(now);
        self.conn
            .prepare_cached("DELETE FROM delivery_markers WHERE at < ?1")
            .and_then(|mut s| s.execute([(now - DELIVERY_MARKER_RETENTION).as_millis()]))
            .map_err(store_error)?;
        let Some(keep) = self.retention.dead_letters else {
            return Ok(());
        };
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

    pub(super) fn replay(
        &mut self,
        ids: &[u64],
        now: Timestamp,
        group: &mut Group,
    ) -> Result<usize, StoreError> {
        let mut replayed = 0;
        for &dead_id in ids {
            let id = self.next_id + 1;
            let row: Option<(String, String, Option<String>, i16)> = self
                .conn
                .prepare_cached(
                    "INSERT INTO deliveries (id, step, tenant, delivery_group, due_at, event_id, topic, \
                     trace_id, causation_id, group_key, emitted_at, deliver_at, headers, payload, priority) \
                     SELECT ?2, step, tenant, delivery_group, ?3, event_id, topic, trace_id, causation_id, \
                     group_key, emitted_at, deliver_at, headers, payload, priority FROM dead_letters WHERE id = ?1 \
                     RETURNING step, tenant, delivery_group, priority",
                )
                .and_then(|mut s| {
                    s.query_row(params![id_to(dead_id), id_to(id), now.as_millis()], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })
                    .optional()
                })
                .map_err(store_error)?;
            let Some((step, tenant, delivery_group, priority)) = row else {
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
                tenant: crate::event::TenantId::from_stored(&tenant)
                    .map_err(|e| StoreError::Corrupt(format!("a stored tenant: {e}")))?,
                group: delivery_group.map(Into::into),
                due_at: now,
                immediate: true,
                priority: priority_from(priority)?,
                attempt: 0,
                first_attempt_at: None,
            }));
            group.effects.push(Effect::DeadLetters(-1));
            replayed += 1;
        }
        Ok(replayed)
    }
}
