//! The dispatcher (claims due deliveries fairly, within concurrency limits) and the
//! batch runner (runs handlers, turns results into completions, commits them together).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::Instrument;

use crate::context::{ContextInfo, StepContext};
use crate::engine::Shared;
use crate::flow::StepRuntime;
use crate::metrics::BatchStats;
use crate::step::{catch_panic, ErrorClass, Handler, StepError};
use crate::store::{Action, Completion, Outcome};
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
            let request = ClaimRequest {
                now: shared.clock.now(),
                steps: wants,
                tenant_quantum: shared.config.tenant_quantum,
            };
            match shared.backend.claim(request).await {
                Ok(batch) => {
                    shared
                        .metrics
                        .dispatch_rounds
                        .fetch_add(1, Ordering::Relaxed);
                    next_due = batch.next_due;
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
    let mut deliveries = deliveries.into_iter().peekable();
    while deliveries.peek().is_some() {
        let chunk: Vec<(usize, Claimed)> = deliveries
            .by_ref()
            .take(shared.config.batch_size)
            .filter_map(|c| shared.flow.step_index(c.step.as_str()).map(|i| (i, c)))
            .collect();
        for (index, _) in &chunk {
            shared.in_flight[*index].fetch_add(1, Ordering::AcqRel);
        }
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

struct Execution {
    index: usize,
    claimed: Claimed,
    completion: Completion,
    ran_for: Option<Duration>,
    timed_out: bool,
}

async fn run_batch(shared: Arc<Shared>, batch_id: u64, chunk: Vec<(usize, Claimed)>) {
    let mut stats = BatchStats::default();
    let count = chunk.len();
    let mut indexes: Vec<usize> = Vec::with_capacity(count);
    let mut pending: Vec<(usize, Claimed)> = chunk;
    let mut reruns = 0u32;
    while !pending.is_empty() {
        let runs = pending
            .drain(..)
            .map(|(index, claimed)| execute(&shared, index, claimed));
        let mut executions: Vec<Execution> = futures::future::join_all(runs).await;
        let completions: Vec<Completion> =
            executions.iter().map(|e| e.completion.clone()).collect();
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
        for (e, outcome) in executions.drain(..).zip(outcomes) {
            match outcome {
                Outcome::Conflict if reruns < shared.config.max_conflict_reruns => {
                    stats.conflicts += 1;
                    pending.push((e.index, e.claimed));
                    continue;
                }
                Outcome::Conflict => {
                    tracing::warn!(step = %e.claimed.step, "giving up after repeated conflicts; the lease will expire");
                }
                Outcome::Applied => {
                    record(&mut stats, &e, now);
                }
                Outcome::Stale | Outcome::Duplicate => stats.stale += 1,
            }
            indexes.push(e.index);
        }
        reruns += 1;
    }
    for index in indexes {
        shared.in_flight[index].fetch_sub(1, Ordering::AcqRel);
    }
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

fn record(stats: &mut BatchStats, e: &Execution, now: Timestamp) {
    if let Some(ran_for) = e.ran_for {
        stats.handler.record(ran_for);
    }
    if e.timed_out {
        stats.timeouts += 1;
    }
    match &e.completion.action {
        Action::Commit { .. } => {
            stats.processed += 1;
            stats
                .end_to_end
                .record(now.saturating_since(e.claimed.event.due_at()));
        }
        Action::Retry { .. } => {
            stats.failed += 1;
            stats.retried += 1;
        }
        Action::DeadLetter { .. } => {
            stats.failed += 1;
            stats.dead_lettered += 1;
        }
    }
}

async fn execute(shared: &Arc<Shared>, index: usize, claimed: Claimed) -> Execution {
    let step: &Arc<StepRuntime> = &shared.flow.steps()[index];
    let tenant = claimed.event.tenant.clone();
    let now = shared.clock.now();
    let policy = step.config.retry;
    let finish = |action| Execution {
        index,
        completion: Completion {
            tenant: tenant.clone(),
            input: Some(claimed.lease),
            marker: None,
            action,
        },
        claimed: claimed.clone(),
        ran_for: None,
        timed_out: false,
    };
    if claimed.attempt > policy.get_max_attempts() {
        let err = LeaseExhausted {
            attempts: claimed.attempt - 1,
            last_error: claimed
                .last_error
                .clone()
                .unwrap_or_else(|| "lease expired before the attempt completed".into()),
        };
        return finish(Action::DeadLetter {
            error: err.to_string(),
            at: now,
        });
    }
    let Handler::Event(handler) = &step.handler else {
        return finish(Action::DeadLetter {
            error: "delivery addressed to an API step".into(),
            at: now,
        });
    };
    let ctx = StepContext::new(
        ContextInfo {
            tenant: tenant.clone(),
            step: step.name.clone(),
            step_index: index,
            trace_id: claimed.event.trace_id,
            event_id: Some(claimed.event.id),
            attempt: claimed.attempt,
            deadline: now + step.config.timeout,
        },
        shared.clone(),
    );
    let span = tracing::info_span!(
        "step",
        step = %step.name,
        topic = %claimed.event.topic,
        tenant = %tenant,
        trace_id = %claimed.event.trace_id,
        event_id = %claimed.event.id,
        attempt = claimed.attempt,
    );
    let started = tokio::time::Instant::now();
    let run = catch_panic(async { handler(ctx.clone(), &claimed.event).await });
    let result = tokio::time::timeout(step.config.timeout, run)
        .instrument(span.clone())
        .await;
    let ran_for = Some(started.elapsed());
    let (error, timed_out) = match result {
        Ok(Ok(())) => {
            let (reads, writes, emits) = ctx.take_txn().into_parts();
            let emits = shared.fan_out(emits);
            return Execution {
                ran_for,
                ..finish(Action::Commit {
                    reads,
                    writes,
                    emits,
                })
            };
        }
        Ok(Err(err)) => (err, false),
        Err(_) => (StepError::retryable(TimedOut(step.config.timeout)), true),
    };
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
            Execution {
                ran_for,
                timed_out,
                ..finish(Action::Retry {
                    at: now + delay,
                    error: message,
                })
            }
        }
        None => {
            tracing::error!(error = %message, permanent = error.is_permanent(), "attempt failed; dead-lettering");
            Execution {
                ran_for,
                timed_out,
                ..finish(Action::DeadLetter {
                    error: message,
                    at: now,
                })
            }
        }
    }
}
