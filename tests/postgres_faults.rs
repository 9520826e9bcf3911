//! A lost connection mid-run on the PostgreSQL backend (issue 12): typed
//! errors, reconnects, and nothing acknowledged lost or doubled.
//!
//! * `connections_killed_mid_run_lose_and_double_nothing`: an engine works
//!   through a few thousand events on a fresh schema while an admin connection
//!   terminates every server connection of the test's backend (found by a
//!   unique `application_name`) again and again. Meanwhile two tasks keep
//!   calling `Engine::emit` and `Store::get`: each call must answer `Ok` or
//!   `Err`, never panic. Then every event seeded, and every event whose emit
//!   answered `Ok`, must be recorded exactly once; an event whose emit answered
//!   `Err` at most once; no duplicates, no dead letters, an empty queue.
//! * `a_server_outage_of_seconds_loses_and_doubles_nothing`: the backend
//!   reaches the server through a loopback proxy, which the test cuts for
//!   three seconds while the engine works (every connection closed, new ones
//!   refused), then restores. Emits meanwhile answer `Err` within the
//!   acquire timeout; the engine backs off its claims and picks up again once
//!   the server is back; the same exactly-once checks as above.
//! * `connecting_where_nothing_listens_is_a_typed_error`: a port with nothing
//!   behind it answers `PostgresError::Connect` promptly.
//!
//! Needs a server: `postgres://postgres@127.0.0.1:5432/test` unless
//! `FLOWLINE_POSTGRES_URL` says otherwise. Schemas are named like the
//! conformance suite's (`flowline_test_<seconds>_<hex>`), dropped on success
//! and kept (and named) on failure. Run with
//! `cargo test --features postgres --test postgres_faults`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowline::prelude::*;
use flowline::{
    DeadLetterQuery, EngineConfig, PostgresBackend, PostgresError, PostgresOptions, Store,
    Timestamp, Transport,
};
use pg::url;
use proxy::Proxy;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnectOptions;

#[path = "support/postgres.rs"]
mod pg;
#[path = "support/proxy.rs"]
mod proxy;

const TENANT: &str = "faults";
/// Events seeded before the kills start.
const EVENTS: u64 = 3_000;
/// Events emitted during the kills are numbered from here.
const LIVE_BASE: u64 = 1_000_000;
const KILLS: u32 = 10;
const PARTITIONS: u64 = 64;
/// How long a claim whose completion was lost stays claimed.
const LEASE: Duration = Duration::from_secs(2);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the server is away in the outage test.
const OUTAGE: Duration = Duration::from_secs(3);

#[derive(Serialize, Deserialize)]
struct Work {
    n: u64,
}
impl Event for Work {
    const TOPIC: &'static str = "work";
}

/// `url()` with `application_name` set, so that the killer finds exactly this
/// test's connections.
fn url_named(app: &str) -> String {
    let url = url();
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={app}")
}

fn fresh_schema() -> String {
    pg::fresh_schema("flowline_test_")
}

async fn admin_pool() -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url())
        .await
        .expect("an admin connection to PostgreSQL (set FLOWLINE_POSTGRES_URL)")
}

async fn drop_schema(admin: &sqlx::PgPool, schema: &str) {
    // The name was made here from digits, hex and `_`: it needs no quoting.
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(admin)
        .await
        .expect("dropping the test schema");
}

/// Terminates every server connection named `app`; answers how many.
async fn terminate(admin: &sqlx::PgPool, app: &str) -> Result<usize, sqlx::Error> {
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE pid <> pg_backend_pid() AND application_name = $1",
    )
    .bind(app)
    .fetch_all(admin)
    .await?;
    Ok(killed.into_iter().filter(|k| *k).count())
}

fn flow() -> Flow {
    let count = Step::event::<Work>("count")
        .retry(
            RetryPolicy::exponential(Duration::from_millis(10), Duration::from_millis(500))
                .max_attempts(100),
        )
        .lease(LEASE)
        .handle(|ctx: StepContext, work: Work| async move {
            let n = work.n;
            if ctx.get::<bool>(&format!("ledger/{n}")).await?.is_some() {
                ctx.put(&format!("dup/{n}"), &true)?;
            } else {
                ctx.put(&format!("ledger/{n}"), &true)?;
            }
            let counter = format!("ledger-count/{}", n % PARTITIONS);
            let count: u64 = ctx.get(&counter).await?.unwrap_or(0);
            ctx.put(&counter, &(count + 1))?;
            Ok(())
        });
    Flow::builder()
        .external::<Work>()
        .steps([count])
        .build()
        .expect("a valid flow")
}

fn engine_config() -> EngineConfig {
    EngineConfig {
        batch_size: 64,
        max_in_flight: 256,
        poll_interval: Duration::from_millis(50),
        ..EngineConfig::default()
    }
}

async fn keys(backend: &PostgresBackend, prefix: &str) -> Result<Vec<String>, String> {
    let tenant = TenantId::new(TENANT).unwrap();
    backend
        .scan(&tenant, prefix, usize::MAX)
        .await
        .map(|rows| rows.into_iter().map(|(key, _)| key).collect())
        .map_err(|e| e.to_string())
}

async fn counted(backend: &PostgresBackend) -> Result<u64, String> {
    let tenant = TenantId::new(TENANT).unwrap();
    let mut sum = 0;
    for (_, v) in backend
        .scan(&tenant, "ledger-count/", usize::MAX)
        .await
        .map_err(|e| e.to_string())?
    {
        sum += serde_json::from_slice::<u64>(&v.value).map_err(|e| e.to_string())?;
    }
    Ok(sum)
}

async fn dead_letters(backend: &PostgresBackend) -> Result<Vec<String>, String> {
    let dead = backend
        .dead_letters(&DeadLetterQuery::new().limit(5))
        .await
        .map_err(|e| e.to_string())?;
    Ok(dead
        .iter()
        .map(|d| format!("{} after {} attempts: {}", d.step, d.attempts, d.last_error))
        .collect())
}

/// What the emitter and the reader saw while the connections were killed.
#[derive(Default)]
struct Calls {
    emitted_ok: Vec<u64>,
    emitted_err: Vec<u64>,
    gets_ok: u64,
    gets_err: u64,
}

/// Waits until at least `must` events are counted and the queue is empty;
/// fails on any dead letter. Answers how long it took.
async fn drain(backend: &PostgresBackend, schema: &str, must: u64) -> Duration {
    let from = Instant::now();
    loop {
        if let Ok(dead) = dead_letters(backend).await {
            assert!(
                dead.is_empty(),
                "deliveries were dead-lettered (schema {schema} kept): {dead:?}"
            );
        }
        let done = match counted(backend).await {
            Ok(n) if n >= must => backend
                .depth(Timestamp::system_now())
                .await
                .is_ok_and(|d| d.pending() == 0),
            _ => false,
        };
        if done {
            return from.elapsed();
        }
        if from.elapsed() > DRAIN_TIMEOUT {
            panic!(
                "not every event was recorded within {} s after the faults \
                 (schema {schema} kept): {:?} of {must} counted, queue {:?}",
                DRAIN_TIMEOUT.as_secs(),
                counted(backend).await,
                backend.depth(Timestamp::system_now()).await.ok()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks, from a fresh backend on `schema`, that every event of `must` was
/// recorded exactly once, events of `may` at most once, nothing else, and the
/// queue is empty. Answers the events recorded.
async fn verify_exactly_once(
    schema: &str,
    must: &BTreeSet<u64>,
    may: &BTreeSet<u64>,
    faults: &str,
) -> BTreeSet<u64> {
    let check = PostgresBackend::connect_with(PostgresOptions::new(url()).schema(schema))
        .await
        .expect("reopening the schema");
    let ledger: BTreeSet<u64> = keys(&check, "ledger/")
        .await
        .unwrap()
        .iter()
        .map(|k| k.strip_prefix("ledger/").unwrap().parse().unwrap())
        .collect();
    let dups = keys(&check, "dup/").await.unwrap();
    let total = counted(&check).await.unwrap();
    let depth = check.depth(Timestamp::system_now()).await.unwrap();
    let missing: Vec<&u64> = must.difference(&ledger).take(10).collect();
    let unexpected: Vec<&u64> = ledger
        .iter()
        .filter(|n| !must.contains(n) && !may.contains(n))
        .take(10)
        .collect();
    let mut failures = Vec::new();
    if !missing.is_empty() {
        failures.push(format!(
            "acknowledged events not recorded, e.g. {missing:?}"
        ));
    }
    if !unexpected.is_empty() {
        failures.push(format!(
            "events recorded that were never emitted: {unexpected:?}"
        ));
    }
    if !dups.is_empty() {
        let some: Vec<&String> = dups.iter().take(10).collect();
        failures.push(format!("{} duplicate effects, e.g. {some:?}", dups.len()));
    }
    if total != ledger.len() as u64 {
        failures.push(format!(
            "the counters add up to {total} for {} ledger entries",
            ledger.len()
        ));
    }
    if depth.pending() != 0 || depth.dead != 0 {
        failures.push(format!("the queue is not empty: {depth:?}"));
    }
    assert!(
        failures.is_empty(),
        "exactly once broke under {faults} (schema {schema} kept):\n{}",
        failures.join("\n")
    );
    ledger
}

/// Emits a numbered event every 5 ms until `stop`, recording which emits
/// answered `Ok` and which `Err`.
fn spawn_emitter(
    engine: &Engine,
    tenant: &TenantId,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Calls> {
    let (engine, tenant, stop) = (engine.clone(), tenant.clone(), stop.clone());
    tokio::spawn(async move {
        let mut calls = Calls::default();
        let mut n = LIVE_BASE;
        while !stop.load(Ordering::Acquire) {
            match engine.emit(&tenant, &Work { n }).await {
                Ok(_) => calls.emitted_ok.push(n),
                Err(_) => calls.emitted_err.push(n),
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        calls
    })
}

/// An engine on `backend` with the `EVENTS` seeded events emitted.
async fn start_seeded(backend: &PostgresBackend) -> (Engine, TenantId) {
    let engine = Engine::builder(flow())
        .backend(backend.clone())
        .config(engine_config())
        .start()
        .await
        .expect("an engine");
    let tenant = TenantId::new(TENANT).unwrap();
    let seeded: Vec<Work> = (0..EVENTS).map(|n| Work { n }).collect();
    for chunk in seeded.chunks(500) {
        engine
            .emit_batch(&tenant, chunk)
            .await
            .expect("seeding before the faults");
    }
    (engine, tenant)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_mid_run_lose_and_double_nothing() {
    let schema = fresh_schema();
    let app = format!("flowline_faults_{:016x}", rand::random::<u64>());
    let admin = admin_pool().await;
    let backend = PostgresBackend::connect_with(
        PostgresOptions::new(url_named(&app))
            .schema(schema.clone())
            .pool_size(4),
    )
    .await
    .expect("a PostgreSQL server (set FLOWLINE_POSTGRES_URL)");
    let (engine, tenant) = start_seeded(&backend).await;
    let started = Instant::now();

    // While the connections are killed: emits and reads that must answer,
    // never panic.
    let stop = Arc::new(AtomicBool::new(false));
    let emitter = spawn_emitter(&engine, &tenant, &stop);
    let reader = {
        let (backend, tenant, stop) = (backend.clone(), tenant.clone(), stop.clone());
        tokio::spawn(async move {
            let mut calls = Calls::default();
            while !stop.load(Ordering::Acquire) {
                match backend.get(&tenant, "ledger-count/0").await {
                    Ok(_) => calls.gets_ok += 1,
                    Err(_) => calls.gets_err += 1,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            calls
        })
    };

    let mut terminated = 0;
    let mut counted_before_last_kill = 0;
    for _ in 0..KILLS {
        let wait = rand::rng().random_range(100..300);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        terminated += terminate(&admin, &app)
            .await
            .expect("terminating the backend's connections");
        counted_before_last_kill = counted(&backend).await.unwrap_or(counted_before_last_kill);
    }
    let killing = started.elapsed();
    stop.store(true, Ordering::Release);
    let emitted = emitter
        .await
        .expect("Engine::emit panicked during the kills");
    let read = reader.await.expect("Store::get panicked during the kills");
    assert!(
        terminated >= KILLS as usize,
        "only {terminated} connections named {app} were terminated in {KILLS} rounds: \
         the kills did not reach the backend's connections"
    );

    // Drain: every event seeded or acknowledged, recorded; the queue empty.
    let must: BTreeSet<u64> = (0..EVENTS)
        .chain(emitted.emitted_ok.iter().copied())
        .collect();
    let may: BTreeSet<u64> = emitted.emitted_err.iter().copied().collect();
    let drained = drain(&backend, &schema, must.len() as u64).await;
    let metrics = engine.metrics().await.expect("the engine's metrics");
    engine.shutdown(Duration::from_secs(10)).await;
    let ledger = verify_exactly_once(&schema, &must, &may, "connection kills").await;
    let err_recorded = may.intersection(&ledger).count();
    println!(
        "postgres faults: {EVENTS} seeded + {} emitted Ok + {} emitted Err ({err_recorded} of \
         them recorded anyway) during {KILLS} kill rounds ({terminated} connections terminated) \
         in {:.1} s; {} gets Ok, {} Err; {counted_before_last_kill} counted before the last \
         kill; drained in {:.1} s; engine: {} processed, {} failed, {} retried, {} stale, \
         {} conflicts; every acknowledged event recorded exactly once",
        emitted.emitted_ok.len(),
        emitted.emitted_err.len(),
        killing.as_secs_f64(),
        read.gets_ok,
        read.gets_err,
        drained.as_secs_f64(),
        metrics.processed,
        metrics.failed,
        metrics.retried,
        metrics.stale,
        metrics.conflicts,
    );
    drop(backend);
    drop(engine);
    drop_schema(&admin, &schema).await;
    admin.close().await;
}

/// `url()` with its host and port replaced by the proxy's.
fn url_through(proxy: &Proxy) -> String {
    let direct = PgConnectOptions::from_str(&url()).expect("FLOWLINE_POSTGRES_URL is a URL");
    format!(
        "postgres://{}@127.0.0.1:{}/{}",
        direct.get_username(),
        proxy.port(),
        direct.get_database().unwrap_or("postgres")
    )
}

/// The server's address, for the proxy.
fn server_addr() -> SocketAddr {
    let direct = PgConnectOptions::from_str(&url()).expect("FLOWLINE_POSTGRES_URL is a URL");
    let host = match direct.get_host() {
        "localhost" => "127.0.0.1",
        host => host,
    };
    format!("{host}:{}", direct.get_port())
        .parse()
        .expect("the test server is given by IP address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_outage_of_seconds_loses_and_doubles_nothing() {
    let schema = fresh_schema();
    let admin = admin_pool().await;
    let proxy = Proxy::start(server_addr()).await;
    let backend = PostgresBackend::connect_with(
        PostgresOptions::new(url_through(&proxy))
            .schema(schema.clone())
            .pool_size(4)
            .acquire_timeout(Duration::from_secs(1)),
    )
    .await
    .expect("a PostgreSQL server through the proxy (set FLOWLINE_POSTGRES_URL)");
    let (engine, tenant) = start_seeded(&backend).await;
    let stop = Arc::new(AtomicBool::new(false));
    let emitter = spawn_emitter(&engine, &tenant, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counted_at_cut = counted(&backend).await.unwrap_or(0);
    proxy.cut();
    tokio::time::sleep(OUTAGE).await;
    proxy.restore();
    let restored = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Release);
    let emitted = emitter
        .await
        .expect("Engine::emit panicked during the outage");
    assert!(
        !emitted.emitted_err.is_empty(),
        "no emit failed: the outage did not reach the backend"
    );
    assert!(
        proxy.refused() > 0,
        "nothing tried to reconnect during the outage"
    );

    let must: BTreeSet<u64> = (0..EVENTS)
        .chain(emitted.emitted_ok.iter().copied())
        .collect();
    let may: BTreeSet<u64> = emitted.emitted_err.iter().copied().collect();
    drain(&backend, &schema, must.len() as u64).await;
    let recovered = restored.elapsed();
    let metrics = engine.metrics().await.expect("the engine's metrics");
    engine.shutdown(Duration::from_secs(10)).await;
    let ledger = verify_exactly_once(&schema, &must, &may, "an outage").await;
    println!(
        "postgres outage: {EVENTS} seeded, {counted_at_cut} counted when the server went away \
         for {:.1} s; {} emits Ok and {} Err around it ({} of those recorded anyway); {} \
         connection attempts refused while down; the queue empty {:.1} s after the server \
         returned; engine: {} processed, {} failed, {} stale; every acknowledged event \
         recorded exactly once",
        OUTAGE.as_secs_f64(),
        emitted.emitted_ok.len(),
        emitted.emitted_err.len(),
        may.intersection(&ledger).count(),
        proxy.refused(),
        recovered.as_secs_f64(),
        metrics.processed,
        metrics.failed,
        metrics.stale,
    );
    drop(backend);
    drop(engine);
    drop_schema(&admin, &schema).await;
    admin.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_where_nothing_listens_is_a_typed_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.local_addr().unwrap().port()
    };
    let options =
        PostgresOptions::new(format!("postgres://postgres@127.0.0.1:{port}/test")).schema("x");
    let answer = tokio::time::timeout(
        Duration::from_secs(30),
        PostgresBackend::connect_with(options),
    )
    .await
    .expect("connect_with hung for 30 s on a port where nothing listens");
    match answer {
        Err(PostgresError::Connect(_)) => {}
        Err(other) => panic!("expected PostgresError::Connect, got {other:?}"),
        Ok(_) => panic!("connected to port {port}, where nothing should listen"),
    }
}
