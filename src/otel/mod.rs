//! OpenTelemetry export (feature `otel`): the engine's spans, and the host's
//! own, sent over OTLP (HTTP, protobuf) to a collector, Jaeger or Tempo, as
//! one trace per request however many steps and processes it crosses.
//!
//! | file | its one job |
//! |---|---|
//! | `mod.rs` | the options and [`install`], which returns the `tracing` layer |
//! | `link.rs` | each execution's span a child of the span that emitted its event |
//! | `sampling.rs` | which traces are recorded, decided once per trace |
//! | `queue.rs` | the bounded export queue, its thread, and what it dropped |
//! | `client.rs` | the exporter's HTTP client (the crate's reqwest) |
//!
//! The trace model:
//! - **Requests**: the HTTP face's `http` span joins the caller's
//!   `traceparent` (a malformed one is ignored: a new trace starts); the API
//!   step's `api` span is its child.
//! - **Events**: each event carries the `traceparent` of the span that
//!   emitted it; the `step` span of each execution is that span's child, in
//!   whichever process claims it. Fan-out makes siblings; each retry is
//!   another `step` span under the same parent, with its `attempt`; a replay
//!   from the dead letters is a later attempt in the same trace.
//! - **Calls out**: `gateway.call` and `webhook.deliver` are client spans;
//!   the `traceparent` they send lets the receiver join the trace.
//! - **Failures**: a failed execution's span has status error and
//!   `error.type` (`retryable`, `permanent`, `retry_after`).
//! - Work nothing traced started (a cron tick, `Engine::emit` without a
//!   `traceparent`) starts a trace at its first `step` span; that trace's id
//!   is OpenTelemetry's, its spans also carry flowline's as `trace_id`.
//!
//! The export never holds up the engine: finished spans go into a bounded
//! queue ([`OtelOptions::queue_capacity`]) that a thread of its own sends
//! in batches; when the collector is slow or unreachable the queue fills
//! and further spans are dropped and counted ([`OtelExport::dropped`]).
//!
//! ```no_run
//! use tracing_subscriber::layer::SubscriberExt;
//! use tracing_subscriber::util::SubscriberInitExt;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let export = flowline::otel::install(
//!     flowline::otel::OtelOptions::new("http://127.0.0.1:4318/v1/traces")
//!         .service_name("orders")
//!         .sample_ratio(0.1)?,
//! )?;
//! tracing_subscriber::registry().with(export.layer()).init();
//! // ... run the engine; at exit:
//! export.shutdown();
//! # Ok(())
//! # }
//! ```

mod client;
mod link;
mod queue;
mod sampling;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::registry::LookupSpan;

use queue::{BoundedQueue, Counts, QueueSettings};

/// Why the export could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtelError {
    /// The collector's URL is not an `http` or `https` URL.
    #[error("the OTLP endpoint {0:?} is not an http(s) URL")]
    InvalidEndpoint(String),
    /// A sampling ratio outside 0 to 1.
    #[error("a sampling ratio is between 0 and 1, not {0}")]
    InvalidSampleRatio(f64),
    /// A queue or batch of no spans.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// Another span link is installed in this process already.
    #[error("a span link is installed already: install the export once per process")]
    AlreadyInstalled,
    /// The exporter or its HTTP client could not be built.
    #[error("the OTLP exporter: {0}")]
    Exporter(String),
}

/// Where and how spans are exported.
#[derive(Clone, Debug)]
pub struct OtelOptions {
    endpoint: String,
    service_name: String,
    sample_ratio: f64,
    queue_capacity: usize,
    batch_size: usize,
    export_every: Duration,
    export_timeout: Duration,
}

impl OtelOptions {
    /// Spans go to the OTLP/HTTP traces URL `endpoint` (a collector's is
    /// `http://host:4318/v1/traces`), all of them sampled, as service
    /// `flowline`; a queue of 4,096 spans sent in batches of 512 at least
    /// once a second, each send given 5 s.
    pub fn new(endpoint: impl Into<String>) -> Self {
        OtelOptions {
            endpoint: endpoint.into(),
            service_name: "flowline".to_string(),
            sample_ratio: 1.0,
            queue_capacity: 4096,
            batch_size: 512,
            export_every: Duration::from_secs(1),
            export_timeout: Duration::from_secs(5),
        }
    }

    /// The `service.name` the spans are exported under.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = name.into();
        self
    }

    /// The share of new traces recorded (a trace whose caller sampled it, or
    /// did not, follows the caller).
    ///
    /// # Errors
    /// [`OtelError::InvalidSampleRatio`] outside 0 to 1.
    pub fn sample_ratio(mut self, ratio: f64) -> Result<Self, OtelError> {
        if !(0.0..=1.0).contains(&ratio) {
            return Err(OtelError::InvalidSampleRatio(ratio));
        }
        self.sample_ratio = ratio;
        Ok(self)
    }

    /// Finished spans waiting to be sent, at most; beyond, they are dropped.
    pub fn queue_capacity(mut self, spans: usize) -> Self {
        self.queue_capacity = spans;
        self
    }

    /// Spans sent in one request, at most.
    pub fn batch_size(mut self, spans: usize) -> Self {
        self.batch_size = spans;
        self
    }

    /// How often queued spans are sent when a batch is not full.
    pub fn export_every(mut self, every: Duration) -> Self {
        self.export_every = every;
        self
    }

    /// How long one send may take before its spans are dropped.
    pub fn export_timeout(mut self, timeout: Duration) -> Self {
        self.export_timeout = timeout;
        self
    }
}

/// The running export: the `tracing` layer to add to the host's subscriber,
/// and what became of the spans.
#[derive(Debug, Clone)]
pub struct OtelExport {
    provider: SdkTracerProvider,
    counts: Arc<Counts>,
}

/// Sets up the export and installs the engine's
/// [span link](crate::engine::trace_link): from now on executions join the
/// traces of their events. Add [`OtelExport::layer`] to the process's
/// `tracing` subscriber.
///
/// # Errors
/// A bad option, or a span link installed already.
pub fn install(options: OtelOptions) -> Result<OtelExport, OtelError> {
    let export = build(&options)?;
    let link = link::OtelLink {
        ratio: options.sample_ratio,
    };
    if !crate::engine::trace_link::install(link) {
        let _ = export.provider.shutdown();
        return Err(OtelError::AlreadyInstalled);
    }
    Ok(export)
}

fn build(options: &OtelOptions) -> Result<OtelExport, OtelError> {
    let url = reqwest::Url::parse(&options.endpoint)
        .map_err(|_| OtelError::InvalidEndpoint(options.endpoint.clone()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(OtelError::InvalidEndpoint(options.endpoint.clone()));
    }
    if options.queue_capacity == 0 {
        return Err(OtelError::Zero("the queue capacity"));
    }
    if options.batch_size == 0 {
        return Err(OtelError::Zero("the batch size"));
    }
    let client = reqwest::Client::builder()
        .timeout(options.export_timeout)
        .no_proxy()
        .build()
        .map_err(|e| OtelError::Exporter(e.to_string()))?;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client::ReqwestClient(client))
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(options.endpoint.clone())
        .with_timeout(options.export_timeout)
        .build()
        .map_err(|e| OtelError::Exporter(e.to_string()))?;
    let resource = Resource::builder()
        .with_service_name(options.service_name.clone())
        .build();
    opentelemetry_sdk::trace::SpanExporter::set_resource(&mut exporter, &resource);
    let counts = Arc::new(Counts::default());
    let settings = QueueSettings {
        capacity: options.queue_capacity,
        batch: options.batch_size,
        every: options.export_every,
        timeout: options.export_timeout,
    };
    let queue = BoundedQueue::start(exporter, settings, counts.clone())
        .map_err(|e| OtelError::Exporter(e.to_string()))?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(queue)
        .with_sampler(Sampler::ParentBased(Box::new(sampling::RootSampler {
            ratio: options.sample_ratio,
        })))
        .with_resource(resource)
        .build();
    Ok(OtelExport { provider, counts })
}

impl OtelExport {
    /// The `tracing` layer that records spans for the export: those at
    /// `INFO` and above (flowline's are `INFO`). It leaves out the spans of
    /// executions whose trace is not sampled before it spends anything on
    /// them. To narrow it, filter the whole subscriber (an `EnvFilter`
    /// layer beside it) rather than wrap this layer in another per-layer
    /// filter, which costs every execution a check.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        use tracing_subscriber::filter::{LevelFilter, Targets};
        use tracing_subscriber::Layer as _;
        // A filter by target, not a closure: its verdict is cached per
        // callsite, so a span it leaves out costs no call at all.
        let sampled_only = Targets::new().with_default(LevelFilter::INFO).with_target(
            crate::engine::trace_link::UNSAMPLED_TARGET,
            LevelFilter::OFF,
        );
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("flowline"))
            .with_filter(sampled_only)
    }

    /// Spans sent to the collector so far.
    pub fn exported(&self) -> u64 {
        self.counts.exported.load(Relaxed)
    }

    /// Spans dropped so far: the queue was full, or the collector did not
    /// take them in time.
    pub fn dropped(&self) -> u64 {
        self.counts.dropped.load(Relaxed)
    }

    /// Sends what is queued now; waits at most twice the export timeout.
    pub fn flush(&self) {
        if let Err(err) = self.provider.force_flush() {
            tracing::debug!(error = %err, "spans not flushed");
        }
    }

    /// Sends what is queued and stops the export thread.
    pub fn shutdown(&self) {
        if let Err(err) = self.provider.shutdown() {
            tracing::debug!(error = %err, "the trace export was stopped already");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_options_are_typed_errors() {
        assert!(matches!(
            OtelOptions::new("x").sample_ratio(1.5),
            Err(OtelError::InvalidSampleRatio(_))
        ));
        assert!(OtelOptions::new("x").sample_ratio(f64::NAN).is_err());
        for endpoint in ["", "not a url", "ftp://127.0.0.1/v1/traces"] {
            assert!(matches!(
                build(&OtelOptions::new(endpoint)),
                Err(OtelError::InvalidEndpoint(_))
            ));
        }
        assert!(matches!(
            build(&OtelOptions::new("http://127.0.0.1:4318/v1/traces").queue_capacity(0)),
            Err(OtelError::Zero(_))
        ));
    }
}
