//! The dead letters: deliveries given up on, kept to be listed, replayed or
//! purged.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::backend::{DeadLetter, DeadLetterQuery, NewDelivery};
use crate::event::Payload;
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
        let first = query.after.map_or(0, |id| id.saturating_add(1));
        self.dead
            .range(first..)
            .map(|(_, d)| d)
            .filter(|d| query.matches(d))
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
                    key: None,
                });
                replayed += 1;
            }
        }
        replayed
    }

    /// Replaces the payload of dead letter `id`'s event; false if there is none.
    pub(super) fn amend(&mut self, id: u64, payload: Payload) -> bool {
        let Some(letter) = self.dead.get_mut(&id) else {
            return false;
        };
        Arc::make_mut(&mut letter.event).payload = payload;
        true
    }

    /// Drops the dead letters `ids`; returns how many there were.
    pub(super) fn purge(&mut self, ids: &[u64]) -> usize {
        ids.iter()
            .filter(|id| self.dead.remove(id).is_some())
            .count()
    }
}
