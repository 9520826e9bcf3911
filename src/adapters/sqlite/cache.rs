//! Committed state kept in memory, so that most reads need no SQLite read.
//!
//! Why: in WAL mode a read connection throws its whole page cache away whenever
//! another connection has committed since its last read. Under a steady stream
//! of group commits that is every read, so each `get` on a read connection
//! re-reads its B-tree pages from the operating system. The process owns the
//! file (the lock file says so) and every change goes through its one writer,
//! so the writer can keep this cache exact: it records every key a group
//! changed once the group has committed, before any caller hears of the commit.
//!
//! Reads that miss go to a read connection and fill the cache, unless a commit
//! was recorded meanwhile: the value read may then be older than one that
//! commit wrote (and the writer's record of it may already be in the cache or
//! evicted again). Every commit the writer records bumps `commits`, and a fill
//! carries the count it saw before its read began.
//!
//! Memory is bounded by two generations: entries go into the young one, and
//! when it holds half the budget it becomes the old one, dropping the previous
//! old one. Keys in use stay young because writes and misses put them back.

use std::sync::{Mutex, MutexGuard};

use super::keymap::KeyMap;
use crate::backend::Versioned;

/// What the cache holds for one key: its committed value, or `None` when the
/// key is known to be absent.
type Entry = Option<Versioned>;

/// An entry and the group that committed it (0: read from the file, durable).
type Tagged = (Entry, u64);

/// Bytes counted per entry on top of its tenant, key and value: the maps'
/// own bookkeeping, roughly.
const ENTRY_OVERHEAD: usize = 64;

/// The cache of committed state values.
#[derive(Debug)]
pub(super) struct StateCache {
    inner: Mutex<Generations>,
    /// Bytes the young generation may hold before it becomes the old one.
    generation_budget: usize,
}

#[derive(Debug, Default)]
struct Generations {
    /// Commits recorded so far.
    commits: u64,
    young: KeyMap<Tagged>,
    young_bytes: usize,
    old: KeyMap<Tagged>,
}

/// What a lookup found.
#[derive(Debug)]
pub(super) enum Lookup {
    /// The committed value (`None`: the key does not exist), and the group
    /// that committed it, which may not be durable yet (`acks.rs`).
    Hit(Entry, u64),
    /// Not cached; read it and [`fill`](StateCache::fill) with this ticket.
    Miss(FillTicket),
}

/// Taken at a miss, before the read: says whether a commit came in between.
#[derive(Debug, Clone, Copy)]
pub(super) struct FillTicket {
    commits: u64,
}

impl StateCache {
    /// A cache of at most about `budget_bytes`; 0 caches nothing.
    pub(super) fn new(budget_bytes: usize) -> Self {
        StateCache {
            inner: Mutex::new(Generations::default()),
            generation_budget: budget_bytes / 2,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Generations> {
        // Every update is a whole insert or swap, so a poisoned lock holds
        // consistent maps.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enabled(&self) -> bool {
        self.generation_budget > 0
    }

    /// The committed value of a key, if cached.
    pub(super) fn get(&self, tenant: &str, key: &str) -> Lookup {
        let inner = self.lock();
        match inner
            .young
            .get(tenant, key)
            .or_else(|| inner.old.get(tenant, key))
        {
            Some((entry, group)) => Lookup::Hit(entry.clone(), *group),
            None => Lookup::Miss(FillTicket {
                commits: inner.commits,
            }),
        }
    }

    /// Caches what a read that missed found, unless a commit came since its ticket.
    pub(super) fn fill(&self, ticket: FillTicket, tenant: &str, key: &str, found: &Entry) {
        if !self.enabled() {
            return;
        }
        let mut inner = self.lock();
        if inner.commits == ticket.commits {
            self.insert(&mut inner, tenant, key, (found.clone(), 0));
        }
    }

    /// Records what committed group `group` changed. The writer calls this
    /// after `COMMIT` and before it answers anyone or makes an emitted delivery
    /// claimable.
    pub(super) fn commit<S: AsRef<str>>(
        &self,
        group: u64,
        changes: impl IntoIterator<Item = (S, S, Entry)>,
    ) {
        let mut inner = self.lock();
        inner.commits += 1;
        if !self.enabled() {
            return;
        }
        for (tenant, key, entry) in changes {
            self.insert(&mut inner, tenant.as_ref(), key.as_ref(), (entry, group));
        }
    }

    fn insert(&self, inner: &mut Generations, tenant: &str, key: &str, entry: Tagged) {
        let size = ENTRY_OVERHEAD
            + tenant.len()
            + key.len()
            + entry.0.as_ref().map_or(0, |v| v.value.len());
        if inner.young_bytes + size > self.generation_budget {
            inner.old = std::mem::take(&mut inner.young);
            inner.young_bytes = 0;
        }
        // An older copy in the old generation is shadowed, and dropped with it.
        inner.young.insert(tenant, key, entry);
        inner.young_bytes += size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn value(bytes: &[u8], version: u64) -> Entry {
        Some(Versioned {
            value: Arc::from(bytes),
            version,
        })
    }

    fn hit(cache: &StateCache, key: &str) -> Option<Entry> {
        match cache.get("t", key) {
            Lookup::Hit(entry, _) => Some(entry),
            Lookup::Miss(_) => None,
        }
    }

    fn ticket(cache: &StateCache, key: &str) -> FillTicket {
        match cache.get("t", key) {
            Lookup::Miss(ticket) => ticket,
            Lookup::Hit(entry, _) => panic!("expected a miss, found {entry:?}"),
        }
    }

    #[test]
    fn a_fill_is_served_until_a_commit_changes_the_key() {
        let cache = StateCache::new(1 << 20);
        let miss = ticket(&cache, "k");
        cache.fill(miss, "t", "k", &value(b"a", 1));
        assert_eq!(hit(&cache, "k"), Some(value(b"a", 1)));
        cache.commit(1, [("t", "k", value(b"b", 2))]);
        assert_eq!(hit(&cache, "k"), Some(value(b"b", 2)));
        cache.commit(1, [("t", "k", None)]);
        assert_eq!(
            hit(&cache, "k"),
            Some(None),
            "a deleted key is known absent"
        );
    }

    #[test]
    fn a_fill_read_before_a_commit_is_dropped() {
        let cache = StateCache::new(1 << 20);
        let miss = ticket(&cache, "k");
        // A commit lands (and is evicted again, or touched another key) while
        // the read was under way: what the read found may be older.
        cache.commit(1, [("t", "other", value(b"x", 5))]);
        cache.fill(miss, "t", "k", &value(b"old", 1));
        assert_eq!(hit(&cache, "k"), None);
    }

    #[test]
    fn memory_stays_within_two_generations() {
        let cache = StateCache::new(4 * (ENTRY_OVERHEAD + 8));
        for i in 0..100u64 {
            cache.commit(i, [("t", format!("k{i:04}").as_str(), value(b"v", i))]);
        }
        let inner = cache.lock();
        assert!(inner.young.len() + inner.old.len() <= 4, "kept too much");
        drop(inner);
        assert_eq!(hit(&cache, "k0099"), Some(value(b"v", 99)));
        assert_eq!(hit(&cache, "k0000"), None, "the oldest entries are gone");
    }

    #[test]
    fn a_key_written_again_shadows_its_older_copy() {
        let cache = StateCache::new(2 * 150);
        cache.commit(1, [("t", "k", value(b"1", 1))]);
        cache.commit(1, [("t", "j", value(b"2", 2))]);
        cache.commit(1, [("t", "x", value(b"3", 3))]); // "k" and "j" are old now
        cache.commit(1, [("t", "k", value(b"4", 4))]);
        assert_eq!(hit(&cache, "k"), Some(value(b"4", 4)));
        assert_eq!(hit(&cache, "j"), Some(value(b"2", 2)));
    }

    #[test]
    fn a_zero_budget_caches_nothing() {
        let cache = StateCache::new(0);
        cache.commit(1, [("t", "k", value(b"1", 1))]);
        let miss = ticket(&cache, "k");
        cache.fill(miss, "t", "k", &value(b"1", 1));
        assert_eq!(hit(&cache, "k"), None);
    }
}
