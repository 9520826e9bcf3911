//! Orders per second through the whole order lifecycle: intake, fraud screening,
//! reservation, payment, stock commit, fulfilment, delivery (every stage),
//! alerts and dashboard counters.
//!
//! ```text
//! cargo run --release --example orderflow_throughput -- --backend sqlite --orders 2000
//! cargo run --release --example orderflow_throughput -- --backend memory --orders 5000
//! cargo run --release --all-features --example orderflow_throughput -- --backend postgres --orders 2000
//! cargo run --release --all-features --example orderflow_throughput -- --backend postgres --orders 2000 --processes 3
//! ```
//!
//! Short runs, each run by CI as written; `docs/PERFORMANCE.md` names the
//! longer runs behind its figures. The postgres lines need only the
//! `postgres` feature; `--all-features` shares one release build with the
//! other examples' lines.
//!
//! Options: `--backend memory|sqlite|postgres` (default sqlite; `postgres` needs
//! a build with `--features postgres`: `PostgresBackend`, a new schema
//! `flowline_orderflow_throughput_<pid>_<run>` for every run, dropped after it),
//! `--url URL` (postgres only; default `FLOWLINE_POSTGRES_URL`, else
//! `postgres://postgres@127.0.0.1:5432/test`), `--durability full|normal`
//! (SQLite; default full), `--orders N` (default 20,000), `--concurrency C`
//! (API callers placing orders at once; default 64), `--products P` (per store;
//! default 20), `--runs R` (default 1; prints each run and the median),
//! `--wave W` (place W orders, wait until they are delivered, place the next W;
//! default: every order at once, a backlog), `--cache-kib K` (SQLite page
//! cache), `--path FILE` (default: a new file in the system's temp directory),
//! `--pool N` (postgres only: the backend's connections, default
//! `PostgresOptions`' 8), `--processes N` (postgres only; default 1: this process and N−1 more engine
//! processes it starts on the same schema, all running steps, while this one
//! places the orders; each worker reports its executions, conflicts and
//! charges when the run ends, and the figures printed are the sums).
//!
//! With `THROUGHPUT_DEBUG=1` in the environment, each run also prints how many
//! claims this process's dispatcher made, with executions per claim and the
//! handler and end-to-end latencies.
//!
//! The delivery timers are zero, the gateway approves everything at once and the
//! carrier always delivers, so what is measured is the engine and the steps. Each
//! order runs about a dozen step executions; the run prints the exact count. An
//! order counts when it is delivered; the clock stops when the last one is.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flowline::orderflow::{self, MockCarrier, MockGateway, Orderflow, Timings};
use flowline::{Backend, Clock, Engine, TenantId};

#[path = "support/orders.rs"]
mod orders;
use orders::{catalogue, delivered, STORES};

struct Args {
    backend: String,
    durability: String,
    orders: usize,
    concurrency: usize,
    products: usize,
    runs: usize,
    path: Option<String>,
    url: Option<String>,
    cache_kib: Option<u32>,
    wave: Option<usize>,
    processes: usize,
    /// `--pool N`: the PostgreSQL backend's connections.
    pool: Option<u32>,
    /// Set in the worker processes a `--processes` run starts: their schema.
    worker: Option<String>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        backend: "sqlite".into(),
        durability: "full".into(),
        orders: 20_000,
        concurrency: 64,
        products: 20,
        runs: 1,
        path: None,
        url: None,
        cache_kib: None,
        wave: None,
        processes: 1,
        pool: None,
        worker: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{arg}: {e}"));
        match arg.as_str() {
            "--backend" => a.backend = value()?,
            "--durability" => a.durability = value()?,
            "--orders" => a.orders = number(value()?)?,
            "--concurrency" => a.concurrency = number(value()?)?.max(1),
            "--products" => a.products = number(value()?)?.clamp(1, 1_000),
            "--runs" => a.runs = number(value()?)?.max(1),
            "--path" => a.path = Some(value()?),
            "--url" => a.url = Some(value()?),
            "--wave" => a.wave = Some(number(value()?)?.max(1)),
            "--processes" => a.processes = number(value()?)?.clamp(1, 16),
            "--pool" => {
                a.pool = Some(u32::try_from(number(value()?)?.max(1)).map_err(|e| e.to_string())?)
            }
            "--worker" => a.worker = Some(value()?),
            "--cache-kib" => {
                a.cache_kib = Some(u32::try_from(number(value()?)?).map_err(|e| e.to_string())?)
            }
            "--bench" => {} // passed by `cargo bench`
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !matches!(a.backend.as_str(), "memory" | "sqlite" | "postgres") {
        return Err(format!(
            "--backend must be memory, sqlite or postgres, not {:?}",
            a.backend
        ));
    }
    if a.url.is_some() && a.backend != "postgres" {
        return Err("--url is for --backend postgres".into());
    }
    if a.pool.is_some() && a.backend != "postgres" {
        return Err("--pool is for --backend postgres".into());
    }
    if a.processes > 1 && a.backend != "postgres" {
        return Err(format!(
            "--processes is for --backend postgres: a {} backend lives in one process (SQLite takes an exclusive lock on its file)",
            a.backend
        ));
    }
    if !matches!(a.durability.as_str(), "full" | "normal") {
        return Err(format!(
            "--durability must be full or normal, not {:?}",
            a.durability
        ));
    }
    Ok(a)
}

/// A backend, and the temporary directory its file lives in (kept until dropped).
type Opened = (Arc<dyn Backend>, Option<tempfile::TempDir>);

async fn backend(args: &Args, run: usize) -> Result<Opened, Box<dyn std::error::Error>> {
    if args.backend == "memory" {
        return Ok((Arc::new(flowline::MemoryBackend::new()), None));
    }
    if args.backend == "postgres" {
        return postgres::open(args, run).await;
    }
    let durability = if args.durability == "normal" {
        flowline::Durability::Normal
    } else {
        flowline::Durability::Full
    };
    let mut options = flowline::SqliteOptions::default().durability(durability);
    if let Some(kib) = args.cache_kib {
        options = options.cache_kib(kib);
    }
    let (path, dir) = match &args.path {
        Some(path) => (format!("{path}.{run}"), None),
        None => {
            let dir = tempfile::tempdir()?;
            (
                dir.path().join("orders.db").display().to_string(),
                Some(dir),
            )
        }
    };
    Ok((
        Arc::new(flowline::SqliteBackend::open_with(path, options)?),
        dir,
    ))
}

/// `--backend postgres`: a new schema for every run, dropped after it.
#[cfg(feature = "postgres")]
mod postgres {
    use super::{Args, Opened};
    use std::sync::Arc;

    /// The server: `--url`, else `FLOWLINE_POSTGRES_URL`, else the local test database.
    fn url(args: &Args) -> String {
        args.url
            .clone()
            .or_else(|| std::env::var("FLOWLINE_POSTGRES_URL").ok())
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_string())
    }

    /// The schema of run `run` (from 0): new for every run of every invocation.
    fn schema(run: usize) -> String {
        format!("flowline_orderflow_throughput_{}_{run}", std::process::id())
    }

    pub(super) async fn open(
        args: &Args,
        run: usize,
    ) -> Result<Opened, Box<dyn std::error::Error>> {
        open_schema(args, &schema(run)).await
    }

    /// The backend on an existing or new `schema`.
    pub(super) async fn open_schema(
        args: &Args,
        schema: &str,
    ) -> Result<Opened, Box<dyn std::error::Error>> {
        let mut options = flowline::PostgresOptions::new(url(args)).schema(schema);
        if let Some(size) = args.pool {
            options = options.pool_size(size);
        }
        let backend = flowline::PostgresBackend::connect_with(options).await?;
        Ok((Arc::new(backend), None))
    }

    /// How a worker process is told where to work.
    pub(super) fn worker_args(args: &Args, run: usize) -> Vec<String> {
        let mut worker = vec![
            "--backend".into(),
            "postgres".into(),
            "--url".into(),
            url(args),
            "--worker".into(),
            schema(run),
        ];
        if let Some(size) = args.pool {
            worker.extend(["--pool".into(), size.to_string()]);
        }
        worker
    }

    /// Drops the schema of run `run`.
    pub(super) async fn drop_schema(
        args: &Args,
        run: usize,
    ) -> Result<(), Box<dyn std::error::Error>> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url(args)).await?;
        sqlx::query(&format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            schema(run)
        ))
        .execute(&mut conn)
        .await?;
        conn.close().await?;
        Ok(())
    }
}

#[cfg(not(feature = "postgres"))]
mod postgres {
    use super::{Args, Opened};

    pub(super) async fn open(
        _args: &Args,
        _run: usize,
    ) -> Result<Opened, Box<dyn std::error::Error>> {
        Err("this build has no PostgreSQL backend (build with --features postgres)".into())
    }

    pub(super) async fn open_schema(
        _args: &Args,
        _schema: &str,
    ) -> Result<Opened, Box<dyn std::error::Error>> {
        Err("this build has no PostgreSQL backend (build with --features postgres)".into())
    }

    pub(super) fn worker_args(_args: &Args, _run: usize) -> Vec<String> {
        Vec::new()
    }

    pub(super) async fn drop_schema(
        _args: &Args,
        _run: usize,
    ) -> Result<(), Box<dyn std::error::Error>> {
        Ok(())
    }
}

/// The order flow on `backend`, with instant deliveries and a gateway that
/// approves everything at once.
async fn start_engine(
    backend: Arc<dyn Backend>,
) -> Result<(Engine, MockGateway), Box<dyn std::error::Error>> {
    let clock = Clock::system();
    let gateway = MockGateway::builder().build(clock)?;
    let flow = Orderflow::new(gateway.clone(), MockCarrier::new(1))
        .timings(Timings::default().instant_delivery())
        .flow()?;
    let engine = Engine::builder(flow)
        .backend_arc(backend)
        .clock(clock)
        .start()
        .await?;
    Ok((engine, gateway))
}

/// What a worker process did, as it reports it when its stdin closes.
#[derive(Default)]
struct Report {
    executions: u64,
    conflicts: u64,
    charges: usize,
}

/// `--worker SCHEMA`: runs the order steps on the schema until stdin closes,
/// then reports on stdout.
async fn worker(args: &Args, schema: &str) -> Result<(), Box<dyn std::error::Error>> {
    let (backend, _) = postgres::open_schema(args, schema).await?;
    let (engine, gateway) = start_engine(backend).await?;
    println!("ready");
    tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()))
        .await??;
    engine.shutdown(Duration::from_secs(10)).await;
    let metrics = engine.metrics().await?;
    println!(
        "report {} {} {}",
        metrics.processed,
        metrics.conflicts,
        gateway.ledger().len()
    );
    Ok(())
}

/// Worker processes on run `run`'s schema; they stop and report when their
/// stdin closes.
struct Workers(Vec<std::process::Child>);

impl Workers {
    fn start(args: &Args, run: usize) -> Result<Self, Box<dyn std::error::Error>> {
        use std::io::BufRead;
        let mut workers = Workers(Vec::new());
        for _ in 1..args.processes {
            let mut child = std::process::Command::new(std::env::current_exe()?)
                .args(postgres::worker_args(args, run))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()?;
            let stdout = child.stdout.as_mut().ok_or("no worker stdout")?;
            let mut line = String::new();
            std::io::BufReader::new(stdout).read_line(&mut line)?;
            workers.0.push(child);
            if line.trim() != "ready" {
                return Err(format!("a worker did not start: {line:?}").into());
            }
        }
        Ok(workers)
    }

    /// Stops every worker and sums their reports.
    fn finish(mut self) -> Result<Report, Box<dyn std::error::Error>> {
        let mut sum = Report::default();
        for mut child in std::mem::take(&mut self.0) {
            drop(child.stdin.take());
            let output = child.wait_with_output()?;
            let text = String::from_utf8_lossy(&output.stdout);
            let report = text
                .lines()
                .find_map(|l| l.strip_prefix("report "))
                .ok_or_else(|| format!("a worker did not report: {text:?}"))?;
            let fields: Vec<u64> = report
                .split(' ')
                .map(str::parse)
                .collect::<Result<_, _>>()?;
            let [executions, conflicts, charges] = fields[..] else {
                return Err(format!("a worker's report is malformed: {report:?}").into());
            };
            sum.executions += executions;
            sum.conflicts += conflicts;
            sum.charges += usize::try_from(charges)?;
        }
        Ok(sum)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn one_run(args: &Args, run: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let measured = measure(args, run).await;
    if args.backend == "postgres" {
        // Dropped whether or not the run went through.
        postgres::drop_schema(args, run).await?;
    }
    measured
}

async fn measure(args: &Args, run: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let (backend, _dir) = backend(args, run).await?;
    let (engine, gateway) = start_engine(backend).await?;
    let stores: Vec<_> = orderflow::demo_stores();
    orderflow::bootstrap(&engine, &stores).await?;
    for store in STORES {
        engine
            .emit(&TenantId::new(store)?, &catalogue(store, args.products))
            .await?;
    }
    engine.wait_idle().await;
    let before = engine.metrics().await?.processed;
    let workers = Workers::start(args, run)?;

    let started = Instant::now();
    let wave = args.wave.unwrap_or(args.orders).max(1);
    let mut refused = 0;
    let mut first = 0;
    while first < args.orders {
        let last = (first + wave).min(args.orders);
        refused += orders::place(&engine, first..last, args.products, args.concurrency).await;
        if last < args.orders {
            engine.wait_idle().await;
        }
        first = last;
    }
    let placed = started.elapsed();
    let target = i64::try_from(args.orders - refused)?;
    loop {
        engine.wait_idle().await;
        if delivered(&engine).await >= target {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let workers = workers.finish()?;
    let metrics = engine.metrics().await?;
    let executions = metrics.processed - before + workers.executions;
    let conflicts = metrics.conflicts + workers.conflicts;
    #[allow(clippy::cast_precision_loss)]
    let rate = target as f64 / elapsed;
    #[allow(clippy::cast_precision_loss)]
    let per_order = executions as f64 / target as f64;
    println!(
        "run {}: {target} orders delivered in {elapsed:.2} s ({:.2} s to place them): {rate:.0} orders/s; {executions} step executions ({per_order:.1} per order), {conflicts} conflicts re-run{}",
        run + 1,
        placed.as_secs_f64(),
        if refused > 0 { format!(", {refused} refused") } else { String::new() },
    );
    if std::env::var_os("THROUGHPUT_DEBUG").is_some() {
        // This process's engine only: workers claim on their own.
        eprintln!(
            "  this process: {} executions in {} claims ({:.1} per claim); handler p50 {:?}, end-to-end p50 {:?} p99 {:?}",
            metrics.processed,
            metrics.dispatch_rounds,
            metrics.processed as f64 / metrics.dispatch_rounds.max(1) as f64,
            metrics.handler_latency.p50,
            metrics.end_to_end_latency.p50,
            metrics.end_to_end_latency.p99,
        );
    }
    let charges = gateway.ledger().len() + workers.charges;
    if charges != usize::try_from(target)? {
        return Err(format!("{charges} charges for {target} orders").into());
    }
    engine.shutdown(Duration::from_secs(10)).await;
    Ok(rate)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse()?;
    if let Some(schema) = &args.worker {
        return worker(&args, schema).await;
    }
    println!(
        "orderflow throughput: backend {}{}, {} process(es), {} orders, {} concurrent callers, {} products per store, {} cores",
        args.backend,
        if args.backend == "sqlite" { format!(" ({})", args.durability) } else { String::new() },
        args.processes,
        args.orders,
        args.concurrency,
        args.products,
        std::thread::available_parallelism().map_or(1, usize::from),
    );
    let mut rates = Vec::with_capacity(args.runs);
    for run in 0..args.runs {
        rates.push(one_run(&args, run).await?);
    }
    rates.sort_by(f64::total_cmp);
    println!("median: {:.0} orders/s", rates[rates.len() / 2]);
    Ok(())
}
