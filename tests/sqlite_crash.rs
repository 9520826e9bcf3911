//! Crash safety of the SQLite backend: a child process works through a flow on a
//! file and is SIGKILLed at random moments, again and again; at the end every
//! effect must have happened exactly once.
//!
//! This binary is its own child: with `FLOWLINE_CRASH_CHILD=<file>` set it runs
//! the workload instead of the test. The flow:
//!
//! * an API step seeds the work in batches (`seeded/<batch>` and the batch's
//!   `Work` events commit together, so a seed is never half done);
//! * `count` takes each `Work { n }`, writes `ledger/<n>` (or `dup/<n>` if the
//!   ledger already had it), bumps a counter and emits `Tally { n }`;
//! * `tally` does the same for `Tally` under `tally/` and `tally-dup/`;
//! * a cron step fires every second, catching up missed instants after each
//!   restart, and writes `cron/<instant>` (or `cron-dup/<instant>`).
//!
//! `FLOWLINE_CRASH_KILLS` sets the number of kills (20 by default) and
//! `FLOWLINE_CRASH_EVENTS` the number of events (40,000 by default; whenever a
//! child finishes them before the kills are done, as many again are added and
//! the kills come sooner).

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use flowline::prelude::*;
use flowline::{SqliteBackend, SqliteError, Store, Timestamp, Transport};
use rand::Rng;
use serde::{Deserialize, Serialize};

const TENANT: &str = "crash";
const BATCH: u64 = 500;
/// Counters are split so that executions rarely contend for one key.
const PARTITIONS: u64 = 64;

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

/// Every kill costs each delivery in flight an attempt, by design: a delivery that
/// kills its worker every time must still end up dead-lettered. The steps here
/// allow more attempts than there are kills, so only a real failure dead-letters.
fn retry_policy() -> RetryPolicy {
    let kills = u32::try_from(env_number("FLOWLINE_CRASH_KILLS", 20)).unwrap_or(u32::MAX);
    RetryPolicy::exponential(Duration::from_millis(10), Duration::from_millis(500))
        .max_attempts(kills.saturating_add(10))
}

fn flow() -> Flow {
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
    let count = Step::event::<Work>("count").emits::<Tally>().handle(
        |ctx: StepContext, work: Work| async move {
            record_once(&ctx, "ledger", "dup", work.n).await?;
            ctx.emit(&Tally { n: work.n })?;
            Ok(())
        },
    );
    let tally =
        Step::event::<Tally>("tally").retry(retry_policy()).handle(
            |ctx: StepContext, t: Tally| async move {
                record_once(&ctx, "tally", "tally-dup", t.n).await
            },
        );
    let cron =
        Step::cron("tick", "* * * * * *").handle(|ctx: StepContext, tick: CronTick| async move {
            let at = tick.fire_at.as_millis();
            if ctx.get::<bool>(&format!("cron/{at}")).await?.is_some() {
                ctx.put(&format!("cron-dup/{at}"), &true)?;
            } else {
                ctx.put(&format!("cron/{at}"), &true)?;
            }
            Ok(())
        });
    Flow::builder()
        .steps([seed, count, tally, cron])
        .build()
        .expect("a valid flow")
}

async fn sum_counters(backend: &SqliteBackend, prefix: &str) -> u64 {
    let tenant = TenantId::new(TENANT).unwrap();
    let mut sum = 0;
    for (_, v) in backend
        .scan(&tenant, &format!("{prefix}-count/"), usize::MAX)
        .await
        .expect("scan")
    {
        sum += serde_json::from_slice::<u64>(&v.value).expect("a counter");
    }
    sum
}

/// The child: seed what is not seeded, then work until everything is done.
async fn child(path: String, events: u64) -> Result<(), Box<dyn std::error::Error>> {
    let backend = SqliteBackend::open(&path)?;
    let engine = Engine::builder(flow())
        .backend(backend.clone())
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
    let give_up = Instant::now() + Duration::from_secs(600);
    // The parent times most kills from here, so that they land in the work.
    println!("ready");
    loop {
        let depth = backend.depth(Timestamp::system_now()).await?;
        if depth.dead > 0 {
            let dead = backend
                .dead_letters(&flowline::DeadLetterQuery::new().limit(3))
                .await?;
            let errors: Vec<String> = dead
                .iter()
                .map(|d| format!("{} after {} attempts: {}", d.step, d.attempts, d.last_error))
                .collect();
            return Err(format!(
                "{} deliveries were dead-lettered, e.g. {errors:?}",
                depth.dead
            )
            .into());
        }
        if sum_counters(&backend, "tally").await >= events && depth.pending() == 0 {
            break;
        }
        if Instant::now() > give_up {
            return Err(format!("no end after ten minutes: {depth:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    engine.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

fn spawn_child(path: &str, events: u64) -> std::process::Child {
    Command::new(std::env::current_exe().expect("the test binary"))
        .env("FLOWLINE_CRASH_CHILD", path)
        .env("FLOWLINE_CRASH_EVENTS", events.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("a child process")
}

fn parent() -> Result<(), String> {
    let kills_wanted = env_number("FLOWLINE_CRASH_KILLS", 20);
    let mut events = env_number("FLOWLINE_CRASH_EVENTS", 40_000);
    let more = events.max(BATCH);
    // The longest wait before a kill, in ms; shortened whenever a child
    // finishes first, so that a fast build still gets killed mid-work.
    let mut longest_wait = 400;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("crash.db");
    let path_str = path.to_str().ok_or("a UTF-8 temp path")?.to_string();
    let mut rng = rand::rng();
    let started = Instant::now();
    let mut kills = 0;
    while kills < kills_wanted {
        let mut child = spawn_child(&path_str, events);
        // One kill in four lands while the child starts (opening the file,
        // recovering, seeding); the rest while it works.
        if rng.random_ratio(3, 4) {
            if let Some(stdout) = child.stdout.take() {
                let mut line = String::new();
                // A child that fails before it is ready closes the pipe, which
                // ends the read; `try_wait` below reports it.
                let _ = BufReader::new(stdout).read_line(&mut line);
            }
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(10..longest_wait)));
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            if !status.success() {
                return Err(format!("the child failed ({status}) after {kills} kills"));
            }
            // Done before all the kills: seeding is per batch and idempotent,
            // so the next child simply has more work to do.
            if events >= 20 * more {
                return Err(format!(
                    "the child kept finishing ({events} events) after {kills} kills"
                ));
            }
            events += more;
            longest_wait = (longest_wait / 2).max(20);
            continue;
        }
        child.kill().map_err(|e| e.to_string())?; // SIGKILL on Unix
        child.wait().map_err(|e| e.to_string())?;
        kills += 1;
    }
    let status = spawn_child(&path_str, events)
        .wait()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("the last child failed: {status}"));
    }
    println!(
        "sqlite crash test: {events} events, {kills} SIGKILLs, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(verify(&path_str, events))
}

async fn verify(path: &str, events: u64) -> Result<(), String> {
    let backend = SqliteBackend::open(path).map_err(|e: SqliteError| e.to_string())?;
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
                .map(|rows| rows.len() as u64)
                .map_err(|e| e.to_string())
        }
    };
    let mut failures = Vec::new();
    let mut expect = |what: &str, found: u64, wanted: u64| {
        if found != wanted {
            failures.push(format!("{what}: {found}, expected {wanted}"));
        }
    };
    expect("counted", sum_counters(&backend, "ledger").await, events);
    expect("ledger entries", keys("ledger/").await?, events);
    expect("duplicate work", keys("dup/").await?, 0);
    expect("tallied", sum_counters(&backend, "tally").await, events);
    expect("tally entries", keys("tally/").await?, events);
    expect("duplicate tallies", keys("tally-dup/").await?, 0);
    expect("duplicate cron fires", keys("cron-dup/").await?, 0);
    let depth = backend
        .depth(Timestamp::system_now())
        .await
        .map_err(|e| e.to_string())?;
    expect("deliveries left", depth.pending(), 0);
    expect("dead letters", depth.dead, 0);
    let fires = keys("cron/").await?;
    if fires == 0 {
        failures.push("the cron step never fired".into());
    }
    if failures.is_empty() {
        println!("verified: exactly once for {events} events and {fires} cron fires");
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

fn main() -> ExitCode {
    if let Ok(path) = std::env::var("FLOWLINE_CRASH_CHILD") {
        let events = env_number("FLOWLINE_CRASH_EVENTS", 40_000);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        return match runtime.block_on(child(path, events)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("crash child: {err}");
                ExitCode::FAILURE
            }
        };
    }
    match parent() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sqlite crash test FAILED:\n{err}");
            ExitCode::FAILURE
        }
    }
}
