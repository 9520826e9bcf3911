//! Outbox rows the relay sent to the broker and has not yet settled in the
//! store. Settling them is a commit of its own; it waits instead for the next
//! completion's commit and rides in it, so a relay pass costs the store no
//! commit (no `fsync` on SQLite) of its own. Until then the rows stay leased
//! to the relay: no other relay sends them again unless that lease ends, and
//! if one does, the broker's duplicate window or the store's markers drop the
//! copy, as after a relay that died.

use std::sync::Mutex;

use crate::backend::Completion;
use crate::time::Timestamp;

/// Settles waiting for a commit to ride in.
#[derive(Debug, Default)]
pub(super) struct Unsettled {
    pending: Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    settles: Vec<Completion>,
    /// When the oldest of them was added, in engine time.
    since: Option<Timestamp>,
}

impl Unsettled {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Every update completes before the guard drops: a poisoned list is whole.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the settles of rows relayed at `now`.
    pub(super) fn add(&self, settles: impl IntoIterator<Item = Completion>, now: Timestamp) {
        let mut pending = self.lock();
        pending.settles.extend(settles);
        if !pending.settles.is_empty() {
            pending.since = Some(pending.since.map_or(now, |since| since.min(now)));
        }
    }

    /// Takes every waiting settle.
    pub(super) fn take(&self) -> Vec<Completion> {
        let mut pending = self.lock();
        pending.since = None;
        std::mem::take(&mut pending.settles)
    }

    /// Takes every waiting settle if the oldest was added at or before `at`.
    pub(super) fn take_if_added_by(&self, at: Timestamp) -> Vec<Completion> {
        let mut pending = self.lock();
        match pending.since {
            Some(since) if since <= at => {
                pending.since = None;
                std::mem::take(&mut pending.settles)
            }
            _ => Vec::new(),
        }
    }

    /// Puts back settles whose commit failed: the next relay pass commits
    /// them, unless a completion carries them first.
    pub(super) fn put_back(&self, settles: Vec<Completion>) {
        self.add(settles, Timestamp::from_millis(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Action, LeaseRef};
    use crate::event::TenantId;

    fn settle(id: u64) -> Completion {
        Completion {
            tenant: TenantId::new("t").unwrap(),
            input: Some(LeaseRef { id, token: 1 }),
            marker: None,
            action: Action::acknowledge(),
        }
    }

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn settles_wait_until_taken_and_age_from_the_oldest() {
        let unsettled = Unsettled::default();
        unsettled.add([settle(1)], at(10));
        unsettled.add([settle(2)], at(20));
        assert!(unsettled.take_if_added_by(at(9)).is_empty());
        assert_eq!(unsettled.take_if_added_by(at(10)).len(), 2);
        assert!(unsettled.take().is_empty());
        unsettled.add(Vec::new(), at(30));
        assert!(
            unsettled.take_if_added_by(at(1_000)).is_empty(),
            "nothing added starts no clock"
        );
        unsettled.put_back(vec![settle(3)]);
        assert_eq!(
            unsettled.take_if_added_by(at(0)).len(),
            1,
            "a failed commit's settles are due at once"
        );
    }
}
