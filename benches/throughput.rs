//! Event throughput on the memory backend, beside raw tokio mpsc pipelines of the
//! same shapes (the physical baseline), in one criterion group; and durable
//! executions on the SQLite backend in a second.
//!
//! ```text
//! cargo bench --bench throughput
//! cargo bench --bench throughput -- sqlite    # only the SQLite group
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
//!
//! Group `sqlite`, on a new database file per benchmark (under
//! `std::env::temp_dir()`, removed afterwards), with `Durability::Normal` and
//! `Durability::Full`:
//!
//! - `sqlite/normal/exec`, `sqlite/full/exec`: emit -> step `exec`, which writes one
//!   new state key and emits one event (delayed by a day to the `parked` step, so
//!   it stays a pending row); elements are `exec` executions.
//! - `sqlite/normal/chain`, `sqlite/full/chain`: the chain above; elements are chains.
//!
//! Every iteration emits `SQLITE_EVENTS` inputs with `Engine::emit_batch`, 1000 at
//! a time (one by one, each emit would wait for a commit of its own), and waits
//! until the engine is idle. Flat sampling, ten samples, 1 s warm-up, 3 s
//! measurement: about 20 s for the group.
//!
//! Group `postgres` (build with `--features postgres`; needs a server,
//! `FLOWLINE_POSTGRES_URL` or `postgres://postgres@127.0.0.1:5432/test`, and is
//! skipped with a message without one): `postgres/exec` and `postgres/chain`,
//! the same shapes and rounds as the SQLite group, each on a new schema
//! (`flowline_bench_<pid>_<name>`) dropped afterwards.
//!
//! ```text
//! cargo bench --features postgres --bench throughput -- postgres
//! ```

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flowline::prelude::*;
use tokio::runtime::Runtime;

#[path = "../examples/support/shapes.rs"]
mod shapes;

/// Inputs per iteration: large enough to reach a steady state, small enough that
/// criterion's ten samples fit the measurement time.
const EVENTS: u64 = 20_000;

/// Inputs per SQLite iteration (about 0.2 s at the rates measured here).
const SQLITE_EVENTS: u64 = 10_000;

/// `Engine::emit_batch` size on SQLite.
const SQLITE_EMIT_BATCH: usize = 1000;

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

/// Emits `SQLITE_EVENTS` pings numbered from `first` in batches from a task on
/// the runtime, and waits until the engine is idle.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn durable_round(engine: &Engine, tenant: &TenantId, first: u64) -> Duration {
    let started = Instant::now();
    let (e, t) = (engine.clone(), tenant.clone());
    tokio::spawn(async move {
        shapes::emit_range(
            &e,
            &t,
            first..first + SQLITE_EVENTS,
            SQLITE_EMIT_BATCH,
            |n| shapes::Ping { n },
        )
        .await
        .expect("emit");
    })
    .await
    .expect("emitter");
    engine.wait_idle().await;
    started.elapsed()
}

#[cfg(feature = "sqlite")]
fn sqlite(c: &mut Criterion) {
    use flowline::{Durability, SqliteBackend, SqliteOptions};

    let rt = runtime();
    let mut group = durable_group(c, "sqlite");

    for (label, durability) in [("normal", Durability::Normal), ("full", Durability::Full)] {
        for name in ["exec", "chain"] {
            let flow = durable_shape(name);
            let file = shapes::DbFile::new(shapes::DbFile::temp_path("bench"), false)
                .expect("a new database file");
            let backend = SqliteBackend::open_with(
                &file.path,
                SqliteOptions::default().durability(durability),
            )
            .expect("database opens");
            let engine = rt
                .block_on(Engine::builder(flow).backend(backend).start())
                .expect("engine starts");
            // Every round emits new numbers, so `exec` writes new keys every time.
            bench_rounds(&mut group, &rt, &format!("{label}/{name}"), &engine);
            rt.block_on(engine.shutdown(Duration::from_secs(5)));
            drop(engine);
            drop(file);
        }
    }
    group.finish();
}

/// A group of the durable backends: flat sampling, ten samples, 1 s warm-up,
/// 3 s measurement, elements counted per round.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn durable_group<'c>(
    c: &'c mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'c, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sampling_mode(criterion::SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(SQLITE_EVENTS));
    group
}

/// The flow of a durable shape: `exec` or `chain`.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn durable_shape(name: &str) -> Flow {
    match name {
        "exec" => shapes::exec().build(),
        _ => shapes::chain_flow(),
    }
    .expect("valid flow")
}

/// Rounds of `durable_round` on `engine`, each emitting new numbers.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn bench_rounds(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &Runtime,
    name: &str,
    engine: &Engine,
) {
    let tenant = TenantId::new("bench").expect("valid tenant");
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    group.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let (engine, tenant, next) = (engine.clone(), tenant.clone(), next.clone());
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let first = next.fetch_add(SQLITE_EVENTS, std::sync::atomic::Ordering::Relaxed);
                    total += durable_round(&engine, &tenant, first).await;
                }
                total
            }
        });
    });
}

#[cfg(feature = "postgres")]
fn postgres(c: &mut Criterion) {
    use flowline::{PostgresBackend, PostgresOptions};
    use sqlx::Connection;

    let url = std::env::var("FLOWLINE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let rt = runtime();
    let mut group = durable_group(c, "postgres");
    for name in ["exec", "chain"] {
        let flow = durable_shape(name);
        let schema = format!("flowline_bench_{}_{name}", std::process::id());
        let options = PostgresOptions::new(url.clone()).schema(schema.clone());
        let backend = match rt.block_on(PostgresBackend::connect_with(options)) {
            Ok(backend) => backend,
            Err(err) => {
                eprintln!("postgres group skipped: {err}");
                return;
            }
        };
        let engine = rt
            .block_on(Engine::builder(flow).backend(backend).start())
            .expect("engine starts");
        bench_rounds(&mut group, &rt, name, &engine);
        rt.block_on(engine.shutdown(Duration::from_secs(5)));
        drop(engine);
        rt.block_on(async {
            let mut conn = sqlx::PgConnection::connect(&url).await?;
            sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&mut conn)
                .await
                .map(drop)
        })
        .expect("dropping the bench schema");
    }
    group.finish();
}

#[cfg(all(feature = "sqlite", feature = "postgres"))]
criterion_group!(benches, throughput, sqlite, postgres);
#[cfg(all(feature = "sqlite", not(feature = "postgres")))]
criterion_group!(benches, throughput, sqlite);
#[cfg(all(not(feature = "sqlite"), feature = "postgres"))]
criterion_group!(benches, throughput, postgres);
#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
criterion_group!(benches, throughput);
criterion_main!(benches);
