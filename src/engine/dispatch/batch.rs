//! Running a batch: each handler started and polled once in place, the batch's
//! completions committed together, conflicted executions re-run in rounds, and the
//! batch's statistics recorded.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::stream::{FuturesUnordered, StreamExt};
use tracing::Instrument;

use crate::backend::{Action, AddError, Claimed, Completion, FailureKind, Outcome};
use crate::engine::context::{ContextInfo, StepContext};
use crate::engine::failure::give_up;
use crate::engine::flow::StepRuntime;
use crate::engine::journal::{ExecutionOutcome, ExecutionRecord};
use crate::engine::metrics::{tenant_tally, BatchStats};
use crate::engine::shared::Shared;
use crate::engine::step::Handler;
use crate::engine::step_error::{catch_panic, panicked, StepError};
use crate::engine::trace_link;
use crate::time::Timestamp;

use super::error::{LeaseExhausted, TimedOut};
use super::footprint::{footprints_of, next_round, recycle, Rerun};
use super::outcome::{conclude, failure, finish, Done, Execution, Kind};

/// Calls `f(item, n)` for each run of `n` equal consecutive items.
pub(super) fn for_each_run(items: impl Iterator<Item = usize>, mut f: impl FnMut(usize, usize)) {
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

pub(super) async fn run_batch(
    shared: Arc<Shared>,
    batch_id: u64,
    chunk: Vec<(usize, Claimed)>,
    claimed_at: Timestamp,
) {
    let mut stats = BatchStats::new(shared.journal.enabled(), shared.tenant_counters.enabled());
    let count = chunk.len();
    let held = shared.gate.holding_in(&chunk);
    let mut indexes: Vec<usize> = Vec::with_capacity(count);
    let mut pending: Vec<(usize, Claimed)> = chunk;
    // A batch that starts after its leases ran out (the process was
    // suspended, the clock jumped) runs none of them: each may be running
    // elsewhere already, under a newer lease and a flow-control slot of its own.
    let now = shared.clock.now();
    let lease_of = |index: usize| shared.flow.steps()[index].config.lease;
    if pending
        .iter()
        .any(|(index, _)| claimed_at + lease_of(*index) <= now)
    {
        pending.retain(|(index, _)| {
            let live = claimed_at + lease_of(*index) > now;
            if !live {
                indexes.push(*index);
                stats.stale += 1;
            }
            live
        });
    }
    // Only executions that conflicted are remembered: nothing is allocated while
    // none does.
    let mut reruns: HashMap<u64, Rerun> = HashMap::new();
    while !pending.is_empty() {
        // After a conflict, re-runs go in rounds of executions whose last runs
        // touched no key in common (one reading what another changed), each
        // round committing before the next starts. Run all together they would
        // read the same versions again, and n executions contending for a hot
        // key would take n²/2 runs, not 2n; run one at a time, executions on
        // different hot keys would wait for each other for nothing.
        let mut round: Vec<(usize, Claimed)> = if reruns.is_empty() {
            std::mem::take(&mut pending)
        } else {
            next_round(&mut pending, &reruns)
        };
        let Done {
            executions,
            completions,
        } = run_all(&shared, &mut round).await;
        // Computed before the backend takes the completions: the read keys of
        // those that conflict decide how their re-runs are grouped.
        let footprints = footprints_of(&completions);
        let outcomes = match shared.backend.complete(completions).await {
            Ok(outcomes) => outcomes,
            Err(err) => {
                recycle(footprints);
                // Nothing applied; the leases expire and these deliveries
                // come back. Re-runs still pending go on: they were not in
                // this commit, and dropping them would spend an attempt of
                // each on nothing (a batch whose re-runs met a failed commit
                // again and again dead-lettered work that never failed).
                tracing::error!(error = %err, deliveries = executions.len(), "commit failed; deliveries return after their lease");
                for e in &executions {
                    indexes.push(e.index);
                }
                continue;
            }
        };
        let now = shared.clock.now();
        let mut rejected = Vec::new();
        for (i, (e, outcome)) in executions.into_iter().zip(outcomes).enumerate() {
            match outcome {
                Outcome::Conflict => {
                    let rerun = reruns.entry(e.claimed.lease.id).or_default();
                    rerun.conflicts += 1;
                    rerun.footprint = footprints.get(i).copied().unwrap_or_default();
                    if rerun.conflicts <= shared.config.max_conflict_reruns {
                        stats.conflicts += 1;
                        pending.push((e.index, e.claimed));
                        continue;
                    }
                    tracing::warn!(step = %e.claimed.step, "giving up after repeated conflicts; the lease will expire");
                }
                Outcome::Applied => {
                    if let Some(emitted) = &e.emitted {
                        shared.tell_hook(emitted);
                    }
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
        recycle(footprints);
        if !rejected.is_empty() {
            settle_rejected(&shared, rejected, &mut stats, &mut indexes).await;
        }
    }
    shared.gate.release(held, shared.clock.now());
    // Counted before the batch stops counting as in flight: an engine seen
    // idle has every finished execution in its metrics.
    shared.merge_stats(&mut stats);
    for_each_run(indexes.into_iter(), |index, n| {
        shared.in_flight[index].fetch_sub(n, Ordering::AcqRel);
    });
    shared
        .leases
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&batch_id);
    shared.in_flight_total.fetch_sub(count, Ordering::AcqRel);
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

#[inline]
fn record(stats: &mut BatchStats, e: &Execution, now: Timestamp) {
    if e.timed_out {
        stats.timeouts += 1;
    }
    let step = stats.step(e.index);
    if let Some(ran_for) = e.ran_for {
        step.handler.record(ran_for);
    }
    if e.kind == Kind::Commit {
        step.end_to_end
            .record(now.saturating_since(e.claimed.event.due_at()));
    }
    let outcome = match e.kind {
        Kind::Commit => {
            step.processed += 1;
            ExecutionOutcome::Committed
        }
        Kind::Retry => {
            step.failed += 1;
            step.retried += 1;
            ExecutionOutcome::Retried
        }
        Kind::DeadLetter => {
            step.failed += 1;
            step.dead_lettered += 1;
            ExecutionOutcome::DeadLettered
        }
    };
    if let Some(tallies) = &mut stats.by_tenant {
        let tenant = tenant_tally(tallies, &e.claimed.event.tenant);
        match e.kind {
            Kind::Commit => tenant.processed += 1,
            Kind::Retry => tenant.failed += 1,
            Kind::DeadLetter => {
                tenant.failed += 1;
                tenant.dead_lettered += 1;
            }
        }
    }
    if let Some(records) = &mut stats.records {
        let event = &e.claimed.event;
        let mut record = ExecutionRecord::new(
            e.claimed.step.clone(),
            event.tenant.clone(),
            event.trace_id,
            outcome,
            now,
            e.ran_for,
        );
        record.event_id = Some(event.id);
        record.topic = Some(event.topic.clone());
        record.causation_id = event.causation_id;
        record.attempt = e.claimed.attempt;
        records.push(record);
    }
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
        let action = give_up(
            shared,
            index,
            &claimed,
            FailureKind::Exhausted,
            err.to_string(),
            now,
        );
        finish(done, index, claimed, action, None, false);
        return None;
    }
    let Handler::Event(handler) = &step.handler else {
        let action = Action::DeadLetter {
            error: "delivery addressed to an API step".into(),
            at: now,
            kind: FailureKind::Unroutable,
            emits: Vec::new(),
        };
        finish(done, index, claimed, action, None, false);
        return None;
    };
    let timeout = step.config.timeout;
    let parent = trace_link::event_parent(&claimed.event);
    let sampled = trace_link::sampled(parent.as_ref(), claimed.event.trace_id);
    let span = trace_link::step_span!(
        sampled,
        step = %step.name,
        topic = %claimed.event.topic,
        tenant = %claimed.event.tenant,
        trace_id = %claimed.event.trace_id,
        event_id = %claimed.event.id,
        attempt = claimed.attempt,
        error.type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_message = tracing::field::Empty,
    );
    let mut info = ContextInfo::of_delivery(&claimed, &step.name, index, now + timeout);
    info.trace_parent = trace_link::join_execution(&span, parent, sampled).map(Box::new);
    let ctx = match spare.take() {
        Some(mut ctx) => match ctx.renew(info) {
            Ok(()) => ctx,
            Err(info) => StepContext::new(info, shared.clone()),
        },
        None => StepContext::new(info, shared.clone()),
    };
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
                let result = crate::engine::deadline::within(started + timeout, rest)
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
