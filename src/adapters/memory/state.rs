//! Tenant key/value state: values with their versions, read checks, writes and
//! adds.

use std::collections::{BTreeMap, HashMap};

use crate::backend::{counter_bytes, sum_adds, Add, AddError, ReadCheck, Versioned, Write};
use crate::event::TenantId;

/// Every tenant's state, by key, and the last version handed out.
#[derive(Debug, Default)]
pub(super) struct State {
    tenants: HashMap<TenantId, BTreeMap<String, Versioned>>,
    version: u64,
}

impl State {
    #[inline]
    pub(super) fn get(&self, tenant: &TenantId, key: &str) -> Option<Versioned> {
        self.tenants.get(tenant).and_then(|s| s.get(key)).cloned()
    }

    pub(super) fn scan(
        &self,
        tenant: &TenantId,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<(String, Versioned)> {
        use std::ops::Bound;
        let Some(state) = self.tenants.get(tenant) else {
            return Vec::new();
        };
        let from = match after {
            Some(after) if after >= prefix => Bound::Excluded(after.to_string()),
            _ => Bound::Included(prefix.to_string()),
        };
        state
            .range((from, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Whether a key read has another version now than the one read.
    pub(super) fn conflicts(&self, tenant: &TenantId, reads: &[ReadCheck]) -> bool {
        if reads.is_empty() {
            return false;
        }
        let state = self.tenants.get(tenant);
        let current = |key: &str| state.and_then(|s| s.get(key)).map(|v| v.version);
        reads.iter().any(|r| current(&r.key) != r.version)
    }

    /// The new values of the keys `adds` change ([`sum_adds`]), worked out
    /// before anything changes.
    #[inline]
    pub(super) fn sums(
        &self,
        tenant: &TenantId,
        adds: &[Add],
        writes: &[Write],
    ) -> Result<Vec<(String, i64)>, AddError> {
        if adds.is_empty() {
            Ok(Vec::new())
        } else {
            let state = self.tenants.get(tenant);
            let stored = |key: &str| {
                Ok::<_, std::convert::Infallible>(
                    state.and_then(|s| s.get(key)).map(|v| v.value.clone()),
                )
            };
            match sum_adds(adds, writes, stored) {
                Ok(sums) => sums,
                Err(never) => match never {},
            }
        }
    }

    /// Applies `writes`, in order, then stores the `sums` of the adds; every key
    /// set gets a new version.
    #[inline]
    pub(super) fn write(
        &mut self,
        tenant: &TenantId,
        writes: Vec<Write>,
        sums: Vec<(String, i64)>,
    ) {
        if !writes.is_empty() || !sums.is_empty() {
            let state = self.tenants.entry(tenant.clone()).or_default();
            for w in writes {
                match w.value {
                    Some(value) => {
                        self.version += 1;
                        state.insert(
                            w.key,
                            Versioned {
                                value,
                                version: self.version,
                            },
                        );
                    }
                    None => {
                        state.remove(&w.key);
                    }
                }
            }
            for (key, sum) in sums {
                self.version += 1;
                state.insert(
                    key,
                    Versioned {
                        value: counter_bytes(sum),
                        version: self.version,
                    },
                );
            }
        }
    }
}
