//! Commit footprints (the state keys a commit read and changed) and grouping the
//! re-runs of conflicted executions into rounds whose footprints do not clash.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};

use crate::backend::{Action, Claimed, Completion, ReadCheck};
use crate::event::TenantId;

/// The state keys one commit read, and the keys it changed (writes and adds), as
/// hashes of (tenant, key), in 64 bytes: see [`KeySet`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Footprint {
    reads: KeySet,
    changes: KeySet,
}

/// The read checks of a completion, if it is a commit.
fn reads_of(action: &Action) -> &[ReadCheck] {
    match action {
        Action::Commit { reads, .. } => reads,
        _ => &[],
    }
}

impl Footprint {
    /// The footprint of a commit whose tenant's keys hash from `seed`. Only a
    /// commit with reads can conflict: any other has an empty footprint.
    fn of(seed: u64, action: &Action) -> Self {
        let mut footprint = Footprint::default();
        let Action::Commit {
            reads,
            writes,
            adds,
            ..
        } = action
        else {
            return footprint;
        };
        if reads.is_empty() {
            return footprint;
        }
        for read in reads {
            footprint.reads.insert(key_hash(seed, &read.key));
        }
        for write in writes {
            footprint.changes.insert(key_hash(seed, &write.key));
        }
        for add in adds {
            footprint.changes.insert(key_hash(seed, &add.key));
        }
        footprint
    }
}

/// The seed of a tenant's key hashes: tenants' keys are apart, the same name in
/// two tenants is two keys.
fn tenant_seed(tenant: &TenantId) -> u64 {
    key_hash(0, tenant.as_str())
}

thread_local! {
    /// A spare buffer for [`footprints_of`], so that batches without conflicts
    /// allocate nothing for it once each worker thread has one.
    static SPARE_FOOTPRINTS: Cell<Vec<Footprint>> = const { Cell::new(Vec::new()) };
}

/// The footprint of each completion, in order, in case it conflicts; empty (and
/// nothing computed) when no completion reads anything, so none can conflict.
/// Give the buffer back with [`recycle`].
pub(super) fn footprints_of(completions: &[Completion]) -> Vec<Footprint> {
    if completions.iter().all(|c| reads_of(&c.action).is_empty()) {
        return Vec::new();
    }
    let mut footprints = SPARE_FOOTPRINTS.with(Cell::take);
    footprints.reserve(completions.len());
    let mut last: Option<(&TenantId, u64)> = None;
    for c in completions {
        if reads_of(&c.action).is_empty() {
            footprints.push(Footprint::default());
            continue;
        }
        // Completions come in runs of one tenant: hash its name once a run.
        let seed = match last {
            Some((tenant, seed)) if *tenant == c.tenant => seed,
            _ => tenant_seed(&c.tenant),
        };
        last = Some((&c.tenant, seed));
        footprints.push(Footprint::of(seed, &c.action));
    }
    footprints
}

/// Keeps a footprint buffer for the next batch on this thread.
pub(super) fn recycle(mut footprints: Vec<Footprint>) {
    if footprints.capacity() > 0 {
        footprints.clear();
        SPARE_FOOTPRINTS.with(|spare| spare.set(footprints));
    }
}

/// How many keys of each kind a [`Footprint`] keeps exactly.
const EXACT: usize = 5;

/// A set of keys in 32 bytes: the first [`EXACT`] as 32-bit hashes, any more
/// as bits of a 64-bit filter (one bit per key). Keys that only look alike (a
/// shared hash or filter bit) can only put an execution off to a later round,
/// never risk correctness: the backend's read checks decide conflicts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct KeySet {
    exact: [u32; EXACT],
    len: u8,
    spill: u64,
}

impl KeySet {
    fn insert(&mut self, hash: u64) {
        let (exact, bit) = split(hash);
        let len = usize::from(self.len);
        if self.exact[..len].contains(&exact) {
            return;
        }
        if len < EXACT {
            self.exact[len] = exact;
            self.len += 1;
        } else {
            self.spill |= bit;
        }
    }

    fn exact(&self) -> &[u32] {
        &self.exact[..usize::from(self.len)]
    }
}

/// A key hash's exact part (its high half) and its filter bit.
fn split(hash: u64) -> (u32, u64) {
    let exact = (hash >> 32) as u32;
    (exact, bit_of(exact))
}

/// The filter bit of a key, from its exact part, so that a key kept exactly in
/// one set and spilled in another is still seen as one key.
fn bit_of(exact: u32) -> u64 {
    1 << (exact & 63)
}

/// A fast 64-bit hash of a key (FxHash-style words, then a murmur3 finaliser so
/// the low bits the filter uses depend on every byte), starting from `seed`.
fn key_hash(seed: u64, key: &str) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let bytes = key.as_bytes();
    let mut hash = seed ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let word = u64::from_le_bytes(<[u8; 8]>::try_from(word).unwrap_or_default());
        hash = (hash.rotate_left(5) ^ word).wrapping_mul(K);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut tail = [0u8; 8];
        tail[..rest.len()].copy_from_slice(rest);
        hash = (hash.rotate_left(5) ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash
}

/// The keys of the executions taken into a round of re-runs so far.
#[derive(Debug, Default)]
struct Round {
    reads: RoundKeys,
    changes: RoundKeys,
}

impl Round {
    /// Whether an execution with this footprint, committed in the same batch as
    /// those taken, could fail a read check on their changes or fail theirs.
    fn clashes_with(&self, footprint: &Footprint) -> bool {
        self.changes.meets(&footprint.reads) || self.reads.meets(&footprint.changes)
    }

    fn take(&mut self, footprint: &Footprint) {
        self.reads.add(&footprint.reads);
        self.changes.add(&footprint.changes);
    }
}

/// Keys of one kind gathered over a round (re-runs only: may allocate).
#[derive(Debug, Default)]
struct RoundKeys {
    exact: HashSet<u32>,
    /// The filter bits of the spilled keys.
    spill: u64,
    /// The filter bits of the exact keys, for spilled keys to meet them.
    exact_bits: u64,
}

impl RoundKeys {
    fn add(&mut self, keys: &KeySet) {
        for &exact in keys.exact() {
            self.exact.insert(exact);
            self.exact_bits |= bit_of(exact);
        }
        self.spill |= keys.spill;
    }

    /// Whether `keys` may share a key with these.
    fn meets(&self, keys: &KeySet) -> bool {
        keys.exact()
            .iter()
            .any(|&exact| self.exact.contains(&exact) || self.spill & bit_of(exact) != 0)
            || keys.spill & (self.spill | self.exact_bits) != 0
    }
}

/// Takes the next round of re-runs out of `pending`, greedily in order: every
/// execution whose footprint (from the run that conflicted) does not clash with
/// those already taken. The first is always taken, so each round makes progress
/// and an execution put off moves up until it is first; the rest keep their order.
pub(super) fn next_round(
    pending: &mut Vec<(usize, Claimed)>,
    reruns: &HashMap<u64, Rerun>,
) -> Vec<(usize, Claimed)> {
    let mut taken = Round::default();
    let mut round = Vec::new();
    let mut rest = Vec::with_capacity(pending.len());
    for (i, item) in pending.drain(..).enumerate() {
        let footprint = reruns
            .get(&item.1.lease.id)
            .map(|r| r.footprint)
            .unwrap_or_default();
        if i == 0 || !taken.clashes_with(&footprint) {
            taken.take(&footprint);
            round.push(item);
        } else {
            rest.push(item);
        }
    }
    *pending = rest;
    round
}

/// What a batch remembers of an execution that conflicted.
#[derive(Debug, Default)]
pub(super) struct Rerun {
    /// How many times it conflicted.
    pub(super) conflicts: u32,
    /// Its footprint in the run that last conflicted.
    pub(super) footprint: Footprint,
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::{footprints_of, next_round, recycle, tenant_seed, Footprint, Rerun, Round};
    use crate::backend::{Action, Add, Completion, ReadCheck, Write};
    use crate::backend::{Claimed, LeaseRef};
    use crate::event::{build_envelope, EmitOptions};
    use crate::event::{Payload, StepName, TenantId, Topic, TraceId};
    use crate::time::Timestamp;

    /// The footprint of a commit of tenant `a` that reads `reads`, writes
    /// `writes` and adds to `adds`.
    fn footprint(reads: &[&str], writes: &[&str], adds: &[&str]) -> Footprint {
        footprint_of("a", reads, writes, adds)
    }

    fn footprint_of(tenant: &str, reads: &[&str], writes: &[&str], adds: &[&str]) -> Footprint {
        let tenant = TenantId::new(tenant).unwrap();
        Footprint::of(
            tenant_seed(&tenant),
            &Action::Commit {
                reads: reads
                    .iter()
                    .map(|key| ReadCheck {
                        key: key.to_string(),
                        version: None,
                    })
                    .collect(),
                writes: writes
                    .iter()
                    .map(|key| Write {
                        key: key.to_string(),
                        value: None,
                    })
                    .collect(),
                adds: adds
                    .iter()
                    .map(|key| Add {
                        key: key.to_string(),
                        delta: 1,
                        floor: None,
                    })
                    .collect(),
                emits: vec![],
                cancels: Vec::new(),
            },
        )
    }

    /// Whether `b` clashes with a round holding `a`, and `a` with one holding `b`
    /// (the answer must not depend on the order).
    fn clash(a: &Footprint, b: &Footprint) -> bool {
        let (mut holding_a, mut holding_b) = (Round::default(), Round::default());
        holding_a.take(a);
        holding_b.take(b);
        let clash = holding_a.clashes_with(b);
        assert_eq!(clash, holding_b.clashes_with(a), "{a:?} {b:?}");
        clash
    }

    #[test]
    fn footprints_clash_only_where_one_changes_what_the_other_read() {
        let stock = |n: u32| {
            let key = format!("stock/{n}");
            footprint(&["settings", &key], &[&key], &[])
        };
        // Read-modify-writes of different keys, sharing a read-only key: no clash.
        for a in 0..50 {
            for b in 0..50 {
                assert_eq!(clash(&stock(a), &stock(b)), a == b, "{a} {b}");
            }
        }
        // Writes and adds without a read of the key: they clash with readers of
        // it, not with each other.
        let blind = footprint(&["settings"], &["stock/3"], &[]);
        assert!(clash(&blind, &stock(3)));
        assert!(!clash(&blind, &blind), "blind writes never conflict");
        let adder = footprint(&["settings"], &[], &["orders"]);
        assert!(!clash(&adder, &adder), "adds never conflict");
        assert!(clash(&footprint(&["orders"], &[], &[]), &adder));
        // A commit that reads nothing cannot conflict and needs no footprint.
        assert_eq!(
            footprint(&[], &["stock/3"], &["orders"]),
            Footprint::default()
        );
        let other_tenant = footprint_of("b", &["stock/3"], &["stock/3"], &[]);
        assert!(!clash(&other_tenant, &stock(3)), "tenants' keys are apart");
        let nothing = Footprint::of(
            tenant_seed(&TenantId::new("a").unwrap()),
            &Action::Retry {
                at: Timestamp::EPOCH,
                error: String::new(),
            },
        );
        assert_eq!(nothing, Footprint::default());
        let mut round = Round::default();
        round.take(&stock(1));
        round.take(&stock(2));
        assert!(round.clashes_with(&stock(2)) && !round.clashes_with(&stock(4)));
    }

    #[test]
    fn a_batch_s_footprints_follow_its_completions_and_reuse_one_buffer() {
        let commit = |tenant: &str, read: Option<&str>| Completion {
            tenant: TenantId::new(tenant).unwrap(),
            input: None,
            marker: None,
            action: Action::Commit {
                reads: read
                    .map(|key| ReadCheck {
                        key: key.to_string(),
                        version: None,
                    })
                    .into_iter()
                    .collect(),
                writes: vec![],
                adds: vec![],
                emits: vec![],
                cancels: Vec::new(),
            },
        };
        // Nothing reads: nothing is computed, nothing allocated.
        let blind = vec![commit("a", None), commit("b", None)];
        assert_eq!(footprints_of(&blind).capacity(), 0);
        let batch = vec![
            commit("a", Some("k")),
            commit("a", None),
            commit("a", Some("k")),
            commit("b", Some("k")),
        ];
        let footprints = footprints_of(&batch);
        assert_eq!(footprints[0], footprint(&["k"], &[], &[]));
        assert_eq!(footprints[1], Footprint::default());
        assert_eq!(footprints[2], footprints[0]);
        assert_eq!(footprints[3], footprint_of("b", &["k"], &[], &[]));
        assert_ne!(footprints[3], footprints[0]);
        let buffer = footprints.as_ptr();
        recycle(footprints);
        let again = footprints_of(&batch);
        assert_eq!(again.as_ptr(), buffer, "the buffer is reused");
    }

    #[test]
    fn a_footprint_is_small() {
        // Every execution carries one, conflicted or not.
        assert_eq!(std::mem::size_of::<Footprint>(), 64);
    }

    #[test]
    fn large_footprints_spill_into_a_filter_and_still_clash_where_they_must() {
        // An order of seven lines reads and writes seven stock keys: five are
        // kept exactly, two as filter bits.
        let order = |first: u32| {
            let keys: Vec<String> = (first..first + 7).map(|n| format!("stock/{n}")).collect();
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            footprint(&keys, &keys, &[])
        };
        assert!(order(0).reads.spill != 0 && order(0).changes.spill != 0);
        // Overlapping orders clash, whichever key they share (exact or spilled).
        for shift in 1..7 {
            assert!(clash(&order(0), &order(shift)), "shift {shift}");
        }
        for n in 0..7 {
            let single = footprint(&[&format!("stock/{n}")], &[&format!("stock/{n}")], &[]);
            assert!(clash(&order(0), &single), "stock/{n}");
        }
        // Disjoint orders mostly do not; when spilled bits meet by chance the
        // order only waits a round.
        let apart = (1..=20)
            .filter(|k| !clash(&order(0), &order(7 * k)))
            .count();
        assert!(apart >= 10, "only {apart} of 20 disjoint orders seen apart");
    }

    #[test]
    fn rounds_take_the_first_and_then_whatever_does_not_clash_in_order() {
        let step = StepName::new("s").unwrap();
        let event = Arc::new(build_envelope(
            Timestamp::EPOCH,
            Topic::new("t").unwrap(),
            TenantId::new("a").unwrap(),
            TraceId::new(),
            None,
            Payload::encode(&0).unwrap(),
            EmitOptions::default(),
        ));
        // Eight executions, each a read-modify-write of one of three keys.
        let keys = [0, 1, 0, 2, 1, 0, 2, 2];
        let mut reruns = HashMap::new();
        let mut pending = Vec::new();
        for (id, key) in keys.iter().enumerate() {
            let key = format!("k{key}");
            let id = id as u64;
            let lease = LeaseRef { id, token: 1 };
            let claimed = Claimed::new(
                lease,
                step.clone(),
                event.clone(),
                1,
                Timestamp::EPOCH,
                None,
            );
            pending.push((0, claimed));
            reruns.insert(
                id,
                Rerun {
                    conflicts: 1,
                    footprint: footprint(&[&key], &[&key], &[]),
                },
            );
        }
        let ids = |items: &[(usize, Claimed)]| -> Vec<u64> {
            items.iter().map(|(_, c)| c.lease.id).collect()
        };
        let mut round = next_round(&mut pending, &reruns);
        assert_eq!(ids(&round), [0, 1, 3]);
        assert_eq!(ids(&pending), [2, 4, 5, 6, 7], "the rest keep their order");
        // Execution 0 conflicts again (another batch changed its key): it goes
        // to the back, behind the ones put off.
        pending.push(round.remove(0));
        let round = next_round(&mut pending, &reruns);
        assert_eq!(ids(&round), [2, 4, 6]);
        let round = next_round(&mut pending, &reruns);
        assert_eq!(ids(&round), [5, 7]);
        let round = next_round(&mut pending, &reruns);
        assert_eq!(ids(&round), [0]);
        assert!(pending.is_empty());
    }
}
