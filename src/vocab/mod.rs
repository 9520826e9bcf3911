//! Layer 1, the vocabulary: the values every other layer speaks in. Events and
//! their envelope, validated names (tenants, topics, steps), time, retry policies,
//! cron schedules and framework-neutral API requests. Nothing here knows of a
//! backend or of the engine.

pub mod api;
pub(crate) mod chance;
pub mod cron;
pub mod event;
mod headers;
mod inbound;
mod names;
mod payload;
mod priority;
pub mod retry;
mod tenant;
pub mod time;
pub mod trace_context;

/// A boxed error with its source chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
