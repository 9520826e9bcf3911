//! # flowline
//!
//! An embeddable, durable, event-driven workflow engine for Rust backends.
//!
//! Business processes are small **steps** joined by typed **events**. An API call,
//! a cron tick or a handler emits an event; every step subscribed to its topic runs;
//! a failure is retried with backoff; what cannot succeed is dead-lettered, visible
//! and replayable. A step's state writes, the events it emits and the
//! acknowledgement of its input commit atomically: effects happen exactly once.
//!
//! ```
//! use std::time::Duration;
//! use flowline::prelude::*;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct OrderPlaced { order_id: String, cents: i64 }
//! impl Event for OrderPlaced { const TOPIC: &'static str = "order.placed"; }
//!
//! #[derive(Serialize, Deserialize)]
//! struct OrderBilled { order_id: String }
//! impl Event for OrderBilled { const TOPIC: &'static str = "order.billed"; }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let flow = Flow::builder()
//!     .external::<OrderPlaced>()
//!     .step(
//!         Step::event::<OrderPlaced>("bill")
//!             .emits::<OrderBilled>()
//!             .retry(RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(30)))
//!             .handle(|ctx: StepContext, order: OrderPlaced| async move {
//!                 let total: i64 = ctx.get("revenue").await?.unwrap_or(0);
//!                 ctx.put("revenue", &(total + order.cents))?;
//!                 ctx.emit(&OrderBilled { order_id: order.order_id })?;
//!                 Ok::<_, StepError>(())
//!             }),
//!     )
//!     .step(Step::event::<OrderBilled>("notify").handle(|_ctx: StepContext, _billed: OrderBilled| async move {
//!         Ok::<_, StepError>(())
//!     }))
//!     .build()?;
//!
//! let engine = Engine::builder(flow).backend(MemoryBackend::new()).start().await?;
//! let shop = TenantId::new("shop-1")?;
//! engine.emit(&shop, &OrderPlaced { order_id: "o-1".into(), cents: 1250 }).await?;
//! engine.wait_idle().await;
//! assert_eq!(engine.state::<i64>(&shop, "revenue").await?, Some(1250));
//! engine.shutdown(Duration::from_secs(5)).await;
//! # Ok(())
//! # }
//! ```
//!
//! ## Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `sqlite` | yes | `SqliteBackend`: the durable, embedded backend on one SQLite file (bundled, nothing to install) |
//! | `postgres` | no | `PostgresBackend`: the shared backend on a PostgreSQL schema (sqlx; claims with `FOR UPDATE SKIP LOCKED`, versioned migrations) |
//! | `orderflow` | no | [`orderflow`]: the order lifecycle of a multi-tenant store as 14 steps, with a mock payment gateway and carrier |
//! | `axum` | no | `http`: a flow's API steps as an axum `Router`, and the workbench page at `/_flowline`; with `orderflow`, the mock gateway's HTTP server |
//! | `http-gateway` | no | `orderflow::HttpGateway`: the payment step charges a remote gateway over HTTP (reqwest, no TLS) |
//! | `test-util` | no | [`testing`] (a harness on a virtual clock) and [`conformance`] (the suite every backend passes) |
//!
//! ## Layers
//!
//! The crate is built in five layers. Each imports only from the layers below it
//! (`tests/layers.rs` checks it), so any concept is one hop from here:
//!
//! ```text
//!  5  orderflow/  http/  testing           built on the engine: the order module,
//!     conformance/                          the HTTP face, the test harness, the
//!        │                                  backend suite
//!  4  engine/                               Flow, Step, StepContext, Engine: builder,
//!        │                                  dispatcher, batch runner, cron scheduler
//!  3  adapters/memory/  sqlite/  postgres/ the bundled backends, each on the contract
//!        │                                  alone (and on the vocabulary)
//!  2  backend/                              the adapter contract: Store, Transport,
//!        │                                  Completion, Outcome, NewDelivery, ...
//!  1  vocab/                                Event, Envelope, TenantId, Topic, Timestamp,
//!                                           Clock, RetryPolicy, Schedule, ApiRequest
//! ```
//!
//! | layer | where | public path | start with |
//! |---|---|---|---|
//! | vocabulary | `src/vocab/` | [`event`], [`time`], [`retry`], [`cron`], [`api`] | [`Event`], [`TenantId`], [`RetryPolicy`] |
//! | adapter contract | `src/backend/` | [`backend`] (its docs are the guide to writing an adapter) | [`Store`], [`Transport`] |
//! | bundled adapters | `src/adapters/` | [`memory`], `sqlite`, `postgres` | [`MemoryBackend`], `SqliteBackend`, `PostgresBackend` |
//! | engine | `src/engine/` | [`engine`], [`flow_control`] | [`Flow`], [`Step`], [`StepContext`], [`Engine`], [`flow_control::Limit`] |
//! | on top | `src/orderflow/`, `src/http/`, `src/testing.rs`, `src/conformance/` | `orderflow`, `http`, `testing`, `conformance` | `orderflow::Orderflow`, `http::api_router`, `testing::TestHarness`, `conformance_tests!` |
//!
//! A backend written outside this crate implements [`Store`] and [`Transport`] from
//! [`backend`] and runs the same conformance suite the bundled ones pass
//! (`examples/custom_adapter.rs` is one).
//!
//! ## Guarantees
//!
//! Every backend passes the same conformance suite: no lost events, effects exactly
//! once, optimistic isolation, durable retries with backoff, dead letters, leases
//! and timeouts, cron exactly once per fire, tenant isolation and fair dispatch,
//! FIFO groups, graceful shutdown, and typed errors for bad input.
#![forbid(unsafe_code)]
// Here rather than in Cargo.toml: benches and examples are crates too, and
// criterion's macros generate undocumented public items.
#![warn(missing_docs, missing_debug_implementations)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod adapters;
pub mod backend;
pub mod engine;
#[cfg(feature = "axum")]
pub mod http;
#[cfg(feature = "orderflow")]
pub mod orderflow;
#[cfg(feature = "otel")]
pub mod otel;
#[cfg(feature = "prometheus")]
pub mod prometheus;
mod vocab;
#[cfg(feature = "webhooks")]
pub mod webhooks;

#[cfg(feature = "test-util")]
pub mod conformance;
#[cfg(feature = "test-util")]
pub mod guides;
#[cfg(feature = "test-util")]
pub mod sim;
#[cfg(feature = "test-util")]
pub mod testing;

pub use adapters::memory;
#[cfg(feature = "nats")]
pub use adapters::nats;
#[cfg(feature = "postgres")]
pub use adapters::postgres;
pub use adapters::split;
#[cfg(feature = "sqlite")]
pub use adapters::sqlite;
pub use engine::flow_control;
pub use vocab::{api, cron, event, retry, time, trace_context, BoxError};

pub use api::{ApiRequest, ApiResponse, Method};
pub use backend::{
    Backend, DeadLetter, DeadLetterQuery, FailureKind, QueueDepth, Store, StoreError, Transport,
};
pub use cron::{CronError, CronTick, MissedFires, Schedule};
pub use engine::{
    ApiStepBuilder, EmitError, Engine, EngineBuilder, EngineConfig, EngineError, ErrorClass,
    ExecutionOutcome, ExecutionRecord, FailureContext, Flow, FlowBuilder, FlowError, FlowWarning,
    HandlerPanicked, Late, LateEvent, LatencySummary, LeaseExhausted, MetricsSnapshot, MissingData,
    PerTenantCron, ResultExt, ShutdownReport, StateError, Step, StepBuilder, StepConfig,
    StepContext, StepError, StepFailure, StepMetrics, TimedOut, Trigger, WaitBuilder, WaitError,
    WaitFor, Wake, Watch, Watched, WindowBuilder, WindowError, WATCH_CAPACITY,
};
pub use event::{
    DecodeError, EmitOptions, Envelope, Event, EventId, Inbound, InvalidName, Payload, Priority,
    StepName, TenantId, Topic, TraceId, UnknownPriority, CANCEL_KEY_HEADER, VERSION_HEADER,
};
pub use memory::MemoryBackend;
#[cfg(feature = "nats")]
pub use nats::{NatsError, NatsOptions, NatsTransport};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresBackend, PostgresError, PostgresOptions};
pub use retry::{Backoff, RetryPolicy};
pub use split::{SplitBackend, SplitOptions};
#[cfg(feature = "sqlite")]
pub use sqlite::{Durability, SqliteBackend, SqliteError, SqliteOptions};
pub use time::{Clock, Timestamp};

/// The names most flows need: `use flowline::prelude::*;`.
pub mod prelude {
    pub use crate::cron::CronTick;
    #[cfg(feature = "sqlite")]
    pub use crate::SqliteBackend;
    pub use crate::{
        ApiRequest, ApiResponse, EmitOptions, Engine, Event, Flow, MemoryBackend, Method,
        MissedFires, Priority, ResultExt, RetryPolicy, Step, StepContext, StepError, TenantId,
    };
}
