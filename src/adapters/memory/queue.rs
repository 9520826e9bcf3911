//! The delivery queues: due times, FIFO groups, leases, claims fair across
//! tenants (each tenant's highest priority first), and depth.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use super::records::{Record, Records};
use crate::backend::lane::ReadyLane;
use crate::backend::place::{Counts, Place};
use crate::backend::{
    ClaimBatch, ClaimRequest, Claimed, LeaseRef, NewDelivery, QueueDepth, StepWork,
};
use crate::event::{StepName, TenantId};
use crate::time::Timestamp;

/// One tenant's ready deliveries of one step, in claim order.
#[derive(Debug, Default)]
pub(super) struct Lane {
    /// `None` while the lane is free.
    tenant: Option<TenantId>,
    ids: ReadyLane,
}

/// One step's ready deliveries, in a lane per tenant, and its FIFO groups.
#[derive(Debug)]
pub(super) struct StepQueue {
    name: StepName,
    /// The lane each tenant with ready deliveries holds, by index into `lanes`.
    pub(super) tenants: HashMap<TenantId, usize>,
    pub(super) lanes: Vec<Lane>,
    /// Lanes no tenant holds.
    pub(super) free: Vec<usize>,
    /// Non-empty lanes in round-robin order: a lane is in it exactly while it has
    /// ready deliveries.
    pub(super) rotation: VecDeque<usize>,
    /// The lane last made ready. Deliveries come in runs of one tenant, so it is
    /// checked before hashing the tenant id; it stays held while empty (only it:
    /// any other lane is let go when it empties).
    last: Option<usize>,
    groups: HashMap<(TenantId, Arc<str>), VecDeque<u64>>,
}

impl StepQueue {
    fn new(name: StepName) -> Self {
        StepQueue {
            name,
            tenants: HashMap::new(),
            lanes: Vec::new(),
            free: Vec::new(),
            rotation: VecDeque::new(),
            last: None,
            groups: HashMap::new(),
        }
    }

    /// The lane of `tenant`, taken if it holds none.
    fn lane(&mut self, tenant: &TenantId) -> usize {
        if let Some(last) = self.last {
            if self.lanes[last].tenant.as_ref() == Some(tenant) {
                return last;
            }
        }
        let lane = match self.tenants.get(tenant) {
            Some(&lane) => lane,
            None => {
                let lane = self.free.pop().unwrap_or_else(|| {
                    self.lanes.push(Lane::default());
                    self.lanes.len() - 1
                });
                self.lanes[lane].tenant = Some(tenant.clone());
                self.tenants.insert(tenant.clone(), lane);
                lane
            }
        };
        if let Some(previous) = self.last.replace(lane) {
            if self.lanes[previous].ids.is_empty() {
                self.let_go(previous);
            }
        }
        lane
    }

    /// Frees an empty lane (unless it is the cached last one).
    fn let_go(&mut self, lane: usize) {
        if self.last == Some(lane) {
            return;
        }
        let lane_ref = &mut self.lanes[lane];
        if let Some(tenant) = lane_ref.tenant.take() {
            self.tenants.remove(&tenant);
        }
        lane_ref.ids.trim();
        self.free.push(lane);
    }
}

/// Every delivery, by id and by where it is: ready in its step's lanes, on the
/// delay heap, or leased.
#[derive(Default, Debug)]
pub(super) struct Queue {
    next_id: u64,
    records: Records,
    step_ids: HashMap<StepName, u32>,
    last_step: Option<(StepName, u32)>,
    pub(super) steps: Vec<StepQueue>,
    delayed: BinaryHeap<Reverse<(Timestamp, u64)>>,
    pub(super) leases: BinaryHeap<Reverse<(Timestamp, u64, u64)>>,
    pub(super) counts: Counts,
    /// The deliveries with a cancel key, by tenant, step and key.
    keyed: HashMap<(TenantId, u32, Arc<str>), Vec<u64>>,
}

impl Queue {
    fn set_place(&mut self, id: u64, place: Place) {
        if let Some(rec) = self.records.get_mut(id) {
            self.counts.relocate(&mut rec.place, place);
        }
    }

    /// The index of a step's queues, made on first use.
    fn step_id(&mut self, name: StepName) -> u32 {
        // Deliveries come in runs for one step (a batch's emits, a fan-out):
        // comparing with the last one (a pointer comparison when the names share
        // their allocation) usually saves hashing the name.
        if let Some(&(ref last, id)) = self.last_step.as_ref() {
            if *last == name {
                return id;
            }
        }
        if let Some(&id) = self.step_ids.get(&name) {
            self.last_step = Some((name, id));
            return id;
        }
        let id = u32::try_from(self.steps.len()).expect("fewer than 2^32 steps");
        self.step_ids.insert(name.clone(), id);
        self.last_step = Some((name.clone(), id));
        self.steps.push(StepQueue::new(name));
        id
    }

    /// Inserts a delivery that already ran `attempts` times elsewhere (a
    /// broker's retry): it waits until its due time and carries its history.
    pub(super) fn insert_tried(
        &mut self,
        d: NewDelivery,
        attempts: u32,
        first_attempt_at: Timestamp,
        error: String,
    ) {
        let (due_at, emitted_at) = (d.due_at, d.event.emitted_at);
        self.insert_as(d, due_at <= emitted_at, |rec| {
            rec.attempt = attempts;
            rec.first_attempt_at = Some(first_attempt_at);
            rec.last_error = Some(error);
        });
    }

    pub(super) fn insert(&mut self, d: NewDelivery, immediate: bool) -> u64 {
        self.insert_as(d, immediate, |_| {})
    }

    fn insert_as(
        &mut self,
        d: NewDelivery,
        immediate: bool,
        history: impl FnOnce(&mut Record),
    ) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let step = self.step_id(d.step);
        let group_key = d.group.clone().map(|g| (d.event.tenant.clone(), g));
        if let Some(key) = &d.key {
            self.keyed
                .entry((d.event.tenant.clone(), step, key.clone()))
                .or_default()
                .push(id);
        }
        let mut record = Record {
            step,
            event: d.event,
            group: d.group,
            due_at: d.due_at,
            attempt: 0,
            first_attempt_at: None,
            last_error: None,
            token: 0,
            place: Place::Waiting,
            key: d.key,
        };
        history(&mut record);
        self.records.insert(id, record);
        self.counts.waiting += 1;
        if let Some(key) = group_key {
            let queue = self.steps[step as usize].groups.entry(key).or_default();
            queue.push_back(id);
            if queue.len() > 1 {
                return id; // waits behind the group's head
            }
        }
        self.schedule(id, immediate);
        id
    }

    /// Puts a delivery where it belongs by its due time: ready, or the delay heap.
    fn schedule(&mut self, id: u64, immediate: bool) {
        let Some(rec) = self.records.get(id) else {
            return;
        };
        if immediate {
            self.make_ready(id);
        } else {
            let due = rec.due_at;
            self.delayed.push(Reverse((due, id)));
            self.set_place(id, Place::Delayed);
        }
    }

    fn make_ready(&mut self, id: u64) {
        let Some(rec) = self.records.get_mut(id) else {
            return;
        };
        self.counts.relocate(&mut rec.place, Place::Ready);
        let sq = &mut self.steps[rec.step as usize];
        let lane = sq.lane(&rec.event.tenant);
        let ids = &mut sq.lanes[lane].ids;
        if ids.is_empty() {
            sq.rotation.push_back(lane);
        }
        ids.push(id, rec.event.priority);
    }

    /// Removes a finished delivery and lets the next of its group go.
    pub(super) fn finish(&mut self, id: u64) -> Option<Record> {
        let rec = self.records.remove(id)?;
        *self.counts.slot(rec.place) -= 1;
        if let Some(key) = &rec.key {
            let slot = (rec.event.tenant.clone(), rec.step, key.clone());
            if let Some(ids) = self.keyed.get_mut(&slot) {
                ids.retain(|other| *other != id);
                if ids.is_empty() {
                    self.keyed.remove(&slot);
                }
            }
        }
        if let Some(group) = &rec.group {
            let key = (rec.event.tenant.clone(), group.clone());
            let mut next = None;
            if let Some(sq) = self.steps.get_mut(rec.step as usize) {
                if let Some(queue) = sq.groups.get_mut(&key) {
                    queue.retain(|other| *other != id);
                    next = queue.front().copied();
                    if queue.is_empty() {
                        sq.groups.remove(&key);
                    }
                }
            }
            if let Some(next) = next {
                // A successor that was never delayed is due now; one with a due time
                // of its own waits on the heap, which the next claim or depth count
                // promotes once that time has come.
                let due = self
                    .records
                    .get(next)
                    .is_none_or(|r| r.due_at <= r.event.emitted_at);
                self.schedule(next, due);
            }
        }
        Some(rec)
    }

    /// Removes the waiting deliveries of `step` with cancel key `key` in
    /// `tenant`; leased ones run on.
    pub(super) fn cancel(&mut self, tenant: &TenantId, step: &StepName, key: &Arc<str>) {
        let Some(&step) = self.step_ids.get(step) else {
            return;
        };
        let Some(ids) = self.keyed.get(&(tenant.clone(), step, key.clone())) else {
            return;
        };
        let waiting: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| {
                self.records
                    .get(*id)
                    .is_some_and(|r| r.place != Place::Leased)
            })
            .collect();
        for id in waiting {
            self.finish(id);
        }
    }

    pub(super) fn leased_by(&self, lease: &LeaseRef) -> bool {
        self.records
            .get(lease.id)
            .is_some_and(|r| r.place == Place::Leased && r.token == lease.token)
    }

    /// Drops lease entries of deliveries that were completed or released since they
    /// were claimed. They would otherwise stay until their lease time passed, and
    /// the heap would hold every claim of the last lease period.
    fn compact_leases(&mut self) {
        if self.leases.len() <= 2 * self.counts.leased as usize + 1024 {
            return;
        }
        let records = &self.records;
        self.leases.retain(|Reverse((_, id, token))| {
            records
                .get(*id)
                .is_some_and(|r| r.place == Place::Leased && r.token == *token)
        });
    }

    fn promote_due(&mut self, now: Timestamp) {
        while let Some(Reverse((due, id))) = self.delayed.peek().copied() {
            if due > now {
                break;
            }
            self.delayed.pop();
            if self
                .records
                .get(id)
                .is_some_and(|r| r.place == Place::Delayed && r.due_at == due)
            {
                self.make_ready(id);
            }
        }
        while let Some(Reverse((until, id, token))) = self.leases.peek().copied() {
            if until > now {
                break;
            }
            self.leases.pop();
            if self.leased_by(&LeaseRef { id, token }) {
                self.make_ready(id);
            }
        }
    }

    /// Makes a leased delivery due again at `at`, with the error of its attempt.
    pub(super) fn retry(&mut self, id: u64, at: Timestamp, error: String) {
        if let Some(rec) = self.records.get_mut(id) {
            rec.due_at = at;
            rec.last_error = Some(error);
        }
        self.schedule(id, false);
    }

    /// Makes a leased delivery due again at `at`, its attempt not counted.
    pub(super) fn defer(&mut self, id: u64, at: Timestamp) {
        if let Some(rec) = self.records.get_mut(id) {
            rec.due_at = at;
            rec.attempt = rec.attempt.saturating_sub(1);
            if rec.attempt == 0 {
                rec.first_attempt_at = None;
            }
        }
        self.schedule(id, false);
    }

    /// Makes leased deliveries ready again, their attempt not counted.
    pub(super) fn release(&mut self, leases: &[LeaseRef]) {
        for lease in leases {
            if self.leased_by(lease) {
                if let Some(rec) = self.records.get_mut(lease.id) {
                    rec.attempt = rec.attempt.saturating_sub(1);
                }
                self.make_ready(lease.id);
            }
        }
    }

    /// The steps with unfinished deliveries, in name order.
    pub(super) fn steps_with_work(&mut self, now: Timestamp) -> Vec<StepWork> {
        self.promote_due(now);
        let mut work: Vec<StepWork> = Vec::new();
        let mut per_step: HashMap<u32, (u64, u64, u64)> = HashMap::new();
        for (_, rec) in self.records.iter() {
            let entry = per_step.entry(rec.step).or_default();
            entry.0 += 1;
            match rec.place {
                Place::Ready => entry.1 += 1,
                Place::Leased => entry.2 += 1,
                _ => {}
            }
        }
        for (step, (pending, ready, leased)) in per_step {
            work.push(StepWork {
                step: self.steps[step as usize].name.clone(),
                pending,
                ready,
                leased,
            });
        }
        work.sort_by(|a, b| a.step.cmp(&b.step));
        work
    }

    /// Moves the unleased deliveries of `from` to `to`, or drops them.
    pub(super) fn move_deliveries(&mut self, from: &StepName, to: Option<&StepName>) -> u64 {
        let Some(&step) = self.step_ids.get(from) else {
            return 0;
        };
        let ids: Vec<u64> = self
            .records
            .iter()
            .filter(|(_, r)| r.step == step && r.place != Place::Leased)
            .map(|(id, _)| id)
            .collect();
        let mut moved = 0;
        for id in ids {
            let Some(rec) = self.finish(id) else { continue };
            moved += 1;
            let Some(to) = to else { continue };
            let delivery = NewDelivery {
                step: to.clone(),
                event: rec.event,
                group: rec.group,
                due_at: rec.due_at,
                key: rec.key,
            };
            let immediate = rec.place == Place::Ready;
            let (attempt, first, error) = (rec.attempt, rec.first_attempt_at, rec.last_error);
            self.insert_as(delivery, immediate, |moved| {
                moved.attempt = attempt;
                moved.first_attempt_at = first;
                moved.last_error = error;
            });
        }
        moved
    }

    /// The name of the step at index `step` (a [`Record::step`]).
    pub(super) fn step_name(&self, step: u32) -> &StepName {
        &self.steps[step as usize].name
    }

    /// How many deliveries are where, once those due by `now` are ready; `dead`
    /// is the number of dead letters.
    pub(super) fn depth(&mut self, now: Timestamp, dead: u64) -> QueueDepth {
        self.promote_due(now);
        self.counts.depth(dead)
    }

    pub(super) fn claim(&mut self, req: &ClaimRequest) -> ClaimBatch {
        self.promote_due(req.now);
        let quantum = req.tenant_quantum.max(1);
        let mut out = Vec::new();
        for sc in &req.steps {
            let Some(&step) = self.step_ids.get(&sc.step) else {
                continue;
            };
            let sq = &mut self.steps[step as usize];
            let mut taken = Vec::new();
            while taken.len() < sc.max {
                let Some(lane) = sq.rotation.pop_front() else {
                    break;
                };
                let ids = &mut sq.lanes[lane].ids;
                let room = sc.max - taken.len();
                // The quantum applies while other tenants wait; alone, a tenant
                // would get quantum after quantum anyway.
                let room = if sq.rotation.is_empty() {
                    room
                } else {
                    room.min(quantum)
                };
                ids.take_into(room, &mut taken);
                if ids.is_empty() {
                    sq.let_go(lane);
                } else {
                    sq.rotation.push_back(lane);
                }
            }
            let until = req.now + sc.lease;
            out.reserve(taken.len());
            for id in taken {
                let Some(rec) = self.records.get_mut(id) else {
                    continue;
                };
                rec.token += 1;
                rec.attempt = rec.attempt.saturating_add(1);
                let first = *rec.first_attempt_at.get_or_insert(req.now);
                out.push(
                    Claimed::new(
                        LeaseRef {
                            id,
                            token: rec.token,
                        },
                        sq.name.clone(),
                        rec.event.clone(),
                        rec.attempt,
                        first,
                        rec.last_error.clone(),
                    )
                    .with_group(rec.group.clone()),
                );
                self.leases.push(Reverse((until, id, rec.token)));
                self.counts.relocate(&mut rec.place, Place::Leased);
            }
        }
        self.compact_leases();
        let next_delay = self.delayed.peek().map(|Reverse((t, _))| *t);
        let next_lease = self.leases.peek().map(|Reverse((t, _, _))| *t);
        let next_due = match (next_delay, next_lease) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        ClaimBatch {
            deliveries: out,
            next_due,
        }
    }
}
