//! Event throughput on the memory backend, beside raw tokio mpsc pipelines of the
//! same shapes (the physical baseline), in one criterion group.
//!
//! ```text
//! cargo bench --bench throughput
//! ```
//!
//! - `flowline/one-hop`: emit -> a no-op handler.
//! - `flowline/chain`: emit -> A emits B emits C, no-op work; one element is one
//!   whole chain (three executions).
//! - `tokio-mpsc/one-hop`, `tokio-mpsc/chain`: one task per step, joined by
//!   unbounded channels.
//!
//! Every iteration pushes `EVENTS` inputs from a task on the runtime (the engine's
//! `emit`, one event at a time, or `send`) and waits until the last step has
//! handled them all. Elements/s are events/s (one-hop) and chains/s (chain).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flowline::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// Inputs per iteration: large enough to reach a steady state, small enough that
/// criterion's ten samples fit the measurement time.
const EVENTS: u64 = 20_000;

#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
struct Ping {
    n: u64,
}
impl Event for Ping {
    const TOPIC: &'static str = "ping";
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
struct Hop1 {
    n: u64,
}
impl Event for Hop1 {
    const TOPIC: &'static str = "hop1";
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
struct Hop2 {
    n: u64,
}
impl Event for Hop2 {
    const TOPIC: &'static str = "hop2";
}

fn one_hop_flow() -> Flow {
    Flow::builder()
        .external::<Ping>()
        .step(
            Step::event::<Ping>("sink")
                .handle(|_ctx: StepContext, _e: Ping| async { Ok::<_, StepError>(()) }),
        )
        .build()
        .expect("valid flow")
}

fn chain_flow() -> Flow {
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
        .expect("valid flow")
}

/// Emits `EVENTS` pings from a task on the runtime and waits until the engine is idle.
async fn engine_round(engine: &Engine, tenant: &TenantId) -> Duration {
    let started = Instant::now();
    let (e, t) = (engine.clone(), tenant.clone());
    tokio::spawn(async move {
        for n in 0..EVENTS {
            e.emit(&t, &Ping { n }).await.expect("emit");
        }
    })
    .await
    .expect("emitter");
    engine.wait_idle().await;
    started.elapsed()
}

async fn mpsc_one_hop() -> Duration {
    let started = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel::<Ping>();
    let sink = tokio::spawn(async move {
        let mut seen = 0;
        while let Some(e) = rx.recv().await {
            std::hint::black_box(e);
            seen += 1;
            if seen == EVENTS {
                break;
            }
        }
    });
    tokio::spawn(async move {
        for n in 0..EVENTS {
            tx.send(Ping { n }).expect("send");
        }
    });
    sink.await.expect("sink");
    started.elapsed()
}

async fn mpsc_chain() -> Duration {
    let started = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel::<Ping>();
    let (tx1, mut rx1) = mpsc::unbounded_channel::<Hop1>();
    let (tx2, mut rx2) = mpsc::unbounded_channel::<Hop2>();
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
    let sink = tokio::spawn(async move {
        let mut seen = 0;
        while let Some(e) = rx2.recv().await {
            std::hint::black_box(e);
            seen += 1;
            if seen == EVENTS {
                break;
            }
        }
    });
    tokio::spawn(async move {
        for n in 0..EVENTS {
            tx.send(Ping { n }).expect("send");
        }
    });
    sink.await.expect("sink");
    started.elapsed()
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn throughput(c: &mut Criterion) {
    let rt = runtime();
    let tenant = TenantId::new("bench").expect("valid tenant");
    let mut group = c.benchmark_group("throughput");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(EVENTS));

    for (name, flow) in [("one-hop", one_hop_flow()), ("chain", chain_flow())] {
        let engine = rt
            .block_on(Engine::builder(flow).backend(MemoryBackend::new()).start())
            .expect("engine starts");
        group.bench_function(format!("flowline/{name}"), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (engine, tenant) = (engine.clone(), tenant.clone());
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += engine_round(&engine, &tenant).await;
                    }
                    total
                }
            });
        });
        rt.block_on(engine.shutdown(Duration::from_secs(5)));
    }

    group.bench_function("tokio-mpsc/one-hop", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += mpsc_one_hop().await;
            }
            total
        });
    });
    group.bench_function("tokio-mpsc/chain", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += mpsc_chain().await;
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
