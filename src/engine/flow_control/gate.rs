//! The gate: which claimed deliveries and API calls may run now, and the
//! concurrency slots given back once they have.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::budget::{Budget, Holder};
use super::ledger::{budget_key, transact};
use super::limits::{KeyError, Limit, Quota};
use super::throttled::{ThrottledKey, ThrottledKeys};
use super::verdict::{take_all, Keys, Verdict};
use crate::backend::{Action, Backend, Claimed, Completion, LeaseRef};
use crate::engine::flow::Flow;
use crate::event::TenantId;
use crate::time::Timestamp;

/// How long a delivery still running here under an older lease waits
/// before it is claimed again.
const RUNNING_HERE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// One engine's flow control: the steps' limits (read from the flow), how
/// often each step's work was held back, and the concurrency slots its
/// executions hold.
pub(crate) struct Gate {
    flow: Flow,
    /// Per step, in flow order: deliveries and calls held back.
    throttled: Vec<AtomicU64>,
    /// The same, per key of each limit.
    throttled_keys: ThrottledKeys,
    /// Admitted deliveries holding concurrency slots, by delivery id.
    holding: Mutex<HashMap<u64, Held>>,
    /// Slots of finished batches, to give back, per budget key.
    pending: Mutex<HashMap<Arc<str>, Gives>>,
    /// This engine's id in the budgets' slot counts.
    engine: u64,
}

/// What an admitted delivery holds: the budgets it took a slot of, and when.
struct Held {
    since: Timestamp,
    keys: Vec<Arc<str>>,
    /// The lease of the delivery's step: how long past each admission the
    /// engine says it still holds the slot.
    lease: std::time::Duration,
}

/// What an admitted API call holds: slots to give back when it returns.
#[derive(Debug, Default)]
pub(crate) struct CallPermit {
    slots: Vec<String>,
    since: Option<Timestamp>,
}

/// Why an API call may not run now.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Out of budget until then.
    Throttled(Timestamp),
    /// The limit's key could not be read from the call.
    Key(String),
    /// The budgets could not be read or written.
    Unavailable(String),
}

impl Gate {
    pub(crate) fn new(flow: &Flow) -> Self {
        Gate {
            throttled: flow.steps().iter().map(|_| AtomicU64::new(0)).collect(),
            throttled_keys: ThrottledKeys::default(),
            flow: flow.clone(),
            holding: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            engine: crate::vocab::chance::next_u64(),
        }
    }

    /// How many deliveries and calls of step `index` were held back so far.
    pub(crate) fn throttled(&self, index: usize) -> u64 {
        self.throttled
            .get(index)
            .map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// How many deliveries and calls each key held back so far.
    pub(crate) fn throttled_keys(&self) -> Vec<ThrottledKey> {
        self.throttled_keys.snapshot(|step, limit| {
            (
                self.step_name(step).to_string(),
                self.limits(step)[limit].name.clone(),
            )
        })
    }

    /// Counts a hold-back of step `index` on the budget named `name` of its
    /// limit `limit`.
    fn count_throttled(&self, index: usize, limit: usize, name: &str) {
        self.throttled[index].fetch_add(1, Ordering::Relaxed);
        let prefix = budget_key(self.step_name(index), &self.limits(index)[limit].name, "");
        let key = name.strip_prefix(prefix.as_str()).unwrap_or(name);
        self.throttled_keys.add(index, limit, key);
    }

    fn limits(&self, index: usize) -> &[Limit] {
        &self.flow.steps()[index].limits
    }

    fn step_name(&self, index: usize) -> &str {
        self.flow.steps()[index].name.as_str()
    }

    /// Who takes a slot for step `index` now, for work first due at `due`:
    /// this engine, until the lease of a delivery claimed now would end.
    fn holder(&self, index: usize, now: Timestamp, due: Timestamp) -> Holder {
        Holder {
            engine: self.engine,
            until: (now + self.flow.steps()[index].config.lease).as_millis(),
            age: due.as_millis(),
        }
    }

    fn limited(&self, index: usize) -> bool {
        !self.limits(index).is_empty()
    }

    fn holds_slots(&self, index: usize) -> bool {
        self.limits(index)
            .iter()
            .any(|l| matches!(l.quota, Quota::Concurrency { .. }))
    }

    /// Of claimed deliveries (with their step indexes), returns those that
    /// may run now. The others go back to the queue unrun, due when their
    /// budgets allow (no attempt counted); one whose key cannot be computed
    /// dead-letters with the reason. Slots of finished batches are given
    /// back in the same commit.
    pub(crate) async fn admit(
        &self,
        backend: &Arc<dyn Backend>,
        now: Timestamp,
        claimed: Vec<(usize, Claimed)>,
        unkeyable: impl Fn(usize, &Claimed, String) -> Action,
    ) -> Vec<(usize, Claimed)> {
        if !claimed.iter().any(|(index, _)| self.limited(*index)) {
            // No admission to ride along with: slots waiting go back now.
            self.flush(backend, now).await;
            return claimed;
        }
        let (claimed, mut settle) = self.not_running_here(claimed, now);
        let mut keys = Keys::default();
        let returned: Vec<(usize, Gives)> = std::mem::take(&mut *self.lock_pending())
            .into_iter()
            .map(|(key, gives)| (keys.slot(&key), gives))
            .collect();
        // Each delivery's (limit, budget slot) pairs are `pairs[range]`.
        let mut pairs: Vec<(usize, usize)> = Vec::new();
        let mut wants: Vec<Result<Range<usize>, String>> = Vec::with_capacity(claimed.len());
        for (index, c) in &claimed {
            let start = pairs.len();
            let mut failed = None;
            for (l, limit) in self.limits(*index).iter().enumerate() {
                match limit.key.of_event(&c.event) {
                    Ok(key) => pairs.push((
                        l,
                        keys.slot_of(self.step_name(*index), self.limits(*index), *index, l, key),
                    )),
                    Err(err) => {
                        failed = Some(key_failure(self.step_name(*index), limit, &err));
                        break;
                    }
                }
            }
            wants.push(match failed {
                Some(error) => {
                    pairs.truncate(start);
                    Err(error)
                }
                None => Ok(start..pairs.len()),
            });
        }
        let renewals = self.still_held(&keys, now);
        let keys = keys.names;
        let verdicts = transact(backend, &keys, now, |budgets| {
            give_back(budgets, self.engine, &returned);
            for (slot, count, until) in &renewals {
                budgets[*slot].renew(self.engine, *count, *until);
            }
            claimed
                .iter()
                .zip(&wants)
                .map(|((index, c), want)| match want {
                    Ok(range) => take_all(
                        self.limits(*index),
                        &pairs[range.clone()],
                        budgets,
                        self.holder(*index, now, c.event.due_at()),
                        now,
                        Budget::take,
                    ),
                    Err(_) => Verdict::Run,
                })
                .collect::<Vec<_>>()
        })
        .await;
        let shared: Vec<Arc<str>> = keys.iter().map(|k| Arc::from(k.as_str())).collect();
        let verdicts = match verdicts {
            Ok(verdicts) => verdicts,
            Err(err) => {
                {
                    let mut pending = self.lock_pending();
                    for (slot, gives) in returned {
                        pending
                            .entry(shared[slot].clone())
                            .or_default()
                            .merge(gives);
                    }
                }
                return self.give_back_limited(backend, claimed, &err).await;
            }
        };
        let mut admitted = Vec::with_capacity(claimed.len());
        let mut held = Vec::new();
        for (((index, c), want), verdict) in claimed.into_iter().zip(wants).zip(verdicts) {
            let action = match (want, verdict) {
                // The payload lacks what the key is made of: no retry helps.
                (Err(error), _) => unkeyable(index, &c, error),
                (Ok(_), Verdict::Wait(at, (limit, slot))) => {
                    self.count_throttled(index, limit, &keys[slot]);
                    tracing::debug!(step = %c.step, tenant = %c.event.tenant, event = %c.event.id, attempt = c.attempt, %at, "held back by flow control");
                    Action::Defer { at }
                }
                (Ok(range), Verdict::Run) => {
                    let slots: Vec<Arc<str>> = pairs[range]
                        .iter()
                        .filter(|(l, _)| {
                            matches!(self.limits(index)[*l].quota, Quota::Concurrency { .. })
                        })
                        .map(|(_, slot)| shared[*slot].clone())
                        .collect();
                    if !slots.is_empty() {
                        let lease = self.flow.steps()[index].config.lease;
                        held.push((c.lease.id, slots, lease));
                    }
                    admitted.push((index, c));
                    continue;
                }
            };
            settle.push(Completion {
                tenant: c.event.tenant.clone(),
                input: Some(c.lease),
                marker: None,
                action,
            });
        }
        if !held.is_empty() {
            let mut holding = self.lock_holding();
            for (id, keys, lease) in held {
                holding.insert(
                    id,
                    Held {
                        since: now,
                        keys,
                        lease,
                    },
                );
            }
        }
        if !settle.is_empty() {
            let leases: Vec<LeaseRef> = settle.iter().filter_map(|c| c.input).collect();
            if let Err(err) = backend.complete(settle).await {
                // Given back uncounted rather than left to their leases: a
                // lease that ends counts an attempt, and work held back
                // often (a long line) would spend its attempts waiting.
                tracing::warn!(%err, "could not defer held-back deliveries; giving them back");
                if let Err(err) = backend.release(&leases).await {
                    tracing::warn!(%err, "could not give held-back deliveries back; they return when their lease ends");
                }
            }
        }
        admitted
    }

    /// The slots this engine's running executions hold, per budget key the
    /// admission reads anyway: how many, and until when. Written back with
    /// the admission, they keep a slot whose hold ran out while its execution
    /// went on (the process was suspended, the clock jumped) from counting as
    /// free, and from being taken a second time.
    fn still_held(&self, keys: &Keys<'_>, now: Timestamp) -> Vec<(usize, u32, i64)> {
        let holding = self.lock_holding();
        let mut by_slot: std::collections::BTreeMap<usize, (u32, i64)> = Default::default();
        for held in holding.values() {
            let until = (now + held.lease).as_millis();
            for slot in held.keys.iter().filter_map(|key| keys.by_name.get(&**key)) {
                let entry = by_slot.entry(*slot).or_insert((0, until));
                entry.0 += 1;
                entry.1 = entry.1.max(until);
            }
        }
        by_slot
            .into_iter()
            .map(|(slot, (count, until))| (slot, count, until))
            .collect()
    }

    /// Splits off the deliveries this engine is still running under an older
    /// lease (one that ran out while the execution went on, as after the
    /// process was suspended): another run of them now would hold no slot
    /// of its own beside the first. They wait a second, unrun and uncounted.
    fn not_running_here(
        &self,
        claimed: Vec<(usize, Claimed)>,
        now: Timestamp,
    ) -> (Vec<(usize, Claimed)>, Vec<Completion>) {
        let holding = self.lock_holding();
        // The common case (no lease ran out under a running execution)
        // allocates nothing.
        if !claimed
            .iter()
            .any(|(_, c)| holding.contains_key(&c.lease.id))
        {
            return (claimed, Vec::new());
        }
        let (running, claimed): (Vec<_>, Vec<_>) = claimed
            .into_iter()
            .partition(|(_, c)| holding.contains_key(&c.lease.id));
        drop(holding);
        let later = now + RUNNING_HERE_RETRY;
        let settle = running
            .into_iter()
            .map(|(index, c)| {
                self.throttled[index].fetch_add(1, Ordering::Relaxed);
                Completion {
                    tenant: c.event.tenant.clone(),
                    input: Some(c.lease),
                    marker: None,
                    action: Action::Defer { at: later },
                }
            })
            .collect();
        (claimed, settle)
    }

    /// The budgets are unreachable or contended: the limited deliveries go
    /// back at once, unrun and uncounted; the others run.
    async fn give_back_limited(
        &self,
        backend: &Arc<dyn Backend>,
        claimed: Vec<(usize, Claimed)>,
        err: &super::ledger::LedgerError,
    ) -> Vec<(usize, Claimed)> {
        tracing::warn!(%err, "flow control could not read its budgets; limited deliveries go back to the queue");
        let (free, limited): (Vec<_>, Vec<_>) = claimed
            .into_iter()
            .partition(|(index, _)| !self.limited(*index));
        let leases: Vec<LeaseRef> = limited.iter().map(|(_, c)| c.lease).collect();
        if let Err(err) = backend.release(&leases).await {
            tracing::warn!(%err, "could not give limited deliveries back; they return when their lease ends");
        }
        free
    }

    /// The ids of a batch's deliveries that hold concurrency slots (none, and
    /// nothing allocated, for steps without a concurrency limit).
    pub(crate) fn holding_in(&self, chunk: &[(usize, Claimed)]) -> Vec<u64> {
        chunk
            .iter()
            .filter(|(index, _)| self.holds_slots(*index))
            .map(|(_, c)| c.lease.id)
            .collect()
    }

    /// Gives back the slots the deliveries `ids` took: at the next
    /// admission, in its commit, or at the next [`flush`](Self::flush) if
    /// none comes first (the dispatcher flushes before it waits), so a busy
    /// engine spends no commit of its own on them. Until then they count as
    /// held, which can only hold work back, never let too much run.
    ///
    /// How long each was held is measured now, at most its lease: a hold
    /// that spans a suspended process or a clock jump would otherwise teach
    /// the key's mean hold hours, and space its waiters hours apart.
    pub(crate) fn release(&self, ids: Vec<u64>, now: Timestamp) {
        if ids.is_empty() {
            return;
        }
        let held: Vec<Held> = {
            let mut holding = self.lock_holding();
            ids.iter().filter_map(|id| holding.remove(id)).collect()
        };
        let mut pending = self.lock_pending();
        for h in held {
            let lease_ms = i64::try_from(h.lease.as_millis()).unwrap_or(i64::MAX);
            let held_ms = now
                .as_millis()
                .saturating_sub(h.since.as_millis())
                .clamp(0, lease_ms);
            for key in h.keys {
                pending.entry(key).or_default().add(held_ms);
            }
        }
    }

    fn lock_pending(&self) -> MutexGuard<'_, HashMap<Arc<str>, Gives>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_holding(&self) -> MutexGuard<'_, HashMap<u64, Held>> {
        self.holding.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives back every slot that waits to be (nothing to do, and no I/O, if
    /// none does). A failure only delays them: each frees itself when its
    /// lease ends.
    pub(crate) async fn flush(&self, backend: &Arc<dyn Backend>, now: Timestamp) {
        let gives = std::mem::take(&mut *self.lock_pending());
        if gives.is_empty() {
            return;
        }
        let mut keys = Keys::default();
        let slots: Vec<(usize, Gives)> = gives
            .into_iter()
            .map(|(key, gives)| (keys.slot(&key), gives))
            .collect();
        let result = transact(backend, &keys.names, now, |budgets| {
            give_back(budgets, self.engine, &slots);
        })
        .await;
        if let Err(err) = result {
            tracing::debug!(%err, keys = slots.len(), "could not give concurrency slots back; they free when their leases end");
        }
    }

    /// Checks an API call of step `index` against its limits before it runs.
    pub(crate) async fn admit_call(
        &self,
        backend: &Arc<dyn Backend>,
        now: Timestamp,
        index: usize,
        tenant: &TenantId,
        body: &serde_json::Value,
    ) -> Result<CallPermit, Refusal> {
        if !self.limited(index) {
            return Ok(CallPermit::default());
        }
        let limits = self.limits(index);
        let mut keys = Vec::with_capacity(limits.len());
        for limit in limits {
            let key = limit
                .key
                .of_call(tenant, body)
                .map_err(|err| Refusal::Key(key_failure(self.step_name(index), limit, &err)))?;
            keys.push(budget_key(self.step_name(index), &limit.name, &key));
        }
        let pairs: Vec<(usize, usize)> = (0..limits.len()).map(|l| (l, l)).collect();
        // A call is the newest work there is: it takes no slot kept for a
        // delivery that waits.
        let holder = self.holder(index, now, now);
        let verdict = transact(backend, &keys, now, |budgets| {
            take_all(
                limits,
                &pairs,
                budgets,
                holder,
                now,
                Budget::take_or_say_when,
            )
        })
        .await
        .map_err(|err| Refusal::Unavailable(err.to_string()))?;
        match verdict {
            Verdict::Run => Ok(CallPermit {
                slots: limits
                    .iter()
                    .zip(keys)
                    .filter(|(l, _)| matches!(l.quota, Quota::Concurrency { .. }))
                    .map(|(_, k)| k)
                    .collect(),
                since: Some(now),
            }),
            Verdict::Wait(at, (limit, slot)) => {
                self.count_throttled(index, limit, &keys[slot]);
                Err(Refusal::Throttled(at))
            }
        }
    }

    /// Gives back what an API call held.
    pub(crate) async fn release_call(
        &self,
        backend: &Arc<dyn Backend>,
        now: Timestamp,
        permit: CallPermit,
    ) {
        let Some(since) = permit.since.filter(|_| !permit.slots.is_empty()) else {
            return;
        };
        let held_ms = now.as_millis().saturating_sub(since.as_millis());
        let result = transact(backend, &permit.slots, now, |budgets| {
            for budget in budgets.iter_mut() {
                budget.give_back(self.engine, 1, held_ms);
            }
        })
        .await;
        if let Err(err) = result {
            tracing::debug!(%err, "could not give an API call's slots back; they free when their lease ends");
        }
    }
}

/// Slots to give back under one budget key: how many, and when they were
/// taken, summed (for the mean hold).
#[derive(Clone, Copy, Debug, Default)]
struct Gives {
    count: u32,
    held_sum_ms: i64,
}

impl Gives {
    fn add(&mut self, held_ms: i64) {
        self.count += 1;
        self.held_sum_ms = self.held_sum_ms.saturating_add(held_ms);
    }

    fn merge(&mut self, other: Gives) {
        self.count += other.count;
        self.held_sum_ms = self.held_sum_ms.saturating_add(other.held_sum_ms);
    }
}

fn give_back(budgets: &mut [Budget], engine: u64, slots: &[(usize, Gives)]) {
    for (slot, gives) in slots {
        let mean_ms = gives.held_sum_ms / i64::from(gives.count.max(1));
        budgets[*slot].give_back(engine, gives.count, mean_ms);
    }
}

fn key_failure(step: &str, limit: &Limit, err: &KeyError) -> String {
    format!("flow control: limit {:?} of step {step}: {err}", limit.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_hold_that_spans_a_clock_jump_counts_as_its_lease_at_most() {
        let gate = Gate::new(&Flow::builder().build().expect("an empty flow builds"));
        let key: Arc<str> = Arc::from("flowline/limits/pay/per-store/X");
        let lease = Duration::from_secs(60);
        for (id, since) in [(1, 0), (2, 9_000)] {
            let held = Held {
                since: Timestamp::from_millis(since),
                keys: vec![key.clone()],
                lease,
            };
            gate.lock_holding().insert(id, held);
        }
        // Released 3 hours on (the clock jumped): the first counts its lease,
        // not 3 hours; the other was held 3 hours less 9 seconds, also capped.
        gate.release(vec![1, 2], Timestamp::from_millis(3 * 3600 * 1000));
        let gives = gate.lock_pending()[&key];
        assert_eq!((gives.count, gives.held_sum_ms), (2, 120_000));
        // A short hold counts as it was.
        gate.lock_holding().insert(
            3,
            Held {
                since: Timestamp::from_millis(0),
                keys: vec![key.clone()],
                lease,
            },
        );
        gate.release(vec![3], Timestamp::from_millis(2_500));
        assert_eq!(gate.lock_pending()[&key].held_sum_ms, 122_500);
    }
}
