//! Maps keyed by (tenant, state key), looked up without allocating.

use std::collections::HashMap;

/// Values per state key, tenant then key, so that a lookup by borrowed names
/// allocates nothing.
#[derive(Debug)]
pub(super) struct KeyMap<V> {
    map: HashMap<String, HashMap<String, V>>,
    len: usize,
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap {
            map: HashMap::new(),
            len: 0,
        }
    }
}

impl<V> KeyMap<V> {
    pub(super) fn get(&self, tenant: &str, key: &str) -> Option<&V> {
        self.map.get(tenant)?.get(key)
    }

    pub(super) fn insert(&mut self, tenant: &str, key: &str, value: V) -> Option<V> {
        let keys = match self.map.get_mut(tenant) {
            Some(keys) => keys,
            None => self.map.entry(tenant.to_string()).or_default(),
        };
        let before = match keys.get_mut(key) {
            Some(slot) => Some(std::mem::replace(slot, value)),
            None => {
                keys.insert(key.to_string(), value);
                None
            }
        };
        if before.is_none() {
            self.len += 1;
        }
        before
    }

    pub(super) fn remove(&mut self, tenant: &str, key: &str) -> Option<V> {
        let removed = self.map.get_mut(tenant)?.remove(key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Every (tenant, key), in no particular order.
    pub(super) fn keys(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map
            .iter()
            .flat_map(|(tenant, keys)| keys.keys().map(move |key| (tenant.as_str(), key.as_str())))
    }

    /// Takes every entry out.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = (String, String, V)> {
        self.len = 0;
        std::mem::take(&mut self.map)
            .into_iter()
            .flat_map(|(tenant, keys)| keys.into_iter().map(move |(k, v)| (tenant.clone(), k, v)))
    }
}

/// A [`KeyMap`] whose changes can be undone back to a mark, for the part of a
/// group that one failed operation made.
#[derive(Debug)]
pub(super) struct Logged<V> {
    pub(super) values: KeyMap<V>,
    log: Vec<(String, String, Option<V>)>,
}

impl<V> Default for Logged<V> {
    fn default() -> Self {
        Logged {
            values: KeyMap::default(),
            log: Vec::new(),
        }
    }
}

impl<V> Logged<V> {
    pub(super) fn set(&mut self, tenant: &str, key: &str, value: V) {
        let before = self.values.insert(tenant, key, value);
        self.log.push((tenant.to_string(), key.to_string(), before));
    }

    pub(super) fn remove(&mut self, tenant: &str, key: &str) {
        if let Some(before) = self.values.remove(tenant, key) {
            self.log
                .push((tenant.to_string(), key.to_string(), Some(before)));
        }
    }

    /// Where the log stands, for [`Logged::undo_to`].
    pub(super) fn mark(&self) -> usize {
        self.log.len()
    }

    /// Undoes the changes made after `mark`.
    pub(super) fn undo_to(&mut self, mark: usize) {
        while self.log.len() > mark {
            let Some((tenant, key, before)) = self.log.pop() else {
                break;
            };
            match before {
                Some(value) => self.values.insert(&tenant, &key, value),
                None => self.values.remove(&tenant, &key),
            };
        }
    }
}
