//! One scrape's worth of the engine's numbers, written as OpenMetrics text
//! by `prometheus-client`.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use crate::backend::{QueueDepth, StepWork};
use crate::engine::flow_control::ThrottledKey;
use crate::engine::{LatencyHistogram, MetricsSnapshot, StepMetrics, TenantMetrics};

/// The power-of-two buckets (in µs, `2^i`) exported as `le` bounds: 256 µs
/// to about 4.5 minutes, four times apart. The engine keeps finer buckets;
/// these are exact unions of them.
const EXPORTED_BUCKETS: [usize; 11] = [8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28];

/// The label value of what is counted together past a cap.
pub(super) const OTHER: &str = "other";

/// Webhook attempts to one endpoint by outcome, as exported.
#[derive(Debug, Clone)]
pub(super) struct EndpointRow {
    pub(super) tenant: Option<String>,
    pub(super) endpoint: String,
    pub(super) outcome: &'static str,
    pub(super) count: u64,
}

/// Everything one scrape exports.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    pub(super) engine: Option<MetricsSnapshot>,
    pub(super) queue: Option<QueueDepth>,
    pub(super) step_queues: Vec<StepWork>,
    pub(super) steps: Vec<StepMetrics>,
    pub(super) tenants: Vec<TenantMetrics>,
    pub(super) throttled: Vec<ThrottledKey>,
    pub(super) endpoints: Vec<EndpointRow>,
    /// Spans of the trace export: (exported, dropped).
    pub(super) spans: Option<(u64, u64)>,
}

/// Writes one metric family: `rows` are (labels, value).
fn family<'a, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Vec<(&'a str, &'a str)>, M)>,
) -> Result<(), fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, unit, kind)?;
    for (labels, value) in rows {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counters<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Vec<(&'a str, &'a str)>, u64)>,
) -> Result<(), fmt::Error> {
    let rows = rows.into_iter().map(|(l, v)| (l, ConstCounter::new(v)));
    family(encoder, name, help, None, MetricType::Counter, rows)
}

fn gauges<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Vec<(&'a str, &'a str)>, i64)>,
) -> Result<(), fmt::Error> {
    let rows = rows.into_iter().map(|(l, v)| (l, ConstGauge::new(v)));
    family(encoder, name, help, None, MetricType::Gauge, rows)
}

/// A histogram family in seconds; `rows` are (labels, histogram).
fn histograms<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Vec<(&'a str, &'a str)>, &'a LatencyHistogram)>,
) -> Result<(), fmt::Error> {
    let mut metric =
        encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (labels, h) in rows {
        let (sum, count, buckets) = exported(h);
        metric
            .encode_family(&labels)?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                sum, count, &buckets, None,
            )?;
    }
    Ok(())
}

/// (sum in seconds, count, per-bucket counts with their `le` in seconds).
pub(super) fn exported(h: &LatencyHistogram) -> (f64, u64, Vec<(f64, u64)>) {
    let mut buckets = Vec::with_capacity(EXPORTED_BUCKETS.len() + 1);
    let mut from = 0;
    for &upper in &EXPORTED_BUCKETS {
        // Bucket i holds values in [2^(i-1), 2^i) µs: buckets up to
        // `upper` hold the values below 2^upper µs.
        let n = h.counts[from..=upper].iter().sum();
        buckets.push(((1u64 << upper) as f64 / 1e6, n));
        from = upper + 1;
    }
    buckets.push((f64::INFINITY, h.counts[from..].iter().sum()));
    (h.sum.as_secs_f64(), h.count(), buckets)
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        self.encode_steps(&mut encoder)?;
        self.encode_engine(&mut encoder)?;
        self.encode_flow_control(&mut encoder)?;
        self.encode_tenants(&mut encoder)?;
        self.encode_webhooks(&mut encoder)?;
        self.encode_spans(&mut encoder)
    }
}

impl Snapshot {
    fn encode_steps(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let by_step = |f: fn(&StepMetrics) -> u64| {
            self.steps
                .iter()
                .map(move |s| (vec![("step", s.step.as_str())], f(s)))
        };
        counters(
            e,
            "flowline_step_processed",
            "Executions that committed (API calls answered, for an API step).",
            by_step(|s| s.processed),
        )?;
        counters(
            e,
            "flowline_step_failed",
            "Attempts that failed (an error, a panic or a timeout).",
            by_step(|s| s.failed),
        )?;
        counters(
            e,
            "flowline_step_retried",
            "Failed attempts scheduled for another try.",
            by_step(|s| s.retried),
        )?;
        counters(
            e,
            "flowline_step_dead_lettered",
            "Deliveries moved to the dead letters.",
            by_step(|s| s.dead_lettered),
        )?;
        counters(
            e,
            "flowline_step_throttled",
            "Deliveries held back and API calls refused by flow control.",
            by_step(|s| s.throttled),
        )?;
        gauges(
            e,
            "flowline_step_in_flight",
            "Deliveries of the step this process holds now.",
            self.steps.iter().map(|s| {
                (
                    vec![("step", s.step.as_str())],
                    i64::try_from(s.in_flight).unwrap_or(i64::MAX),
                )
            }),
        )?;
        histograms(
            e,
            "flowline_step_handler_duration",
            "Handler run time per attempt.",
            self.steps
                .iter()
                .map(|s| (vec![("step", s.step.as_str())], &s.handler_histogram)),
        )?;
        histograms(
            e,
            "flowline_step_end_to_end_duration",
            "From an event's due time to the commit of its handling.",
            self.steps
                .iter()
                .map(|s| (vec![("step", s.step.as_str())], &s.end_to_end_histogram)),
        )?;
        let cron: Vec<&StepMetrics> = self.steps.iter().filter(|s| s.scheduled).collect();
        counters(
            e,
            "flowline_cron_fires",
            "Cron instants this process fired.",
            cron.iter()
                .map(|s| (vec![("step", s.step.as_str())], s.cron_lag.count())),
        )?;
        histograms(
            e,
            "flowline_cron_lag",
            "How late after its instant each cron fire was recorded.",
            cron.iter()
                .map(|s| (vec![("step", s.step.as_str())], &s.cron_lag)),
        )
    }

    fn encode_engine(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        if let Some(queue) = &self.queue {
            let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            gauges(
                e,
                "flowline_queue_deliveries",
                "Deliveries in the backend by state, all processes and steps.",
                [
                    ("ready", queue.ready),
                    ("delayed", queue.delayed),
                    ("waiting", queue.waiting),
                    ("in_flight", queue.in_flight),
                    ("dead", queue.dead),
                ]
                .map(|(state, n)| (vec![("state", state)], to_i64(n))),
            )?;
        }
        gauges(
            e,
            "flowline_step_queue_deliveries",
            "The step's deliveries in the backend by state (delayed: due later, or waiting behind their FIFO group), all processes.",
            self.step_queues.iter().flat_map(|w| {
                let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                let later = w.pending.saturating_sub(w.ready).saturating_sub(w.leased);
                [("ready", w.ready), ("delayed", later), ("in_flight", w.leased)]
                    .map(|(state, n)| (vec![("step", w.step.as_str()), ("state", state)], to_i64(n)))
            }),
        )?;
        let Some(m) = &self.engine else {
            return Ok(());
        };
        for (name, help, n) in [
            (
                "flowline_commit_conflicts",
                "Commits rejected because a read changed; the handler re-ran.",
                m.conflicts,
            ),
            (
                "flowline_timeouts",
                "Attempts that ran past their step's timeout.",
                m.timeouts,
            ),
            (
                "flowline_stale_completions",
                "Completions dropped because their lease had been lost.",
                m.stale,
            ),
            (
                "flowline_dispatch_rounds",
                "Claims made by the dispatcher.",
                m.dispatch_rounds,
            ),
            (
                "flowline_api_calls",
                "API step calls answered.",
                m.api_calls,
            ),
        ] {
            counters(e, name, help, [(Vec::new(), n)])?;
        }
        Ok(())
    }

    fn encode_flow_control(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        counters(
            e,
            "flowline_flow_control_throttled",
            "Deliveries held back and API calls refused, per key of each limit (keys past the cap as \"other\").",
            self.throttled.iter().map(|t| {
                let key = t.key.as_deref().unwrap_or(OTHER);
                (
                    vec![("step", t.step.as_str()), ("limit", t.limit.as_str()), ("key", key)],
                    t.count,
                )
            }),
        )
    }

    fn encode_tenants(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        if self.tenants.is_empty() {
            return Ok(());
        }
        let by_tenant = |f: fn(&TenantMetrics) -> u64| {
            self.tenants.iter().map(move |t| {
                let tenant = t.tenant.as_ref().map_or(OTHER, |t| t.as_str());
                (vec![("tenant", tenant)], f(t))
            })
        };
        counters(
            e,
            "flowline_tenant_processed",
            "Executions that committed, per tenant (tenants past the cap as \"other\").",
            by_tenant(|t| t.processed),
        )?;
        counters(
            e,
            "flowline_tenant_failed",
            "Attempts that failed, per tenant.",
            by_tenant(|t| t.failed),
        )?;
        counters(
            e,
            "flowline_tenant_dead_lettered",
            "Deliveries moved to the dead letters, per tenant.",
            by_tenant(|t| t.dead_lettered),
        )
    }

    fn encode_spans(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let Some((exported, dropped)) = self.spans else {
            return Ok(());
        };
        counters(
            e,
            "flowline_trace_spans_exported",
            "Spans the OpenTelemetry export sent to the collector.",
            [(Vec::new(), exported)],
        )?;
        counters(
            e,
            "flowline_trace_spans_dropped",
            "Spans dropped: the export queue was full, or the collector did not take them.",
            [(Vec::new(), dropped)],
        )
    }

    fn encode_webhooks(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        if self.endpoints.is_empty() {
            return Ok(());
        }
        counters(
            e,
            "flowline_webhook_deliveries",
            "Webhook delivery attempts per endpoint and outcome (endpoints past the cap as \"other\").",
            self.endpoints.iter().map(|r| {
                let mut labels = vec![("endpoint", r.endpoint.as_str()), ("outcome", r.outcome)];
                if let Some(tenant) = &r.tenant {
                    labels.insert(0, ("tenant", tenant.as_str()));
                }
                (labels, r.count)
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn exported_buckets_are_exact_unions_of_the_engines() {
        let mut h = LatencyHistogram::default();
        h.counts[3] = 2; // below 8 µs
        h.counts[8] = 1; // [128, 256) µs: still in the first exported bucket
        h.counts[9] = 4; // [256, 512) µs: the second
        h.counts[39] = 1; // beyond every bound
        h.sum = Duration::from_millis(3);
        let (sum, count, buckets) = exported(&h);
        assert_eq!((sum, count), (0.003, 8));
        assert_eq!(buckets[0], (0.000256, 3));
        assert_eq!(buckets[1], (0.001024, 4));
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 1)));
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 8);
    }
}
