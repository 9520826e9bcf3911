//! Building and starting an engine.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::app_data::AppData;
use super::config::EngineConfig;
use super::error::EngineError;
use super::flow::Flow;
use super::flow_control::Gate;
use super::handle::Engine;
use super::journal::Journal;
use super::metrics::{Metrics, StepCounters, TenantCounters};
use super::shared::{EmitHook, Shared};
use super::{dispatch, scheduler};
use crate::adapters::memory::MemoryBackend;
use crate::adapters::split::{SplitBackend, SplitOptions};
use crate::backend::{Backend, Broker};
use crate::event::Envelope;
use crate::time::Clock;

/// Builds and starts an [`Engine`].
#[must_use]
pub struct EngineBuilder {
    flow: Flow,
    backend: Option<Arc<dyn Backend>>,
    broker: Option<(Arc<dyn Broker>, SplitOptions)>,
    clock: Option<Clock>,
    config: EngineConfig,
    on_emit: Option<EmitHook>,
    data: AppData,
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
    /// Uses this backend (default: a new [`MemoryBackend`](crate::MemoryBackend), with a warning).
    pub fn backend(mut self, backend: impl Backend) -> Self {
        self.backend = Some(Arc::new(backend));
        self
    }

    /// Gives the handlers `value`, which each execution borrows by its type
    /// with [`StepContext::data`](crate::StepContext::data): a client, a pool,
    /// a configuration, shared by every execution instead of cloned into
    /// every handler. One value per type; a second replaces the first.
    ///
    /// ```
    /// use flowline::prelude::*;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)] struct SignedUp { email: String }
    /// # impl Event for SignedUp { const TOPIC: &'static str = "user.signed_up"; }
    ///
    /// struct Mailer { from: String }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let flow = Flow::builder()
    ///     .external::<SignedUp>()
    ///     .step(Step::event::<SignedUp>("welcome").handle(
    ///         |ctx: StepContext, user: SignedUp| async move {
    ///             let mailer = ctx.data::<Mailer>()?;
    ///             ctx.put("last_welcome", &format!("{} -> {}", mailer.from, user.email))?;
    ///             Ok::<_, StepError>(())
    ///         },
    ///     ))
    ///     .build()
    ///     .unwrap();
    /// let engine = Engine::builder(flow)
    ///     .backend(flowline::MemoryBackend::new())
    ///     .data(Mailer { from: "hello@shop.example".into() })
    ///     .start()
    ///     .await
    ///     .unwrap();
    /// # engine.shutdown(std::time::Duration::from_secs(1)).await; }
    /// ```
    pub fn data<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.data.insert(Arc::new(value));
        self
    }

    /// As [`data`](Self::data), for a value the host also keeps.
    pub fn data_arc<T: Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.data.insert(value);
        self
    }

    /// Uses a shared backend.
    pub fn backend_arc(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Keeps state, dead letters and the outbox in `store`; with
    /// [`transport`](Self::transport), deliveries travel on a broker, else on
    /// the store's own queue (then this is [`backend`](Self::backend)).
    ///
    /// ```no_run
    /// # #[cfg(all(feature = "sqlite", feature = "nats"))]
    /// # async fn wire(flow: flowline::Flow) -> Result<(), Box<dyn std::error::Error>> {
    /// use flowline::{Engine, NatsTransport, SqliteBackend};
    /// let engine = Engine::builder(flow)
    ///     .store(SqliteBackend::open("orders.db")?)
    ///     .transport(NatsTransport::connect("nats://127.0.0.1:4222").await?)
    ///     .start()
    ///     .await?;
    /// # engine.shutdown(std::time::Duration::from_secs(5)).await; Ok(()) }
    /// ```
    pub fn store(self, store: impl Backend) -> Self {
        self.backend(store)
    }

    /// Carries deliveries on `broker`, with the [`store`](Self::store)'s queue
    /// as the transactional outbox: the engine runs on a
    /// [`SplitBackend`](crate::SplitBackend) of the two.
    pub fn transport(self, broker: impl Broker) -> Self {
        self.transport_with(broker, SplitOptions::default())
    }

    /// [`transport`](Self::transport), with the relay's settings.
    pub fn transport_with(mut self, broker: impl Broker, options: SplitOptions) -> Self {
        self.broker = Some((Arc::new(broker), options));
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
    /// steps, cron ticks and [`Engine::emit`]), once the commit has applied: the
    /// emits of a run that conflicted, failed or was refused are never heard.
    /// Keep it fast: it runs on the commit path.
    pub fn on_emit(mut self, hook: impl Fn(&Envelope) + Send + Sync + 'static) -> Self {
        self.on_emit = Some(Arc::new(hook));
        self
    }

    /// Starts the engine's tasks on the current tokio runtime: the dispatcher and one
    /// scheduler per cron step (after catching up missed fires per their policy).
    ///
    /// Without [`backend`](Self::backend) (or [`store`](Self::store)) the
    /// engine runs on a new [`MemoryBackend`], and logs a warning saying so;
    /// choose `.backend(MemoryBackend::new())` to run in memory on purpose.
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
        let store = self.backend.unwrap_or_else(|| {
            // Said out loud: a host that forgot `.backend()` would otherwise
            // learn of it only when a restart lost its work.
            tracing::warn!(
                "no backend chosen (EngineBuilder::backend): running on a memory backend, where nothing survives a restart"
            );
            Arc::new(MemoryBackend::new())
        });
        let backend: Arc<dyn Backend> = match self.broker {
            Some((broker, options)) => Arc::new(SplitBackend::shared(store, broker, options)),
            None => store,
        };
        let shared = Arc::new(Shared {
            backend,
            clock: self.clock.unwrap_or_default(),
            journal: Journal::new(self.config.recent_executions),
            tenant_counters: TenantCounters::new(self.config.tenant_metrics),
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
            watchers: super::watch::Watchers::default(),
            data: self.data,
            step_counters: (0..steps).map(|_| StepCounters::default()).collect(),
            gate: Gate::new(&self.flow),
            flow: self.flow,
        });
        // Weak: the backend outlives engines that share it, and must not keep
        // a stopped one alive.
        let engine = Arc::downgrade(&shared);
        shared
            .backend
            .on_new_work(Arc::new(move || match engine.upgrade() {
                Some(shared) => {
                    shared.wake.notify_one();
                    true
                }
                None => false,
            }));
        super::deploys::report_orphans(&shared).await;
        let mut tasks = JoinSet::new();
        for (index, step) in shared.flow.steps().iter().enumerate() {
            if step.schedule.is_some() {
                scheduler::catch_up(&shared, index).await?;
                tasks.spawn(scheduler::run(shared.clone(), index));
            }
        }
        let batches = Arc::new(Mutex::new(JoinSet::new()));
        tasks.spawn(dispatch::run(shared.clone(), batches.clone()));
        Ok(Engine {
            shared,
            tasks: Arc::new(Mutex::new(Some(tasks))),
            batches,
        })
    }
}

impl Engine {
    /// Starts building an engine for `flow`.
    pub fn builder(flow: Flow) -> EngineBuilder {
        EngineBuilder {
            flow,
            backend: None,
            broker: None,
            clock: None,
            config: EngineConfig::default(),
            on_emit: None,
            data: AppData::default(),
        }
    }
}
