//! The engine: builder, lifecycle, and the host-facing calls (emit, call, inspect).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::api::{ApiRequest, ApiResponse};
use crate::context::{build_envelope, ContextInfo, EmitOptions, StepContext};
use crate::event::{Envelope, Event, EventId, InvalidName, Payload, TenantId, Topic, TraceId};
use crate::flow::Flow;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::step::{catch_panic, Handler};
use crate::store::{Action, Completion, DeadLetter, DeadLetterQuery, Outcome, Store, StoreError};
use crate::time::Clock;
use crate::transport::{LeaseRef, NewDelivery, Transport};

/// A storage adapter and a transport adapter in one: state, bookkeeping and queues
/// that commit together. Implemented for every type that implements both.
pub trait Backend: Store + Transport {}
impl<T: Store + Transport> Backend for T {}

/// An engine operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The backend failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A name (tenant, topic) was invalid.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// A payload could not be serialized.
    #[error("cannot serialize the payload: {0}")]
    Encode(#[from] serde_json::Error),
    /// A stored value did not deserialize into the requested type.
    #[error("stored value of key {key:?} does not match the requested type: {source}")]
    Decode {
        /// The key.
        key: String,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
    /// The engine is shutting down and accepts no new work.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The configuration is invalid.
    #[error("invalid engine configuration: {0}")]
    Config(String),
}

/// Engine-wide settings.
///
/// | setting | default | meaning |
/// |---|---|---|
/// | `batch_size` | 256 | deliveries run and committed together |
/// | `max_in_flight` | 4096 | deliveries claimed and not yet completed, all steps |
/// | `tenant_quantum` | 16 | deliveries taken from one tenant before the next |
/// | `poll_interval` | 200 ms | longest idle wait before claiming again (other processes may have published) |
/// | `max_conflict_reruns` | 1000 | re-runs of one execution after commit conflicts before its lease is left to expire |
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Deliveries run and committed together.
    pub batch_size: usize,
    /// Deliveries in flight at once, across steps.
    pub max_in_flight: usize,
    /// Deliveries taken from one tenant per round while others wait.
    pub tenant_quantum: usize,
    /// Longest idle wait between claims.
    pub poll_interval: Duration,
    /// Re-runs after commit conflicts before giving up on this lease.
    pub max_conflict_reruns: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            batch_size: 256,
            max_in_flight: 4096,
            tenant_quantum: 16,
            poll_interval: Duration::from_millis(200),
            max_conflict_reruns: 1000,
        }
    }
}

type EmitHook = Arc<dyn Fn(&Envelope) + Send + Sync>;

pub(crate) struct Shared {
    pub(crate) flow: Flow,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) clock: Clock,
    pub(crate) config: EngineConfig,
    pub(crate) metrics: Metrics,
    pub(crate) in_flight: Vec<AtomicUsize>,
    pub(crate) in_flight_total: AtomicUsize,
    pub(crate) wake: Notify,
    pub(crate) idle: Notify,
    pub(crate) stopping: AtomicBool,
    pub(crate) stop: Notify,
    pub(crate) leases: Mutex<HashMap<u64, Vec<LeaseRef>>>,
    pub(crate) next_batch: AtomicU64,
    pub(crate) on_emit: Option<EmitHook>,
}

impl Shared {
    pub(crate) fn envelope(
        &self,
        topic: Topic,
        tenant: TenantId,
        trace_id: TraceId,
        causation_id: Option<EventId>,
        payload: Payload,
        options: EmitOptions,
    ) -> Envelope {
        build_envelope(
            self.clock.now(),
            topic,
            tenant,
            trace_id,
            causation_id,
            payload,
            options,
        )
    }

    /// Turns one emitted envelope into deliveries, telling the emit hook. `subs`
    /// are the subscribers of its topic, if the caller looked them up already.
    pub(crate) fn fan_out_one(
        &self,
        envelope: Envelope,
        subs: Option<&[usize]>,
    ) -> Vec<NewDelivery> {
        let mut out = Vec::new();
        self.fan_out_into(envelope, subs, &mut out);
        out
    }

    /// Turns emitted envelopes into deliveries, telling the emit hook.
    pub(crate) fn fan_out(&self, emits: Vec<Envelope>) -> Vec<NewDelivery> {
        let mut out = Vec::with_capacity(emits.len());
        for envelope in emits {
            self.fan_out_into(envelope, None, &mut out);
        }
        out
    }

    fn fan_out_into(&self, envelope: Envelope, subs: Option<&[usize]>, out: &mut Vec<NewDelivery>) {
        if let Some(hook) = &self.on_emit {
            hook(&envelope);
        }
        let event = Arc::new(envelope);
        match subs {
            Some(subs) => self.flow.fan_out_to(event, subs, out),
            None => self.flow.fan_out(event, out),
        }
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

/// Builds and starts an [`Engine`].
#[must_use]
pub struct EngineBuilder {
    flow: Flow,
    backend: Option<Arc<dyn Backend>>,
    clock: Option<Clock>,
    config: EngineConfig,
    on_emit: Option<EmitHook>,
}

impl fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("flow", &self.flow)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl EngineBuilder {
    /// Uses this backend (default: a new [`MemoryBackend`](crate::MemoryBackend)).
    pub fn backend(mut self, backend: impl Backend) -> Self {
        self.backend = Some(Arc::new(backend));
        self
    }

    /// Uses a shared backend.
    pub fn backend_arc(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Uses this clock (default: [`Clock::system`]).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Replaces the engine settings.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// Calls `hook` with every event this engine commits (emits from handlers, API
    /// steps, cron ticks and [`Engine::emit`]). Keep it fast: it runs on the commit path.
    pub fn on_emit(mut self, hook: impl Fn(&Envelope) + Send + Sync + 'static) -> Self {
        self.on_emit = Some(Arc::new(hook));
        self
    }

    /// Starts the engine's tasks on the current tokio runtime: the dispatcher and one
    /// scheduler per cron step (after catching up missed fires per their policy).
    ///
    /// # Errors
    /// [`EngineError::Config`] for zero-sized limits; a backend error while catching
    /// up cron fires.
    pub async fn start(self) -> Result<Engine, EngineError> {
        let c = &self.config;
        if c.batch_size == 0 || c.max_in_flight == 0 || c.tenant_quantum == 0 {
            return Err(EngineError::Config(
                "batch_size, max_in_flight and tenant_quantum must be at least 1".into(),
            ));
        }
        if c.poll_interval.is_zero() {
            return Err(EngineError::Config(
                "poll_interval must be above zero".into(),
            ));
        }
        let steps = self.flow.steps().len();
        let shared = Arc::new(Shared {
            backend: self
                .backend
                .unwrap_or_else(|| Arc::new(crate::store::memory::MemoryBackend::new())),
            clock: self.clock.unwrap_or_default(),
            config: self.config,
            metrics: Metrics::default(),
            in_flight: (0..steps).map(|_| AtomicUsize::new(0)).collect(),
            in_flight_total: AtomicUsize::new(0),
            wake: Notify::new(),
            idle: Notify::new(),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            leases: Mutex::new(HashMap::new()),
            next_batch: AtomicU64::new(0),
            on_emit: self.on_emit,
            flow: self.flow,
        });
        let mut tasks = JoinSet::new();
        for (index, step) in shared.flow.steps().iter().enumerate() {
            if step.schedule.is_some() {
                crate::scheduler::catch_up(&shared, index).await?;
                tasks.spawn(crate::scheduler::run(shared.clone(), index));
            }
        }
        let batches = Arc::new(Mutex::new(JoinSet::new()));
        tasks.spawn(crate::dispatch::run(shared.clone(), batches.clone()));
        Ok(Engine {
            shared,
            tasks: Arc::new(Mutex::new(Some(tasks))),
            batches,
        })
    }
}

/// What [`Engine::shutdown`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Deliveries in flight when shutdown began that finished within the deadline.
    pub finished: usize,
    /// Deliveries given back to the queue unfinished (another engine or the next
    /// start picks them up; no attempt is counted).
    pub released: usize,
}

/// A running engine. Cheap to clone; clones drive the same engine.
///
/// Stop it with [`shutdown`](Engine::shutdown). Dropping the last handle instead
/// aborts the engine's tasks at once: nothing is lost (what was in flight is not
/// committed and comes back when its lease ends), but nothing is finished either.
///
/// ```
/// use flowline::{Engine, Event, Flow, Step, StepContext, StepError, TenantId};
/// # use serde::{Deserialize, Serialize};
/// #[derive(Serialize, Deserialize)]
/// struct Visit { page: String }
/// impl Event for Visit { const TOPIC: &'static str = "visit"; }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let flow = Flow::builder()
///     .external::<Visit>()
///     .step(Step::event::<Visit>("count").handle(|ctx: StepContext, visit: Visit| async move {
///         let key = format!("visits/{}", visit.page);
///         let n: u64 = ctx.get(&key).await?.unwrap_or(0);
///         ctx.put(&key, &(n + 1))?;
///         Ok::<_, StepError>(())
///     }))
///     .build()?;
/// let engine = Engine::builder(flow).start().await?;
/// let tenant = TenantId::new("acme")?;
/// engine.emit(&tenant, &Visit { page: "home".into() }).await?;
/// engine.wait_idle().await;
/// assert_eq!(engine.state::<u64>(&tenant, "visits/home").await?, Some(1));
/// engine.shutdown(std::time::Duration::from_secs(5)).await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Engine {
    pub(crate) shared: Arc<Shared>,
    tasks: Arc<Mutex<Option<JoinSet<()>>>>,
    batches: Arc<Mutex<JoinSet<()>>>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("flow", &self.shared.flow)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts building an engine for `flow`.
    pub fn builder(flow: Flow) -> EngineBuilder {
        EngineBuilder {
            flow,
            backend: None,
            clock: None,
            config: EngineConfig::default(),
            on_emit: None,
        }
    }

    /// The flow this engine runs.
    pub fn flow(&self) -> &Flow {
        &self.shared.flow
    }

    /// The engine's clock.
    pub fn clock(&self) -> Clock {
        self.shared.clock
    }

    /// Emits a typed event from outside the flow, with a new trace.
    ///
    /// # Errors
    /// The engine is shutting down, the payload does not serialize, or the backend failed.
    pub async fn emit<E: Event>(
        &self,
        tenant: &TenantId,
        event: &E,
    ) -> Result<EventId, EngineError> {
        self.emit_with(tenant, event, EmitOptions::default()).await
    }

    /// Emits a typed event with a delay, FIFO group or headers.
    ///
    /// # Errors
    /// As [`emit`](Self::emit).
    pub async fn emit_with<E: Event>(
        &self,
        tenant: &TenantId,
        event: &E,
        options: EmitOptions,
    ) -> Result<EventId, EngineError> {
        self.emit_json(tenant, E::TOPIC, Payload::encode(event)?, options)
            .await
    }

    /// Emits an untyped JSON payload on `topic`.
    ///
    /// The payload is not checked against any step's event type: a subscriber that
    /// cannot decode it dead-letters that delivery (a permanent failure).
    ///
    /// # Errors
    /// The topic is invalid, the engine is shutting down, or the backend failed.
    pub async fn emit_json(
        &self,
        tenant: &TenantId,
        topic: &str,
        payload: Payload,
        options: EmitOptions,
    ) -> Result<EventId, EngineError> {
        // A topic some step subscribes to is the flow's own, already validated.
        let subscribed = self.shared.flow.subscribed(topic);
        let topic = match subscribed {
            Some((known, _)) => known.clone(),
            None => Topic::new(topic)?,
        };
        crate::event::validate_headers(&options.headers)?;
        let envelope = self.shared.envelope(
            topic,
            tenant.clone(),
            TraceId::new(),
            None,
            payload,
            options,
        );
        let id = envelope.id;
        self.admit(1).await?;
        let deliveries = self
            .shared
            .fan_out_one(envelope, subscribed.map(|(_, subs)| subs));
        self.publish(deliveries).await?;
        Ok(id)
    }

    /// Emits many typed events of one tenant in one backend call.
    ///
    /// # Errors
    /// As [`emit`](Self::emit); on error none was published.
    pub async fn emit_batch<E: Event>(
        &self,
        tenant: &TenantId,
        events: &[E],
    ) -> Result<Vec<EventId>, EngineError> {
        let topic = Topic::new(E::TOPIC)?;
        let mut envelopes = Vec::with_capacity(events.len());
        for event in events {
            envelopes.push(self.shared.envelope(
                topic.clone(),
                tenant.clone(),
                TraceId::new(),
                None,
                Payload::encode(event)?,
                EmitOptions::default(),
            ));
        }
        let ids = envelopes.iter().map(|e| e.id).collect();
        self.emit_envelopes(envelopes).await?;
        Ok(ids)
    }

    async fn emit_envelopes(&self, envelopes: Vec<Envelope>) -> Result<(), EngineError> {
        self.admit(envelopes.len()).await?;
        let deliveries = self.shared.fan_out(envelopes);
        self.publish(deliveries).await
    }

    /// Lets `events` new events in, or refuses them when shutting down.
    async fn admit(&self, events: usize) -> Result<(), EngineError> {
        // Like a channel send, each event takes one unit of tokio's cooperative
        // budget (yielding first when the task has used it up). Each emit wakes the
        // dispatcher onto this worker; a task emitting in a loop whose awaits never
        // wait would otherwise keep it from running until the loop ended, while the
        // queue grew without bound.
        for _ in 0..events {
            tokio::task::consume_budget().await;
        }
        if self.shared.is_stopping() {
            return Err(EngineError::ShuttingDown);
        }
        Ok(())
    }

    async fn publish(&self, deliveries: Vec<NewDelivery>) -> Result<(), EngineError> {
        self.shared.backend.publish(deliveries).await?;
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Calls the API step that answers the request's method and path.
    ///
    /// The handler runs at once, in the caller's task; its writes and emits commit
    /// atomically before this returns (re-running it on a commit conflict). No route:
    /// 404. Handler error or timeout: 500, and nothing commits.
    pub async fn call(&self, mut request: ApiRequest) -> ApiResponse {
        let shared = &self.shared;
        if shared.is_stopping() {
            return ApiResponse::error(503, "shutting_down", "the engine is shutting down");
        }
        let Some((index, params)) = shared.flow.route(request.method, &request.path) else {
            return ApiResponse::error(
                404,
                "not_found",
                format!("no API step answers {} {}", request.method, request.path),
            );
        };
        request.params = params;
        let step = shared.flow.steps()[index].clone();
        let Handler::Api(handler) = &step.handler else {
            return ApiResponse::error(500, "internal", "route points at a non-API step");
        };
        shared.metrics.api_calls.fetch_add(1, Ordering::Relaxed);
        let trace_id = TraceId::new();
        for _ in 0..=shared.config.max_conflict_reruns {
            let ctx = StepContext::new(
                ContextInfo {
                    tenant: request.tenant.clone(),
                    step: step.name.clone(),
                    step_index: index,
                    trace_id,
                    event_id: None,
                    attempt: 1,
                    deadline: shared.clock.now() + step.config.timeout,
                },
                shared.clone(),
            );
            let span = tracing::info_span!("api", step = %step.name, tenant = %request.tenant, trace_id = %trace_id, method = %request.method, path = %request.path);
            let run = tokio::time::timeout(
                step.config.timeout,
                catch_panic(async { handler(ctx.clone(), request.clone()).await }),
            );
            let result = tracing::Instrument::instrument(run, span).await;
            let response = match result {
                Ok(Ok(response)) => response,
                Ok(Err(err)) => {
                    tracing::warn!(step = %step.name, error = %err, "API step failed");
                    return ApiResponse::error(500, "internal", err.chain_message());
                }
                Err(_) => {
                    return ApiResponse::error(
                        500,
                        "timeout",
                        format!("API step {} timed out", step.name),
                    );
                }
            };
            let parts = ctx.take_txn().into_parts();
            let completion = Completion {
                tenant: request.tenant.clone(),
                input: None,
                marker: None,
                action: Action::Commit {
                    reads: parts.reads,
                    writes: parts.writes,
                    adds: parts.adds,
                    emits: shared.fan_out(parts.emits),
                },
            };
            let outcome = match shared.backend.complete(vec![completion]).await {
                Ok(outcomes) => outcomes.into_iter().next(),
                Err(err) => return ApiResponse::error(503, "storage_unavailable", err.to_string()),
            };
            match outcome {
                Some(Outcome::Conflict) => {
                    shared.metrics.conflicts.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Some(Outcome::Rejected(err)) => {
                    tracing::warn!(step = %step.name, error = %err, "API step's commit rejected");
                    return ApiResponse::error(500, "invalid_counter", err.to_string());
                }
                _ => {
                    shared.wake.notify_one();
                    return response;
                }
            }
        }
        ApiResponse::error(503, "contention", "too many concurrent updates; try again")
    }

    /// Reads a key of a tenant's state, outside any step (for hosts and tests).
    ///
    /// # Errors
    /// The backend failed, or the value is not a `T`.
    pub async fn state<T: DeserializeOwned>(
        &self,
        tenant: &TenantId,
        key: &str,
    ) -> Result<Option<T>, EngineError> {
        match self.shared.backend.get(tenant, key).await? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v.value)
                .map(Some)
                .map_err(|source| EngineError::Decode {
                    key: key.to_string(),
                    source,
                }),
        }
    }

    /// Lists dead letters, oldest first.
    ///
    /// # Errors
    /// The backend failed.
    pub async fn dead_letters(
        &self,
        query: &DeadLetterQuery,
    ) -> Result<Vec<DeadLetter>, EngineError> {
        Ok(self.shared.backend.dead_letters(query).await?)
    }

    /// Puts dead letters back in the queue; their steps run them again from attempt 1.
    ///
    /// # Errors
    /// The backend failed.
    pub async fn replay_dead_letters(&self, ids: &[u64]) -> Result<usize, EngineError> {
        let n = self
            .shared
            .backend
            .replay_dead_letters(ids, self.shared.clock.now())
            .await?;
        self.shared.wake.notify_one();
        Ok(n)
    }

    /// Deletes dead letters.
    ///
    /// # Errors
    /// The backend failed.
    pub async fn purge_dead_letters(&self, ids: &[u64]) -> Result<usize, EngineError> {
        Ok(self.shared.backend.purge_dead_letters(ids).await?)
    }

    /// Counters, queue depth and latencies.
    ///
    /// # Errors
    /// The backend failed to count its queue.
    pub async fn metrics(&self) -> Result<MetricsSnapshot, EngineError> {
        let depth = self.shared.backend.depth(self.shared.clock.now()).await?;
        Ok(self.shared.metrics.snapshot(depth))
    }

    /// Waits until nothing is ready or in flight: every delivery due now has been
    /// handled (delayed deliveries and retries due later may remain).
    pub async fn wait_idle(&self) {
        loop {
            let idle = self.shared.idle.notified();
            if self.is_idle().await {
                return;
            }
            tokio::select! {
                _ = idle => {}
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    }

    /// Sound without a lock: the in-flight count is read before the queue, a
    /// claimed delivery counts as in flight in the queue before the engine counts
    /// it, and a batch commits (publishing what it emitted) before it stops
    /// counting itself; a due retry counts as ready.
    async fn is_idle(&self) -> bool {
        if self.shared.in_flight_total.load(Ordering::Acquire) > 0 {
            return false;
        }
        match self.shared.backend.depth(self.shared.clock.now()).await {
            Ok(d) => d.ready == 0 && d.in_flight == 0,
            Err(_) => false,
        }
    }

    /// Stops claiming, lets in-flight executions finish until `deadline`, then gives
    /// back whatever is still running. Nothing is lost either way.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let shared = &self.shared;
        shared.stopping.store(true, Ordering::Release);
        shared.stop.notify_waiters();
        shared.wake.notify_one();
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut tasks) = tasks {
            while tasks.join_next().await.is_some() {}
        }
        let in_flight = shared.in_flight_total.load(Ordering::Acquire);
        let mut batches =
            std::mem::take(&mut *self.batches.lock().unwrap_or_else(|p| p.into_inner()));
        let drained = tokio::time::timeout(deadline, async {
            while batches.join_next().await.is_some() {}
        })
        .await;
        let mut report = ShutdownReport::default();
        if drained.is_err() {
            batches.abort_all();
            while batches.join_next().await.is_some() {}
        }
        let leftover: Vec<LeaseRef> = shared
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .flat_map(|(_, leases)| leases)
            .collect();
        if !leftover.is_empty() {
            if let Err(err) = shared.backend.release(&leftover).await {
                tracing::warn!(error = %err, "could not release leases at shutdown; they expire instead");
            }
            report.released = leftover.len();
            shared.in_flight_total.store(0, Ordering::Release);
        }
        report.finished = in_flight.saturating_sub(report.released);
        shared.idle.notify_waiters();
        report
    }
}
