//! The dispatcher (claims due deliveries fairly, within concurrency limits) and the
//! batch runner (runs handlers, turns results into completions, commits them together).
//!
//! | file | its one job |
//! |---|---|
//! | `mod.rs` | the dispatcher loop: claiming due deliveries, fairly and within concurrency limits |
//! | `batch.rs` | running a batch: handlers, the poll-once start, commits, re-runs and statistics |
//! | `outcome.rs` | turning a handler's result into an execution and its completion |
//! | `footprint.rs` | the keys a commit touched, and grouping re-runs into rounds that do not clash |
//! | `error.rs` | the public errors [`TimedOut`] and [`LeaseExhausted`] |
//!
//! Dependencies go one way: `mod.rs` uses `batch.rs`, which uses `outcome.rs`,
//! `footprint.rs` and `error.rs`.

mod batch;
mod error;
mod footprint;
mod outcome;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;

use crate::backend::{ClaimRequest, Claimed, FailureKind, StepClaim};
use crate::engine::failure::give_up;
use crate::engine::shared::Shared;
use crate::engine::step::Handler;
use crate::event::StepName;

use batch::{for_each_run, run_batch};
pub use error::{LeaseExhausted, TimedOut};

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
    // Claims that failed in a row (the backend is down or unreachable).
    let mut failures = 0u32;
    loop {
        // Registered before the flag is read: a stop that lands anywhere below,
        // during a claim say, still ends the waits at the bottom of the loop.
        let stopped = shared.stop.notified();
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
                    if failures > 0 {
                        tracing::info!(failures, "claims work again");
                        failures = 0;
                    }
                    shared
                        .metrics
                        .dispatch_rounds
                        .fetch_add(1, Ordering::Relaxed);
                    // A due time that had passed when the claim found nothing is no
                    // reason to claim again at once (that would spin); a completion
                    // or the poll interval wakes the loop instead.
                    next_due = batch.next_due.filter(|at| *at > now);
                    if !batch.deliveries.is_empty() {
                        let claimed = indexed(&shared, batch.deliveries);
                        // A payload without its limit's key dead-letters, with
                        // its step's failure hook.
                        let unkeyable = |index, c: &Claimed, error| {
                            give_up(&shared, index, c, FailureKind::Undecodable, error, now)
                        };
                        let admitted = shared
                            .gate
                            .admit(&shared.backend, now, claimed, unkeyable)
                            .await;
                        launch(&shared, &batches, admitted);
                        continue;
                    }
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    let wait = backoff(shared.config.poll_interval, failures);
                    // Every failure of a short outage, then one in ten.
                    if failures <= 3 || failures.is_multiple_of(10) {
                        tracing::warn!(error = %err, failures, ?wait, "claim failed; backing off");
                    } else {
                        tracing::debug!(error = %err, failures, ?wait, "claim failed; backing off");
                    }
                    // Wake-ups do not cut a backoff short: they come from work
                    // finishing, not from the backend coming back.
                    tokio::select! {
                        // In order, not at random: a seeded simulation replays the same choices.
                        biased;
                        _ = tokio::time::sleep(wait) => {}
                        _ = stopped => {}
                    }
                    continue;
                }
            }
        }
        // Nothing to launch: slots of finished batches go back before the
        // wait, so that other engines can use them.
        shared.gate.flush(&shared.backend, shared.clock.now()).await;
        let until_due = async {
            match next_due {
                Some(at) => shared.clock.sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // In order, not at random: a seeded simulation replays the same choices.
            biased;
            _ = notified => {}
            _ = wait => {}
            _ = until_due => {}
            _ = stopped => {}
        }
    }
}

/// How long to wait after the `failures`-th claim failure in a row: the poll
/// interval, doubling with each failure up to [`MAX_BACKOFF`] (or the poll
/// interval, if longer), less up to a quarter at random so that engines that
/// lost the same server do not come back in step.
fn backoff(poll_interval: Duration, failures: u32) -> Duration {
    let doubled = poll_interval.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let capped = doubled.min(MAX_BACKOFF.max(poll_interval));
    capped.mul_f64(1.0 - crate::vocab::chance::fraction() * 0.25)
}

/// The longest wait between claims while they fail.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Claimed deliveries with their steps' indexes. Claims come grouped by
/// step: each step's index is looked up once per run.
fn indexed(shared: &Shared, deliveries: Vec<Claimed>) -> Vec<(usize, Claimed)> {
    let mut last: Option<(StepName, usize)> = None;
    let mut out = Vec::with_capacity(deliveries.len());
    for c in deliveries {
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
        out.push((index, c));
    }
    out
}

fn launch(shared: &Arc<Shared>, batches: &Mutex<JoinSet<()>>, deliveries: Vec<(usize, Claimed)>) {
    let mut set = batches.lock().unwrap_or_else(|p| p.into_inner());
    let solo = |index: usize| shared.flow.steps()[index].config.solo;
    let mut deliveries = deliveries.into_iter().peekable();
    while let Some(first) = deliveries.next() {
        // A solo step's execution is a batch of its own; the others share
        // batches of up to `batch_size`.
        let mut chunk = vec![first];
        if !solo(chunk[0].0) {
            while chunk.len() < shared.config.batch_size {
                match deliveries.next_if(|(index, _)| !solo(*index)) {
                    Some(next) => chunk.push(next),
                    None => break,
                }
            }
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
        set.spawn(run_batch(
            shared.clone(),
            batch_id,
            chunk,
            shared.clock.now(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{backoff, MAX_BACKOFF};

    #[test]
    fn backoff_doubles_from_the_poll_interval_up_to_a_cap_with_jitter() {
        let poll = Duration::from_millis(200);
        for (failures, full) in [(1, 200), (2, 400), (3, 800), (6, 6_400), (7, 10_000)] {
            let full = Duration::from_millis(full);
            let wait = backoff(poll, failures);
            assert!(
                wait <= full && wait >= full.mul_f64(0.75),
                "{failures}: {wait:?}"
            );
        }
        assert!(backoff(poll, u32::MAX) <= MAX_BACKOFF);
        // A poll interval above the cap is never shortened to the cap.
        let slow = Duration::from_secs(60);
        assert!(backoff(slow, 5) >= slow.mul_f64(0.75));
    }
}
