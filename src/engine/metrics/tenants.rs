//! Per-tenant execution counts, opt-in and bounded: the first `cap` tenants
//! seen get their own counts, every later one adds to a shared "other"
//! bucket, so a platform with a million stores exports at most `cap + 1`
//! series per counter.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::event::TenantId;

/// One tenant's executions within one batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TenantTally {
    pub(crate) processed: u64,
    pub(crate) failed: u64,
    pub(crate) dead_lettered: u64,
}

impl TenantTally {
    fn add(&mut self, other: &TenantTally) {
        self.processed += other.processed;
        self.failed += other.failed;
        self.dead_lettered += other.dead_lettered;
    }
}

/// The engine's per-tenant counts.
#[derive(Debug)]
pub(crate) struct TenantCounters {
    cap: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    by_tenant: HashMap<TenantId, TenantTally>,
    other: TenantTally,
}

/// One tenant's counts since the engine started, from
/// [`Engine::tenant_metrics`](crate::Engine::tenant_metrics).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TenantMetrics {
    /// The tenant; `None` for the tenants past the cap, counted together.
    pub tenant: Option<TenantId>,
    /// Executions that committed.
    pub processed: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// Deliveries moved to the dead letters.
    pub dead_lettered: u64,
}

impl TenantCounters {
    /// Counts for at most `cap` tenants of their own (0: per-tenant counting off).
    pub(crate) fn new(cap: usize) -> Self {
        TenantCounters {
            cap,
            counts: Mutex::new(Counts::default()),
        }
    }

    /// Whether batches should gather per-tenant tallies at all.
    pub(crate) fn enabled(&self) -> bool {
        self.cap > 0
    }

    pub(crate) fn merge(&self, tallies: &[(TenantId, TenantTally)]) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let Counts { by_tenant, other } = &mut *counts;
        for (tenant, tally) in tallies {
            if let Some(known) = by_tenant.get_mut(tenant) {
                known.add(tally);
            } else if by_tenant.len() < self.cap {
                by_tenant.insert(tenant.clone(), *tally);
            } else {
                other.add(tally);
            }
        }
    }

    /// Each counted tenant, ordered by id, then the "other" bucket if it
    /// counted anything.
    pub(crate) fn snapshot(&self) -> Vec<TenantMetrics> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let of = |tenant: Option<TenantId>, t: &TenantTally| TenantMetrics {
            tenant,
            processed: t.processed,
            failed: t.failed,
            dead_lettered: t.dead_lettered,
        };
        let mut all: Vec<TenantMetrics> = counts
            .by_tenant
            .iter()
            .map(|(tenant, t)| of(Some(tenant.clone()), t))
            .collect();
        all.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        if counts.other != TenantTally::default() {
            all.push(of(None, &counts.other));
        }
        all
    }
}

/// Adds one execution of `tenant` to a batch's tallies (a batch holds a few
/// tenants: a linear search beats hashing).
pub(crate) fn tally<'a>(
    tallies: &'a mut Vec<(TenantId, TenantTally)>,
    tenant: &TenantId,
) -> &'a mut TenantTally {
    let at = match tallies.iter().rposition(|(t, _)| t == tenant) {
        Some(at) => at,
        None => {
            tallies.push((tenant.clone(), TenantTally::default()));
            tallies.len() - 1
        }
    };
    &mut tallies[at].1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::new(name).expect("valid tenant")
    }

    #[test]
    fn tenants_past_the_cap_are_counted_together_as_other() {
        let counters = TenantCounters::new(2);
        let one = TenantTally {
            processed: 1,
            ..TenantTally::default()
        };
        let batch: Vec<_> = ["a", "b", "c", "d", "a"]
            .iter()
            .map(|t| (tenant(t), one))
            .collect();
        counters.merge(&batch);
        let snapshot = counters.snapshot();
        let counts: Vec<(Option<&str>, u64)> = snapshot
            .iter()
            .map(|m| (m.tenant.as_ref().map(TenantId::as_str), m.processed))
            .collect();
        assert_eq!(counts, [(Some("a"), 2), (Some("b"), 1), (None, 2)]);
    }

    #[test]
    fn a_batch_tallies_each_tenant_once() {
        let mut tallies = Vec::new();
        tally(&mut tallies, &tenant("a")).processed += 1;
        tally(&mut tallies, &tenant("b")).failed += 1;
        tally(&mut tallies, &tenant("a")).dead_lettered += 1;
        assert_eq!(tallies.len(), 2);
        assert_eq!(
            tallies[0].1,
            TenantTally {
                processed: 1,
                failed: 0,
                dead_lettered: 1
            }
        );
        assert!(!TenantCounters::new(0).enabled());
    }
}
