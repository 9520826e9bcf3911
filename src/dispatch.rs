//! The dispatcher (claims due deliveries fairly, within concurrency limits) and the
//! batch runner (runs handlers, turns results into completions, commits them together).

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::context::{ContextInfo, StepContext};
use crate::engine::Shared;
use crate::event::StepName;
use crate::flow::StepRuntime;
use crate::metrics::BatchStats;
use crate::step::{catch_panic, panicked, ErrorClass, Handler, StepError};
use crate::store::{Action, AddError, Completion, Outcome};
use crate::time::Timestamp;
use crate::transport::{ClaimRequest, Claimed, StepClaim};

/// An attempt ran past its step's timeout.
#[derive(Debug, thiserror::Error)]
#[error("attempt timed out after {0:?}")]
pub struct TimedOut(pub Duration);

/// A delivery's lease expired more often than its retry policy allows attempts.
#[derive(Debug, thiserror::Error)]
#[error("attempts exhausted: {attempts} attempts started, last error: {last_error}")]
pub struct LeaseExhausted {
    attempts: u32,
    last_error: String,
}

pub(crate) async fn run(shared: Arc<Shared>, batches: Arc<Mutex<JoinSet<()>>>) {
    let mut rotation = 0usize;
    let claimable: Vec<usize> = shared
        .flow
        .steps()
        .iter()
        .enumerate()
        .filter(|(_, s)| !matches!(s.handler, Handler::Api(_)))
        .map(|(i, _)| i)
        .collect();
    loop {
        if shared.is_stopping() {
            return;
        }
        {
            let mut set = batches.lock().unwrap_or_else(|p| p.into_inner());
            while set.try_join_next().is_some() {}
        }
        let room = shared
            .config
            .max_in_flight
            .saturating_sub(shared.in_flight_total.load(Ordering::Acquire));
        let mut wants = Vec::new();
        if room > 0 && !claimable.is_empty() {
            rotation = (rotation + 1) % claimable.len();
            for k in 0..claimable.len() {
                let index = claimable[(rotation + k) % claimable.len()];
                let step = &shared.flow.steps()[index];
                let free = step
                    .config
                    .concurrency
                    .saturating_sub(shared.in_flight[index].load(Ordering::Acquire))
                    .min(room);
                if free > 0 {
                    wants.push(StepClaim {
                        step: step.name.clone(),
                        max: free,
                        lease: step.config.lease,
                    });
                }
            }
        }
        let wait = tokio::time::sleep(shared.config.poll_interval);
        let notified = shared.wake.notified();
        let mut next_due = None;
        if !wants.is_empty() {
            let now = shared.clock.now();
            let request = ClaimRequest {
                now,
                steps: wants,
                tenant_quantum: shared.config.tenant_quantum,
            };
            match shared.backend.claim(request).await {
                Ok(batch) => {
                    shared
                        .metrics
                        .dispatch_rounds
                        .fetch_add(1, Ordering::Relaxed);
                    // A due time that had passed when the claim found nothing is no
                    // reason to claim again at once (that would spin); a completion
                    // or the poll interval wakes the loop instead.
                    next_due = batch.next_due.filter(|at| *at > now);
                    if !batch.deliveries.is_empty() {
                        launch(&shared, &batches, batch.deliveries);
                        continue;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "claim failed; retrying after the poll interval")
                }
            }
        }
        let until_due = async {
            match next_due {
                Some(at) => shared.clock.sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = notified => {}
            _ = wait => {}
            _ = until_due => {}
            _ = shared.stop.notified() => {}
        }
    }
}

fn launch(shared: &Arc<Shared>, batches: &Mutex<JoinSet<()>>, deliveries: Vec<Claimed>) {
    let mut set = batches.lock().unwrap_or_else(|p| p.into_inner());
    let mut deliveries = deliveries.into_iter();
    // Claims come grouped by step: look each step's index up once per run.
    let mut last: Option<(StepName, usize)> = None;
    while deliveries.len() > 0 {
        let mut chunk: Vec<(usize, Claimed)> =
            Vec::with_capacity(deliveries.len().min(shared.config.batch_size));
        for c in deliveries.by_ref().take(shared.config.batch_size) {
            let index = match &last {
                Some((name, index)) if *name == c.step => *index,
                _ => {
                    let Some(index) = shared.flow.step_index(c.step.as_str()) else {
                        continue;
                    };
                    last = Some((c.step.clone(), index));
                    index
                }
            };
            chunk.push((index, c));
        }
        for_each_run(chunk.iter().map(|(index, _)| *index), |index, n| {
            shared.in_flight[index].fetch_add(n, Ordering::AcqRel);
        });
        shared
            .in_flight_total
            .fetch_add(chunk.len(), Ordering::AcqRel);
        let batch_id = shared.next_batch.fetch_add(1, Ordering::Relaxed);
        shared
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(batch_id, chunk.iter().map(|(_, c)| c.lease).collect());
        set.spawn(run_batch(shared.clone(), batch_id, chunk));
    }
}

/// Calls `f(item, n)` for each run of `n` equal consecutive items.
fn for_each_run(items: impl Iterator<Item = usize>, mut f: impl FnMut(usize, usize)) {
    let mut run: Option<(usize, usize)> = None;
    for item in items {
        match &mut run {
            Some((current, n)) if *current == item => *n += 1,
            _ => {
                if let Some((current, n)) = run {
                    f(current, n);
                }
                run = Some((item, 1));
            }
        }
    }
    if let Some((current, n)) = run {
        f(current, n);
    }
}

/// What a finished execution asks the backend to do, for the batch's statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Commit,
    Retry,
    DeadLetter,
}

impl Kind {
    fn of(action: &Action) -> Self {
        match action {
            Action::Commit { .. } => Kind::Commit,
            Action::Retry { .. } => Kind::Retry,
            Action::DeadLetter { .. } => Kind::DeadLetter,
        }
    }
}

struct Execution {
    index: usize,
    claimed: Claimed,
    kind: Kind,
    ran_for: Option<Duration>,
    timed_out: bool,
}

async fn run_batch(shared: Arc<Shared>, batch_id: u64, chunk: Vec<(usize, Claimed)>) {
    let mut stats = BatchStats::default();
    let count = chunk.len();
    let mut indexes: Vec<usize> = Vec::with_capacity(count);
    let mut pending: Vec<(usize, Claimed)> = chunk;
    let mut conflicts_of: HashMap<u64, u32> = HashMap::new();
    let mut serial = false;
    while !pending.is_empty() {
        // After a conflict, re-runs go one at a time, each committing before the
        // next starts: run together they would all read the same versions again,
        // and n executions contending for a hot key would take n²/2 runs, not 2n.
        let mut round: Vec<(usize, Claimed)> = if serial {
            pending.drain(..1).collect()
        } else {
            std::mem::take(&mut pending)
        };
        let Done {
            executions,
            completions,
        } = run_all(&shared, &mut round).await;
        let outcomes = match shared.backend.complete(completions).await {
            Ok(outcomes) => outcomes,
            Err(err) => {
                // Nothing applied; the leases expire and the deliveries come back.
                tracing::error!(error = %err, deliveries = executions.len(), "commit failed; deliveries return after their lease");
                for e in &executions {
                    indexes.push(e.index);
                }
                break;
            }
        };
        let now = shared.clock.now();
        let mut rejected = Vec::new();
        for (e, outcome) in executions.into_iter().zip(outcomes) {
            match outcome {
                Outcome::Conflict => {
                    serial = true;
                    let reruns = conflicts_of.entry(e.claimed.lease.id).or_default();
                    *reruns += 1;
                    if *reruns <= shared.config.max_conflict_reruns {
                        stats.conflicts += 1;
                        pending.push((e.index, e.claimed));
                        continue;
                    }
                    tracing::warn!(step = %e.claimed.step, "giving up after repeated conflicts; the lease will expire");
                }
                Outcome::Applied => {
                    record(&mut stats, &e, now);
                }
                Outcome::Stale | Outcome::Duplicate => stats.stale += 1,
                Outcome::Rejected(err) => {
                    rejected.push((e, err));
                    continue;
                }
            }
            indexes.push(e.index);
        }
        if !rejected.is_empty() {
            settle_rejected(&shared, rejected, &mut stats, &mut indexes).await;
        }
    }
    for_each_run(indexes.into_iter(), |index, n| {
        shared.in_flight[index].fetch_sub(n, Ordering::AcqRel);
    });
    shared
        .leases
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&batch_id);
    shared.in_flight_total.fetch_sub(count, Ordering::AcqRel);
    shared.metrics.merge(&stats);
    shared.wake.notify_one();
    shared.idle.notify_waiters();
}

/// Fails the executions whose commits the backend rejected (an add could not
/// apply): nothing of them applied, so each dead-letters now with the reason.
async fn settle_rejected(
    shared: &Arc<Shared>,
    rejected: Vec<(Execution, AddError)>,
    stats: &mut BatchStats,
    indexes: &mut Vec<usize>,
) {
    let mut executions = Vec::with_capacity(rejected.len());
    let mut completions = Vec::with_capacity(rejected.len());
    for (mut e, err) in rejected {
        let span = tracing::info_span!(
            "step",
            step = %e.claimed.step,
            tenant = %e.claimed.event.tenant,
            event_id = %e.claimed.event.id,
            attempt = e.claimed.attempt,
        );
        let action = failure(
            shared,
            e.index,
            &e.claimed,
            StepError::permanent(err),
            &span,
        );
        e.kind = Kind::of(&action);
        completions.push(Completion {
            tenant: e.claimed.event.tenant.clone(),
            input: Some(e.claimed.lease),
            marker: None,
            action,
        });
        executions.push(e);
    }
    let outcomes = match shared.backend.complete(completions).await {
        Ok(outcomes) => outcomes,
        Err(err) => {
            tracing::error!(error = %err, deliveries = executions.len(), "commit failed; deliveries return after their lease");
            indexes.extend(executions.iter().map(|e| e.index));
            return;
        }
    };
    let now = shared.clock.now();
    for (e, outcome) in executions.into_iter().zip(outcomes) {
        match outcome {
            Outcome::Applied => record(stats, &e, now),
            _ => stats.stale += 1,
        }
        indexes.push(e.index);
    }
}

/// Executions and the completions that carry their actions, in matching order.
struct Done {
    executions: Vec<Execution>,
    completions: Vec<Completion>,
}

impl Done {
    fn with_capacity(n: usize) -> Self {
        Done {
            executions: Vec::with_capacity(n),
            completions: Vec::with_capacity(n),
        }
    }
}

/// Runs every delivery of `chunk` (draining it) concurrently; returns the executions
/// and their completions, both in the order of `chunk`.
///
/// Each handler is started and polled once, in place. Handlers that finish on that
/// poll (no I/O, or I/O that was ready) need no task, no allocation and no timer;
/// the others go on together, each under its step's timeout.
async fn run_all(shared: &Arc<Shared>, chunk: &mut Vec<(usize, Claimed)>) -> Done {
    let now = shared.clock.now();
    let (done, unfinished) = std::future::poll_fn(|cx| {
        let mut done = Done::with_capacity(chunk.len());
        let mut unfinished = None;
        let mut mark = tokio::time::Instant::now();
        let mut spare = None;
        for (slot, (index, claimed)) in chunk.drain(..).enumerate() {
            let started = start(
                &mut done, &mut spare, shared, index, claimed, now, &mut mark, cx,
            );
            if let Some(rest) = started {
                unfinished
                    .get_or_insert_with(FuturesUnordered::new)
                    .push(async move { (slot, rest.await) });
            }
        }
        Poll::Ready((done, unfinished))
    })
    .await;
    let Some(mut unfinished) = unfinished else {
        return done;
    };
    let mut late = Vec::with_capacity(unfinished.len());
    while let Some(finished) = unfinished.next().await {
        late.push(finished);
    }
    late.sort_unstable_by_key(|(slot, _)| *slot);
    // Put the late ones back in their slots between the ones that finished at once.
    let n = done.executions.len() + late.len();
    let mut merged = Done::with_capacity(n);
    let mut early = done.executions.into_iter().zip(done.completions);
    let mut late = late.into_iter().peekable();
    for slot in 0..n {
        let next = match late.next_if(|(at, _)| *at == slot) {
            Some((_, one)) => one.executions.into_iter().zip(one.completions).next(),
            None => early.next(),
        };
        if let Some((e, c)) = next {
            merged.executions.push(e);
            merged.completions.push(c);
        }
    }
    merged
}

fn record(stats: &mut BatchStats, e: &Execution, now: Timestamp) {
    if let Some(ran_for) = e.ran_for {
        stats.handler.record(ran_for);
    }
    if e.timed_out {
        stats.timeouts += 1;
    }
    match e.kind {
        Kind::Commit => {
            stats.processed += 1;
            stats
                .end_to_end
                .record(now.saturating_since(e.claimed.event.due_at()));
        }
        Kind::Retry => {
            stats.failed += 1;
            stats.retried += 1;
        }
        Kind::DeadLetter => {
            stats.failed += 1;
            stats.dead_lettered += 1;
        }
    }
}

/// Pairs an execution with the completion that carries its action, and adds them
/// to `done`.
fn finish(
    done: &mut Done,
    index: usize,
    claimed: Claimed,
    action: Action,
    ran_for: Option<Duration>,
    timed_out: bool,
) {
    let kind = Kind::of(&action);
    done.completions.push(Completion {
        tenant: claimed.event.tenant.clone(),
        input: Some(claimed.lease),
        marker: None,
        action,
    });
    done.executions.push(Execution {
        index,
        claimed,
        kind,
        ran_for,
        timed_out,
    });
}

/// Starts one execution and polls its handler once with the batch task's context.
/// If the handler finished, adds the execution to `done`; if not, returns the
/// future that finishes it.
///
/// `spare` is the context of the previous execution that finished at once: when no
/// clone of it is left, this execution's context reuses its allocation.
///
/// `mark` is the latest instant read from the clock. A handler's run time counts
/// from it, and it moves to the end of each handler that finishes on the first poll,
/// so back-to-back handlers cost one clock read each.
#[allow(clippy::too_many_arguments)]
fn start(
    done: &mut Done,
    spare: &mut Option<StepContext>,
    shared: &Arc<Shared>,
    index: usize,
    claimed: Claimed,
    now: Timestamp,
    mark: &mut tokio::time::Instant,
    cx: &mut Context<'_>,
) -> Option<impl Future<Output = Done> + Send + 'static> {
    let step: &Arc<StepRuntime> = &shared.flow.steps()[index];
    if claimed.attempt > step.config.retry.get_max_attempts() {
        let err = LeaseExhausted {
            attempts: claimed.attempt - 1,
            last_error: claimed
                .last_error
                .clone()
                .unwrap_or_else(|| "lease expired before the attempt completed".into()),
        };
        let action = Action::DeadLetter {
            error: err.to_string(),
            at: now,
        };
        finish(done, index, claimed, action, None, false);
        return None;
    }
    let Handler::Event(handler) = &step.handler else {
        let action = Action::DeadLetter {
            error: "delivery addressed to an API step".into(),
            at: now,
        };
        finish(done, index, claimed, action, None, false);
        return None;
    };
    let timeout = step.config.timeout;
    let info = ContextInfo {
        tenant: claimed.event.tenant.clone(),
        step: step.name.clone(),
        step_index: index,
        trace_id: claimed.event.trace_id,
        event_id: Some(claimed.event.id),
        attempt: claimed.attempt,
        deadline: now + timeout,
    };
    let ctx = match spare.take() {
        Some(mut ctx) => match ctx.renew(info) {
            Ok(()) => ctx,
            Err(info) => StepContext::new(info, shared.clone()),
        },
        None => StepContext::new(info, shared.clone()),
    };
    let span = tracing::info_span!(
        "step",
        step = %step.name,
        topic = %claimed.event.topic,
        tenant = %claimed.event.tenant,
        trace_id = %claimed.event.trace_id,
        event_id = %claimed.event.id,
        attempt = claimed.attempt,
    );
    let started = *mark;
    let first = {
        let _entered = span.enter();
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut run = handler(ctx.clone(), &claimed.event);
            let poll = run.as_mut().poll(cx);
            (run, poll)
        }))
    };
    let result = match first {
        Ok((run, Poll::Ready(result))) => {
            drop(run); // its clone of the context, so the context can be reused
            result
        }
        Err(payload) => Err(panicked(payload.as_ref())),
        Ok((run, Poll::Pending)) => {
            let shared = shared.clone();
            return Some(async move {
                let rest = catch_panic(run);
                let result = tokio::time::timeout_at(started + timeout, rest)
                    .instrument(span.clone())
                    .await;
                let ran_for = started.elapsed();
                let (result, timed_out) = match result {
                    Ok(result) => (result, false),
                    Err(_) => (Err(StepError::retryable(TimedOut(timeout))), true),
                };
                let mut done = Done::with_capacity(1);
                conclude(
                    &mut done, &shared, index, claimed, &ctx, result, ran_for, timed_out, &span,
                );
                done
            });
        }
    };
    let end = tokio::time::Instant::now();
    let ran_for = end.saturating_duration_since(started);
    *mark = end;
    conclude(
        done, shared, index, claimed, &ctx, result, ran_for, false, &span,
    );
    *spare = Some(ctx);
    None
}

/// Turns a handler's result into the execution's action: commit its transaction,
/// retry per the step's policy, or dead-letter.
#[allow(clippy::too_many_arguments)]
fn conclude(
    done: &mut Done,
    shared: &Arc<Shared>,
    index: usize,
    claimed: Claimed,
    ctx: &StepContext,
    result: Result<(), StepError>,
    ran_for: Duration,
    timed_out: bool,
    span: &tracing::Span,
) {
    let ran_for = Some(ran_for);
    let error = match result {
        Ok(()) => {
            let parts = ctx.take_txn().into_parts();
            let action = Action::Commit {
                reads: parts.reads,
                writes: parts.writes,
                adds: parts.adds,
                emits: shared.fan_out(parts.emits),
            };
            finish(done, index, claimed, action, ran_for, timed_out);
            return;
        }
        Err(err) => err,
    };
    let action = failure(shared, index, &claimed, error, span);
    finish(done, index, claimed, action, ran_for, timed_out);
}

/// The action for an attempt that failed with `error`: retry per the step's
/// policy, or dead-letter. Logs it in `span`.
fn failure(
    shared: &Arc<Shared>,
    index: usize,
    claimed: &Claimed,
    error: StepError,
    span: &tracing::Span,
) -> Action {
    let policy = shared.flow.steps()[index].config.retry;
    let now = shared.clock.now();
    let message = error.chain_message();
    let elapsed = now.saturating_since(claimed.first_attempt_at);
    let next = match error.class() {
        ErrorClass::Permanent => None,
        ErrorClass::Retryable => policy.next_delay(claimed.attempt, elapsed, None),
        ErrorClass::RetryAfter(floor) => policy.next_delay(claimed.attempt, elapsed, Some(floor)),
    };
    let _enter = span.enter();
    match next {
        Some(delay) => {
            tracing::warn!(error = %message, retry_in = ?delay, "attempt failed; will retry");
            Action::Retry {
                at: now + delay,
                error: message,
            }
        }
        None => {
            tracing::error!(error = %message, permanent = error.is_permanent(), "attempt failed; dead-lettering");
            Action::DeadLetter {
                error: message,
                at: now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::for_each_run;

    #[test]
    fn runs_are_counted_in_order() {
        let mut runs = Vec::new();
        for_each_run([2, 2, 0, 1, 1, 1, 2].into_iter(), |item, n| {
            runs.push((item, n));
        });
        assert_eq!(runs, [(2, 2), (0, 1), (1, 3), (2, 1)]);
        for_each_run(std::iter::empty(), |_, _| panic!("no items, no runs"));
    }
}
