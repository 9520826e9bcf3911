//! The shapes measured by both `examples/throughput.rs` and
//! `benches/throughput.rs`: the event types, the one-hop and three-step chain flows,
//! the one-by-one emitter, and the raw tokio mpsc pipelines of the same shapes (the
//! physical baseline).
//!
//! Included from both with `#[path = "..."] mod shapes;`. It is not an example of its
//! own: cargo only discovers `examples/*.rs` and `examples/*/main.rs`.
//!
//! - one-hop: emit -> a no-op handler.
//! - chain: emit -> A emits B emits C, no-op work (three executions per chain).
//! - raw mpsc: one task per step joined by unbounded channels, the producer a task
//!   on the runtime like the engine's emitter.

use std::time::{Duration, Instant};

use flowline::prelude::*;
use flowline::{EngineError, FlowError};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
pub(crate) struct Ping {
    pub(crate) n: u64,
}
impl Event for Ping {
    const TOPIC: &'static str = "ping";
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
pub(crate) struct Hop1 {
    pub(crate) n: u64,
}
impl Event for Hop1 {
    const TOPIC: &'static str = "hop1";
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
pub(crate) struct Hop2 {
    pub(crate) n: u64,
}
impl Event for Hop2 {
    const TOPIC: &'static str = "hop2";
}

/// One hop: external `Ping` -> step `sink`, a no-op handler.
pub(crate) fn one_hop_flow() -> Result<Flow, FlowError> {
    Flow::builder()
        .external::<Ping>()
        .step(
            Step::event::<Ping>("sink")
                .handle(|_ctx: StepContext, _e: Ping| async { Ok::<_, StepError>(()) }),
        )
        .build()
}

/// Three steps: external `Ping` -> `a` emits `Hop1` -> `b` emits `Hop2` -> `c`,
/// a no-op handler.
pub(crate) fn chain_flow() -> Result<Flow, FlowError> {
    Flow::builder()
        .external::<Ping>()
        .step(Step::event::<Ping>("a").emits::<Hop1>().handle(
            |ctx: StepContext, e: Ping| async move {
                ctx.emit(&Hop1 { n: e.n })?;
                Ok::<_, StepError>(())
            },
        ))
        .step(Step::event::<Hop1>("b").emits::<Hop2>().handle(
            |ctx: StepContext, e: Hop1| async move {
                ctx.emit(&Hop2 { n: e.n })?;
                Ok::<_, StepError>(())
            },
        ))
        .step(
            Step::event::<Hop2>("c")
                .handle(|_ctx: StepContext, _e: Hop2| async { Ok::<_, StepError>(()) }),
        )
        .build()
}

/// Emits pings `0..events` with `Engine::emit`, one at a time.
pub(crate) async fn emit_one_by_one(
    engine: &Engine,
    tenant: &TenantId,
    events: u64,
) -> Result<(), EngineError> {
    for n in 0..events {
        engine.emit(tenant, &Ping { n }).await?;
    }
    Ok(())
}

/// Raw mpsc, one hop: returns the wall time from the first send until the sink has
/// received `events` values.
pub(crate) async fn mpsc_one_hop(events: u64) -> Duration {
    let started = Instant::now();
    let (tx, rx) = mpsc::unbounded_channel::<Ping>();
    let sink = spawn_sink(rx, events);
    spawn_producer(tx, events);
    sink.await.expect("sink");
    started.elapsed()
}

/// Raw mpsc, three steps: returns the wall time from the first send until the last
/// task has received `events` values.
pub(crate) async fn mpsc_chain(events: u64) -> Duration {
    let started = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel::<Ping>();
    let (tx1, mut rx1) = mpsc::unbounded_channel::<Hop1>();
    let (tx2, rx2) = mpsc::unbounded_channel::<Hop2>();
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            let _ = tx1.send(Hop1 { n: e.n });
        }
    });
    tokio::spawn(async move {
        while let Some(e) = rx1.recv().await {
            let _ = tx2.send(Hop2 { n: e.n });
        }
    });
    let sink = spawn_sink(rx2, events);
    spawn_producer(tx, events);
    sink.await.expect("sink");
    started.elapsed()
}

/// The last task of a raw pipeline: receives `events` values, then stops.
fn spawn_sink<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
    events: u64,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen = 0u64;
        while let Some(e) = rx.recv().await {
            std::hint::black_box(e);
            seen += 1;
            if seen == events {
                break;
            }
        }
    })
}

/// The producer of a raw pipeline: sends pings `0..events` from a task on the runtime.
fn spawn_producer(tx: mpsc::UnboundedSender<Ping>, events: u64) {
    tokio::spawn(async move {
        for n in 0..events {
            tx.send(Ping { n }).expect("send");
        }
    });
}
