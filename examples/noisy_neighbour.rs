//! A noisy neighbour under a per-store rate limit: four quiet stores send a
//! steady trickle of events while a fifth sends 50 times as many; every store
//! is limited to a rate the quiet ones stay under. Prints the quiet stores'
//! end-to-end latency (emit to handler start) with and without the noisy
//! store, alternating, and their ratio.
//!
//! ```text
//! cargo run --release --example noisy_neighbour -- --seconds 5 --runs 1
//! ```
//!
//! | flag | default | meaning |
//! |---|---|---|
//! | `--backend memory\|sqlite` | `sqlite` | the backend (SQLite: a new file per run) |
//! | `--seconds N` | 20 | how long the stores send |
//! | `--quiet-rate N` | 40 | events a second each quiet store sends |
//! | `--noise N` | 50 | how many times that the noisy store sends |
//! | `--limit N` | 100 | the per-store limit, a second (burst: a tenth of it) |
//! | `--runs N` | 3 | pairs of runs (with the noisy store, then without) |

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use flowline::flow_control::Limit;
use flowline::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Ping {
    /// When it was sent, in µs since the process started.
    sent_us: u64,
}

impl Event for Ping {
    const TOPIC: &'static str = "noisy.ping";
}

fn micros() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_micros()).unwrap_or(u64::MAX)
}

struct Args {
    backend: String,
    seconds: u64,
    quiet_rate: u64,
    noise: u64,
    limit: u32,
    runs: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        backend: "sqlite".into(),
        seconds: 20,
        quiet_rate: 40,
        noise: 50,
        limit: 100,
        runs: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        let number = || value.parse::<u64>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            "--backend" => args.backend = value.clone(),
            "--seconds" => args.seconds = number(),
            "--quiet-rate" => args.quiet_rate = number(),
            "--noise" => args.noise = number(),
            "--limit" => args.limit = u32::try_from(number()).unwrap_or_else(|_| usage()),
            "--runs" => args.runs = usize::try_from(number()).unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if !["memory", "sqlite"].contains(&args.backend.as_str()) || args.seconds == 0 {
        usage();
    }
    args
}

fn usage() -> ! {
    eprintln!(
        "usage: noisy_neighbour [--backend memory|sqlite] [--seconds N] [--quiet-rate N] [--noise N] [--limit N] [--runs N]"
    );
    std::process::exit(2)
}

/// End-to-end latencies of the quiet stores' events, in µs.
type Latencies = Arc<Mutex<Vec<u64>>>;

fn flow(limit: u32, seen: &Latencies) -> Result<Flow, flowline::FlowError> {
    let seen = seen.clone();
    Flow::builder()
        .external::<Ping>()
        .step(
            Step::event::<Ping>("work")
                .limit(Limit::rate(limit, Duration::from_secs(1)).burst((limit / 10).max(1)))
                .handle(move |ctx: StepContext, ping: Ping| {
                    let waited = micros().saturating_sub(ping.sent_us);
                    if ctx.tenant().as_str() != "noisy" {
                        seen.lock().unwrap_or_else(|p| p.into_inner()).push(waited);
                    }
                    async move {
                        ctx.add("done", 1)?;
                        Ok::<_, StepError>(())
                    }
                }),
        )
        .build()
}

/// Sends for `args.seconds`, then waits for the quiet stores' events; returns
/// their latencies and how many of them were sent.
async fn run(args: &Args, noisy: bool) -> Result<(Vec<u64>, u64), Box<dyn std::error::Error>> {
    let seen: Latencies = Arc::default();
    let dir = tempfile::tempdir()?;
    let builder = Engine::builder(flow(args.limit, &seen)?);
    let engine = if args.backend == "sqlite" {
        builder
            .backend(SqliteBackend::open(dir.path().join("noisy.db"))?)
            .start()
            .await?
    } else {
        builder.start().await?
    };
    let quiet: Vec<TenantId> = (1..=4)
        .map(|i| TenantId::new(format!("quiet-{i}")))
        .collect::<Result<_, _>>()?;
    let noisy_store = TenantId::new("noisy")?;
    let tick = Duration::from_millis(10);
    let ticks = args.seconds * 100;
    let mut owed: HashMap<&TenantId, f64> = HashMap::new();
    let mut sent = 0;
    let started = tokio::time::Instant::now();
    for k in 0..ticks {
        tokio::time::sleep_until(started + tick * u32::try_from(k).unwrap_or(u32::MAX)).await;
        for store in &quiet {
            let due = owed.entry(store).or_default();
            *due += args.quiet_rate as f64 / 100.0;
            while *due >= 1.0 {
                *due -= 1.0;
                engine.emit(store, &Ping { sent_us: micros() }).await?;
                sent += 1;
            }
        }
        if noisy {
            let due = owed.entry(&noisy_store).or_default();
            *due += (args.quiet_rate * args.noise) as f64 / 100.0;
            let n = due.floor() as usize;
            *due -= n as f64;
            let burst: Vec<Ping> = (0..n).map(|_| Ping { sent_us: micros() }).collect();
            engine.emit_batch(&noisy_store, &burst).await?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while (seen.lock().unwrap_or_else(|p| p.into_inner()).len() as u64) < sent
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    engine.shutdown(Duration::from_secs(1)).await;
    let latencies = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok((latencies, sent))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args();
    println!(
        "backend {}, {} s, 4 quiet stores at {}/s, noisy store at {}/s, limit {}/s per store (burst {})",
        args.backend,
        args.seconds,
        args.quiet_rate,
        args.quiet_rate * args.noise,
        args.limit,
        (args.limit / 10).max(1)
    );
    let mut ratios = Vec::new();
    for r in 1..=args.runs {
        let mut p99 = [0u64; 2];
        for (i, noisy) in [true, false].into_iter().enumerate() {
            let (mut latencies, sent) = run(&args, noisy).await?;
            latencies.sort_unstable();
            p99[i] = percentile(&latencies, 0.99);
            println!(
                "run {r} {:<13} quiet events {:>5} of {:>5} done; latency p50 {:>6} µs, p99 {:>6} µs, max {:>6} µs",
                if noisy { "with noisy:" } else { "without:" },
                latencies.len(),
                sent,
                percentile(&latencies, 0.5),
                p99[i],
                latencies.last().copied().unwrap_or(0),
            );
        }
        let ratio = p99[0] as f64 / p99[1].max(1) as f64;
        println!("run {r} quiet p99 with / without the noisy store: {ratio:.2}");
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    println!("median ratio: {:.2}", ratios[ratios.len() / 2]);
    Ok(())
}
