//! A running engine and the host-facing calls: emit, inspect, shut down.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::task::JoinSet;

use super::error::EngineError;
use super::flow::Flow;
use super::journal::ExecutionRecord;
use super::metrics::{MetricsSnapshot, StepMetrics, TenantMetrics};
use super::shared::Shared;
use crate::backend::{LeaseRef, NewDelivery, QueueDepth};
use crate::event::{EmitOptions, Envelope, Event, EventId, Payload, TenantId, Topic, TraceId};
use crate::time::Clock;
use crate::trace_context::TraceParent;

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
    pub(super) tasks: Arc<Mutex<Option<JoinSet<()>>>>,
    pub(super) batches: Arc<Mutex<JoinSet<()>>>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("flow", &self.shared.flow)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// The flow this engine runs.
    pub fn flow(&self) -> &Flow {
        &self.shared.flow
    }

    /// The events this engine commits from now on, for a live view; see
    /// [`Watch`](crate::Watch). Events are kept for watchers only while one
    /// exists.
    pub fn watch(&self) -> crate::Watch {
        self.shared.watchers.watch()
    }

    /// The engine's clock.
    pub fn clock(&self) -> Clock {
        self.shared.clock
    }

    /// Emits a typed event from outside the flow, with a new trace (or, with
    /// [`emit_with`](Self::emit_with), in the trace of a W3C `traceparent`
    /// among the options' headers).
    ///
    /// # Errors
    /// No step subscribes to the event's topic ([`EngineError::NoSubscriber`]:
    /// nothing would run it), the engine is shutting down, the payload does
    /// not serialize, or the backend failed.
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
        self.emit_json(
            tenant,
            E::TOPIC,
            Payload::encode(event)?,
            options.versioned::<E>(),
        )
        .await
    }

    /// Emits an untyped JSON payload on `topic`.
    ///
    /// The payload is not checked against any step's event type: a subscriber that
    /// cannot decode it dead-letters that delivery (a permanent failure).
    ///
    /// # Errors
    /// The topic is invalid, no step subscribes to it
    /// ([`EngineError::NoSubscriber`]), the engine is shutting down, or the
    /// backend failed.
    pub async fn emit_json(
        &self,
        tenant: &TenantId,
        topic: &str,
        payload: Payload,
        options: EmitOptions,
    ) -> Result<EventId, EngineError> {
        let Some((envelope, subs)) = self.prepare_emit(tenant, topic, payload, options)? else {
            return Ok(EventId::new());
        };
        let id = envelope.id;
        self.admit(1).await?;
        let emitted = self.shared.kept_for_hook(std::slice::from_ref(&envelope));
        let deliveries = self.shared.fan_out_one(envelope, Some(subs));
        self.publish(deliveries).await?;
        if let Some(emitted) = emitted {
            self.shared.tell_hook(&emitted);
        }
        Ok(id)
    }

    /// The envelope of one emit on `topic` and the steps that hear it;
    /// `None` for a topic the flow declares external that no step hears yet
    /// (nothing to publish).
    pub(super) fn prepare_emit(
        &self,
        tenant: &TenantId,
        topic: &str,
        payload: Payload,
        options: EmitOptions,
    ) -> Result<Option<(Envelope, &[usize])>, EngineError> {
        // A topic some step subscribes to is the flow's own, already validated.
        let Some((known, subs)) = self.shared.flow.subscribed(topic) else {
            self.unsubscribed(topic)?;
            return Ok(None);
        };
        crate::event::validate_options(&options)?;
        // Headers with a well-formed `traceparent` put the event in that
        // trace (a host passing on a message's trace); else a new one.
        let trace = if options.headers.is_empty() {
            TraceId::new()
        } else {
            TraceParent::from_headers(&options.headers)
                .map_or_else(TraceId::new, |parent| parent.trace_id())
        };
        let envelope =
            self.shared
                .envelope(known.clone(), tenant.clone(), trace, None, payload, options);
        Ok(Some((envelope, subs)))
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
        // As in `emit_json`: a subscribed topic is the flow's own, already valid.
        let Some((known, _)) = self.shared.flow.subscribed(E::TOPIC) else {
            self.unsubscribed(E::TOPIC)?;
            return Ok(events.iter().map(|_| EventId::new()).collect());
        };
        let topic = known.clone();
        let mut envelopes = Vec::with_capacity(events.len());
        for event in events {
            envelopes.push(self.shared.envelope(
                topic.clone(),
                tenant.clone(),
                TraceId::new(),
                None,
                Payload::encode(event)?,
                EmitOptions::default().versioned::<E>(),
            ));
        }
        let ids = envelopes.iter().map(|e| e.id).collect();
        self.emit_envelopes(envelopes).await?;
        Ok(ids)
    }

    async fn emit_envelopes(&self, envelopes: Vec<Envelope>) -> Result<(), EngineError> {
        self.admit(envelopes.len()).await?;
        let emitted = self.shared.kept_for_hook(&envelopes);
        let deliveries = self.shared.fan_out(envelopes);
        self.publish(deliveries).await?;
        if let Some(emitted) = emitted {
            self.shared.tell_hook(&emitted);
        }
        Ok(())
    }

    /// Lets `events` new events in, or refuses them when shutting down.
    pub(super) async fn admit(&self, events: usize) -> Result<(), EngineError> {
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

    /// Counters, queue depth and latencies.
    ///
    /// Counting the queue asks the backend (on PostgreSQL it reads every
    /// unfinished delivery): to follow progress often, use
    /// [`local_metrics`](Self::local_metrics).
    ///
    /// # Errors
    /// The backend failed to count its queue.
    pub async fn metrics(&self) -> Result<MetricsSnapshot, EngineError> {
        let depth = self.shared.backend.depth(self.shared.clock.now()).await?;
        Ok(self.shared.metrics.snapshot(depth))
    }

    /// Each step's unfinished deliveries in the backend (all processes'),
    /// in step-name order: how many, how many are claimable now, how many
    /// are leased. Steps with none are left out. Asks the backend (on
    /// PostgreSQL it reads every unfinished delivery).
    ///
    /// # Errors
    /// The backend failed.
    pub async fn step_queues(&self) -> Result<Vec<crate::backend::StepWork>, EngineError> {
        let now = self.shared.clock.now();
        Ok(self.shared.backend.steps_with_work(now).await?)
    }

    /// Each step's counters since the engine started, in flow order, with the
    /// deliveries of it this engine holds now. Read from memory.
    pub fn step_metrics(&self) -> Vec<StepMetrics> {
        let shared = &self.shared;
        shared
            .flow
            .steps()
            .iter()
            .zip(&shared.step_counters)
            .zip(&shared.in_flight)
            .enumerate()
            .map(|(index, ((step, counters), in_flight))| {
                counters.snapshot(
                    step.name.clone(),
                    step.schedule.is_some(),
                    in_flight.load(Ordering::Acquire),
                    shared.gate.throttled(index),
                )
            })
            .collect()
    }

    /// Executions per tenant since the engine started, when
    /// [`EngineConfig::tenant_metrics`](crate::EngineConfig::tenant_metrics)
    /// is above 0 (empty otherwise): the first tenants seen up to that cap,
    /// then one entry with `tenant: None` for all the others. Read from memory.
    pub fn tenant_metrics(&self) -> Vec<TenantMetrics> {
        self.shared.tenant_counters.snapshot()
    }

    /// The last executions this engine finished, newest first, at most `limit`
    /// (and at most [`EngineConfig::recent_executions`](crate::EngineConfig::recent_executions)).
    /// Executions in other processes are not here.
    pub fn recent_executions(&self, limit: usize) -> Vec<ExecutionRecord> {
        self.shared.journal.recent(limit)
    }

    /// This engine's counters and latencies, read from memory without asking
    /// the backend: `queue` is all zeros. Cheap enough to poll in a loop.
    ///
    /// ```
    /// use flowline::{Engine, Event, Flow, Step, StepContext, StepError, TenantId};
    /// # #[derive(serde::Serialize, serde::Deserialize)]
    /// # struct Visit { page: String }
    /// # impl Event for Visit { const TOPIC: &'static str = "visit"; }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let flow = Flow::builder()
    ///     .external::<Visit>()
    ///     .step(Step::event::<Visit>("log").handle(|_: StepContext, _: Visit| async move {
    ///         Ok::<_, StepError>(())
    ///     }))
    ///     .build()?;
    /// let engine = Engine::builder(flow).start().await?;
    /// engine.emit(&TenantId::new("acme")?, &Visit { page: "home".into() }).await?;
    /// while engine.local_metrics().processed < 1 {
    ///     tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    /// }
    /// assert_eq!(engine.local_metrics().queue, flowline::QueueDepth::default());
    /// engine.shutdown(std::time::Duration::from_secs(5)).await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn local_metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot(QueueDepth::default())
    }

    /// Waits until nothing is ready or in flight: every delivery due now has been
    /// handled (delayed deliveries and retries due later may remain, and so may
    /// deliveries that flow control holds back until their turn: to wait for
    /// those too, wait until [`metrics`](Self::metrics) counts nothing pending).
    ///
    /// Deliveries of steps the flow does not have
    /// ([`orphaned_deliveries`](Self::orphaned_deliveries)) are not waited
    /// for: no engine of this flow would ever run them.
    pub async fn wait_idle(&self) {
        // A busy-looking queue that the engine has not claimed from for
        // this long is asked whether only orphans keep it busy (that counts
        // by step, reading every delivery: never while work is moving).
        const ORPHAN_CHECK: Duration = Duration::from_millis(250);
        let batches = || self.shared.next_batch.load(Ordering::Relaxed);
        let (mut checked, mut seen) = (tokio::time::Instant::now(), batches());
        loop {
            let idle = self.shared.idle.notified();
            if self.is_idle().await {
                return;
            }
            if checked.elapsed() >= ORPHAN_CHECK {
                let stalled =
                    batches() == seen && self.shared.in_flight_total.load(Ordering::Acquire) == 0;
                (checked, seen) = (tokio::time::Instant::now(), batches());
                if stalled && super::idle::idle_but_orphans(&self.shared).await {
                    return;
                }
            }
            tokio::select! {
                // In order, not at random: a seeded simulation replays the same choices.
                biased;
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
        // Idle includes no concurrency slot still held by finished work.
        self.shared
            .gate
            .flush(&self.shared.backend, self.shared.clock.now())
            .await;
        let now = self.shared.clock.now();
        self.shared.backend.is_drained(now).await.unwrap_or(false)
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
        // Slots of the batches that finished go back now, not at lease end.
        shared.gate.flush(&shared.backend, shared.clock.now()).await;
        shared.idle.notify_waiters();
        report
    }
}

/// The error for an emit that no step would run.
impl Engine {
    /// An emit of `topic`, which no step subscribes to: accepted (and
    /// dropped) if the flow declares the topic external, so that a host may
    /// emit before any step hears it; refused otherwise.
    pub(super) fn unsubscribed(&self, topic: &str) -> Result<(), EngineError> {
        let topic = Topic::new(topic)?;
        if self.shared.flow.is_external(&topic) {
            tracing::debug!(%topic, "declared external, but no step subscribes: nothing published");
            return Ok(());
        }
        Err(no_subscriber(topic))
    }
}

pub(super) fn no_subscriber(topic: Topic) -> EngineError {
    EngineError::NoSubscriber {
        topic: topic.to_string(),
    }
}
