//! An execution's transaction: the reads it saw, the writes and adds it made and
//! the events it emitted, buffered until commit.

use std::collections::BTreeMap;

use crate::backend::{Add, ReadCheck, Value, Write};
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
}

/// A transaction's parts, as a commit carries them.
pub(crate) struct Parts {
    pub(crate) reads: Vec<ReadCheck>,
    pub(crate) writes: Vec<Write>,
    pub(crate) adds: Vec<Add>,
    pub(crate) emits: Vec<Envelope>,
}

impl Txn {
    pub(super) fn is_empty(&self) -> bool {
        self.reads.is_empty()
            && self.writes.is_empty()
            && self.adds.is_empty()
            && self.emits.is_empty()
    }

    pub(crate) fn into_parts(self) -> Parts {
        if self.reads.is_empty() && self.writes.is_empty() && self.adds.is_empty() {
            return Parts {
                reads: Vec::new(),
                writes: Vec::new(),
                adds: Vec::new(),
                emits: self.emits,
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
        }
    }
}
