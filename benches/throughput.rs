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
use tokio::runtime::Runtime;

#[path = "../examples/support/shapes.rs"]
mod shapes;

/// Inputs per iteration: large enough to reach a steady state, small enough that
/// criterion's ten samples fit the measurement time.
const EVENTS: u64 = 20_000;

/// Emits `EVENTS` pings from a task on the runtime and waits until the engine is idle.
async fn engine_round(engine: &Engine, tenant: &TenantId) -> Duration {
    let started = Instant::now();
    let (e, t) = (engine.clone(), tenant.clone());
    tokio::spawn(async move {
        shapes::emit_one_by_one(&e, &t, EVENTS).await.expect("emit");
    })
    .await
    .expect("emitter");
    engine.wait_idle().await;
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

    for (name, flow) in [
        ("one-hop", shapes::one_hop_flow()),
        ("chain", shapes::chain_flow()),
    ] {
        let flow = flow.expect("valid flow");
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
                total += shapes::mpsc_one_hop(EVENTS).await;
            }
            total
        });
    });
    group.bench_function("tokio-mpsc/chain", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += shapes::mpsc_chain(EVENTS).await;
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
