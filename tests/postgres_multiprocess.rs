//! Exactly once across processes on the PostgreSQL backend (issue 12): three
//! worker processes run the same flow on one schema while the test SIGKILLs one
//! of them at random moments and restarts it, again and again; at the end every
//! effect must have happened exactly once.
//!
//! This binary is its own worker: with `FLOWLINE_PG_CHILD=<schema>` set it runs
//! an engine on that schema instead of the test, until its stdin closes. The
//! flow (the one of `sqlite_crash.rs`):
//!
//! * an API step seeds the work in batches (`seeded/<batch>` and the batch's
//!   `Work` events commit together); every worker seeds on start, so seeds race
//!   each other and are killed half way;
//! * `count` takes each `Work { n }`, writes `ledger/<n>` (or `dup/<n>` if the
//!   ledger already had it), bumps a counter and emits `Tally { n }`;
//! * `tally` does the same for `Tally` under `tally/` and `tally-dup/`;
//! * a cron step fires every second in every worker (replaying missed instants
//!   after a restart) and writes `cron/<instant>` (or `cron-dup/<instant>`):
//!   each instant must fire once across all of them.
//!
//! The test creates a fresh schema (`flowline_kill_<random hex>`), starts the
//! workers, kills and restarts them, then lets them drain the queue and stops
//! them. A worker fires cron instants until it stops, so a tick can be left
//! queued: a last engine in the test process, with the same steps but no
//! schedule, runs what is left (anything but such a tick would show up as a
//! duplicate). Then it checks the schema from a fresh backend: every `n`
//! counted and tallied exactly once, every cron instant recorded at most once,
//! nothing left in the queue, no dead letters. It drops the schema when it
//! passes and keeps it (and names it) when it fails.
//!
//! With `FLOWLINE_PG_NATS=1`, built with `--features postgres,nats`, the same
//! runs on PostgreSQL beside NATS JetStream (a `SplitBackend`; the server on
//! 127.0.0.1:4222 unless `FLOWLINE_NATS_URL` says otherwise).
//!
//! Needs a server: `postgres://postgres@127.0.0.1:5432/test` unless
//! `FLOWLINE_POSTGRES_URL` says otherwise. `FLOWLINE_PG_KILLS` sets the number
//! of kills (30 by default), `FLOWLINE_PG_EVENTS` the number of events (4,000 by
//! default; whenever the workers finish them before the kills are done, as many
//! again are added and the kills come sooner). Run with
//! `cargo test --features postgres --test postgres_multiprocess`.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowline::prelude::*;
use flowline::{
    Backend, DeadLetterQuery, EngineConfig, PostgresBackend, PostgresOptions, QueueDepth, Store,
    Timestamp, Transport,
};
use pg::url;
use rand::Rng;
use serde::{Deserialize, Serialize};

#[path = "support/postgres.rs"]
mod pg;

const TENANT: &str = "kill";
const BATCH: u64 = 500;
/// Counters are split so that executions rarely contend for one key (three
/// processes commit batches at once: with few partitions nearly every pair of
/// batches conflicts, and the reruns dominate).
const PARTITIONS: u64 = 1024;
const WORKERS: usize = 3;
/// How long a killed worker's claims stay claimed.
const LEASE: Duration = Duration::from_secs(2);
/// How long the workers get to drain the queue after the last kill.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Serialize, Deserialize)]
struct Work {
    n: u64,
}
impl Event for Work {
    const TOPIC: &'static str = "work";
}

#[derive(Serialize, Deserialize)]
struct Tally {
    n: u64,
}
impl Event for Tally {
    const TOPIC: &'static str = "tally";
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn kills_wanted() -> u64 {
    env_number("FLOWLINE_PG_KILLS", 30)
}

/// With `FLOWLINE_PG_NATS=1` (and the `nats` feature) the engines run on
/// PostgreSQL beside NATS JetStream: a `SplitBackend` with a stream of the
/// schema's own (`FLTEST_KILL_<hex>`), so killed workers also die holding
/// broker messages and between a commit and its ack.
fn over_nats() -> bool {
    cfg!(feature = "nats") && std::env::var_os("FLOWLINE_PG_NATS").is_some_and(|v| v == "1")
}

/// The backend the engines run on: the schema, beside NATS when asked.
async fn engine_backend(schema: &str, pool: u32) -> Result<Arc<dyn Backend>, String> {
    let store = connect(schema, pool).await?;
    if !over_nats() {
        return Ok(Arc::new(store));
    }
    #[cfg(feature = "nats")]
    {
        let stream = format!(
            "FLTEST_KILL_{}",
            schema.trim_start_matches("flowline_kill_")
        );
        let url = std::env::var("FLOWLINE_NATS_URL")
            .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_string());
        let options = flowline::NatsOptions::new(url)
            .stream(stream.clone())
            .subject_prefix(stream)
            .ack_wait(Duration::from_secs(3));
        let nats = flowline::NatsTransport::connect_with(options)
            .await
            .map_err(|e| format!("connecting to NATS (set FLOWLINE_NATS_URL): {e}"))?;
        return Ok(Arc::new(flowline::SplitBackend::new(store, nats)));
    }
    #[allow(unreachable_code)]
    Err("FLOWLINE_PG_NATS=1 needs the nats feature".into())
}

/// Deletes the run's stream, when it ran beside NATS.
async fn delete_stream(schema: &str) -> Result<(), String> {
    #[cfg(feature = "nats")]
    if over_nats() {
        let stream = format!(
            "FLTEST_KILL_{}",
            schema.trim_start_matches("flowline_kill_")
        );
        let url = std::env::var("FLOWLINE_NATS_URL")
            .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_string());
        let options = flowline::NatsOptions::new(url)
            .stream(stream.clone())
            .subject_prefix(stream);
        let nats = flowline::NatsTransport::connect_with(options)
            .await
            .map_err(|e| e.to_string())?;
        nats.delete_stream().await.map_err(|e| e.to_string())?;
    }
    let _ = schema;
    Ok(())
}

async fn connect(schema: &str, pool: u32) -> Result<PostgresBackend, String> {
    PostgresBackend::connect_with(PostgresOptions::new(url()).schema(schema).pool_size(pool))
        .await
        .map_err(|e| format!("connecting to {} (set FLOWLINE_POSTGRES_URL): {e}", url()))
}

/// Records `n` under `prefix` once; a second visit is recorded as a duplicate.
async fn record_once(
    ctx: &StepContext,
    prefix: &str,
    dup_prefix: &str,
    n: u64,
) -> Result<(), StepError> {
    if ctx.get::<bool>(&format!("{prefix}/{n}")).await?.is_some() {
        ctx.put(&format!("{dup_prefix}/{n}"), &true)?;
    } else {
        ctx.put(&format!("{prefix}/{n}"), &true)?;
    }
    let counter = format!("{prefix}-count/{}", n % PARTITIONS);
    let count: u64 = ctx.get(&counter).await?.unwrap_or(0);
    ctx.put(&counter, &(count + 1))?;
    Ok(())
}

/// Every kill costs each delivery in flight in the killed worker an attempt, by
/// design: a delivery that kills its worker every time must still end up
/// dead-lettered. The steps here allow more attempts than there are kills, so
/// only a real failure dead-letters.
fn retry_policy() -> RetryPolicy {
    let kills = u32::try_from(kills_wanted()).unwrap_or(u32::MAX);
    RetryPolicy::exponential(Duration::from_millis(10), Duration::from_millis(500))
        .max_attempts(kills.saturating_add(10))
}

fn flow(finisher: bool) -> Flow {
    let seed = Step::api("seed", Method::Post, "/seed/{batch}")
        .emits::<Work>()
        .handle(|ctx: StepContext, req: ApiRequest| async move {
            let batch: u64 = req.param("batch").and_then(|b| b.parse().ok()).unwrap_or(0);
            let key = format!("seeded/{batch}");
            if ctx.get::<bool>(&key).await?.is_none() {
                ctx.put(&key, &true)?;
                for n in batch * BATCH..(batch + 1) * BATCH {
                    ctx.emit(&Work { n })?;
                }
            }
            Ok(ApiResponse::ok(&batch))
        });
    let count = Step::event::<Work>("count")
        .emits::<Tally>()
        .retry(retry_policy())
        .lease(LEASE)
        .handle(|ctx: StepContext, work: Work| async move {
            record_once(&ctx, "ledger", "dup", work.n).await?;
            ctx.emit(&Tally { n: work.n })?;
            Ok(())
        });
    let tally = Step::event::<Tally>("tally")
        .retry(retry_policy())
        .lease(LEASE)
        .handle(|ctx: StepContext, t: Tally| async move {
            record_once(&ctx, "tally", "tally-dup", t.n).await
        });
    // The finisher (see `finish`) runs the ticks the workers left without
    // firing any: the same step, as an event step on the ticks' topic.
    let tick = if finisher {
        Step::event::<CronTick>("tick")
    } else {
        Step::cron("tick", "* * * * * *").missed_fires(MissedFires::FireAll { max: 5 })
    };
    let cron = tick.retry(retry_policy()).lease(LEASE).handle(
        |ctx: StepContext, tick: CronTick| async move {
            let at = tick.fire_at.as_millis();
            if ctx.get::<bool>(&format!("cron/{at}")).await?.is_some() {
                ctx.put(&format!("cron-dup/{at}"), &true)?;
            } else {
                ctx.put(&format!("cron/{at}"), &true)?;
            }
            Ok(())
        },
    );
    Flow::builder()
        .external::<CronTick>()
        .steps([seed, count, tally, cron])
        .build()
        .expect("a valid flow")
}

/// Small batches and a bounded number in flight, so that what a worker claims
/// is done well within its lease on a debug build; a short poll, so that work
/// published by the other processes is picked up soon.
fn engine_config() -> EngineConfig {
    EngineConfig {
        batch_size: 64,
        max_in_flight: 256,
        poll_interval: Duration::from_millis(50),
        ..EngineConfig::default()
    }
}

async fn sum_counters(backend: &PostgresBackend, prefix: &str) -> Result<u64, String> {
    let tenant = TenantId::new(TENANT).unwrap();
    let mut sum = 0;
    for (_, v) in backend
        .scan(&tenant, &format!("{prefix}-count/"), usize::MAX)
        .await
        .map_err(|e| e.to_string())?
    {
        sum += serde_json::from_slice::<u64>(&v.value).map_err(|e| e.to_string())?;
    }
    Ok(sum)
}

/// A worker: seed what is not seeded, then work until stdin closes.
async fn worker(schema: String, events: u64) -> Result<(), Box<dyn std::error::Error>> {
    let backend = engine_backend(&schema, 4).await?;
    let engine = Engine::builder(flow(false))
        .backend_arc(backend)
        .config(engine_config())
        .start()
        .await?;
    let tenant = TenantId::new(TENANT)?;
    for batch in 0..events.div_ceil(BATCH) {
        let response = engine
            .call(ApiRequest::new(
                Method::Post,
                format!("/seed/{batch}"),
                tenant.clone(),
            ))
            .await;
        if !response.is_success() {
            return Err(format!("seed {batch} answered {}", response.status).into());
        }
    }
    // The parent times most kills from here, so that they land in the work.
    println!("ready");
    // The parent closes stdin to stop a worker (and so does its death).
    let (closed, on_close) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = closed.send(());
    });
    let _ = on_close.await;
    engine.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

/// A worker process and what the parent knows of it.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    ready: Arc<AtomicBool>,
}

impl Worker {
    fn spawn(schema: &str, events: u64) -> Result<Worker, String> {
        let mut child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
            .env("FLOWLINE_PG_CHILD", schema)
            .env("FLOWLINE_PG_EVENTS", events.to_string())
            .env("FLOWLINE_PG_KILLS", kills_wanted().to_string())
            .env("FLOWLINE_POSTGRES_URL", url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawning a worker: {e}"))?;
        let ready = Arc::new(AtomicBool::new(false));
        if let Some(stdout) = child.stdout.take() {
            let ready = ready.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    match line {
                        Ok(line) if line == "ready" => ready.store(true, Ordering::Release),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        Ok(Worker {
            child,
            stdin,
            ready,
        })
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn kill(&mut self) -> Result<(), String> {
        self.child.kill().map_err(|e| e.to_string())?; // SIGKILL on Unix
        self.child.wait().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Closes stdin and waits for a clean exit.
    fn stop(&mut self, deadline: Instant) -> Result<(), String> {
        self.stdin.take();
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("a worker failed while stopping: {status}"))
                };
            }
            if Instant::now() > deadline {
                return Err("a worker did not stop within 30 s of its stdin closing".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Only a failed test leaves workers running; a stopped one is reaped.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How far the work has come, read from the parent's own connection.
struct Progress {
    counted: u64,
    tallied: u64,
}

/// The counters, and a failure as soon as anything is dead-lettered. (The queue
/// depth is read only when the work looks done: it counts the whole queue,
/// which takes seconds on a loaded machine while thousands are queued.)
async fn progress(backend: &PostgresBackend) -> Result<Progress, String> {
    let dead = backend
        .dead_letters(&DeadLetterQuery::new().limit(5))
        .await
        .map_err(|e| e.to_string())?;
    if !dead.is_empty() {
        let errors: Vec<String> = dead
            .iter()
            .map(|d| format!("{} after {} attempts: {}", d.step, d.attempts, d.last_error))
            .collect();
        return Err(format!("deliveries were dead-lettered, e.g. {errors:?}"));
    }
    Ok(Progress {
        counted: sum_counters(backend, "ledger").await?,
        tallied: sum_counters(backend, "tally").await?,
    })
}

async fn depth(backend: &PostgresBackend) -> Result<QueueDepth, String> {
    backend
        .depth(Timestamp::system_now())
        .await
        .map_err(|e| e.to_string())
}

fn check_alive(workers: &mut [Worker], kills: u64) -> Result<(), String> {
    for (slot, worker) in workers.iter_mut().enumerate() {
        if let Some(status) = worker.child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!(
                "worker {slot} exited on its own ({status}) after {kills} kills"
            ));
        }
    }
    Ok(())
}

fn parent(runtime: &tokio::runtime::Runtime, schema: &str) -> Result<(), String> {
    let kills_wanted = kills_wanted();
    let mut events = env_number("FLOWLINE_PG_EVENTS", 4_000);
    let more = events.max(BATCH);
    // The longest wait before a kill, in ms; shortened whenever the workers
    // finish first, so that a fast build still gets killed mid-work.
    let mut longest_wait = 300;
    let started = Instant::now();
    // Creates the schema, and watches the work from outside the workers.
    let monitor = runtime.block_on(connect(schema, 2))?;
    let mut workers = (0..WORKERS)
        .map(|_| Worker::spawn(schema, events))
        .collect::<Result<Vec<_>, _>>()?;
    let mut rng = rand::rng();
    let mut kills = 0;
    let mut last_restarted = 0;
    let mut last_check = started;
    while kills < kills_wanted {
        check_alive(&mut workers, kills)?;
        // The queue and the counters are read twice a second at most, so
        // that reading them does not space the kills out.
        if last_check.elapsed() > Duration::from_millis(500) {
            let now = runtime.block_on(progress(&monitor))?;
            last_check = Instant::now();
            if now.tallied >= events {
                // Done before all the kills: seeding is per batch and idempotent,
                // so the next worker to start seeds more work for all of them.
                if events >= 20 * more {
                    return Err(format!(
                        "the workers kept finishing ({events} events) after {kills} kills"
                    ));
                }
                events += more;
                longest_wait = (longest_wait / 2).max(20);
            }
        }
        // Three kills in four land in a worker that is at work; the rest in
        // the worker started last, most likely while it starts (connecting,
        // migrating, seeding).
        let slot = if rng.random_ratio(3, 4) {
            let wait_from = Instant::now();
            loop {
                let ready: Vec<usize> = (0..WORKERS).filter(|&i| workers[i].is_ready()).collect();
                if !ready.is_empty() {
                    break ready[rng.random_range(0..ready.len())];
                }
                check_alive(&mut workers, kills)?;
                if wait_from.elapsed() > Duration::from_secs(60) {
                    return Err(format!(
                        "no worker got ready within 60 s after {kills} kills"
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        } else {
            last_restarted
        };
        std::thread::sleep(Duration::from_millis(rng.random_range(10..longest_wait)));
        if let Some(status) = workers[slot].child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!(
                "worker {slot} exited on its own ({status}) after {kills} kills"
            ));
        }
        workers[slot].kill()?;
        kills += 1;
        workers[slot] = Worker::spawn(schema, events)?;
        last_restarted = slot;
    }
    let killing = started.elapsed();
    // Let the workers finish: the killed workers' claims come back after
    // their lease, and the work ends when everything is tallied and the
    // queue is empty (cron ticks come and go within it).
    let drain_from = Instant::now();
    let mut last_report = drain_from;
    loop {
        check_alive(&mut workers, kills)?;
        let now = runtime.block_on(progress(&monitor))?;
        if now.tallied >= events && runtime.block_on(depth(&monitor))?.pending() == 0 {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "draining for {:.0} s: {} of {events} counted, {} tallied",
                drain_from.elapsed().as_secs_f64(),
                now.counted,
                now.tallied,
            );
            last_report = Instant::now();
        }
        if drain_from.elapsed() > DRAIN_TIMEOUT {
            return Err(format!(
                "the workers did not finish within {} s after the last kill: \
                 {} of {events} counted, {} tallied, queue {:?}",
                DRAIN_TIMEOUT.as_secs(),
                now.counted,
                now.tallied,
                runtime.block_on(depth(&monitor))?
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let stop_by = Instant::now() + Duration::from_secs(30);
    for worker in &mut workers {
        worker.stop(stop_by)?;
    }
    drop(monitor);
    let drained = drain_from.elapsed();
    let left = runtime.block_on(finish(schema))?;
    println!(
        "postgres multi-process test{}: {events} events, {kills} SIGKILLs of {WORKERS} workers \
         in {:.1} s, drained in {:.1} s, {left} deliveries left for the finisher, {:.1} s in all",
        if over_nats() { " (beside NATS)" } else { "" },
        killing.as_secs_f64(),
        drained.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    runtime.block_on(verify(schema, events, kills, started.elapsed()))
}

/// Runs what the workers left in the queue, with the flow's steps but no
/// schedule. A worker fires cron instants until it stops, so a tick published
/// in its last moments stays queued (durably, for the next engine); anything
/// else left would show up in the checks as a duplicate. Answers how many
/// deliveries it ran.
async fn finish(schema: &str) -> Result<u64, String> {
    let backend = engine_backend(schema, 2).await?;
    let engine = Engine::builder(flow(true))
        .backend_arc(backend.clone())
        .config(engine_config())
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        engine.wait_idle().await;
        let depth = backend
            .depth(Timestamp::system_now())
            .await
            .map_err(|e| e.to_string())?;
        if depth.pending() == 0 {
            break;
        }
        if Instant::now() > give_up {
            return Err(format!(
                "the finisher did not empty the queue within 60 s: {depth:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let processed = engine.metrics().await.map_err(|e| e.to_string())?.processed;
    engine.shutdown(Duration::from_secs(10)).await;
    Ok(processed)
}

async fn verify(schema: &str, events: u64, kills: u64, elapsed: Duration) -> Result<(), String> {
    let backend = connect(schema, 2).await?;
    let tenant = TenantId::new(TENANT).unwrap();
    let keys = |prefix: &'static str| {
        let backend = backend.clone();
        // Cron ticks run under the system tenant.
        let tenant = if prefix.starts_with("cron") {
            TenantId::system()
        } else {
            tenant.clone()
        };
        async move {
            backend
                .scan(&tenant, prefix, usize::MAX)
                .await
                .map(|rows| rows.into_iter().map(|(key, _)| key).collect::<Vec<_>>())
                .map_err(|e| e.to_string())
        }
    };
    let mut failures = Vec::new();
    let mut expect = |what: &str, found: u64, wanted: u64| {
        if found != wanted {
            failures.push(format!("{what}: {found}, expected {wanted}"));
        }
    };
    let mut shown = Vec::new();
    let mut count = |what: &'static str, rows: Vec<String>| {
        if !rows.is_empty() && what.contains("dup") {
            let some: Vec<&String> = rows.iter().take(10).collect();
            shown.push(format!("{what} keys: {some:?}"));
        }
        rows.len() as u64
    };
    expect("counted", sum_counters(&backend, "ledger").await?, events);
    expect(
        "ledger entries",
        count("ledger", keys("ledger/").await?),
        events,
    );
    expect("duplicate work", count("dup", keys("dup/").await?), 0);
    expect("tallied", sum_counters(&backend, "tally").await?, events);
    expect(
        "tally entries",
        count("tally", keys("tally/").await?),
        events,
    );
    expect(
        "duplicate tallies",
        count("tally-dup", keys("tally-dup/").await?),
        0,
    );
    expect(
        "duplicate cron fires",
        count("cron-dup", keys("cron-dup/").await?),
        0,
    );
    let depth = backend
        .depth(Timestamp::system_now())
        .await
        .map_err(|e| e.to_string())?;
    expect("deliveries left", depth.pending(), 0);
    expect("dead letters", depth.dead, 0);
    let fires = keys("cron/").await?.len() as u64;
    if fires == 0 {
        failures.push("the cron step never fired".into());
    }
    // One instant a second, however many workers fire it (plus the replays,
    // which are instants that were due anyway).
    if fires > elapsed.as_secs() + 2 {
        failures.push(format!(
            "{fires} cron instants recorded in {} s of a per-second schedule",
            elapsed.as_secs()
        ));
    }
    failures.extend(shown);
    if failures.is_empty() {
        println!(
            "verified: exactly once for {events} events and {fires} cron fires \
             across {kills} kills of {WORKERS} workers"
        );
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

async fn drop_schema(schema: &str) -> Result<(), String> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url())
        .await
        .map_err(|e| e.to_string())?;
    // The name was made here from hex digits: it needs no quoting.
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pool)
        .await
        .map_err(|e| e.to_string())?;
    pool.close().await;
    Ok(())
}

fn main() -> ExitCode {
    if let Ok(schema) = std::env::var("FLOWLINE_PG_CHILD") {
        let events = env_number("FLOWLINE_PG_EVENTS", 4_000);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        return match runtime.block_on(worker(schema, events)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("postgres worker: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let schema = format!("flowline_kill_{:016x}", rand::random::<u64>());
    match parent(&runtime, &schema) {
        Ok(()) => {
            if let Err(err) = runtime.block_on(delete_stream(&schema)) {
                eprintln!("could not delete the stream of {schema}: {err}");
                return ExitCode::FAILURE;
            }
            if let Err(err) = runtime.block_on(drop_schema(&schema)) {
                eprintln!("could not drop schema {schema}: {err}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("postgres multi-process test FAILED (schema {schema} kept):\n{err}");
            ExitCode::FAILURE
        }
    }
}
