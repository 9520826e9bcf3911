//! The gate: which claimed deliveries and API calls may run now, and the
//! concurrency slots given back once they have.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::budget::{Budget, Holder};
use super::ledger::{budget_key, transact};
use super::limits::{KeyError, Limit, Quota};
use crate::backend::{Action, Backend, Claimed, Completion, LeaseRef};
use crate::engine::flow::Flow;
use crate::event::{Envelope, TenantId};
use crate::time::Timestamp;

/// One engine's flow control: what each step declares, and how often each
/// step's work was held back.
pub(crate) struct Gate {
    /// Per step, in flow order: its limits (empty for most steps).
    limits: Vec<Arc<[Limit]>>,
    /// Per step, in flow order: its name and lease.
    steps: Vec<(String, Duration)>,
    /// Per step, in flow order: deliveries and calls held back.
    throttled: Vec<AtomicU64>,
    /// Concurrency slots of finished batches, to give back, per budget key.
    pending: std::sync::Mutex<HashMap<String, Gives>>,
    /// This engine's id in the budgets' slot counts.
    engine: u64,
}

/// A delivery that holds concurrency slots until its batch is done.
pub(crate) struct Held {
    index: usize,
    since: Timestamp,
    event: Arc<Envelope>,
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

/// A delivery's verdict.
enum Verdict {
    Run,
    Wait(Timestamp),
}

impl Gate {
    pub(crate) fn new(flow: &Flow) -> Self {
        let steps = flow.steps();
        Gate {
            limits: steps.iter().map(|s| s.limits.clone()).collect(),
            steps: steps
                .iter()
                .map(|s| (s.name.as_str().to_string(), s.config.lease))
                .collect(),
            throttled: steps.iter().map(|_| AtomicU64::new(0)).collect(),
            pending: std::sync::Mutex::new(HashMap::new()),
            engine: rand::random::<u64>(),
        }
    }

    /// How many deliveries and calls of step `index` were held back so far.
    pub(crate) fn throttled(&self, index: usize) -> u64 {
        self.throttled
            .get(index)
            .map_or(0, |n| n.load(Ordering::Relaxed))
    }

    fn limited(&self, index: usize) -> bool {
        self.limits.get(index).is_some_and(|l| !l.is_empty())
    }

    fn holds_slots(&self, index: usize) -> bool {
        self.limits.get(index).is_some_and(|l| {
            l.iter()
                .any(|l| matches!(l.quota, Quota::Concurrency { .. }))
        })
    }

    /// Of claimed deliveries (with their step indexes), returns those that
    /// may run now. The others go back to the queue unrun, due when their
    /// budgets allow (no attempt counted); one whose key cannot be computed
    /// dead-letters with the reason.
    pub(crate) async fn admit(
        &self,
        backend: &Arc<dyn Backend>,
        now: Timestamp,
        claimed: Vec<(usize, Claimed)>,
    ) -> Vec<(usize, Claimed)> {
        if !claimed.iter().any(|(index, _)| self.limited(*index)) {
            // No admission to ride along with: slots waiting go back now.
            if self.has_pending() {
                self.flush(backend, now).await;
            }
            return claimed;
        }
        let mut keys: Vec<String> = Vec::new();
        let mut slot_of: HashMap<String, usize> = HashMap::new();
        // Slots waiting to be given back go back in this commit, first.
        let gives = std::mem::take(&mut *self.lock_pending());
        let returned = slots_of(gives, &mut keys, &mut slot_of);
        // Per delivery: (limit, budget slot) pairs, or why it has no key.
        let mut wants: Vec<Result<Vec<(usize, usize)>, String>> = Vec::with_capacity(claimed.len());
        for (index, c) in &claimed {
            let mut pairs = Vec::new();
            let mut failed = None;
            for (l, limit) in self.limits[*index].iter().enumerate() {
                match limit.key.of_event(&c.event) {
                    Ok(key) => {
                        let budget = budget_key(&self.steps[*index].0, &limit.name, &key);
                        let slot = *slot_of.entry(budget.clone()).or_insert_with(|| {
                            keys.push(budget);
                            keys.len() - 1
                        });
                        pairs.push((l, slot));
                    }
                    Err(err) => {
                        failed = Some(key_failure(&self.steps[*index].0, limit, &err));
                        break;
                    }
                }
            }
            wants.push(failed.map_or(Ok(pairs), Err));
        }
        let verdicts = transact(backend, &keys, now, |budgets| {
            give_back(budgets, self.engine, &returned, now);
            claimed
                .iter()
                .zip(&wants)
                .map(|((index, _), want)| match want {
                    Ok(pairs) => self.decide(*index, pairs, budgets, now),
                    Err(_) => Verdict::Run,
                })
                .collect::<Vec<_>>()
        })
        .await;
        let verdicts = match verdicts {
            Ok(verdicts) => verdicts,
            Err(err) => {
                {
                    let mut pending = self.lock_pending();
                    for (slot, gives) in returned {
                        pending.entry(keys[slot].clone()).or_default().merge(gives);
                    }
                }
                // The store is unreachable or contended: give the limited
                // deliveries back at once, unrun and uncounted.
                tracing::warn!(%err, "flow control could not read its budgets; limited deliveries go back to the queue");
                let (free, limited): (Vec<_>, Vec<_>) = claimed
                    .into_iter()
                    .partition(|(index, _)| !self.limited(*index));
                let leases: Vec<LeaseRef> = limited.iter().map(|(_, c)| c.lease).collect();
                if let Err(err) = backend.release(&leases).await {
                    tracing::warn!(%err, "could not give limited deliveries back; they return when their lease ends");
                }
                return free;
            }
        };
        let mut admitted = Vec::with_capacity(claimed.len());
        let mut settle = Vec::new();
        for (((index, c), want), verdict) in claimed.into_iter().zip(wants).zip(verdicts) {
            match (want, verdict) {
                (Err(error), _) => settle.push(Completion {
                    tenant: c.event.tenant.clone(),
                    input: Some(c.lease),
                    marker: None,
                    action: Action::DeadLetter { error, at: now },
                }),
                (Ok(_), Verdict::Wait(at)) => {
                    self.throttled[index].fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(step = %c.step, tenant = %c.event.tenant, %at, "held back by flow control");
                    settle.push(Completion {
                        tenant: c.event.tenant.clone(),
                        input: Some(c.lease),
                        marker: None,
                        action: Action::Defer { at },
                    });
                }
                (Ok(_), Verdict::Run) => admitted.push((index, c)),
            }
        }
        if !settle.is_empty() {
            if let Err(err) = backend.complete(settle).await {
                tracing::warn!(%err, "could not defer held-back deliveries; they return when their lease ends");
            }
        }
        admitted
    }

    /// Takes a unit of every limit of one delivery, or none of them.
    fn decide(
        &self,
        index: usize,
        pairs: &[(usize, usize)],
        budgets: &mut [Budget],
        now: Timestamp,
    ) -> Verdict {
        let holder = Holder {
            engine: self.engine,
            until: (now + self.steps[index].1).as_millis(),
        };
        take_all(
            &self.limits[index],
            pairs,
            budgets,
            holder,
            now,
            Budget::take,
        )
    }

    /// The deliveries of a batch that will hold concurrency slots, so the
    /// batch can give them back when it is done.
    pub(crate) fn holders(&self, chunk: &[(usize, Claimed)], now: Timestamp) -> Vec<Held> {
        chunk
            .iter()
            .filter(|(index, _)| self.holds_slots(*index))
            .map(|(index, c)| Held {
                index: *index,
                since: now,
                event: c.event.clone(),
            })
            .collect()
    }

    /// Gives back the slots `held` took: at the next admission, in its
    /// commit, or at the next [`flush`](Self::flush) if none comes first (the
    /// dispatcher flushes before it waits), so a busy engine spends no commit
    /// of its own on them. Until then they count as held, which can only hold
    /// work back, never let too much run.
    pub(crate) fn release(&self, held: Vec<Held>) {
        // Most of a batch shares a few keys: each key's budget key is made
        // once, not once per execution.
        let mut counted: HashMap<(usize, usize, Cow<'_, str>), Gives> = HashMap::new();
        for h in &held {
            for (l, limit) in self.limits[h.index].iter().enumerate() {
                if !matches!(limit.quota, Quota::Concurrency { .. }) {
                    continue;
                }
                let Ok(key) = limit.key.of_event(&h.event) else {
                    continue;
                };
                counted.entry((h.index, l, key)).or_default().add(h.since);
            }
        }
        let mut pending = self.lock_pending();
        for ((index, l, key), gives) in counted {
            let budget = budget_key(&self.steps[index].0, &self.limits[index][l].name, &key);
            pending.entry(budget).or_default().merge(gives);
        }
    }

    /// Whether slots wait to be given back.
    pub(crate) fn has_pending(&self) -> bool {
        !self.lock_pending().is_empty()
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Gives>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives back every slot that waits to be. A failure only delays them:
    /// each frees itself when its lease ends.
    pub(crate) async fn flush(&self, backend: &Arc<dyn Backend>, now: Timestamp) {
        let gives = std::mem::take(&mut *self.lock_pending());
        if gives.is_empty() {
            return;
        }
        let mut keys: Vec<String> = Vec::new();
        let slots = slots_of(gives, &mut keys, &mut HashMap::new());
        let result = transact(backend, &keys, now, |budgets| {
            give_back(budgets, self.engine, &slots, now);
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
        let limits = &self.limits[index];
        let mut keys = Vec::with_capacity(limits.len());
        for limit in limits.iter() {
            let key = limit
                .key
                .of_call(tenant, body)
                .map_err(|err| Refusal::Key(key_failure(&self.steps[index].0, limit, &err)))?;
            keys.push(budget_key(&self.steps[index].0, &limit.name, &key));
        }
        let pairs: Vec<(usize, usize)> = (0..limits.len()).map(|l| (l, l)).collect();
        let holder = Holder {
            engine: self.engine,
            until: (now + self.steps[index].1).as_millis(),
        };
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
            Verdict::Wait(at) => {
                self.throttled[index].fetch_add(1, Ordering::Relaxed);
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
        let result = transact(backend, &permit.slots, now, |budgets| {
            for budget in budgets.iter_mut() {
                budget.give_back(self.engine, 1, since, now);
            }
        })
        .await;
        if let Err(err) = result {
            tracing::debug!(%err, "could not give an API call's slots back; they free when their lease ends");
        }
    }
}

/// Takes a unit of each limit from its budget, or, if any refuses, none:
/// the budgets are left as they were but for the refusing ones' marks.
fn take_all(
    limits: &[Limit],
    pairs: &[(usize, usize)],
    budgets: &mut [Budget],
    holder: Holder,
    now: Timestamp,
    take: fn(&mut Budget, Quota, Option<Holder>, Timestamp) -> Result<(), Timestamp>,
) -> Verdict {
    let before: Vec<Budget> = pairs
        .iter()
        .map(|(_, slot)| budgets[*slot].clone())
        .collect();
    let mut wait: Option<Timestamp> = None;
    let mut refused = Vec::new();
    for (limit, slot) in pairs {
        let declared = limits[*limit].quota;
        let quota = budgets[*slot]
            .quota
            .filter(|q| q.kind() == declared.kind())
            .unwrap_or(declared);
        if let Err(at) = take(&mut budgets[*slot], quota, Some(holder), now) {
            wait = Some(wait.map_or(at, |w| w.max(at)));
            refused.push(*slot);
        }
    }
    let Some(at) = wait else {
        return Verdict::Run;
    };
    for ((_, slot), budget) in pairs.iter().zip(before) {
        if !refused.contains(slot) {
            budgets[*slot] = budget;
        }
    }
    Verdict::Wait(at)
}

/// Slots to give back under one budget key: how many, and when they were
/// taken, summed (for the mean hold).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Gives {
    count: u32,
    since_sum: i64,
}

impl Gives {
    fn add(&mut self, since: Timestamp) {
        self.count += 1;
        self.since_sum = self.since_sum.saturating_add(since.as_millis());
    }

    fn merge(&mut self, other: Gives) {
        self.count += other.count;
        self.since_sum = self.since_sum.saturating_add(other.since_sum);
    }
}

/// The budget slot of each key's give-backs, adding keys not seen yet.
fn slots_of(
    gives: HashMap<String, Gives>,
    keys: &mut Vec<String>,
    slot_of: &mut HashMap<String, usize>,
) -> Vec<(usize, Gives)> {
    gives
        .into_iter()
        .map(|(key, gives)| {
            let slot = match slot_of.get(&key) {
                Some(slot) => *slot,
                None => {
                    keys.push(key.clone());
                    slot_of.insert(key, keys.len() - 1);
                    keys.len() - 1
                }
            };
            (slot, gives)
        })
        .collect()
}

fn give_back(budgets: &mut [Budget], engine: u64, slots: &[(usize, Gives)], now: Timestamp) {
    for (slot, gives) in slots {
        let since = Timestamp::from_millis(gives.since_sum / i64::from(gives.count.max(1)));
        budgets[*slot].give_back(engine, gives.count, since, now);
    }
}

fn key_failure(step: &str, limit: &Limit, err: &KeyError) -> String {
    format!("flow control: limit {:?} of step {step}: {err}", limit.name)
}
