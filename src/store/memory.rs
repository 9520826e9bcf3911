//! The in-memory backend: state and queues in one process, behind one lock.
//!
//! Fast and exact, but not durable: everything is gone when the process ends.
//! Use it for tests and for single-process work that can be replayed from
//! elsewhere. Clones share the same data, so two engines given clones of one
//! `MemoryBackend` behave like two processes sharing one database.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::event::{Envelope, StepName, TenantId};
use crate::store::{
    Action, Completion, DeadLetter, DeadLetterQuery, Marker, Outcome, Store, StoreError, Versioned,
};
use crate::time::Timestamp;
use crate::transport::{
    ClaimBatch, ClaimRequest, Claimed, LeaseRef, NewDelivery, QueueDepth, Transport,
};

/// The in-memory storage and transport backend.
///
/// ```
/// let backend = flowline::MemoryBackend::new();
/// let shared = backend.clone(); // same data
/// # let _ = shared;
/// ```
#[derive(Clone, Default)]
pub struct MemoryBackend {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend").finish_non_exhaustive()
    }
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way
        // later readers would misread (every mutation is completed before the guard
        // drops), so a poisoned lock is still safe to use.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Ready,
    Delayed,
    Waiting,
    Leased,
}

#[derive(Debug)]
struct Record {
    step: StepName,
    event: Arc<Envelope>,
    group: Option<Arc<str>>,
    due_at: Timestamp,
    attempt: u32,
    first_attempt_at: Option<Timestamp>,
    last_error: Option<String>,
    token: u64,
    place: Place,
}

#[derive(Default, Debug)]
struct StepQueue {
    ready: HashMap<TenantId, VecDeque<u64>>,
    rotation: VecDeque<TenantId>,
    groups: HashMap<(TenantId, Arc<str>), VecDeque<u64>>,
}

#[derive(Default, Debug)]
struct Inner {
    state: HashMap<TenantId, BTreeMap<String, Versioned>>,
    version: u64,
    next_id: u64,
    records: HashMap<u64, Record>,
    steps: HashMap<StepName, StepQueue>,
    delayed: BinaryHeap<Reverse<(Timestamp, u64)>>,
    leases: BinaryHeap<Reverse<(Timestamp, u64, u64)>>,
    dead: BTreeMap<u64, DeadLetter>,
    next_dead: u64,
    cron_fires: HashSet<(StepName, Timestamp)>,
    last_fire: HashMap<StepName, Timestamp>,
    counts: Counts,
}

#[derive(Default, Debug, Clone, Copy)]
struct Counts {
    ready: u64,
    delayed: u64,
    waiting: u64,
    leased: u64,
}

impl Counts {
    fn slot(&mut self, place: Place) -> &mut u64 {
        match place {
            Place::Ready => &mut self.ready,
            Place::Delayed => &mut self.delayed,
            Place::Waiting => &mut self.waiting,
            Place::Leased => &mut self.leased,
        }
    }
}

impl Inner {
    fn set_place(&mut self, id: u64, place: Place) {
        if let Some(rec) = self.records.get_mut(&id) {
            *self.counts.slot(rec.place) -= 1;
            rec.place = place;
            *self.counts.slot(place) += 1;
        }
    }

    fn insert(&mut self, d: NewDelivery, immediate: bool) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let group_key = d.group.clone().map(|g| (d.event.tenant.clone(), g));
        self.records.insert(
            id,
            Record {
                step: d.step.clone(),
                event: d.event,
                group: d.group,
                due_at: d.due_at,
                attempt: 0,
                first_attempt_at: None,
                last_error: None,
                token: 0,
                place: Place::Waiting,
            },
        );
        self.counts.waiting += 1;
        if let Some(key) = group_key {
            let queue = self
                .steps
                .entry(d.step)
                .or_default()
                .groups
                .entry(key)
                .or_default();
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
        let Some(rec) = self.records.get(&id) else {
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
        let Some(rec) = self.records.get(&id) else {
            return;
        };
        let (step, tenant) = (rec.step.clone(), rec.event.tenant.clone());
        let sq = self.steps.entry(step).or_default();
        let queue = sq.ready.entry(tenant.clone()).or_default();
        if queue.is_empty() {
            sq.rotation.push_back(tenant);
        }
        queue.push_back(id);
        self.set_place(id, Place::Ready);
    }

    /// Removes a finished delivery and lets the next of its group go.
    fn finish(&mut self, id: u64, now: Timestamp) -> Option<Record> {
        let rec = self.records.remove(&id)?;
        *self.counts.slot(rec.place) -= 1;
        if let Some(group) = &rec.group {
            let key = (rec.event.tenant.clone(), group.clone());
            let mut next = None;
            if let Some(sq) = self.steps.get_mut(&rec.step) {
                if let Some(queue) = sq.groups.get_mut(&key) {
                    queue.retain(|other| *other != id);
                    next = queue.front().copied();
                    if queue.is_empty() {
                        sq.groups.remove(&key);
                    }
                }
            }
            if let Some(next) = next {
                // `now` is only a lower bound (a commit without emits knows no time),
                // so a successor that was never delayed counts as due: it is.
                let due = self
                    .records
                    .get(&next)
                    .is_none_or(|r| r.due_at <= now || r.due_at <= r.event.emitted_at);
                self.schedule(next, due);
            }
        }
        Some(rec)
    }

    fn leased_by(&self, lease: &LeaseRef) -> bool {
        self.records
            .get(&lease.id)
            .is_some_and(|r| r.place == Place::Leased && r.token == lease.token)
    }

    fn promote_due(&mut self, now: Timestamp) {
        while let Some(Reverse((due, id))) = self.delayed.peek().copied() {
            if due > now {
                break;
            }
            self.delayed.pop();
            if self
                .records
                .get(&id)
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

    fn apply(&mut self, c: Completion) -> Outcome {
        let now_hint = match &c.action {
            Action::Retry { at, .. } | Action::DeadLetter { at, .. } => *at,
            Action::Commit { emits, .. } => emits
                .first()
                .map_or(Timestamp::EPOCH, |d| d.event.emitted_at),
        };
        if let Some(lease) = &c.input {
            if !self.leased_by(lease) {
                return Outcome::Stale;
            }
        }
        if let Some(Marker::CronFire { schedule, at }) = &c.marker {
            if self.cron_fires.contains(&(schedule.clone(), *at)) {
                return Outcome::Duplicate;
            }
        }
        match c.action {
            Action::Commit {
                reads,
                writes,
                emits,
            } => {
                let state = self.state.get(&c.tenant);
                let current = |key: &str| state.and_then(|s| s.get(key)).map(|v| v.version);
                if reads.iter().any(|r| current(&r.key) != r.version) {
                    return Outcome::Conflict;
                }
                if !writes.is_empty() {
                    let state = self.state.entry(c.tenant.clone()).or_default();
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
                }
                for d in emits {
                    let immediate = d.due_at <= d.event.emitted_at;
                    self.insert(d, immediate);
                }
                if let Some(lease) = c.input {
                    self.finish(lease.id, now_hint);
                }
            }
            Action::Retry { at, error } => {
                if let Some(lease) = c.input {
                    if let Some(rec) = self.records.get_mut(&lease.id) {
                        rec.due_at = at;
                        rec.last_error = Some(error);
                    }
                    self.schedule(lease.id, false);
                }
            }
            Action::DeadLetter { error, at } => {
                if let Some(lease) = c.input {
                    if let Some(rec) = self.finish(lease.id, at) {
                        self.next_dead += 1;
                        let dl = DeadLetter::new(
                            self.next_dead,
                            rec.step,
                            rec.event,
                            rec.group,
                            rec.attempt,
                            rec.first_attempt_at.unwrap_or(at),
                            at,
                            error,
                        );
                        self.dead.insert(dl.id, dl);
                    }
                }
            }
        }
        if let Some(Marker::CronFire { schedule, at }) = c.marker {
            let last = self.last_fire.entry(schedule.clone()).or_insert(at);
            *last = (*last).max(at);
            self.cron_fires.insert((schedule, at));
        }
        Outcome::Applied
    }

    fn claim(&mut self, req: &ClaimRequest) -> ClaimBatch {
        self.promote_due(req.now);
        let quantum = req.tenant_quantum.max(1);
        let mut out = Vec::new();
        for sc in &req.steps {
            let Some(sq) = self.steps.get_mut(&sc.step) else {
                continue;
            };
            let mut taken = Vec::new();
            while taken.len() < sc.max {
                let Some(tenant) = sq.rotation.pop_front() else {
                    break;
                };
                let Some(queue) = sq.ready.get_mut(&tenant) else {
                    continue;
                };
                let room = (sc.max - taken.len()).min(quantum);
                let n = room.min(queue.len());
                taken.extend(queue.drain(..n));
                if queue.is_empty() {
                    sq.ready.remove(&tenant);
                } else {
                    sq.rotation.push_back(tenant);
                }
            }
            let until = req.now + sc.lease;
            for id in taken {
                let Some(rec) = self.records.get_mut(&id) else {
                    continue;
                };
                rec.token += 1;
                rec.attempt += 1;
                let first = *rec.first_attempt_at.get_or_insert(req.now);
                out.push(Claimed::new(
                    LeaseRef {
                        id,
                        token: rec.token,
                    },
                    rec.step.clone(),
                    rec.event.clone(),
                    rec.attempt,
                    first,
                    rec.last_error.clone(),
                ));
                self.leases.push(Reverse((until, id, rec.token)));
                self.set_place(id, Place::Leased);
            }
        }
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

#[async_trait]
impl Store for MemoryBackend {
    async fn get(&self, tenant: &TenantId, key: &str) -> Result<Option<Versioned>, StoreError> {
        Ok(self
            .lock()
            .state
            .get(tenant)
            .and_then(|s| s.get(key))
            .cloned())
    }

    async fn scan(
        &self,
        tenant: &TenantId,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        let inner = self.lock();
        let Some(state) = inner.state.get(tenant) else {
            return Ok(Vec::new());
        };
        Ok(state
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn complete(&self, batch: Vec<Completion>) -> Result<Vec<Outcome>, StoreError> {
        let mut inner = self.lock();
        Ok(batch.into_iter().map(|c| inner.apply(c)).collect())
    }

    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .dead
            .values()
            .filter(|d| query.step.as_ref().is_none_or(|s| *s == d.step))
            .filter(|d| query.tenant.as_ref().is_none_or(|t| *t == d.event.tenant))
            .take(query.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect())
    }

    async fn replay_dead_letters(&self, ids: &[u64], now: Timestamp) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        let mut replayed = 0;
        for id in ids {
            if let Some(dl) = inner.dead.remove(id) {
                inner.insert(
                    NewDelivery {
                        step: dl.step,
                        event: dl.event,
                        group: dl.group,
                        due_at: now,
                    },
                    true,
                );
                replayed += 1;
            }
        }
        Ok(replayed)
    }

    async fn purge_dead_letters(&self, ids: &[u64]) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        Ok(ids
            .iter()
            .filter(|id| inner.dead.remove(id).is_some())
            .count())
    }

    async fn last_cron_fire(&self, schedule: &StepName) -> Result<Option<Timestamp>, StoreError> {
        Ok(self.lock().last_fire.get(schedule).copied())
    }
}

#[async_trait]
impl Transport for MemoryBackend {
    async fn publish(&self, deliveries: Vec<NewDelivery>) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for d in deliveries {
            let immediate = d.due_at <= d.event.emitted_at;
            inner.insert(d, immediate);
        }
        Ok(())
    }

    async fn claim(&self, request: ClaimRequest) -> Result<ClaimBatch, StoreError> {
        Ok(self.lock().claim(&request))
    }

    async fn release(&self, leases: &[LeaseRef]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for lease in leases {
            if inner.leased_by(lease) {
                if let Some(rec) = inner.records.get_mut(&lease.id) {
                    rec.attempt = rec.attempt.saturating_sub(1);
                }
                inner.make_ready(lease.id);
            }
        }
        Ok(())
    }

    async fn depth(&self) -> Result<QueueDepth, StoreError> {
        let inner = self.lock();
        let c = inner.counts;
        Ok(QueueDepth {
            ready: c.ready,
            delayed: c.delayed,
            waiting: c.waiting,
            in_flight: c.leased,
            dead: inner.dead.len() as u64,
        })
    }
}
