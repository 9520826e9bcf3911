//! Does a rate limit hold across processes? Several engine processes share
//! one PostgreSQL schema and one global rate limit of R a second; this
//! process emits a backlog far larger than the limit lets through, every
//! process runs the step, and each execution counts itself in a per-second
//! bucket. After a warm-up, the executions of a window of whole seconds,
//! divided by its length, is the rate that held; it prints that rate and its
//! deviation from R.
//!
//! ```text
//! cargo run --release --all-features --example rate_hold -- --rate 200 --seconds 10 --processes 3
//! ```
//!
//! (`postgres` is the feature it needs; `--all-features` shares one release
//! build with the other examples' lines. `docs/PERFORMANCE.md` holds the rate
//! for 60 seconds.)
//!
//! | flag | default | meaning |
//! |---|---|---|
//! | `--rate R` | 200 | the limit, per second (global: one budget for all) |
//! | `--burst B` | R / 10 | the limit's burst |
//! | `--seconds N` | 60 | the measured window |
//! | `--warmup N` | 5 | seconds before the window |
//! | `--processes N` | 3 | engine processes, this one included |
//! | `--url URL` | `FLOWLINE_POSTGRES_URL`, else `postgres://postgres@127.0.0.1:5432/test` | the server |
//!
//! The schema is new for every run and dropped after it.

use std::process::{Child, Command};
use std::time::Duration;

use flowline::flow_control::{Limit, LimitKey};
use flowline::prelude::*;
use flowline::{PostgresBackend, PostgresOptions, Store};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Tick {
    n: u64,
}

impl Event for Tick {
    const TOPIC: &'static str = "rate.tick";
}

#[derive(Clone)]
struct Args {
    rate: u32,
    burst: Option<u32>,
    seconds: u64,
    warmup: u64,
    processes: usize,
    url: String,
    /// Set in the worker processes this one starts.
    worker_schema: Option<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        rate: 200,
        burst: None,
        seconds: 60,
        warmup: 5,
        processes: 3,
        url: std::env::var("FLOWLINE_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        worker_schema: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        let number = || value.parse::<u64>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            "--rate" => args.rate = u32::try_from(number()).unwrap_or_else(|_| usage()),
            "--burst" => args.burst = Some(u32::try_from(number()).unwrap_or_else(|_| usage())),
            "--seconds" => args.seconds = number(),
            "--warmup" => args.warmup = number(),
            "--processes" => args.processes = usize::try_from(number()).unwrap_or_else(|_| usage()),
            "--url" => args.url = value.clone(),
            "--worker" => args.worker_schema = Some(value.clone()),
            _ => usage(),
        }
    }
    if args.rate == 0 || args.seconds == 0 || args.processes == 0 {
        usage();
    }
    args
}

fn usage() -> ! {
    eprintln!(
        "usage: rate_hold [--rate R] [--burst B] [--seconds N] [--warmup N] [--processes N] [--url URL]"
    );
    std::process::exit(2)
}

impl Args {
    fn burst(&self) -> u32 {
        self.burst.unwrap_or((self.rate / 10).max(1))
    }
}

fn flow(args: &Args) -> Result<Flow, flowline::FlowError> {
    let limit = Limit::rate(args.rate, Duration::from_secs(1))
        .burst(args.burst())
        .per(LimitKey::global());
    Flow::builder()
        .external::<Tick>()
        .step(Step::event::<Tick>("paced").limit(limit).handle(
            |ctx: StepContext, _tick: Tick| async move {
                let second = ctx.now().as_millis() / 1000;
                ctx.add(&format!("second/{second:012}"), 1)?;
                Ok::<_, StepError>(())
            },
        ))
        .build()
}

async fn engine(args: &Args, schema: &str) -> Result<Engine, Box<dyn std::error::Error>> {
    let options = PostgresOptions::new(args.url.clone()).schema(schema);
    let backend = PostgresBackend::connect_with(options).await?;
    Ok(Engine::builder(flow(args)?)
        .backend(backend)
        .start()
        .await?)
}

/// Kills the workers when dropped.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args();
    if let Some(schema) = &args.worker_schema {
        let _engine = engine(&args, schema).await?;
        // Runs until the measuring process kills it.
        std::future::pending::<()>().await;
    }
    let schema = format!("flowline_rate_hold_{}", std::process::id());
    let engine = engine(&args, &schema).await?;
    let mut workers = Workers(Vec::new());
    for _ in 1..args.processes {
        let child = Command::new(std::env::current_exe()?)
            .args(["--worker", &schema, "--url", &args.url])
            .args([
                "--rate",
                &args.rate.to_string(),
                "--burst",
                &args.burst().to_string(),
            ])
            .spawn()?;
        workers.0.push(child);
    }
    // More than the limit lets through in the whole run.
    let total = u64::from(args.rate) * (args.warmup + args.seconds + 10);
    let tenant = TenantId::new("rate")?;
    let mut n = 0;
    while n < total {
        let chunk: Vec<Tick> = (n..(n + 5_000).min(total)).map(|n| Tick { n }).collect();
        n += chunk.len() as u64;
        engine.emit_batch(&tenant, &chunk).await?;
    }
    let whole = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
    let start = engine.clock().now().as_millis() / 1000 + 1 + whole(args.warmup);
    let end = start + whole(args.seconds);
    while engine.clock().now().as_millis() / 1000 <= end {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(workers);
    let backend = PostgresBackend::connect_with(
        PostgresOptions::new(args.url.clone()).schema(schema.clone()),
    )
    .await?;
    let mut counted = 0i64;
    let mut slowest = i64::MAX;
    let mut fastest = 0i64;
    for second in start..end {
        let key = format!("second/{second:012}");
        let value = backend.get(&tenant, &key).await?;
        let count: i64 = value
            .map(|v| serde_json::from_slice(&v.value))
            .transpose()?
            .unwrap_or(0);
        counted += count;
        slowest = slowest.min(count);
        fastest = fastest.max(count);
    }
    engine.shutdown(Duration::from_secs(2)).await;
    let held = counted as f64 / args.seconds as f64;
    let deviation = (held - f64::from(args.rate)) / f64::from(args.rate) * 100.0;
    println!(
        "{} processes on PostgreSQL, a global limit of {}/s (burst {}): {counted} executions in {} s = {held:.1}/s, {deviation:+.2}% off; seconds ranged {slowest}..{fastest}",
        args.processes,
        args.rate,
        args.burst(),
        args.seconds
    );
    drop_schema(&args.url, &schema).await?;
    Ok(())
}

async fn drop_schema(url: &str, schema: &str) -> Result<(), Box<dyn std::error::Error>> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}
