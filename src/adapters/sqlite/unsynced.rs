//! Which state keys the groups not yet synced have changed.
//!
//! A read on a read connection may see a commit whose log is not synced yet
//! (`acks.rs`), and must then wait for the sync before it returns. Waiting for
//! every group that has started its `COMMIT` would be safe, but under load some
//! group always has, so every such read would wait for a sync. The writer
//! instead announces each group's keys here before its `COMMIT`, and a read
//! waits only for the last unsynced group that changed its key.
//!
//! Keys are kept as hashes: no string is copied on the writer's path, and a
//! collision only makes a read wait for a sync it did not need.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};

/// The keys of groups not yet known to be synced.
#[derive(Debug, Default)]
pub(super) struct Unsynced {
    inner: Mutex<Groups>,
    hasher: RandomState,
}

#[derive(Debug, Default)]
struct Groups {
    /// Key hash to the last announced group that changed it.
    last_writer: HashMap<u64, u64>,
    /// Announced groups in order, with their key hashes, until synced.
    announced: VecDeque<(u64, Vec<u64>)>,
}

impl Unsynced {
    fn lock(&self) -> MutexGuard<'_, Groups> {
        // Each holder makes whole inserts and removals: a poisoned lock is sound.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hash(&self, tenant: &str, key: &str) -> u64 {
        self.hasher.hash_one((tenant, key))
    }

    /// Records that `group` changes `keys`; called before its `COMMIT`.
    /// Groups up to `durable` are known synced and forgotten.
    pub(super) fn announce<'a>(
        &self,
        group: u64,
        durable: u64,
        keys: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        let hashes: Vec<u64> = keys
            .into_iter()
            .map(|(tenant, key)| self.hash(tenant, key))
            .collect();
        let mut groups = self.lock();
        groups.forget_through(durable);
        for &hash in &hashes {
            groups.last_writer.insert(hash, group);
        }
        groups.announced.push_back((group, hashes));
    }

    /// The last announced group that changed the key (0: none not yet
    /// forgotten). A read that may have seen it waits until it is synced.
    pub(super) fn last_writer(&self, tenant: &str, key: &str) -> u64 {
        let hash = self.hash(tenant, key);
        self.lock().last_writer.get(&hash).copied().unwrap_or(0)
    }
}

impl Groups {
    fn forget_through(&mut self, durable: u64) {
        while self
            .announced
            .front()
            .is_some_and(|(group, _)| *group <= durable)
        {
            let Some((group, hashes)) = self.announced.pop_front() else {
                break;
            };
            for hash in hashes {
                // A later group may have changed the key since: keep its mark.
                if self.last_writer.get(&hash) == Some(&group) {
                    self.last_writer.remove(&hash);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_marked_by_its_last_unsynced_writer_until_that_is_synced() {
        let unsynced = Unsynced::default();
        assert_eq!(unsynced.last_writer("t", "k"), 0);
        unsynced.announce(1, 0, [("t", "k"), ("t", "j")]);
        unsynced.announce(2, 0, [("t", "k")]);
        assert_eq!(unsynced.last_writer("t", "k"), 2);
        assert_eq!(unsynced.last_writer("t", "j"), 1);
        assert_eq!(unsynced.last_writer("u", "k"), 0, "tenants are apart");

        // Group 1 synced: "j" is forgotten, "k" still waits for group 2.
        unsynced.announce(3, 1, [("t", "x")]);
        assert_eq!(unsynced.last_writer("t", "j"), 0);
        assert_eq!(unsynced.last_writer("t", "k"), 2);

        unsynced.announce(4, 3, []);
        assert_eq!(unsynced.last_writer("t", "k"), 0);
        assert_eq!(unsynced.last_writer("t", "x"), 0);
        let groups = unsynced.lock();
        assert_eq!(groups.announced.len(), 1, "only group 4 is kept");
        assert!(groups.last_writer.is_empty());
    }
}
