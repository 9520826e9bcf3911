//! An execution's transaction: the reads it saw, the writes and adds it made and
//! the events it emitted, buffered until commit.

use std::collections::BTreeMap;

use crate::backend::{Add, Cancel, NewDelivery, ReadCheck, Value, Write};
use crate::event::Envelope;

// BTreeMaps, not HashMaps: an empty one is free to make (no hasher seed to draw),
// and most executions read and write a handful of keys, if any.
#[derive(Default)]
pub(crate) struct Txn {
    pub(super) reads: BTreeMap<String, (Option<u64>, Option<Value>)>,
    pub(super) writes: BTreeMap<String, Option<Value>>,
    /// Per key: the sum of this execution's adds, and the highest floor of
    /// its bounded adds.
    pub(super) adds: BTreeMap<String, (i64, Option<i64>)>,
    pub(crate) emits: Vec<Envelope>,
    /// Deliveries addressed to one step, not fanned out (a wait's timer).
    pub(crate) sends: Vec<NewDelivery>,
    /// Keyed deliveries to cancel.
    pub(crate) cancels: Vec<Cancel>,
}

/// A transaction's parts, as a commit carries them.
pub(crate) struct Parts {
    pub(crate) reads: Vec<ReadCheck>,
    pub(crate) writes: Vec<Write>,
    pub(crate) adds: Vec<Add>,
    pub(crate) emits: Vec<Envelope>,
    pub(crate) sends: Vec<NewDelivery>,
    pub(crate) cancels: Vec<Cancel>,
}

impl Txn {
    pub(super) fn is_empty(&self) -> bool {
        self.reads.is_empty()
            && self.writes.is_empty()
            && self.adds.is_empty()
            && self.emits.is_empty()
            && self.sends.is_empty()
            && self.cancels.is_empty()
    }

    pub(crate) fn into_parts(self) -> Parts {
        if self.reads.is_empty() && self.writes.is_empty() && self.adds.is_empty() {
            return Parts {
                reads: Vec::new(),
                writes: Vec::new(),
                adds: Vec::new(),
                emits: self.emits,
                sends: self.sends,
                cancels: self.cancels,
            };
        }
        let reads = self
            .reads
            .into_iter()
            .map(|(key, (version, _))| ReadCheck { key, version })
            .collect();
        let writes = self
            .writes
            .into_iter()
            .map(|(key, value)| Write { key, value })
            .collect();
        let adds = self
            .adds
            .into_iter()
            .map(|(key, (delta, floor))| Add { key, delta, floor })
            .collect();
        Parts {
            reads,
            writes,
            adds,
            emits: self.emits,
            sends: self.sends,
            cancels: self.cancels,
        }
    }
}
