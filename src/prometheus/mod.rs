//! Prometheus metrics (feature `prometheus`): the engine's counters, queue
//! depth and latency histograms in the OpenMetrics text format, for the
//! `/metrics` route of [`http::metrics_router`](crate::http::metrics_router)
//! or a host's own.
//!
//! | file | its one job |
//! |---|---|
//! | `mod.rs` | what is exported, with which labels and caps ([`PrometheusExporter`]) |
//! | `snapshot.rs` | one scrape's numbers, written by `prometheus-client` |
//!
//! Nothing is recorded for Prometheus on the engine's hot path: a scrape
//! reads the counters the engine keeps anyway ([`Engine::step_metrics`]),
//! and asks the backend for its queue depth, all of it and per step, at
//! most once a second.
//!
//! The series (Prometheus' conventions: base units, `_total` on counters):
//!
//! | series | labels | what |
//! |---|---|---|
//! | `flowline_step_processed_total` | `step` | executions that committed |
//! | `flowline_step_failed_total` | `step` | attempts that failed |
//! | `flowline_step_retried_total` | `step` | failed attempts scheduled again |
//! | `flowline_step_dead_lettered_total` | `step` | deliveries dead-lettered |
//! | `flowline_step_throttled_total` | `step` | work held back by flow control |
//! | `flowline_step_in_flight` | `step` | deliveries this process holds |
//! | `flowline_step_queue_deliveries` | `step`, `state` | the backend's deliveries of the step: `ready`, `delayed` (due later, or waiting behind their FIFO group), `in_flight` (leased, in any process) |
//! | `flowline_step_handler_duration_seconds` | `step` | histogram: handler run time |
//! | `flowline_step_end_to_end_duration_seconds` | `step` | histogram: due time to commit |
//! | `flowline_queue_deliveries` | `state` | the backend's deliveries: `ready`, `delayed`, `waiting`, `in_flight`, `dead` |
//! | `flowline_cron_fires_total`, `flowline_cron_lag_seconds` | `step` | cron fires, and how late each was |
//! | `flowline_flow_control_throttled_total` | `step`, `limit`, `key` | hold-backs per key |
//! | `flowline_webhook_deliveries_total` | `endpoint`, `outcome` (`tenant`) | webhook attempts |
//! | `flowline_tenant_{processed,failed,dead_lettered}_total` | `tenant` | opt-in, capped |
//! | `flowline_trace_spans_exported_total`, `flowline_trace_spans_dropped_total` | | spans of the OpenTelemetry export ([`PrometheusExporter::traces`], feature `otel`) |
//! | `flowline_commit_conflicts_total`, `flowline_timeouts_total`, `flowline_stale_completions_total`, `flowline_dispatch_rounds_total`, `flowline_api_calls_total` | | engine-wide |
//!
//! Counters count what this process did since it started (Prometheus sums
//! processes with `sum by (step)`); the queue is the backend's, the same in
//! every process.
//!
//! **Cardinality stays bounded.** Per-tenant series exist only when the
//! engine counts per tenant ([`EngineConfig::tenant_metrics`], a cap: later
//! tenants count as `tenant="other"`), and webhook series carry a `tenant`
//! label only with [`PrometheusExporter::tenant_labels`]. Flow-control keys
//! and webhook endpoints are exported up to a cap each (the busiest first),
//! the rest summed as `"other"`.
//!
//! ```
//! use flowline::prometheus::PrometheusExporter;
//! use flowline::{Engine, Event, Flow, Step, StepContext, StepError, TenantId};
//! # #[derive(serde::Serialize, serde::Deserialize)]
//! # struct Visit { page: String }
//! # impl Event for Visit { const TOPIC: &'static str = "visit"; }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let flow = Flow::builder()
//!     .external::<Visit>()
//!     .step(Step::event::<Visit>("count").handle(|_: StepContext, _: Visit| async move {
//!         Ok::<_, StepError>(())
//!     }))
//!     .build()?;
//! let engine = Engine::builder(flow).start().await?;
//! engine.emit(&TenantId::new("acme")?, &Visit { page: "home".into() }).await?;
//! engine.wait_idle().await;
//!
//! let text = PrometheusExporter::new(engine.clone()).render().await;
//! assert!(text.contains(r#"flowline_step_processed_total{step="count"} 1"#));
//! assert!(text.ends_with("# EOF\n"));
//! # engine.shutdown(std::time::Duration::from_secs(1)).await;
//! # Ok(())
//! # }
//! ```
//!
//! [`Engine::step_metrics`]: crate::Engine::step_metrics
//! [`EngineConfig::tenant_metrics`]: crate::EngineConfig::tenant_metrics

mod snapshot;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;

use crate::backend::QueueDepth;
use crate::engine::Engine;
use snapshot::{EndpointRow, Snapshot};

/// The content type of [`PrometheusExporter::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a queue depth read from the backend is reused: scrapes from
/// several Prometheus servers cost the backend one count a second.
const DEPTH_FRESH_FOR: Duration = Duration::from_secs(1);

/// Exports one engine's metrics (and its webhooks') as OpenMetrics text.
/// Cheap to clone: clones share the cached queue depth.
#[derive(Clone)]
pub struct PrometheusExporter {
    engine: Engine,
    #[cfg(feature = "webhooks")]
    webhooks: Option<crate::webhooks::Webhooks>,
    #[cfg(feature = "otel")]
    traces: Option<crate::otel::OtelExport>,
    tenant_labels: bool,
    key_labels: usize,
    endpoint_labels: usize,
    depth: Arc<Mutex<Option<(Instant, Queues)>>>,
}

/// The backend's queue, all of it and per step, as last read.
#[derive(Clone, Debug)]
struct Queues {
    all: QueueDepth,
    steps: Vec<crate::backend::StepWork>,
}

impl std::fmt::Debug for PrometheusExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusExporter")
            .field("tenant_labels", &self.tenant_labels)
            .field("key_labels", &self.key_labels)
            .field("endpoint_labels", &self.endpoint_labels)
            .finish_non_exhaustive()
    }
}

impl PrometheusExporter {
    /// Exports `engine`'s metrics; flow-control keys and webhook endpoints
    /// up to 100 each, no `tenant` label on webhook series.
    pub fn new(engine: Engine) -> Self {
        PrometheusExporter {
            engine,
            #[cfg(feature = "webhooks")]
            webhooks: None,
            #[cfg(feature = "otel")]
            traces: None,
            tenant_labels: false,
            key_labels: 100,
            endpoint_labels: 100,
            depth: Arc::default(),
        }
    }

    /// Also exports the delivery attempts of `webhooks` (the webhooks whose
    /// steps the engine's flow has).
    #[cfg(feature = "webhooks")]
    pub fn webhooks(mut self, webhooks: &crate::webhooks::Webhooks) -> Self {
        self.webhooks = Some(webhooks.clone());
        self
    }

    /// Also exports what became of the spans of `export`: sent, or dropped
    /// (a full queue, a collector that did not take them).
    #[cfg(feature = "otel")]
    pub fn traces(mut self, export: &crate::otel::OtelExport) -> Self {
        self.traces = Some(export.clone());
        self
    }

    /// Labels webhook series with their tenant too. Per-tenant execution
    /// counts are turned on in the engine instead
    /// ([`EngineConfig::tenant_metrics`](crate::EngineConfig::tenant_metrics)).
    pub fn tenant_labels(mut self, on: bool) -> Self {
        self.tenant_labels = on;
        self
    }

    /// Flow-control keys exported with their own `key` label, the busiest
    /// first; the rest of each limit's are summed as `key="other"`.
    pub fn key_labels(mut self, max: usize) -> Self {
        self.key_labels = max;
        self
    }

    /// Webhook endpoints exported with their own `endpoint` label, the
    /// busiest first; the rest are summed as `endpoint="other"`.
    pub fn endpoint_labels(mut self, max: usize) -> Self {
        self.endpoint_labels = max;
        self
    }

    /// The metrics as OpenMetrics text ([`CONTENT_TYPE`]). If the backend
    /// cannot count its queue, the queue series are left out (and a warning
    /// logged): a scrape never fails for it.
    pub async fn render(&self) -> String {
        let queues = self.queues().await;
        let steps = self.engine.step_metrics();
        let step_queues = queues
            .as_ref()
            .map(|q| with_idle_steps(&q.steps, &steps))
            .unwrap_or_default();
        let snapshot = Snapshot {
            engine: Some(self.engine.local_metrics()),
            queue: queues.as_ref().map(|q| q.all),
            step_queues,
            steps,
            tenants: self.engine.tenant_metrics(),
            throttled: capped_keys(self.engine.throttled_keys(), self.key_labels),
            endpoints: self.endpoint_rows(),
            spans: self.span_counts(),
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(snapshot));
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &registry) {
            // Writing to a String fails only if an encoder refuses a value.
            tracing::error!(error = %err, "metrics could not be encoded");
        }
        text
    }

    async fn queues(&self) -> Option<Queues> {
        let cached = self.depth.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((at, queues)) = cached {
            if at.elapsed() < DEPTH_FRESH_FOR {
                return Some(queues);
            }
        }
        let read = async {
            let all = self.engine.metrics().await?.queue;
            let steps = self.engine.step_queues().await?;
            Ok::<_, crate::engine::EngineError>(Queues { all, steps })
        };
        match read.await {
            Ok(queues) => {
                *self.depth.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now(), queues.clone()));
                Some(queues)
            }
            Err(err) => {
                tracing::warn!(error = %err, "the queue depth could not be read for metrics");
                None
            }
        }
    }

    #[cfg(feature = "otel")]
    fn span_counts(&self) -> Option<(u64, u64)> {
        self.traces.as_ref().map(|t| (t.exported(), t.dropped()))
    }

    #[cfg(not(feature = "otel"))]
    fn span_counts(&self) -> Option<(u64, u64)> {
        None
    }

    #[cfg(feature = "webhooks")]
    fn endpoint_rows(&self) -> Vec<EndpointRow> {
        let Some(webhooks) = &self.webhooks else {
            return Vec::new();
        };
        endpoint_rows(
            webhooks.delivery_counts(),
            self.endpoint_labels,
            self.tenant_labels,
        )
    }

    #[cfg(not(feature = "webhooks"))]
    fn endpoint_rows(&self) -> Vec<EndpointRow> {
        Vec::new()
    }
}

/// Every step of the flow with its queue, zeros for those with none (so a
/// query finds a series for each), then any other step the backend holds
/// work of (a step a newer or older deploy has).
fn with_idle_steps(
    work: &[crate::backend::StepWork],
    steps: &[crate::engine::StepMetrics],
) -> Vec<crate::backend::StepWork> {
    let mut all: Vec<crate::backend::StepWork> = steps
        .iter()
        .map(|s| {
            work.iter()
                .find(|w| w.step == s.step)
                .cloned()
                .unwrap_or_else(|| crate::backend::StepWork {
                    step: s.step.clone(),
                    pending: 0,
                    ready: 0,
                    leased: 0,
                })
        })
        .collect();
    all.extend(
        work.iter()
            .filter(|w| !steps.iter().any(|s| s.step == w.step))
            .cloned(),
    );
    all
}

/// Keeps the `max` busiest keys of all limits; sums the rest per limit as
/// one key of `None`.
fn capped_keys(
    mut keys: Vec<crate::engine::flow_control::ThrottledKey>,
    max: usize,
) -> Vec<crate::engine::flow_control::ThrottledKey> {
    let by_count = |keys: &mut Vec<crate::engine::flow_control::ThrottledKey>| {
        keys.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
    };
    let (mut own, rest): (Vec<_>, Vec<_>) = keys.drain(..).partition(|k| k.key.is_some());
    by_count(&mut own);
    let spilled = own.split_off(max.min(own.len()));
    for extra in spilled.into_iter().chain(rest) {
        match own
            .iter_mut()
            .find(|k| k.key.is_none() && k.step == extra.step && k.limit == extra.limit)
        {
            Some(other) => other.count += extra.count,
            None => {
                let mut other = extra;
                other.key = None;
                own.push(other);
            }
        }
    }
    own.sort_by(|a, b| (&a.step, &a.limit, &a.key).cmp(&(&b.step, &b.limit, &b.key)));
    own
}

#[cfg(feature = "webhooks")]
fn endpoint_rows(
    counts: Vec<crate::webhooks::EndpointDeliveries>,
    max: usize,
    tenant_labels: bool,
) -> Vec<EndpointRow> {
    let total =
        |e: &crate::webhooks::EndpointDeliveries| e.outcomes.iter().map(|o| o.1).sum::<u64>();
    let (mut own, mut rest): (Vec<_>, Vec<_>) =
        counts.into_iter().partition(|e| e.endpoint.is_some());
    own.sort_by_key(|e| std::cmp::Reverse(total(e)));
    rest.extend(own.split_off(max.min(own.len())));
    let mut rows: Vec<EndpointRow> = Vec::new();
    for e in &own {
        let Some((tenant, endpoint)) = &e.endpoint else {
            continue;
        };
        for (outcome, count) in &e.outcomes {
            rows.push(EndpointRow {
                tenant: tenant_labels.then(|| tenant.to_string()),
                endpoint: endpoint.clone(),
                outcome: outcome.as_str(),
                count: *count,
            });
        }
    }
    let mut other: Vec<(&'static str, u64)> = Vec::new();
    for (outcome, count) in rest.iter().flat_map(|e| e.outcomes.iter()) {
        match other.iter_mut().find(|(o, _)| *o == outcome.as_str()) {
            Some((_, n)) => *n += count,
            None => other.push((outcome.as_str(), *count)),
        }
    }
    rows.extend(other.into_iter().map(|(outcome, count)| EndpointRow {
        tenant: tenant_labels.then(|| snapshot::OTHER.to_string()),
        endpoint: snapshot::OTHER.to_string(),
        outcome,
        count,
    }));
    rows.sort_by(|a, b| {
        (&a.tenant, &a.endpoint, a.outcome).cmp(&(&b.tenant, &b.endpoint, b.outcome))
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::flow_control::ThrottledKey;

    fn key(step: &str, key: Option<&str>, count: u64) -> ThrottledKey {
        ThrottledKey {
            step: step.to_string(),
            limit: "rate".to_string(),
            key: key.map(str::to_string),
            count,
        }
    }

    #[test]
    fn keys_past_the_cap_are_summed_per_limit_busiest_kept() {
        let keys = vec![
            key("a", Some("x"), 5),
            key("a", Some("y"), 1),
            key("a", Some("z"), 9),
            key("a", None, 2),
            key("b", Some("w"), 1),
        ];
        let capped = capped_keys(keys, 2);
        let rows: Vec<(&str, Option<&str>, u64)> = capped
            .iter()
            .map(|k| (k.step.as_str(), k.key.as_deref(), k.count))
            .collect();
        assert_eq!(
            rows,
            [
                ("a", None, 3),
                ("a", Some("x"), 5),
                ("a", Some("z"), 9),
                ("b", None, 1)
            ]
        );
    }
}
