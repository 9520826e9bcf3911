//! The dead letters: deliveries given up on, kept to be listed, replayed or
//! purged.

use std::collections::BTreeMap;

use crate::backend::{DeadLetter, DeadLetterQuery, NewDelivery};
use crate::time::Timestamp;

/// The dead letters by id, and the last id handed out.
#[derive(Debug, Default)]
pub(super) struct DeadLetters {
    dead: BTreeMap<u64, DeadLetter>,
    next_dead: u64,
}

impl DeadLetters {
    /// Adds the dead letter `letter` makes with the next id.
    pub(super) fn add(&mut self, letter: impl FnOnce(u64) -> DeadLetter) {
        self.next_dead += 1;
        let dl = letter(self.next_dead);
        self.dead.insert(dl.id, dl);
    }

    pub(super) fn len(&self) -> usize {
        self.dead.len()
    }

    pub(super) fn list(&self, query: &DeadLetterQuery) -> Vec<DeadLetter> {
        self.dead
            .values()
            .filter(|d| query.step.as_ref().is_none_or(|s| *s == d.step))
            .filter(|d| query.tenant.as_ref().is_none_or(|t| *t == d.event.tenant))
            .take(query.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect()
    }

    /// Takes the dead letters `ids` out and hands each to `publish` as a delivery
    /// due `now`; returns how many there were.
    pub(super) fn replay(
        &mut self,
        ids: &[u64],
        now: Timestamp,
        mut publish: impl FnMut(NewDelivery),
    ) -> usize {
        let mut replayed = 0;
        for id in ids {
            if let Some(dl) = self.dead.remove(id) {
                publish(NewDelivery {
                    step: dl.step,
                    event: dl.event,
                    group: dl.group,
                    due_at: now,
                });
                replayed += 1;
            }
        }
        replayed
    }

    /// Drops the dead letters `ids`; returns how many there were.
    pub(super) fn purge(&mut self, ids: &[u64]) -> usize {
        ids.iter()
            .filter(|id| self.dead.remove(id).is_some())
            .count()
    }
}
