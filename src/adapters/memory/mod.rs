//! The in-memory backend: state and queues in one process, behind one lock.
//!
//! Fast and exact, but not durable: everything is gone when the process ends.
//! Use it for tests and for single-process work that can be replayed from
//! elsewhere. Clones share the same data, so two engines given clones of one
//! `MemoryBackend` behave like two processes sharing one database.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::backend::place::{Counts, Place};
use crate::backend::{counter_bytes, cron_fire_settled, sum_adds, CRON_FIRE_HORIZON};
use crate::backend::{
    Action, Completion, DeadLetter, DeadLetterQuery, Marker, Outcome, Store, StoreError, Versioned,
};
use crate::backend::{
    ClaimBatch, ClaimRequest, Claimed, LeaseRef, NewDelivery, QueueDepth, Transport,
};
use crate::event::{Envelope, StepName, TenantId};
use crate::time::Timestamp;

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

#[derive(Debug)]
struct Record {
    /// Index into `Inner::steps`.
    step: u32,
    place: Place,
    attempt: u32,
    event: Arc<Envelope>,
    group: Option<Arc<str>>,
    due_at: Timestamp,
    first_attempt_at: Option<Timestamp>,
    last_error: Option<String>,
    token: u64,
}

/// The deliveries by id.
///
/// Ids are handed out in sequence and most deliveries finish roughly in that order,
/// so live records sit in a dense window indexed by `id - base`: a lookup is an
/// index, and claims walk memory in order instead of hopping around a hash table.
/// A record that stays while the window moves on far past it (a long delay, a
/// retry backoff, a parked FIFO group) moves to `old`, so the window stays at most
/// a few times the number of live records in it.
#[derive(Debug, Default)]
struct Records {
    /// The id of `window[0]`; every id in `old` is below it.
    base: u64,
    window: VecDeque<Option<Record>>,
    in_window: usize,
    old: HashMap<u64, Record>,
}

impl Records {
    fn get(&self, id: u64) -> Option<&Record> {
        if id >= self.base {
            let offset = usize::try_from(id - self.base).ok()?;
            self.window.get(offset)?.as_ref()
        } else {
            self.old.get(&id)
        }
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut Record> {
        if id >= self.base {
            let offset = usize::try_from(id - self.base).ok()?;
            self.window.get_mut(offset)?.as_mut()
        } else {
            self.old.get_mut(&id)
        }
    }

    /// Adds a record; `id` is above every id added before.
    fn insert(&mut self, id: u64, rec: Record) {
        if self.window.is_empty() {
            self.base = id;
        }
        let offset = usize::try_from(id - self.base).unwrap_or(usize::MAX);
        while self.window.len() < offset {
            self.window.push_back(None);
        }
        self.window.push_back(Some(rec));
        self.in_window += 1;
        if self.window.len() > 4 * self.in_window + 1024 {
            self.compact();
        }
    }

    fn remove(&mut self, id: u64) -> Option<Record> {
        if id < self.base {
            return self.old.remove(&id);
        }
        let offset = usize::try_from(id - self.base).ok()?;
        let rec = self.window.get_mut(offset)?.take()?;
        self.in_window -= 1;
        self.trim();
        Some(rec)
    }

    fn trim(&mut self) {
        while matches!(self.window.front(), Some(None)) {
            self.window.pop_front();
            self.base += 1;
        }
    }

    /// Moves the oldest live records out of the window until it is at most half empty.
    fn compact(&mut self) {
        while self.window.len() > 2 * self.in_window {
            if let Some(Some(rec)) = self.window.pop_front() {
                self.old.insert(self.base, rec);
                self.in_window -= 1;
            }
            self.base += 1;
        }
        self.trim();
    }
}

/// One tenant's ready deliveries of one step, oldest first.
#[derive(Debug, Default)]
struct Lane {
    /// `None` while the lane is free.
    tenant: Option<TenantId>,
    ids: VecDeque<u64>,
}

#[derive(Debug)]
struct StepQueue {
    name: StepName,
    /// The lane each tenant with ready deliveries holds, by index into `lanes`.
    tenants: HashMap<TenantId, usize>,
    lanes: Vec<Lane>,
    /// Lanes no tenant holds.
    free: Vec<usize>,
    /// Non-empty lanes in round-robin order: a lane is in it exactly while it has
    /// ready deliveries.
    rotation: VecDeque<usize>,
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
        // Give back the memory of a long queue; a short one is kept for reuse.
        if lane_ref.ids.capacity() > 1024 {
            lane_ref.ids = VecDeque::new();
        }
        self.free.push(lane);
    }
}

#[derive(Default, Debug)]
struct Inner {
    state: HashMap<TenantId, BTreeMap<String, Versioned>>,
    version: u64,
    next_id: u64,
    records: Records,
    step_ids: HashMap<StepName, u32>,
    last_step: Option<(StepName, u32)>,
    steps: Vec<StepQueue>,
    delayed: BinaryHeap<Reverse<(Timestamp, u64)>>,
    leases: BinaryHeap<Reverse<(Timestamp, u64, u64)>>,
    dead: BTreeMap<u64, DeadLetter>,
    next_dead: u64,
    /// Fire markers per schedule, kept for `CRON_FIRE_HORIZON` behind the newest.
    cron_fires: HashMap<StepName, BTreeSet<Timestamp>>,
    counts: Counts,
}

impl Inner {
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

    fn insert(&mut self, d: NewDelivery, immediate: bool) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let step = self.step_id(d.step);
        let group_key = d.group.clone().map(|g| (d.event.tenant.clone(), g));
        self.records.insert(
            id,
            Record {
                step,
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
        ids.push_back(id);
    }

    /// Removes a finished delivery and lets the next of its group go.
    fn finish(&mut self, id: u64) -> Option<Record> {
        let rec = self.records.remove(id)?;
        *self.counts.slot(rec.place) -= 1;
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

    fn leased_by(&self, lease: &LeaseRef) -> bool {
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

    fn apply(&mut self, c: Completion) -> Outcome {
        if let Some(lease) = &c.input {
            if !self.leased_by(lease) {
                return Outcome::Stale;
            }
        }
        if let Some(Marker::CronFire { schedule, at }) = &c.marker {
            let fires = self.cron_fires.get(schedule);
            let recorded = fires.is_some_and(|f| f.contains(at));
            let newest = fires.and_then(|f| f.last().copied());
            if cron_fire_settled(*at, recorded, newest) {
                return Outcome::Duplicate;
            }
        }
        match c.action {
            Action::Commit {
                reads,
                writes,
                adds,
                emits,
            } => {
                if !reads.is_empty() {
                    let state = self.state.get(&c.tenant);
                    let current = |key: &str| state.and_then(|s| s.get(key)).map(|v| v.version);
                    if reads.iter().any(|r| current(&r.key) != r.version) {
                        return Outcome::Conflict;
                    }
                }
                // Every add is worked out before anything changes, so a rejected
                // one leaves the completion unapplied.
                let sums = if adds.is_empty() {
                    Vec::new()
                } else {
                    let state = self.state.get(&c.tenant);
                    let stored = |key: &str| {
                        Ok::<_, std::convert::Infallible>(
                            state.and_then(|s| s.get(key)).map(|v| v.value.clone()),
                        )
                    };
                    match sum_adds(&adds, &writes, stored) {
                        Ok(Ok(sums)) => sums,
                        Ok(Err(rejected)) => return Outcome::Rejected(rejected),
                        Err(never) => match never {},
                    }
                };
                if !writes.is_empty() || !sums.is_empty() {
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
                for d in emits {
                    let immediate = d.due_at <= d.event.emitted_at;
                    self.insert(d, immediate);
                }
                if let Some(lease) = c.input {
                    self.finish(lease.id);
                }
            }
            Action::Retry { at, error } => {
                if let Some(lease) = c.input {
                    if let Some(rec) = self.records.get_mut(lease.id) {
                        rec.due_at = at;
                        rec.last_error = Some(error);
                    }
                    self.schedule(lease.id, false);
                }
            }
            Action::DeadLetter { error, at } => {
                if let Some(lease) = c.input {
                    if let Some(rec) = self.finish(lease.id) {
                        self.next_dead += 1;
                        let dl = DeadLetter::new(
                            self.next_dead,
                            self.steps[rec.step as usize].name.clone(),
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
            let fires = self.cron_fires.entry(schedule).or_default();
            fires.insert(at);
            if let Some(&newest) = fires.last() {
                let horizon = newest - CRON_FIRE_HORIZON;
                while fires.first().is_some_and(|&oldest| oldest < horizon) {
                    fires.pop_first();
                }
            }
        }
        Outcome::Applied
    }

    fn claim(&mut self, req: &ClaimRequest) -> ClaimBatch {
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
                let n = room.min(ids.len());
                taken.reserve(n);
                taken.extend(ids.drain(..n));
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
                rec.attempt += 1;
                let first = *rec.first_attempt_at.get_or_insert(req.now);
                out.push(Claimed::new(
                    LeaseRef {
                        id,
                        token: rec.token,
                    },
                    sq.name.clone(),
                    rec.event.clone(),
                    rec.attempt,
                    first,
                    rec.last_error.clone(),
                ));
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
        Ok(self
            .lock()
            .cron_fires
            .get(schedule)
            .and_then(|fires| fires.last().copied()))
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
                if let Some(rec) = inner.records.get_mut(lease.id) {
                    rec.attempt = rec.attempt.saturating_sub(1);
                }
                inner.make_ready(lease.id);
            }
        }
        Ok(())
    }

    async fn depth(&self, now: Timestamp) -> Result<QueueDepth, StoreError> {
        let mut inner = self.lock();
        inner.promote_due(now);
        Ok(inner.counts.depth(inner.dead.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ClaimBatch;

    fn record(n: u32) -> Record {
        let event = crate::event::build_envelope(
            Timestamp::EPOCH,
            crate::event::Topic::new("t").unwrap(),
            TenantId::new("a").unwrap(),
            crate::event::TraceId::new(),
            None,
            crate::event::Payload::encode(&n).unwrap(),
            crate::event::EmitOptions::default(),
        );
        Record {
            step: 0,
            place: Place::Waiting,
            attempt: n,
            event: Arc::new(event),
            group: None,
            due_at: Timestamp::EPOCH,
            first_attempt_at: None,
            last_error: None,
            token: 0,
        }
    }

    #[test]
    fn records_survive_the_window_moving_past_them() {
        let mut records = Records::default();
        let mut live = std::collections::BTreeSet::new();
        for id in 1..=20_000u64 {
            records.insert(id, record(u32::try_from(id).unwrap()));
            live.insert(id);
            // Finish everything but every 97th record, a little behind the newest.
            if id > 10 && (id - 10) % 97 != 0 {
                assert!(records.remove(id - 10).is_some());
                live.remove(&(id - 10));
            }
        }
        assert!(!records.old.is_empty(), "the window never moved on");
        assert!(records.window.len() <= 4 * records.in_window + 1024);
        for id in 0..=20_001u64 {
            let found = records.get(id).map(|r| u64::from(r.attempt));
            assert_eq!(found, live.contains(&id).then_some(id), "id {id}");
        }
        records.get_mut(194).unwrap().token = 7;
        assert_eq!(records.get(194).unwrap().token, 7);
        for &id in &live {
            assert_eq!(records.remove(id).map(|r| u64::from(r.attempt)), Some(id));
            assert!(records.remove(id).is_none());
        }
        assert!(records.old.is_empty() && records.window.is_empty());
        records.insert(30_000, record(30_000));
        assert_eq!(records.get(30_000).map(|r| r.attempt), Some(30_000));
    }

    #[tokio::test]
    async fn claims_rotate_over_tenants_and_free_their_lanes() {
        let backend = MemoryBackend::new();
        let step = StepName::new("s").unwrap();
        let now = Timestamp::from_millis(1_000);
        let delivery = |tenant: &str, n: u32| {
            let event = crate::event::build_envelope(
                now,
                crate::event::Topic::new("t").unwrap(),
                TenantId::new(tenant).unwrap(),
                crate::event::TraceId::new(),
                None,
                crate::event::Payload::encode(&n).unwrap(),
                crate::event::EmitOptions::default(),
            );
            NewDelivery {
                step: step.clone(),
                event: Arc::new(event),
                group: None,
                due_at: now,
            }
        };
        // a: 5, then b: 1, a: 1 more, c: 2 (runs of one tenant, then a switch back).
        let mut batch: Vec<_> = (0..5).map(|n| delivery("a", n)).collect();
        batch.push(delivery("b", 0));
        batch.push(delivery("a", 5));
        batch.extend((0..2).map(|n| delivery("c", n)));
        backend.publish(batch).await.unwrap();
        let claim = |max| ClaimRequest {
            now,
            steps: vec![crate::backend::StepClaim {
                step: step.clone(),
                max,
                lease: std::time::Duration::from_secs(60),
            }],
            tenant_quantum: 2,
        };
        let order = |batch: ClaimBatch| -> Vec<String> {
            batch
                .deliveries
                .iter()
                .map(|c| format!("{}{}", c.event.tenant, c.event.payload.as_json()))
                .collect()
        };
        let first = order(backend.claim(claim(5)).await.unwrap());
        assert_eq!(first, ["a0", "a1", "b0", "c0", "c1"]);
        let rest = order(backend.claim(claim(10)).await.unwrap());
        assert_eq!(rest, ["a2", "a3", "a4", "a5"]);
        {
            let inner = backend.lock();
            let sq = &inner.steps[0];
            assert!(sq.rotation.is_empty());
            // Only the last lane made ready stays held while empty.
            assert_eq!(sq.tenants.len(), 1, "{:?}", sq.tenants);
            assert_eq!(sq.free.len() + 1, sq.lanes.len());
        }
        backend
            .publish(vec![delivery("b", 1), delivery("d", 0)])
            .await
            .unwrap();
        let again = order(backend.claim(claim(10)).await.unwrap());
        assert_eq!(again, ["b1", "d0"]);
        assert_eq!(backend.depth(Timestamp::EPOCH).await.unwrap().ready, 0);
    }

    #[tokio::test]
    async fn completed_leases_do_not_pile_up() {
        let backend = MemoryBackend::new();
        let step = StepName::new("s").unwrap();
        let now = Timestamp::from_millis(1_000);
        let mut claimed = 0;
        for _ in 0..50 {
            let event = Arc::new(crate::event::build_envelope(
                now,
                crate::event::Topic::new("t").unwrap(),
                TenantId::new("a").unwrap(),
                crate::event::TraceId::new(),
                None,
                crate::event::Payload::encode(&1).unwrap(),
                crate::event::EmitOptions::default(),
            ));
            let deliveries = (0..100)
                .map(|_| NewDelivery {
                    step: step.clone(),
                    event: event.clone(),
                    group: None,
                    due_at: now,
                })
                .collect();
            backend.publish(deliveries).await.unwrap();
            let batch = backend
                .claim(ClaimRequest {
                    now,
                    steps: vec![crate::backend::StepClaim {
                        step: step.clone(),
                        max: 1_000,
                        lease: std::time::Duration::from_secs(60),
                    }],
                    tenant_quantum: 16,
                })
                .await
                .unwrap();
            claimed += batch.deliveries.len();
            let completions = batch
                .deliveries
                .iter()
                .map(|c| Completion {
                    tenant: c.event.tenant.clone(),
                    input: Some(c.lease),
                    marker: None,
                    action: Action::Commit {
                        reads: vec![],
                        writes: vec![],
                        adds: vec![],
                        emits: vec![],
                    },
                })
                .collect();
            let outcomes = backend.complete(completions).await.unwrap();
            assert!(outcomes.iter().all(|o| *o == Outcome::Applied));
        }
        assert_eq!(claimed, 5_000);
        let inner = backend.lock();
        assert!(inner.leases.len() <= 1024 + 100, "{}", inner.leases.len());
        assert_eq!(inner.counts.leased, 0);
    }
}

#[cfg(test)]
mod cron_marker_tests {
    use super::*;
    use std::time::Duration;

    fn fire(schedule: &StepName, at: Timestamp) -> Completion {
        Completion {
            tenant: TenantId::system(),
            input: None,
            marker: Some(Marker::CronFire {
                schedule: schedule.clone(),
                at,
            }),
            action: Action::Commit {
                reads: vec![],
                writes: vec![],
                adds: vec![],
                emits: vec![],
            },
        }
    }

    #[tokio::test]
    async fn fire_markers_stay_bounded_and_old_instants_stay_settled() {
        let backend = MemoryBackend::new();
        let every_minute = StepName::new("every-minute").unwrap();
        let start = Timestamp::from_millis(1_767_225_600_000);
        let minute = Duration::from_secs(60);
        let fires = 30 * 24 * 60; // a month of minutely fires
        for i in 0..fires {
            let at = start + minute * i;
            let outcome = backend
                .complete(vec![fire(&every_minute, at)])
                .await
                .unwrap();
            assert_eq!(outcome, vec![Outcome::Applied]);
        }
        let last = start + minute * (fires - 1);
        assert_eq!(
            backend.last_cron_fire(&every_minute).await.unwrap(),
            Some(last)
        );
        let kept = backend.lock().cron_fires[&every_minute].len();
        assert_eq!(kept, 7 * 24 * 60 + 1, "a week of markers, not a month");
        // Every instant is still fired at most once: recent ones by their marker,
        // older ones because they are behind the horizon.
        for at in [last, last - minute * 100, start, start + minute] {
            let outcome = backend
                .complete(vec![fire(&every_minute, at)])
                .await
                .unwrap();
            assert_eq!(outcome, vec![Outcome::Duplicate], "{at}");
        }
    }
}
