//! Counters and latency histograms, engine-wide, per step and (opt-in) per
//! tenant, recorded per batch and read as a snapshot.

mod histogram;
mod tenants;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

use super::journal::ExecutionRecord;
use crate::backend::QueueDepth;
use crate::event::{StepName, TenantId};
pub(crate) use histogram::{Histogram, LocalHistogram};
pub use histogram::{LatencyHistogram, LatencySummary, LATENCY_BUCKETS};
pub use tenants::TenantMetrics;
pub(crate) use tenants::{tally as tenant_tally, TenantCounters, TenantTally};

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) processed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) dispatch_rounds: AtomicU64,
    pub(crate) cron_fires: AtomicU64,
    pub(crate) api_calls: AtomicU64,
    pub(crate) handler: Histogram,
    pub(crate) end_to_end: Histogram,
}

/// What one batch did, added to the shared metrics once. Executions are
/// counted per step only: the engine-wide counts are their sums, taken when
/// the batch merges.
#[derive(Debug, Default, Clone)]
pub(crate) struct BatchStats {
    pub(crate) conflicts: u64,
    pub(crate) timeouts: u64,
    pub(crate) stale: u64,
    /// Per step index, in the order the batch first met them (a batch holds
    /// one step, or a few).
    pub(crate) by_step: Vec<(usize, StepTally)>,
    /// The batch's finished executions, when the engine keeps a journal.
    pub(crate) records: Option<Vec<ExecutionRecord>>,
    /// Per tenant, when the engine counts per tenant.
    pub(crate) by_tenant: Option<Vec<(TenantId, TenantTally)>>,
}

impl BatchStats {
    /// Statistics for a new batch; `journal` says whether to keep records,
    /// `tenants` whether to tally per tenant.
    pub(crate) fn new(journal: bool, tenants: bool) -> Self {
        BatchStats {
            records: journal.then(Vec::new),
            by_tenant: tenants.then(Vec::new),
            ..BatchStats::default()
        }
    }

    /// The tally of step `index`.
    pub(crate) fn step(&mut self, index: usize) -> &mut StepTally {
        let at = match self.by_step.iter().rposition(|(i, _)| *i == index) {
            Some(at) => at,
            None => {
                self.by_step.push((index, StepTally::default()));
                self.by_step.len() - 1
            }
        };
        &mut self.by_step[at].1
    }
}

impl Metrics {
    pub(crate) fn merge(&self, s: &BatchStats) {
        let sum = |f: fn(&StepTally) -> u64| s.by_step.iter().map(|(_, t)| f(t)).sum::<u64>();
        for (counter, n) in [
            (&self.processed, sum(|t| t.processed)),
            (&self.failed, sum(|t| t.failed)),
            (&self.retried, sum(|t| t.retried)),
            (&self.dead_lettered, sum(|t| t.dead_lettered)),
            (&self.conflicts, s.conflicts),
            (&self.timeouts, s.timeouts),
            (&self.stale, s.stale),
        ] {
            if n > 0 {
                counter.fetch_add(n, Relaxed);
            }
        }
        for (_, tally) in &s.by_step {
            self.handler.merge(&tally.handler);
            if !tally.end_to_end.is_empty() {
                self.end_to_end.merge(&tally.end_to_end);
            }
        }
    }

    pub(crate) fn snapshot(&self, queue: QueueDepth) -> MetricsSnapshot {
        MetricsSnapshot {
            processed: self.processed.load(Relaxed),
            failed: self.failed.load(Relaxed),
            retried: self.retried.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
            conflicts: self.conflicts.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            stale: self.stale.load(Relaxed),
            dispatch_rounds: self.dispatch_rounds.load(Relaxed),
            cron_fires: self.cron_fires.load(Relaxed),
            api_calls: self.api_calls.load(Relaxed),
            queue,
            handler_latency: self.handler.summary(),
            end_to_end_latency: self.end_to_end.summary(),
        }
    }
}

/// The engine's counters at one moment. Counters count since the engine started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Executions that committed.
    pub processed: u64,
    /// Attempts that failed (error or timeout).
    pub failed: u64,
    /// Failed attempts scheduled for another try.
    pub retried: u64,
    /// Deliveries moved to the dead letters.
    pub dead_lettered: u64,
    /// Commits rejected because a read changed; the handler re-ran.
    pub conflicts: u64,
    /// Attempts that ran past their step's timeout.
    pub timeouts: u64,
    /// Completions dropped because their lease had been lost.
    pub stale: u64,
    /// Claims made by the dispatcher.
    pub dispatch_rounds: u64,
    /// Cron fires this engine recorded.
    pub cron_fires: u64,
    /// API step calls answered.
    pub api_calls: u64,
    /// Deliveries by where they are now.
    pub queue: QueueDepth,
    /// Handler run time per attempt.
    pub handler_latency: LatencySummary,
    /// From an event's due time to the commit of its handling.
    pub end_to_end_latency: LatencySummary,
}

/// One step's counters since the engine started, from [`Engine::step_metrics`].
///
/// [`Engine::step_metrics`]: crate::Engine::step_metrics
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct StepMetrics {
    /// The step.
    pub step: StepName,
    /// Executions that committed (API calls answered, for an API step).
    pub processed: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// Failed attempts scheduled again.
    pub retried: u64,
    /// Deliveries moved to the dead letters.
    pub dead_lettered: u64,
    /// Deliveries of this step this engine holds now.
    pub in_flight: usize,
    /// Deliveries this engine held back (and API calls it answered `429`)
    /// because a flow-control limit was out of budget.
    pub throttled: u64,
    /// Handler run time per attempt.
    #[serde(serialize_with = "latency_micros")]
    pub handler_latency: LatencySummary,
    /// Handler run time per attempt, every bucket.
    #[serde(skip)]
    pub handler_histogram: LatencyHistogram,
    /// From an event's due time to the commit of its handling, every bucket.
    #[serde(skip)]
    pub end_to_end_histogram: LatencyHistogram,
    /// Whether the step runs on a cron schedule.
    #[serde(skip)]
    pub scheduled: bool,
    /// For a cron step: how late each fire this engine recorded was, after
    /// its instant.
    #[serde(skip)]
    pub cron_lag: LatencyHistogram,
}

fn latency_micros<S: serde::Serializer>(l: &LatencySummary, s: S) -> Result<S::Ok, S::Error> {
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    serde::Serialize::serialize(
        &serde_json::json!({
            "count": l.count,
            "p50Micros": micros(l.p50),
            "p99Micros": micros(l.p99),
            "maxMicros": micros(l.max),
        }),
        s,
    )
}

/// A step's shared counters.
#[derive(Debug, Default)]
pub(crate) struct StepCounters {
    processed: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    handler: Histogram,
    end_to_end: Histogram,
    cron_lag: Histogram,
}

/// A step's counters within one batch.
#[derive(Debug, Default, Clone)]
pub(crate) struct StepTally {
    pub(crate) processed: u64,
    pub(crate) failed: u64,
    pub(crate) retried: u64,
    pub(crate) dead_lettered: u64,
    pub(crate) handler: LocalHistogram,
    pub(crate) end_to_end: LocalHistogram,
}

impl StepCounters {
    pub(crate) fn merge(&self, t: &StepTally) {
        for (counter, n) in [
            (&self.processed, t.processed),
            (&self.failed, t.failed),
            (&self.retried, t.retried),
            (&self.dead_lettered, t.dead_lettered),
        ] {
            if n > 0 {
                counter.fetch_add(n, Relaxed);
            }
        }
        self.handler.merge(&t.handler);
        if !t.end_to_end.is_empty() {
            self.end_to_end.merge(&t.end_to_end);
        }
    }

    /// Records how late a cron fire of this step was.
    pub(crate) fn record_cron_lag(&self, lag: Duration) {
        self.cron_lag.record(lag);
    }

    pub(crate) fn add_processed(&self) {
        self.processed.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(
        &self,
        step: StepName,
        scheduled: bool,
        in_flight: usize,
        throttled: u64,
    ) -> StepMetrics {
        StepMetrics {
            step,
            processed: self.processed.load(Relaxed),
            failed: self.failed.load(Relaxed),
            retried: self.retried.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
            in_flight,
            throttled,
            handler_latency: self.handler.summary(),
            handler_histogram: self.handler.histogram(),
            end_to_end_histogram: self.end_to_end.histogram(),
            scheduled,
            cron_lag: self.cron_lag.histogram(),
        }
    }
}
