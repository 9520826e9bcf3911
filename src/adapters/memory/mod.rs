//! The in-memory backend: state and queues in one process, behind one lock.
//!
//! Fast and exact, but not durable: everything is gone when the process ends.
//! Use it for tests and for single-process work that can be replayed from
//! elsewhere. Clones share the same data, so two engines given clones of one
//! `MemoryBackend` behave like two processes sharing one database.
//!
//! The one lock guards an `Inner` made of four parts, each in a file of its own:
//! the tenants' state (`state.rs`), the deliveries (`queue.rs`, with the records
//! by id in `records.rs`), the dead letters (`dead_letters.rs`) and the cron fire
//! markers (`cron_marks.rs`). This file implements the contract on them: a
//! completion, which touches all of them at once, is applied here.

mod cron_marks;
mod dead_letters;
mod queue;
mod records;
mod state;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::backend::{
    Action, Completion, DeadLetter, DeadLetterQuery, Marker, Outcome, Store, StoreError, Versioned,
};
use crate::backend::{
    ClaimBatch, ClaimRequest, LeaseRef, NewDelivery, QueueDepth, StepWork, Transport,
};
use crate::event::{Payload, StepName, TenantId};
use crate::time::Timestamp;

use cron_marks::CronMarks;
use dead_letters::DeadLetters;
use queue::Queue;
use state::State;

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

#[derive(Default, Debug)]
struct Inner {
    state: State,
    queue: Queue,
    dead_letters: DeadLetters,
    cron_marks: CronMarks,
    /// The keys of completed broker deliveries ([`Marker::Delivery`]), kept for
    /// the life of the backend: nothing here outlives the process anyway.
    delivered: HashSet<Arc<str>>,
}

impl Inner {
    /// Queues what a completion emits.
    fn publish_emits(&mut self, emits: Vec<NewDelivery>) {
        for d in emits {
            let immediate = d.due_at <= d.event.emitted_at;
            self.queue.insert(d, immediate);
        }
    }

    fn apply(&mut self, c: Completion) -> Outcome {
        if let Some(lease) = &c.input {
            if !self.queue.leased_by(lease) {
                return Outcome::Stale;
            }
        }
        match &c.marker {
            Some(Marker::CronFire { schedule, at }) if self.cron_marks.settled(schedule, *at) => {
                return Outcome::Duplicate;
            }
            Some(Marker::Delivery { key }) if self.delivered.contains(key) => {
                return Outcome::Duplicate;
            }
            _ => {}
        }
        match c.action {
            Action::Commit {
                reads,
                writes,
                adds,
                emits,
                cancels,
            } => {
                if self.state.conflicts(&c.tenant, &reads) {
                    return Outcome::Conflict;
                }
                // Every add is worked out before anything changes, so a rejected
                // one leaves the completion unapplied.
                let sums = match self.state.sums(&c.tenant, &adds, &writes) {
                    Ok(sums) => sums,
                    Err(refused) => return refused.outcome(),
                };
                self.state.write(&c.tenant, writes, sums);
                for cancel in &cancels {
                    self.queue.cancel(&c.tenant, &cancel.step, &cancel.key);
                }
                self.publish_emits(emits);
                if let Some(lease) = c.input {
                    self.queue.finish(lease.id);
                }
            }
            Action::Retry { at, error } => {
                if let Some(lease) = c.input {
                    self.queue.retry(lease.id, at, error);
                }
            }
            Action::Defer { at } => {
                if let Some(lease) = c.input {
                    self.queue.defer(lease.id, at);
                }
            }
            Action::DeadLetter {
                error,
                at,
                kind,
                emits,
            } => {
                if let Some(lease) = c.input {
                    if let Some(rec) = self.queue.finish(lease.id) {
                        let step = self.queue.step_name(rec.step).clone();
                        self.dead_letters.add(|id| {
                            DeadLetter::new(
                                id,
                                step,
                                rec.event,
                                rec.group,
                                rec.attempt,
                                rec.first_attempt_at.unwrap_or(at),
                                at,
                                error,
                            )
                            .with_kind(kind)
                        });
                        self.publish_emits(emits);
                    }
                }
            }
            Action::Requeue {
                delivery,
                attempts,
                first_attempt_at,
                error,
            } => {
                self.queue
                    .insert_tried(delivery, attempts, first_attempt_at, error);
            }
            Action::Bury {
                delivery,
                attempts,
                first_attempt_at,
                error,
                at,
                kind,
                emits,
            } => {
                self.dead_letters.add(|id| {
                    DeadLetter::new(
                        id,
                        delivery.step,
                        delivery.event,
                        delivery.group,
                        attempts,
                        first_attempt_at,
                        at,
                        error,
                    )
                    .with_kind(kind)
                });
                self.publish_emits(emits);
            }
        }
        match c.marker {
            Some(Marker::CronFire { schedule, at }) => self.cron_marks.record(schedule, at),
            Some(Marker::Delivery { key }) => {
                self.delivered.insert(key);
            }
            None => {}
        }
        Outcome::Applied
    }
}

#[async_trait]
impl Store for MemoryBackend {
    async fn get(&self, tenant: &TenantId, key: &str) -> Result<Option<Versioned>, StoreError> {
        Ok(self.lock().state.get(tenant, key))
    }

    async fn scan(
        &self,
        tenant: &TenantId,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        Ok(self.lock().state.scan(tenant, prefix, None, limit))
    }

    async fn scan_after(
        &self,
        tenant: &TenantId,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        Ok(self.lock().state.scan(tenant, prefix, Some(after), limit))
    }

    async fn complete(&self, batch: Vec<Completion>) -> Result<Vec<Outcome>, StoreError> {
        let mut inner = self.lock();
        Ok(batch.into_iter().map(|c| inner.apply(c)).collect())
    }

    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, StoreError> {
        Ok(self.lock().dead_letters.list(query))
    }

    async fn replay_dead_letters(&self, ids: &[u64], now: Timestamp) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        let Inner {
            queue,
            dead_letters,
            ..
        } = &mut *inner;
        Ok(dead_letters.replay(ids, now, |d| {
            queue.insert(d, true);
        }))
    }

    async fn amend_dead_letter(&self, id: u64, payload: Payload) -> Result<bool, StoreError> {
        Ok(self.lock().dead_letters.amend(id, payload))
    }

    async fn purge_dead_letters(&self, ids: &[u64]) -> Result<usize, StoreError> {
        Ok(self.lock().dead_letters.purge(ids))
    }

    async fn last_cron_fire(&self, schedule: &StepName) -> Result<Option<Timestamp>, StoreError> {
        Ok(self.lock().cron_marks.last(schedule))
    }
}

#[async_trait]
impl Transport for MemoryBackend {
    async fn publish(&self, deliveries: Vec<NewDelivery>) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for d in deliveries {
            let immediate = d.due_at <= d.event.emitted_at;
            inner.queue.insert(d, immediate);
        }
        Ok(())
    }

    async fn claim(&self, request: ClaimRequest) -> Result<ClaimBatch, StoreError> {
        Ok(self.lock().queue.claim(&request))
    }

    async fn release(&self, leases: &[LeaseRef]) -> Result<(), StoreError> {
        self.lock().queue.release(leases);
        Ok(())
    }

    async fn steps_with_work(&self, now: Timestamp) -> Result<Vec<StepWork>, StoreError> {
        Ok(self.lock().queue.steps_with_work(now))
    }

    async fn move_deliveries(
        &self,
        from: &StepName,
        to: Option<&StepName>,
    ) -> Result<u64, StoreError> {
        Ok(self.lock().queue.move_deliveries(from, to))
    }

    async fn depth(&self, now: Timestamp) -> Result<QueueDepth, StoreError> {
        let mut inner = self.lock();
        let dead = inner.dead_letters.len() as u64;
        Ok(inner.queue.depth(now, dead))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ClaimBatch;

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
                key: None,
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
            let sq = &inner.queue.steps[0];
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
                    key: None,
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
                        cancels: Vec::new(),
                    },
                })
                .collect();
            let outcomes = backend.complete(completions).await.unwrap();
            assert!(outcomes.iter().all(|o| *o == Outcome::Applied));
        }
        assert_eq!(claimed, 5_000);
        let inner = backend.lock();
        assert!(
            inner.queue.leases.len() <= 1024 + 100,
            "{}",
            inner.queue.leases.len()
        );
        assert_eq!(inner.queue.counts.leased, 0);
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
                cancels: Vec::new(),
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
        let kept = backend.lock().cron_marks.fires[&every_minute].len();
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
