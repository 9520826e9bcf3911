//! Which deliveries are where: the SQLite backend's in-memory queue index.
//!
//! One process owns a database file at a time (see the file lock in `open`), so
//! the queue's shape can live in memory: per step, one lane of ready ids per tenant
//! in round-robin order (highest priority first within a lane), FIFO groups, a
//! heap of due times and a heap of lease ends.
//! Claims pick ids here in O(1) each, whatever the backlog; the rows themselves are
//! read and updated by primary key. The index is rebuilt from the `deliveries`
//! table when the file is opened, which is also what voids the leases of a process
//! that died.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use crate::backend::lane::ReadyLane;
use crate::backend::place::{Counts, Place};
use crate::backend::{ClaimRequest, LeaseRef, QueueDepth, StepWork};
use crate::event::{Priority, StepName, TenantId};
use crate::time::Timestamp;

/// Delivery ids are handed out in sequence: a multiplication spreads them over a
/// hash table as well as SipHash does, at a fraction of the cost.
#[derive(Default, Clone, Copy, Debug)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// A delivery as the index knows it: where it is and how often it ran, never
/// what it carries.
#[derive(Debug)]
struct Entry {
    step: StepName,
    tenant: TenantId,
    group: Option<Arc<str>>,
    due_at: Timestamp,
    /// Ready as soon as it is scheduled (its due time was its emit time); a delayed
    /// event or a retry waits on the heap until its due time passes.
    immediate: bool,
    priority: Priority,
    place: Place,
    token: u64,
    /// Attempts started, this one included while leased.
    attempt: u32,
    /// The attempt count the row holds: a claim records itself in `leases`
    /// instead of rewriting the row, so the two differ while it is leased.
    stored_attempt: u32,
    first_attempt_at: Option<Timestamp>,
}

/// A delivery for the index: new, or read back from the file.
#[derive(Debug)]
pub(super) struct NewEntry {
    pub(super) id: u64,
    pub(super) step: StepName,
    pub(super) tenant: TenantId,
    pub(super) group: Option<Arc<str>>,
    pub(super) due_at: Timestamp,
    pub(super) immediate: bool,
    pub(super) priority: Priority,
    pub(super) attempt: u32,
    pub(super) first_attempt_at: Option<Timestamp>,
}

/// One claimed delivery; the caller reads its row and records the claim.
#[derive(Debug)]
pub(super) struct Pick {
    pub(super) lease: LeaseRef,
    pub(super) step: StepName,
    pub(super) tenant: TenantId,
    pub(super) group: Option<Arc<str>>,
    pub(super) attempt: u32,
    pub(super) first_attempt_at: Timestamp,
    /// Attempts used before this claim that the row does not count yet (a lease
    /// that expired in this process): to be written with the claim.
    pub(super) unrecorded_attempts: Option<u32>,
}

/// A delivery's attempt count and first-attempt time, for settling its row.
#[derive(Clone, Copy, Debug)]
pub(super) struct Attempts {
    pub(super) attempt: u32,
    pub(super) first_attempt_at: Option<Timestamp>,
}

impl Attempts {
    /// The attempts without the current claim's: what a deferred delivery
    /// keeps (no first attempt once none counts).
    pub(super) fn unclaimed(self) -> Attempts {
        let attempt = self.attempt.saturating_sub(1);
        Attempts {
            attempt,
            first_attempt_at: self.first_attempt_at.filter(|_| attempt > 0),
        }
    }
}

#[derive(Debug, Default)]
struct StepQueue {
    /// Ready ids per tenant, in claim order; only tenants with ready work have a lane.
    lanes: HashMap<TenantId, ReadyLane>,
    /// Tenants with ready work, in round-robin order.
    rotation: VecDeque<TenantId>,
}

#[derive(Debug, Default)]
pub(super) struct Index {
    entries: IdMap<Entry>,
    steps: HashMap<StepName, StepQueue>,
    /// Unfinished deliveries of each (step, tenant, group), in emit order; only the
    /// head is ever ready, delayed or leased.
    groups: HashMap<(StepName, TenantId, Arc<str>), VecDeque<u64>>,
    delayed: BinaryHeap<Reverse<(Timestamp, u64)>>,
    leases: BinaryHeap<Reverse<(Timestamp, u64, u64)>>,
    next_token: u64,
    counts: Counts,
}

impl Index {
    /// Adds a delivery; ids must be added in increasing order per FIFO group.
    pub(super) fn insert(&mut self, new: NewEntry) {
        let id = new.id;
        let group_key = new
            .group
            .clone()
            .map(|g| (new.step.clone(), new.tenant.clone(), g));
        let immediate = new.immediate;
        self.entries.insert(
            id,
            Entry {
                step: new.step,
                tenant: new.tenant,
                group: new.group,
                due_at: new.due_at,
                immediate,
                priority: new.priority,
                place: Place::Waiting,
                token: 0,
                attempt: new.attempt,
                stored_attempt: new.attempt,
                first_attempt_at: new.first_attempt_at,
            },
        );
        self.counts.waiting += 1;
        if let Some(key) = group_key {
            let queue = self.groups.entry(key).or_default();
            queue.push_back(id);
            if queue.len() > 1 {
                return; // waits behind the group's head
            }
        }
        self.schedule(id, immediate);
    }

    fn move_to(&mut self, id: u64, place: Place) -> Option<&mut Entry> {
        let entry = self.entries.get_mut(&id)?;
        self.counts.relocate(&mut entry.place, place);
        Some(entry)
    }

    fn schedule(&mut self, id: u64, immediate: bool) {
        if immediate {
            self.make_ready(id);
        } else if let Some(entry) = self.move_to(id, Place::Delayed) {
            let due = entry.due_at;
            self.delayed.push(Reverse((due, id)));
        }
    }

    fn make_ready(&mut self, id: u64) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        self.counts.relocate(&mut entry.place, Place::Ready);
        let queue = self.steps.entry(entry.step.clone()).or_default();
        match queue.lanes.get_mut(&entry.tenant) {
            Some(lane) => lane.push(id, entry.priority),
            None => {
                let mut lane = ReadyLane::default();
                lane.push(id, entry.priority);
                queue.lanes.insert(entry.tenant.clone(), lane);
                queue.rotation.push_back(entry.tenant.clone());
            }
        }
    }

    /// Whether `lease` is the live lease of its delivery.
    /// The steps with unfinished deliveries, in name order, once those due
    /// by `now` are ready.
    pub(super) fn steps_with_work(&mut self, now: Timestamp) -> Vec<StepWork> {
        self.promote_due(now);
        let mut per_step: std::collections::BTreeMap<&StepName, (u64, u64, u64)> =
            Default::default();
        for entry in self.entries.values() {
            let counts = per_step.entry(&entry.step).or_default();
            counts.0 += 1;
            match entry.place {
                Place::Ready => counts.1 += 1,
                Place::Leased => counts.2 += 1,
                _ => {}
            }
        }
        per_step
            .into_iter()
            .map(|(step, (pending, ready, leased))| StepWork {
                step: step.clone(),
                pending,
                ready,
                leased,
            })
            .collect()
    }

    /// The unleased deliveries of `step`, each as it would be inserted again
    /// (for a move to another step).
    pub(super) fn movable(&self, step: &StepName) -> Vec<NewEntry> {
        self.entries
            .iter()
            .filter(|(_, e)| e.step == *step && e.place != Place::Leased)
            .map(|(&id, e)| NewEntry {
                id,
                step: e.step.clone(),
                tenant: e.tenant.clone(),
                group: e.group.clone(),
                due_at: e.due_at,
                immediate: e.immediate,
                priority: e.priority,
                attempt: e.stored_attempt,
                first_attempt_at: e.first_attempt_at,
            })
            .collect()
    }

    /// Whether delivery `id` is leased now.
    pub(super) fn is_leased(&self, id: u64) -> bool {
        self.entries
            .get(&id)
            .is_some_and(|e| e.place == Place::Leased)
    }

    pub(super) fn leased_by(&self, lease: &LeaseRef) -> bool {
        self.entries
            .get(&lease.id)
            .is_some_and(|e| e.place == Place::Leased && e.token == lease.token)
    }

    /// Moves what is due at `now` to ready: delayed deliveries and expired leases.
    pub(super) fn promote_due(&mut self, now: Timestamp) {
        while let Some(&Reverse((due, id))) = self.delayed.peek() {
            if due > now {
                break;
            }
            self.delayed.pop();
            if self
                .entries
                .get(&id)
                .is_some_and(|e| e.place == Place::Delayed && e.due_at == due)
            {
                self.make_ready(id);
            }
        }
        while let Some(&Reverse((until, id, token))) = self.leases.peek() {
            if until > now {
                break;
            }
            self.leases.pop();
            if self.leased_by(&LeaseRef { id, token }) {
                self.make_ready(id);
            }
        }
    }

    /// Leases due deliveries per step, round robin over tenants.
    pub(super) fn claim(&mut self, request: &ClaimRequest) -> Vec<Pick> {
        self.promote_due(request.now);
        let quantum = request.tenant_quantum.max(1);
        let mut picks = Vec::new();
        for want in &request.steps {
            let Some(queue) = self.steps.get_mut(&want.step) else {
                continue;
            };
            let mut taken: Vec<u64> = Vec::new();
            while taken.len() < want.max {
                let Some(tenant) = queue.rotation.pop_front() else {
                    break;
                };
                let Some(lane) = queue.lanes.get_mut(&tenant) else {
                    continue;
                };
                let room = want.max - taken.len();
                // The quantum applies while other tenants wait; alone, a tenant
                // would get quantum after quantum anyway.
                let room = if queue.rotation.is_empty() {
                    room
                } else {
                    room.min(quantum)
                };
                lane.take_into(room, &mut taken);
                if lane.is_empty() {
                    queue.lanes.remove(&tenant);
                } else {
                    queue.rotation.push_back(tenant);
                }
            }
            let until = request.now + want.lease;
            for id in taken {
                self.next_token += 1;
                let token = self.next_token;
                if let Some(entry) = self.move_to(id, Place::Leased) {
                    entry.token = token;
                    let unrecorded =
                        (entry.attempt != entry.stored_attempt).then_some(entry.attempt);
                    entry.stored_attempt = entry.attempt;
                    // Saturating: a damaged file may hold any count.
                    entry.attempt = entry.attempt.saturating_add(1);
                    let first = *entry.first_attempt_at.get_or_insert(request.now);
                    picks.push(Pick {
                        lease: LeaseRef { id, token },
                        step: entry.step.clone(),
                        tenant: entry.tenant.clone(),
                        group: entry.group.clone(),
                        attempt: entry.attempt,
                        first_attempt_at: first,
                        unrecorded_attempts: unrecorded,
                    });
                    self.leases.push(Reverse((until, id, token)));
                }
            }
        }
        self.compact_leases();
        picks
    }

    /// When the next delayed delivery falls due or the next lease ends.
    pub(super) fn next_due(&self) -> Option<Timestamp> {
        let delay = self.delayed.peek().map(|Reverse((t, _))| *t);
        let lease = self.leases.peek().map(|Reverse((t, _, _))| *t);
        match (delay, lease) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Drops heap entries of leases that were completed or released: without this
    /// the heap would hold every claim of the last lease period.
    fn compact_leases(&mut self) {
        if self.leases.len() <= 2 * self.counts.leased as usize + 1024 {
            return;
        }
        let entries = &self.entries;
        self.leases.retain(|Reverse((_, id, token))| {
            entries
                .get(id)
                .is_some_and(|e| e.place == Place::Leased && e.token == *token)
        });
    }

    /// Removes a finished delivery and lets the next of its FIFO group go.
    pub(super) fn finish(&mut self, id: u64) {
        let Some(entry) = self.entries.remove(&id) else {
            return;
        };
        *self.counts.slot(entry.place) -= 1;
        if entry.place == Place::Ready {
            // Finishing is for leased deliveries; should a ready one ever be
            // finished, its lane must not keep the id.
            if let Some(queue) = self.steps.get_mut(&entry.step) {
                if let Some(lane) = queue.lanes.get_mut(&entry.tenant) {
                    lane.remove(id);
                }
            }
        }
        let Some(group) = entry.group else {
            return;
        };
        let key = (entry.step, entry.tenant, group);
        let Some(queue) = self.groups.get_mut(&key) else {
            return;
        };
        queue.retain(|other| *other != id);
        match queue.front().copied() {
            Some(next) => {
                let immediate = self.entries.get(&next).is_some_and(|e| e.immediate);
                self.schedule(next, immediate);
            }
            None => {
                self.groups.remove(&key);
            }
        }
    }

    /// A delivery's attempts, as a completion settles them into its row.
    pub(super) fn attempts(&self, id: u64) -> Option<Attempts> {
        self.entries.get(&id).map(|e| Attempts {
            attempt: e.attempt,
            first_attempt_at: e.first_attempt_at,
        })
    }

    /// Makes a leased delivery due again at `at`; its row now counts its attempts.
    pub(super) fn retry(&mut self, lease: &LeaseRef, at: Timestamp) {
        if !self.leased_by(lease) {
            return;
        }
        if let Some(entry) = self.entries.get_mut(&lease.id) {
            entry.due_at = at;
            entry.immediate = false;
            entry.stored_attempt = entry.attempt;
        }
        self.schedule(lease.id, false);
    }

    /// Makes a leased delivery due again at `at`, its attempt not counted; its
    /// row holds the attempts that remain.
    pub(super) fn defer(&mut self, lease: &LeaseRef, at: Timestamp) {
        if !self.leased_by(lease) {
            return;
        }
        if let Some(entry) = self.entries.get_mut(&lease.id) {
            let left = Attempts {
                attempt: entry.attempt,
                first_attempt_at: entry.first_attempt_at,
            }
            .unclaimed();
            entry.attempt = left.attempt;
            entry.first_attempt_at = left.first_attempt_at;
            entry.stored_attempt = left.attempt;
            entry.due_at = at;
            entry.immediate = false;
        }
        self.schedule(lease.id, false);
    }

    /// Gives a leased delivery back, ready at once, its attempt not counted.
    pub(super) fn release(&mut self, lease: &LeaseRef) {
        if !self.leased_by(lease) {
            return;
        }
        if let Some(entry) = self.entries.get_mut(&lease.id) {
            entry.attempt = entry.attempt.saturating_sub(1);
        }
        self.make_ready(lease.id);
    }

    /// Counts as of `now`: what is due counts as ready.
    pub(super) fn depth(&mut self, now: Timestamp, dead: u64) -> QueueDepth {
        self.promote_due(now);
        self.counts.depth(dead)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::backend::StepClaim;

    fn entry(id: u64, tenant: &str, group: Option<&str>) -> NewEntry {
        NewEntry {
            id,
            step: StepName::new("s").unwrap(),
            tenant: TenantId::new(tenant).unwrap(),
            group: group.map(Arc::from),
            due_at: Timestamp::EPOCH,
            immediate: true,
            priority: Priority::Normal,
            attempt: 0,
            first_attempt_at: None,
        }
    }

    fn claim(index: &mut Index, max: usize, quantum: usize) -> Vec<u64> {
        let request = ClaimRequest {
            now: Timestamp::from_millis(10),
            steps: vec![StepClaim {
                step: StepName::new("s").unwrap(),
                max,
                lease: Duration::from_secs(30),
            }],
            tenant_quantum: quantum,
        };
        index
            .claim(&request)
            .into_iter()
            .map(|p| p.lease.id)
            .collect()
    }

    #[test]
    fn claims_take_a_quantum_per_tenant_in_turn() {
        let mut index = Index::default();
        for id in 1..=6 {
            index.insert(entry(id, "a", None));
        }
        index.insert(entry(7, "b", None));
        assert_eq!(claim(&mut index, 4, 2), [1, 2, 7, 3]);
        assert_eq!(claim(&mut index, 10, 2), [4, 5, 6]);
        let depth = index.depth(Timestamp::EPOCH, 0);
        assert_eq!((depth.ready, depth.in_flight), (0, 7));
    }

    #[test]
    fn a_group_head_holds_its_successors_until_it_finishes() {
        let mut index = Index::default();
        index.insert(entry(1, "a", Some("g")));
        index.insert(entry(2, "a", Some("g")));
        index.insert(entry(3, "a", None));
        assert_eq!(claim(&mut index, 10, 16), [1, 3]);
        assert_eq!(index.depth(Timestamp::EPOCH, 0).waiting, 1);
        index.finish(1);
        assert_eq!(claim(&mut index, 10, 16), [2]);
    }
}
