//! Event throughput on the memory backend, next to a raw tokio mpsc pipeline of the
//! same shape (the physical baseline).
//!
//! ```text
//! cargo run --release --example throughput -- --scenario one-hop --events 1000000
//! cargo run --release --example throughput -- --scenario chain --events 300000 --batch 1000
//! ```
//!
//! Flags (all optional):
//!
//! | flag | default | meaning |
//! |---|---|---|
//! | `--events N` | 1000000 | events emitted from outside (chains, for `chain`) |
//! | `--scenario one-hop\|chain` | `one-hop` | `one-hop`: emit -> no-op handler; `chain`: A emits B emits C, no-op work |
//! | `--batch N` | 0 | emit with `Engine::emit_batch` in batches of N (0: `Engine::emit` one by one) |
//! | `--no-baseline` | | skip the raw mpsc baseline |
//! | `--runs N` | 1 | repeat the measurement N times (a fresh engine each time) |
//! | `--engine-batch N` | 256 | `EngineConfig::batch_size`: deliveries run and committed together |
//!
//! With `THROUGHPUT_DEBUG=1` in the environment, each run also prints how many
//! claims the dispatcher made and the handler and end-to-end latency medians.
//!
//! The clock starts before the first emit and stops when the engine's metrics count
//! every execution committed (`processed` = events for one hop, 3 x chains for the
//! chain). Emitting and processing overlap, as they would in a service.

use std::time::{Duration, Instant};

use flowline::prelude::*;
use flowline::FlowError;

#[path = "support/shapes.rs"]
mod shapes;

use shapes::Ping;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    OneHop,
    Chain,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::OneHop => "one-hop",
            Scenario::Chain => "chain",
        }
    }
    fn unit(self) -> &'static str {
        match self {
            Scenario::OneHop => "events",
            Scenario::Chain => "chains",
        }
    }
}

struct Args {
    events: u64,
    scenario: Scenario,
    batch: usize,
    baseline: bool,
    runs: usize,
    engine_batch: Option<usize>,
}

fn usage() -> ! {
    eprintln!(
        "usage: throughput [--events N] [--scenario one-hop|chain] [--batch N] [--runs N] [--engine-batch N] [--no-baseline]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        events: 1_000_000,
        scenario: Scenario::OneHop,
        batch: 0,
        baseline: true,
        runs: 1,
        engine_batch: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--events" => args.events = value().parse().unwrap_or_else(|_| usage()),
            "--batch" => args.batch = value().parse().unwrap_or_else(|_| usage()),
            "--runs" => args.runs = value().parse().unwrap_or_else(|_| usage()),
            "--engine-batch" => {
                args.engine_batch = Some(value().parse().unwrap_or_else(|_| usage()))
            }
            "--scenario" => {
                args.scenario = match value().as_str() {
                    "one-hop" => Scenario::OneHop,
                    "chain" => Scenario::Chain,
                    _ => usage(),
                }
            }
            "--baseline" => args.baseline = true,
            "--no-baseline" => args.baseline = false,
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    if args.events == 0 || args.runs == 0 {
        usage();
    }
    args
}

fn flow(scenario: Scenario) -> Result<Flow, FlowError> {
    match scenario {
        Scenario::OneHop => shapes::one_hop_flow(),
        Scenario::Chain => shapes::chain_flow(),
    }
}

/// Runs the engine once; returns the wall time from the first emit to the last commit.
async fn run_engine(args: &Args) -> Result<Duration, Box<dyn std::error::Error>> {
    let mut config = flowline::EngineConfig::default();
    if let Some(batch) = args.engine_batch {
        config.batch_size = batch;
    }
    let engine = Engine::builder(flow(args.scenario)?)
        .config(config)
        .backend(MemoryBackend::new())
        .start()
        .await?;
    let tenant = TenantId::new("bench")?;
    let expected = match args.scenario {
        Scenario::OneHop => args.events,
        Scenario::Chain => 3 * args.events,
    };
    let started = Instant::now();
    let emitter = {
        let engine = engine.clone();
        let tenant = tenant.clone();
        let (events, batch) = (args.events, args.batch);
        tokio::spawn(async move {
            if batch == 0 {
                shapes::emit_one_by_one(&engine, &tenant, events).await?;
            } else {
                let mut n = 0;
                while n < events {
                    let k = (events - n).min(batch as u64);
                    let chunk: Vec<Ping> = (n..n + k).map(|n| Ping { n }).collect();
                    engine.emit_batch(&tenant, &chunk).await?;
                    n += k;
                }
            }
            Ok::<_, flowline::EngineError>(())
        })
    };
    loop {
        let m = engine.metrics().await?;
        if m.processed >= expected {
            break;
        }
        if m.failed > 0 || m.dead_lettered > 0 {
            return Err(format!("{} attempts failed", m.failed).into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    emitter.await??;
    if std::env::var_os("THROUGHPUT_DEBUG").is_some() {
        let m = engine.metrics().await?;
        eprintln!(
            "  {} executions in {} claims ({:.1} per claim); handler p50 {:?}, end-to-end p50 {:?} p99 {:?}",
            m.processed,
            m.dispatch_rounds,
            m.processed as f64 / m.dispatch_rounds.max(1) as f64,
            m.handler_latency.p50,
            m.end_to_end_latency.p50,
            m.end_to_end_latency.p99,
        );
    }
    engine.shutdown(Duration::from_secs(5)).await;
    Ok(elapsed)
}

/// The same shape on raw tokio unbounded mpsc channels.
async fn run_baseline(args: &Args) -> Duration {
    match args.scenario {
        Scenario::OneHop => shapes::mpsc_one_hop(args.events).await,
        Scenario::Chain => shapes::mpsc_chain(args.events).await,
    }
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args();
    let (name, unit) = (args.scenario.name(), args.scenario.unit());
    let mode = if args.batch == 0 {
        "emit one by one".to_string()
    } else {
        format!("emit_batch of {}", args.batch)
    };
    println!(
        "flowline {name}, memory backend, {mode}, {} worker threads",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut engine_rates = Vec::new();
    for _ in 0..args.runs {
        let took = run_engine(&args).await?;
        let r = rate(args.events, took);
        engine_rates.push(r);
        println!(
            "{name}: {} {unit} in {:.2} s = {:.0} {unit}/s",
            args.events,
            took.as_secs_f64(),
            r
        );
    }
    if !args.baseline {
        return Ok(());
    }
    let mut raw_rates = Vec::new();
    for _ in 0..args.runs {
        let took = run_baseline(&args).await;
        let r = rate(args.events, took);
        raw_rates.push(r);
        println!(
            "raw mpsc {name}: {} {unit} in {:.3} s = {:.0} {unit}/s",
            args.events,
            took.as_secs_f64(),
            r
        );
    }
    let (e, r) = (median(engine_rates), median(raw_rates));
    println!(
        "ratio (median of {} runs): flowline {:.0} / raw mpsc {:.0} {unit}/s = {:.3} ({:.1}x slower)",
        args.runs,
        e,
        r,
        e / r,
        r / e
    );
    Ok(())
}
