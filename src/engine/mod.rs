//! Layer 4, the engine: steps and flows, the builder, the dispatcher and batch
//! runner, the cron scheduler and the step context. It runs on any
//! [`Backend`](crate::backend::Backend) and depends on the contract, never the other
//! way.
//!
//! | file | what it holds |
//! |---|---|
//! | `app_data.rs` | the dependencies the host gives the handlers ([`StepContext::data`]) |
//! | `step.rs`, `step_error.rs` | step definitions and their configuration; the error a handler returns, and how `?` classes the engine's own errors |
//! | `flow.rs` | registering steps, validating the graph, exporting it |
//! | `context.rs`, `txn.rs` | what a handler sees ([`StepContext`]) and the transaction it buffers |
//! | `config.rs`, `builder.rs`, `error.rs` | engine settings, starting an engine, its errors |
//! | `handle.rs`, `api_call.rs`, `dead_letters.rs`, `emit_once.rs`, `deploys.rs`, `idle.rs` | the running [`Engine`] and its host-facing calls; its dead-letter operations; emits with a de-duplication key; orphaned deliveries after a deploy |
//! | `shared.rs` | what every task of one engine shares |
//! | `failure/` | failure hooks: what a step emits, in the dead letter's commit, when a delivery is given up on |
//! | `flow_control/` | rate limits and concurrency keys on steps, budgets kept in the store |
//! | `waits/`, `wait_error.rs` | durable waits: a step woken once by correlated events or a timeout |
//! | `windows/` | debounce and batching: a handler of every event of a window |
//! | `dispatch/` | claiming due deliveries fairly, running batches, turning outcomes into completions |
//! | `tenant_cron.rs` | per-tenant cron: a schedule fired once per registered tenant |
//! | `scheduler.rs` | cron steps: one task per schedule, exactly one fire per instant |
//! | `trace_link.rs` | how execution spans join a distributed trace (the seam an exporter fills) |
//! | `metrics/` | counters and latency histograms, per step and per tenant |
//! | `journal.rs` | the recent executions, for an operator's view |

mod api_call;
mod app_data;
mod builder;
mod config;
mod context;
mod counters;
mod dead_letters;
mod deadline;
mod deploys;
mod dispatch;
mod emit_once;
mod error;
pub mod failure;
mod flow;
pub mod flow_control;
mod flow_error;
mod handle;
mod idle;
mod journal;
mod metrics;
mod scheduler;
mod shared;
mod step;
mod step_error;
mod system_state;
pub mod tenant_cron;
pub mod trace_link;
mod txn;
mod wait_error;
pub mod waits;
mod watch;
pub mod windows;

pub use app_data::MissingData;
pub use builder::EngineBuilder;
pub use config::EngineConfig;
pub use context::{EmitError, StateError, StepContext, MAX_KEY_LEN};
pub use dispatch::{LeaseExhausted, TimedOut};
pub use error::EngineError;
pub use failure::{FailureContext, StepFailure};
pub use flow::{Flow, FlowBuilder, FlowError, FlowWarning};
pub use handle::{Engine, ShutdownReport};
pub use journal::{ExecutionOutcome, ExecutionRecord};
pub use metrics::{
    LatencyHistogram, LatencySummary, MetricsSnapshot, StepMetrics, TenantMetrics, LATENCY_BUCKETS,
};
pub use step::{ApiStepBuilder, Step, StepBuilder, StepConfig, Trigger};
pub use step_error::{ErrorClass, HandlerPanicked, ResultExt, StepError};
pub use tenant_cron::PerTenantCron;
pub use wait_error::WaitError;
pub use waits::{Late, LateEvent, WaitBuilder, WaitFor, Wake};
pub use watch::{Watch, Watched, WATCH_CAPACITY};
pub use windows::{WindowBuilder, WindowError};
