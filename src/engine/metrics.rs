//! Counters and latency histograms, engine-wide and per step, recorded per
//! batch and read as a snapshot.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

use super::journal::ExecutionRecord;
use crate::backend::QueueDepth;
use crate::event::StepName;

const BUCKETS: usize = 40;

/// A log2 histogram of microseconds: bucket `i` holds values in `[2^(i-1), 2^i)`.
#[derive(Debug)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    max_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            max_micros: AtomicU64::new(0),
        }
    }
}

/// Per-batch histogram, merged into the shared one once per batch.
#[derive(Debug, Clone)]
pub(crate) struct LocalHistogram {
    buckets: [u64; BUCKETS],
    max_micros: u64,
}

impl Default for LocalHistogram {
    fn default() -> Self {
        LocalHistogram {
            buckets: [0; BUCKETS],
            max_micros: 0,
        }
    }
}

impl LocalHistogram {
    pub(crate) fn record(&mut self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let bucket = (64 - micros.leading_zeros() as usize).min(BUCKETS - 1);
        self.buckets[bucket] += 1;
        self.max_micros = self.max_micros.max(micros);
    }
}

impl Histogram {
    pub(crate) fn merge(&self, local: &LocalHistogram) {
        for (shared, &n) in self.buckets.iter().zip(&local.buckets) {
            if n > 0 {
                shared.fetch_add(n, Relaxed);
            }
        }
        self.max_micros.fetch_max(local.max_micros, Relaxed);
    }

    pub(crate) fn summary(&self) -> LatencySummary {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let quantile = |q: f64| {
            if total == 0 {
                return Duration::ZERO;
            }
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, n) in counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    // upper bound of the bucket
                    return Duration::from_micros(if i == 0 { 0 } else { 1u64 << i });
                }
            }
            Duration::ZERO
        };
        LatencySummary {
            count: total,
            p50: quantile(0.5),
            p99: quantile(0.99),
            max: Duration::from_micros(self.max_micros.load(Relaxed)),
        }
    }
}

/// A latency distribution; quantiles are upper bounds of power-of-two buckets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencySummary {
    /// How many values were recorded.
    pub count: u64,
    /// Median (bucket upper bound).
    pub p50: Duration,
    /// 99th percentile (bucket upper bound).
    pub p99: Duration,
    /// Largest value seen.
    pub max: Duration,
}

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
    pub(crate) end_to_end: LocalHistogram,
    /// Per step index, in the order the batch first met them (a batch holds
    /// one step, or a few).
    pub(crate) by_step: Vec<(usize, StepTally)>,
    /// The batch's finished executions, when the engine keeps a journal.
    pub(crate) records: Option<Vec<ExecutionRecord>>,
}

impl BatchStats {
    /// Statistics for a new batch; `journal` says whether to keep records.
    pub(crate) fn new(journal: bool) -> Self {
        BatchStats {
            records: journal.then(Vec::new),
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
        }
        self.end_to_end.merge(&s.end_to_end);
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
}

/// A step's counters within one batch.
#[derive(Debug, Default, Clone)]
pub(crate) struct StepTally {
    pub(crate) processed: u64,
    pub(crate) failed: u64,
    pub(crate) retried: u64,
    pub(crate) dead_lettered: u64,
    pub(crate) handler: LocalHistogram,
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
    }

    pub(crate) fn add_processed(&self) {
        self.processed.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self, step: StepName, in_flight: usize, throttled: u64) -> StepMetrics {
        StepMetrics {
            step,
            processed: self.processed.load(Relaxed),
            failed: self.failed.load(Relaxed),
            retried: self.retried.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
            in_flight,
            throttled,
            handler_latency: self.handler.summary(),
        }
    }
}
