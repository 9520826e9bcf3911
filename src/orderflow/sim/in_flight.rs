//! [`InFlight`]: calls in flight per key, and the most there ever were at
//! once, for the invariants that bound them (payments per store, webhook
//! attempts per endpoint).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Default)]
struct Counts<K> {
    now: BTreeMap<K, u32>,
    most: BTreeMap<K, u32>,
}

/// Counts calls in flight per key `K`; clones share the counts.
pub(super) struct InFlight<K>(Arc<Mutex<Counts<K>>>);

impl<K> Clone for InFlight<K> {
    fn clone(&self) -> Self {
        InFlight(self.0.clone())
    }
}

impl<K: Ord> Default for InFlight<K> {
    fn default() -> Self {
        InFlight(Arc::new(Mutex::new(Counts {
            now: BTreeMap::new(),
            most: BTreeMap::new(),
        })))
    }
}

/// One call counted in flight until dropped (a call cut short by a crash
/// or a timeout too).
pub(super) struct Flying<K: Ord> {
    key: K,
    counts: InFlight<K>,
}

impl<K: Ord> Drop for Flying<K> {
    fn drop(&mut self) {
        if let Some(n) = self.counts.lock().now.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
    }
}

impl<K> InFlight<K> {
    fn lock(&self) -> MutexGuard<'_, Counts<K>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<K: Ord + Clone> InFlight<K> {
    /// Counts a call of `key` in flight until the returned guard drops.
    pub(super) fn take_off(&self, key: &K) -> Flying<K> {
        let mut counts = self.lock();
        let now = counts.now.entry(key.clone()).or_default();
        *now += 1;
        let now = *now;
        let most = counts.most.entry(key.clone()).or_default();
        *most = (*most).max(now);
        Flying {
            key: key.clone(),
            counts: self.clone(),
        }
    }

    /// The most calls of `key` ever in flight at once.
    pub(super) fn most(&self, key: &K) -> u32 {
        self.lock().most.get(key).copied().unwrap_or(0)
    }
}
