//! A test harness: run a [`Flow`] on the memory backend with a virtual clock, emit,
//! advance time, and assert on emitted events, state and dead letters.
//!
//! Use it inside `#[tokio::test(start_paused = true)]`: tokio's clock then moves
//! only when the test sleeps or advances, so a day of cron fires or a ladder of
//! retry backoffs runs in milliseconds, and every delay is exact.
//!
//! ```
//! use std::time::Duration;
//! use flowline::prelude::*;
//! use flowline::testing::TestHarness;
//! # use serde::{Deserialize, Serialize};
//! #[derive(Serialize, Deserialize)]
//! struct Ping { n: u32 }
//! impl Event for Ping { const TOPIC: &'static str = "ping"; }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let flow = Flow::builder()
//!     .external::<Ping>()
//!     .step(Step::event::<Ping>("store").handle(|ctx: StepContext, ping: Ping| async move {
//!         ctx.put("last", &ping.n)?;
//!         Ok::<_, StepError>(())
//!     }))
//!     .build()
//!     .unwrap();
//! let harness = TestHarness::start(flow).await.unwrap();
//! let tenant = TenantId::new("t1").unwrap();
//! harness.emit(&tenant, &Ping { n: 7 }).await.unwrap();
//! harness.settle().await;
//! assert_eq!(harness.state::<u32>(&tenant, "last").await, Some(7));
//! harness.advance(Duration::from_secs(3600)).await; // an hour, instantly
//! harness.shutdown().await;
//! # }
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::backend::Backend;
use crate::backend::{DeadLetter, DeadLetterQuery};
use crate::engine::Flow;
use crate::engine::{Engine, EngineBuilder, EngineConfig, EngineError};
use crate::event::{Envelope, Event, EventId, TenantId};
use crate::time::{Clock, Timestamp};
use crate::MemoryBackend;

/// The instant test clocks start at unless told otherwise: 2026-01-01T00:00:00Z.
pub const TEST_EPOCH: Timestamp = Timestamp::from_millis(1_767_225_600_000);

/// An engine on a virtual clock that records every event it commits.
#[derive(Debug, Clone)]
pub struct TestHarness {
    engine: Engine,
    emitted: Arc<Mutex<Vec<Arc<Envelope>>>>,
}

impl TestHarness {
    /// Starts `flow` on a new memory backend, the clock at [`TEST_EPOCH`].
    ///
    /// # Errors
    /// As [`EngineBuilder::start`](crate::EngineBuilder::start).
    pub async fn start(flow: Flow) -> Result<Self, EngineError> {
        Self::start_with(flow, MemoryBackend::new(), TEST_EPOCH).await
    }

    /// Starts `flow` on `backend` with the clock at `now`.
    ///
    /// # Errors
    /// As [`EngineBuilder::start`](crate::EngineBuilder::start).
    pub async fn start_with(
        flow: Flow,
        backend: impl Backend,
        now: Timestamp,
    ) -> Result<Self, EngineError> {
        Self::start_configured(
            flow,
            Arc::new(backend),
            Clock::starting_at(now),
            test_config(),
        )
        .await
    }

    /// Starts the engine `builder` describes (its backend, clock, config and
    /// [`data`](EngineBuilder::data)), recording what it commits; an emit hook
    /// the builder had is replaced by the harness's.
    ///
    /// # Errors
    /// As [`EngineBuilder::start`].
    pub async fn start_built(builder: EngineBuilder) -> Result<Self, EngineError> {
        let emitted = Arc::new(Mutex::new(Vec::new()));
        let sink = emitted.clone();
        let engine = builder
            .on_emit(move |e| {
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Arc::new(e.clone()));
            })
            .start()
            .await?;
        Ok(TestHarness { engine, emitted })
    }

    /// Starts with every part chosen.
    ///
    /// # Errors
    /// As [`EngineBuilder::start`](crate::EngineBuilder::start).
    pub async fn start_configured(
        flow: Flow,
        backend: Arc<dyn Backend>,
        clock: Clock,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        Self::start_built(
            Engine::builder(flow)
                .backend_arc(backend)
                .clock(clock)
                .config(config),
        )
        .await
    }

    /// The engine under test.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The virtual clock's current time.
    pub fn now(&self) -> Timestamp {
        self.engine.clock().now()
    }

    /// Emits an event from outside the flow.
    ///
    /// # Errors
    /// As [`Engine::emit`].
    pub async fn emit<E: Event>(
        &self,
        tenant: &TenantId,
        event: &E,
    ) -> Result<EventId, EngineError> {
        self.engine.emit(tenant, event).await
    }

    /// Runs until nothing is ready or in flight (later retries and delayed events wait).
    pub async fn settle(&self) {
        self.engine.wait_idle().await;
    }

    /// Lets `duration` of virtual time pass, running everything that falls due in
    /// it at its due time, then settles.
    pub async fn advance(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
        // Timers due at the very end (a cron fire, a retry) were woken together
        // with this sleep; let those tasks run before judging whether all is idle.
        tokio::task::yield_now().await;
        self.settle().await;
    }

    /// Every committed event of type `E`, in commit order.
    ///
    /// # Panics
    /// If an event on `E`'s topic does not decode as an `E`: a test should
    /// hear of that, not miss the event.
    pub fn emitted<E: Event>(&self) -> Vec<E> {
        self.envelopes()
            .iter()
            .filter(|e| e.topic.as_str() == E::TOPIC)
            .map(|e| {
                e.payload.decode().unwrap_or_else(|err| {
                    panic!(
                        "TestHarness::emitted: event {} on {} is not the type asked for: {err}",
                        e.id,
                        E::TOPIC
                    )
                })
            })
            .collect()
    }

    /// Every committed envelope, in commit order.
    pub fn envelopes(&self) -> Vec<Arc<Envelope>> {
        self.emitted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A tenant's state value, `None` if the key is absent.
    ///
    /// # Panics
    /// If the backend fails or the stored value is not a `T`: a test should
    /// hear of either, not read `None`. [`Engine::state`] returns them as
    /// errors.
    pub async fn state<T: DeserializeOwned>(&self, tenant: &TenantId, key: &str) -> Option<T> {
        self.engine
            .state(tenant, key)
            .await
            .unwrap_or_else(|err| panic!("TestHarness::state({key:?}) of tenant {tenant}: {err}"))
    }

    /// All dead letters.
    ///
    /// # Panics
    /// If the backend fails ([`Engine::dead_letters`] returns the error).
    pub async fn dead_letters(&self) -> Vec<DeadLetter> {
        self.engine
            .dead_letters(&DeadLetterQuery::default())
            .await
            .unwrap_or_else(|err| panic!("TestHarness::dead_letters: {err}"))
    }

    /// Shuts the engine down (5 s virtual deadline).
    pub async fn shutdown(&self) {
        self.engine.shutdown(Duration::from_secs(5)).await;
    }
}

/// Engine settings for tests: idle polling every hour of virtual time, since the
/// in-process backend wakes the dispatcher itself on every publish.
pub fn test_config() -> EngineConfig {
    EngineConfig {
        poll_interval: Duration::from_secs(3600),
        ..EngineConfig::default()
    }
}
