//! The broker deliveries handed to the engine and not yet settled: what a
//! completion of one of them must tell the store (its key, step, event and
//! attempts).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::backend::{Claimed, LeaseRef, Received};

/// Held deliveries by the lease id the engine knows; a lease with another
/// token is not held. The engine sees a broker's lease ids with
/// [`BROKERED`] set, so they never meet the store's own (which are row ids,
/// below 2^63).
#[derive(Debug, Default)]
pub(super) struct Leases {
    held: Mutex<HashMap<u64, Received>>,
}

/// The bit that marks a lease id as the broker's.
const BROKERED: u64 = 1 << 63;

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Received>> {
        // Every update completes before the guard drops: a poisoned map is whole.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the engine's `lease` is one of a broker's.
    pub(super) fn is_brokered(lease: &LeaseRef) -> bool {
        lease.id & BROKERED != 0
    }

    /// Records deliveries just handed out (a delivery handed out again under a
    /// new token replaces its old lease) and returns them as the engine sees them.
    pub(super) fn hold(&self, received: Vec<Received>) -> Vec<Claimed> {
        let mut held = self.lock();
        received
            .into_iter()
            .map(|r| {
                let mut claimed = r.claimed.clone();
                claimed.lease.id |= BROKERED;
                held.insert(claimed.lease.id, r);
                claimed
            })
            .collect()
    }

    /// The delivery held under the engine's `lease`, if that lease is current.
    pub(super) fn get(&self, lease: &LeaseRef) -> Option<Received> {
        self.lock()
            .get(&lease.id)
            .filter(|r| r.claimed.lease.token == lease.token)
            .cloned()
    }

    /// Forgets the current ones of the engine's `leases`; returns them as the
    /// broker's leases.
    pub(super) fn remove(&self, leases: &[LeaseRef]) -> Vec<LeaseRef> {
        let mut held = self.lock();
        leases
            .iter()
            .filter_map(|lease| {
                let current = held
                    .get(&lease.id)
                    .is_some_and(|r| r.claimed.lease.token == lease.token);
                if current {
                    held.remove(&lease.id).map(|r| r.claimed.lease)
                } else {
                    None
                }
            })
            .collect()
    }
}
