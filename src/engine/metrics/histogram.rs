//! Log2 latency histograms: a batch records into a local one without atomics
//! and merges it into the shared one once.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Buckets of a histogram: bucket `i` holds values in `[2^(i-1), 2^i)` µs
/// (bucket 0 holds 0 µs), the last one everything above.
pub const LATENCY_BUCKETS: usize = 40;

fn micros_of(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The shared histogram, added to by batches.
#[derive(Debug)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS],
    sum_micros: AtomicU64,
    max_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
            max_micros: AtomicU64::new(0),
        }
    }
}

/// Per-batch histogram, merged into the shared one once per batch.
#[derive(Debug, Clone)]
pub(crate) struct LocalHistogram {
    buckets: [u64; LATENCY_BUCKETS],
    sum_micros: u64,
    max_micros: u64,
}

impl Default for LocalHistogram {
    fn default() -> Self {
        LocalHistogram {
            buckets: [0; LATENCY_BUCKETS],
            sum_micros: 0,
            max_micros: 0,
        }
    }
}

impl LocalHistogram {
    pub(crate) fn record(&mut self, d: Duration) {
        let micros = micros_of(d);
        let bucket = (64 - micros.leading_zeros() as usize).min(LATENCY_BUCKETS - 1);
        self.buckets[bucket] += 1;
        self.sum_micros = self.sum_micros.saturating_add(micros);
        self.max_micros = self.max_micros.max(micros);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buckets.iter().all(|&n| n == 0)
    }
}

impl Histogram {
    pub(crate) fn merge(&self, local: &LocalHistogram) {
        for (shared, &n) in self.buckets.iter().zip(&local.buckets) {
            if n > 0 {
                shared.fetch_add(n, Relaxed);
            }
        }
        self.sum_micros.fetch_add(local.sum_micros, Relaxed);
        self.max_micros.fetch_max(local.max_micros, Relaxed);
    }

    /// Records one value straight into the shared histogram (rare events,
    /// such as cron fires, that no batch gathers).
    pub(crate) fn record(&self, d: Duration) {
        let mut local = LocalHistogram::default();
        local.record(d);
        self.merge(&local);
    }

    pub(crate) fn histogram(&self) -> LatencyHistogram {
        LatencyHistogram {
            counts: std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
            sum: Duration::from_micros(self.sum_micros.load(Relaxed)),
            max: Duration::from_micros(self.max_micros.load(Relaxed)),
        }
    }

    pub(crate) fn summary(&self) -> LatencySummary {
        self.histogram().summary()
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

/// Every value recorded so far, in power-of-two buckets of microseconds:
/// what an exporter turns into a Prometheus histogram.
///
/// ```
/// use std::time::Duration;
/// use flowline::engine::LatencyHistogram;
///
/// let empty = LatencyHistogram::default();
/// assert_eq!(empty.count(), 0);
/// // Bucket 10 holds values from 512 µs up to (not including) 1,024 µs.
/// assert_eq!(LatencyHistogram::upper_bound(10), Some(Duration::from_micros(1024)));
/// // The last bucket has no upper bound.
/// assert_eq!(LatencyHistogram::upper_bound(flowline::engine::LATENCY_BUCKETS - 1), None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// `counts[i]`: values in `[2^(i-1), 2^i)` µs (`counts[0]`: 0 µs); the
    /// last bucket has no upper bound.
    pub counts: [u64; LATENCY_BUCKETS],
    /// Sum of every value (to the microsecond).
    pub sum: Duration,
    /// Largest value.
    pub max: Duration,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: [0; LATENCY_BUCKETS],
            sum: Duration::ZERO,
            max: Duration::ZERO,
        }
    }
}

impl LatencyHistogram {
    /// The exclusive upper bound of bucket `i`; `None` for the last one.
    pub fn upper_bound(i: usize) -> Option<Duration> {
        (i < LATENCY_BUCKETS - 1).then(|| Duration::from_micros(1u64 << i))
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The median, 99th percentile and largest value.
    pub fn summary(&self) -> LatencySummary {
        let total = self.count();
        let quantile = |q: f64| {
            if total == 0 {
                return Duration::ZERO;
            }
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, n) in self.counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return Duration::from_micros(if i == 0 { 0 } else { 1u64 << i });
                }
            }
            Duration::ZERO
        };
        LatencySummary {
            count: total,
            p50: quantile(0.5),
            p99: quantile(0.99),
            max: self.max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_their_power_of_two_bucket_and_add_to_the_sum() {
        let shared = Histogram::default();
        let mut local = LocalHistogram::default();
        for micros in [0, 1, 700, 1_000, 1_024, 5_000_000] {
            local.record(Duration::from_micros(micros));
        }
        shared.merge(&local);
        shared.record(Duration::from_micros(3));
        let h = shared.histogram();
        assert_eq!(h.count(), 7);
        assert_eq!(h.counts[0], 1, "0 µs");
        assert_eq!(h.counts[1], 1, "1 µs");
        assert_eq!(h.counts[2], 1, "3 µs is in [2, 4)");
        assert_eq!(h.counts[10], 2, "700 and 1,000 µs are in [512, 1024)");
        assert_eq!(h.counts[11], 1, "1,024 µs is in [1024, 2048)");
        assert_eq!(h.counts[23], 1, "5 s is in [2^22, 2^23) µs");
        assert_eq!(h.sum, Duration::from_micros(5_002_728));
        assert_eq!(h.max, Duration::from_secs(5));
        assert_eq!(h.summary().p50, Duration::from_micros(1024));
    }

    #[test]
    fn a_huge_value_lands_in_the_last_bucket() {
        let mut local = LocalHistogram::default();
        local.record(Duration::from_secs(u64::MAX));
        assert_eq!(local.buckets[LATENCY_BUCKETS - 1], 1);
        assert!(!local.is_empty());
    }
}
