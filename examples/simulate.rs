//! The order system under deterministic simulation: many seeds, each a world
//! of three stores, a faulty gateway and carrier, a workload of orders and
//! the backend's calls struck by faults; every invariant checked; a failing
//! seed printed with the one command that runs it again, after shrinking.
//!
//! ```text
//! cargo run --release --all-features --example simulate -- --seeds 4 --orders 50
//! cargo run --release --all-features --example simulate -- --backend sqlite --seeds 2 --orders 50
//! cargo run --release --all-features --example simulate -- --seed 3 --orders 50 --faults "315:error,913:lost-ack"
//! ```
//!
//! Options: `--backend memory|sqlite|postgres` (default memory; postgres with
//! the `postgres` feature, at `FLOWLINE_POSTGRES_URL` or the local `test`
//! database), `--seeds N` seeds
//! from `--first S` (default 0), `--orders N` per seed (default 500), `--jobs
//! J` threads (default: the machine's cores), `--plan default|none`; `--seed
//! S` runs one seed (printing its whole trace if it fails), with `--faults SCHEDULE` exactly those faults; `--check-determinism`
//! runs each seed twice and compares their digests; `--webhooks` gives each
//! store a webhook endpoint on a faulty receiver (feature `webhooks`);
//! `--no-shrink` prints failures without shrinking the first. Exits 1 if a
//! seed fails.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use flowline::orderflow::sim::OrderScenario;
use flowline::sim::{FaultPlan, FaultSchedule, SimBackend, SimFailure, Simulation};

struct Options {
    backend: String,
    first: u64,
    seeds: u64,
    orders: usize,
    jobs: usize,
    plan: FaultPlan,
    faults: Option<FaultSchedule>,
    twice: bool,
    webhooks: bool,
    shrink: bool,
}

fn parse() -> Result<Options, String> {
    let mut options = Options {
        backend: "memory".into(),
        first: 0,
        seeds: 20,
        orders: 500,
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        plan: FaultPlan::default(),
        faults: None,
        twice: false,
        webhooks: false,
        shrink: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--check-determinism" {
            options.twice = true;
            continue;
        }
        if flag == "--no-shrink" {
            options.shrink = false;
            continue;
        }
        if flag == "--webhooks" {
            if cfg!(not(feature = "webhooks")) {
                return Err("--webhooks needs the webhooks feature".into());
            }
            options.webhooks = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {value:?}"))
        };
        match flag.as_str() {
            "--backend" => options.backend = value.clone(),
            "--first" => options.first = number()?,
            "--seeds" => options.seeds = number()?,
            "--seed" => (options.first, options.seeds) = (number()?, 1),
            "--orders" => options.orders = number()? as usize,
            "--jobs" => options.jobs = number()?.max(1) as usize,
            "--plan" => {
                options.plan = match value.as_str() {
                    "default" => FaultPlan::default(),
                    "none" => FaultPlan::none(),
                    other => return Err(format!("--plan: default or none, not {other:?}")),
                }
            }
            "--faults" => {
                options.faults = Some(value.parse().map_err(|e| format!("--faults: {e}"))?)
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(options)
}

/// The PostgreSQL server: `FLOWLINE_POSTGRES_URL`, or the local test database.
#[cfg(feature = "postgres")]
fn postgres_url() -> String {
    std::env::var("FLOWLINE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// The backend, and the folder of its files (SQLite's), if it has one.
fn backend(name: &str) -> Result<(SimBackend, Option<PathBuf>), String> {
    match name {
        "memory" => Ok((SimBackend::memory(), None)),
        "sqlite" => {
            let dir = std::env::temp_dir().join(format!("flowline-sim-{}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            Ok((SimBackend::sqlite_in(&dir), Some(dir)))
        }
        #[cfg(feature = "postgres")]
        "postgres" => Ok((SimBackend::postgres(postgres_url()), None)),
        other => Err(format!(
            "--backend: memory, sqlite or postgres, not {other:?}"
        )),
    }
}

/// The order scenario of a seed, with webhooks if asked for.
fn scenario(webhooks: bool) -> impl Fn(u64) -> OrderScenario + Send + Sync + 'static {
    move |seed| {
        let scenario = OrderScenario::new(seed);
        #[cfg(feature = "webhooks")]
        if webhooks {
            return scenario.with_webhooks();
        }
        let _ = webhooks;
        scenario
    }
}

fn main() -> ExitCode {
    // Off unless asked for (`RUST_LOG=flowline=debug`): faults make the
    // engine warn thousands of times a run.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let options = match parse() {
        Ok(options) => options,
        Err(err) => {
            eprintln!("simulate: {err}");
            return ExitCode::from(2);
        }
    };
    let (simulation, files) = match backend(&options.backend) {
        Ok((backend, files)) => (
            Simulation::new(scenario(options.webhooks))
                .backend(backend)
                .faults(options.plan.clone())
                .keep_trace(options.seeds == 1),
            files,
        ),
        Err(err) => {
            eprintln!("simulate: {err}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let next = AtomicU64::new(options.first);
    let end = options.first + options.seeds;
    let passed = AtomicUsize::new(0);
    let diverged = AtomicUsize::new(0);
    let totals = Mutex::new((0u64, 0u64, 0u64)); // faults, restarts, calls
    let failures: Mutex<Vec<Box<SimFailure>>> = Mutex::new(Vec::new());
    let done = AtomicU64::new(0);
    // Long runs say how far they are, every 5% (to stderr, so the summary stays the only stdout line).
    let progress_every = if options.seeds >= 1000 {
        options.seeds / 20
    } else {
        u64::MAX
    };
    let report_progress = || {
        let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
        if finished.is_multiple_of(progress_every) {
            eprintln!(
                "{finished} of {} seeds run ({} failed) in {:.0} s",
                options.seeds,
                failures.lock().unwrap().len(),
                started.elapsed().as_secs_f64()
            );
        }
    };
    std::thread::scope(|scope| {
        for _ in 0..options.jobs.min(options.seeds.max(1) as usize) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                let run = match &options.faults {
                    Some(schedule) => simulation.replay(seed, options.orders, schedule),
                    None => simulation.run(seed, options.orders),
                };
                match run {
                    Ok(report) => {
                        if options.twice {
                            let again = simulation.run(seed, options.orders);
                            let replayed = simulation.replay(seed, options.orders, &report.struck);
                            let digests = [again, replayed].map(|r| r.map(|r| r.digest).ok());
                            if digests != [Some(report.digest); 2] {
                                eprintln!("seed {seed}: digest {:016x}, then {digests:x?} (run again, replayed): not deterministic", report.digest);
                                diverged.fetch_add(1, Ordering::Relaxed);
                                report_progress();
                                continue;
                            }
                        }
                        let mut totals = totals.lock().unwrap();
                        totals.0 += report.struck.len() as u64;
                        totals.1 += u64::from(report.restarts);
                        totals.2 += report.calls;
                        passed.fetch_add(1, Ordering::Relaxed);
                        if options.seeds == 1 {
                            println!("seed {seed}: digest {:016x}, {} restarts, faults struck: {}", report.digest, report.restarts, report.struck);
                        }
                    }
                    Err(failure) => {
                        eprintln!("seed {seed} failed: {}", failure.error);
                        failures.lock().unwrap().push(failure)
                    }
                }
                report_progress();
            });
        }
    });
    let elapsed = started.elapsed();
    let passed = passed.into_inner();
    let (faults, restarts, calls) = totals.into_inner().unwrap();
    println!(
        "{passed} of {} seeds passed on {}: {} orders, {faults} faults struck, {restarts} crashes recovered, {calls} backend calls, in {:.1} s",
        options.seeds,
        simulation.backend_name(),
        passed as u64 * options.orders as u64,
        elapsed.as_secs_f64()
    );
    let mut failures = failures.into_inner().unwrap();
    failures.sort_by_key(|f| f.seed);
    for failure in failures.iter().skip(1) {
        println!(
            "seed {} (size {}) failed too: {}",
            failure.seed, failure.size, failure.error
        );
    }
    // The first failure (lowest seed) is printed whole, and shrunk unless
    // asked not to.
    if let Some(failure) = failures.first() {
        println!("\n{failure}");
        let (seed, size, faults) = if options.shrink {
            let shrunk = simulation.shrink(failure, 200);
            if shrunk.reproduced {
                println!(
                    "shrunk in {} runs to {} orders and {} faults: {}",
                    shrunk.runs,
                    shrunk.failure.size,
                    shrunk.failure.struck.len(),
                    shrunk.failure.error
                );
            } else {
                println!("the failure did not come back when replayed; run the seed again:");
            }
            let f = shrunk.failure;
            (f.seed, f.size, f.struck.to_string())
        } else {
            (failure.seed, failure.size, failure.struck.to_string())
        };
        println!(
            "reproduce: cargo run --release --all-features --example simulate -- --backend {}{} --seed {seed} --orders {size} --faults \"{faults}\"",
            options.backend,
            if options.webhooks { " --webhooks" } else { "" },
        );
    }
    let diverged = diverged.into_inner();
    if diverged > 0 {
        println!("{diverged} seeds ran differently the second time");
    }
    if let Some(files) = files {
        if failures.is_empty() {
            let _ = std::fs::remove_dir_all(files);
        } else {
            println!(
                "the failing seeds' databases are kept in {}",
                files.display()
            );
        }
    }
    if failures.is_empty() && diverged == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
