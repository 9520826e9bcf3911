//! Event throughput on the memory or the SQLite backend, next to a baseline: a raw
//! tokio mpsc pipeline of the same shape (memory), or the backend's SQL on a bare
//! SQLite connection (SQLite, `exec`).
//!
//! ```text
//! cargo run --release --example throughput -- --backend memory --scenario one-hop --events 200000
//! cargo run --release --example throughput -- --backend memory --scenario chain --events 50000 --batch 1000
//! cargo run --release --example throughput -- --backend sqlite --durability normal --scenario exec --events 20000 --runs 3
//! cargo run --release --example throughput -- --backend sqlite --durability normal --scenario exec --backlog 100000
//! cargo run --release --all-features --example throughput -- --backend postgres --scenario exec --events 5000
//! cargo run --release --all-features --example throughput -- --backend sqlite+nats --scenario exec --events 5000
//! cargo run --release --all-features --example throughput -- --backend postgres+nats --scenario exec --events 5000
//! ```
//!
//! These are short runs (CI runs every line above as written). The runs behind
//! the figures of `docs/PERFORMANCE.md` are longer; its table names each one.
//! `--all-features` lets one release build serve the last three lines;
//! `postgres` or `nats` alone is what each backend needs.
//!
//! Flags (all optional):
//!
//! | flag | default | meaning |
//! |---|---|---|
//! | `--events N` | 1000000 | events emitted from outside (chains, for `chain`) |
//! | `--scenario S` | `one-hop` | see below |
//! | `--backend memory\|sqlite\|sqlite+nats\|postgres\|postgres+nats` | `sqlite` (`memory` in a build without the `sqlite` feature) | `sqlite`: `SqliteBackend`, a new database file for every run; `sqlite+nats` (build with `--features nats`): that file as the store beside `NatsTransport` on a new JetStream stream for every run (deleted after it; `FLOWLINE_NATS_URL`, else `nats://127.0.0.1:4222`), the SQLite options apply; `postgres+nats` (build with `--features postgres,nats`): the same beside the PostgreSQL store; `postgres` (build with `--features postgres`): `PostgresBackend`, a new schema for every run, dropped after it |
//! | `--url URL` | `FLOWLINE_POSTGRES_URL`, else `postgres://postgres@127.0.0.1:5432/test` | postgres only: the server |
//! | `--durability full\|normal` | `full` | sqlite only: `Durability::Full` (`synchronous=FULL`) or `Durability::Normal` |
//! | `--path P` | a new file under `std::env::temp_dir()` | sqlite only: the database file; with `--runs N` > 1, run k uses `P-k`; the raw SQLite baseline uses `P-raw` (`P-raw-k`). None may exist yet |
//! | `--cache-kib N` | the backend's (2,000) | sqlite only: `SqliteOptions::cache_kib`, SQLite's page cache |
//! | `--keep` | | sqlite: keep the database files instead of removing them (and their `-wal`, `-shm`, `.lock`) after each run; postgres: keep the schemas |
//! | `--batch N` | 0 (memory), 1000 (sqlite) | emit with `Engine::emit_batch` in batches of N (0: `Engine::emit` one by one) |
//! | `--backlog N` | 0 | before the clock starts, park N deliveries for the `parked` step (see below) |
//! | `--backlog-batch N` | 10000 | `emit_batch` size of the backlog pre-load |
//! | `--retry-delay-ms N` | 1 | `retry`: `RetryPolicy::fixed` delay between attempts |
//! | `--no-baseline` | | skip the baseline: raw mpsc (memory backend, `one-hop` and `chain`), raw SQLite (sqlite backend, `exec`, no backlog) or raw PostgreSQL (postgres backend, `one-hop`, no backlog) |
//! | `--runs N` | 1 | repeat the measurement N times (a fresh engine and backend each time) |
//! | `--engine-batch N` | 256 | `EngineConfig::batch_size`: deliveries run and committed together |
//! | `--metrics` | | per-tenant counts on (`EngineConfig::tenant_metrics`) and the Prometheus exporter rendering every second during the run (build with `--features prometheus`): what metrics cost |
//! | `--otel-sample R` | | the OpenTelemetry export on, sampling a share `R` of new traces, every `info` span recorded for it (build with `--features otel`): what tracing costs |
//! | `--limit rate\|concurrency` | none | `exec` only: a per-tenant flow-control limit that never binds (a rate of `u32::MAX` a second with as large a burst, or `MAX_CONCURRENCY` in flight): the cost of checking one |
//!
//! Scenarios (every execution commits: on SQLite, each is durable):
//!
//! - `one-hop`: emit -> a no-op handler. One execution per event: a claim and a
//!   commit that finishes the delivery.
//! - `exec`: emit -> step `exec`: one `ctx.put` (a new key per event, `exec/<n>`)
//!   and one emit, then commit. The emit is a `Parked` event delayed by a day: a
//!   real delivery row for step `parked` that nothing runs during the measurement,
//!   so the figure counts `exec` executions only. (An emit to a topic nobody
//!   subscribes to is allowed but writes nothing: it would not measure an emit.)
//! - `chain`: emit -> A emits B emits C, no-op work; three executions per chain.
//! - `retry`: emit -> a step whose attempts 1 and 2 fail (retryable;
//!   `RetryPolicy::fixed(--retry-delay-ms)`) and whose attempt 3 succeeds with no
//!   work. Each failure is persisted (due time, last error). Reports completed
//!   events/s and executions (attempts)/s, three per event.
//!
//! `--backlog N` adds the step `parked` (concurrency 1, a handler that never
//! returns) and, before the clock starts, emits N `Parked` events with
//! `Engine::emit_batch`; once `parked` has claimed one, N - 1 are ready and never
//! claimed (the step has no room) and 1 is in flight. The measured scenario runs
//! beside that backlog. The pre-load is not timed.
//!
//! Baselines, run after the engine runs (as many): on the memory backend, the
//! one-hop and chain shapes on raw tokio mpsc channels; on SQLite, for `exec`, the
//! backend's SQL statements replayed on one bare rusqlite connection, in groups of
//! `--engine-batch` (256) events: the floor of the SQL alone, without the engine;
//! on PostgreSQL, for `one-hop`, the same for the PostgreSQL backend's
//! statements on one bare sqlx connection (publish, a plain claim, complete).
//!
//! With `THROUGHPUT_DEBUG=1` in the environment, each run also prints how many
//! claims the dispatcher made, the handler and end-to-end latency medians, the
//! queue at the end, and on SQLite the sizes of the database file and its WAL.
//!
//! The clock starts before the first emit and stops when the engine's metrics count
//! every execution committed (`processed` = events for one hop, 3 x chains for the
//! chain). Emitting and processing overlap, as they would in a service.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use flowline::prelude::*;
use flowline::{EngineBuilder, FlowBuilder, MetricsSnapshot};

#[path = "support/shapes.rs"]
mod shapes;

use shapes::Parked;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    OneHop,
    Exec,
    Chain,
    Retry,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::OneHop => "one-hop",
            Scenario::Exec => "exec",
            Scenario::Chain => "chain",
            Scenario::Retry => "retry",
        }
    }
    fn unit(self) -> &'static str {
        match self {
            Scenario::OneHop | Scenario::Retry => "events",
            Scenario::Exec => "executions",
            Scenario::Chain => "chains",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum BackendKind {
    Memory,
    Sqlite,
    Postgres,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Synchronous {
    Full,
    Normal,
}

struct Args {
    events: u64,
    scenario: Scenario,
    backend: BackendKind,
    durability: Option<Synchronous>,
    path: Option<PathBuf>,
    cache_kib: Option<u32>,
    keep: bool,
    batch: Option<usize>,
    backlog: u64,
    backlog_batch: usize,
    retry_delay: Duration,
    baseline: bool,
    runs: usize,
    engine_batch: Option<usize>,
    url: Option<String>,
    /// `--backend sqlite+nats` or `postgres+nats`: the store beside NATS JetStream.
    nats: bool,
    /// `--limit rate|concurrency`: a per-tenant flow-control limit on `exec`
    /// that never binds.
    limit: Option<Unbound>,
    /// `--metrics`: per-tenant counts on, and the Prometheus exporter
    /// rendering every second (a scrape).
    metrics: bool,
    /// `--otel-sample R`: OpenTelemetry export on, sampling a share R of traces.
    otel_sample: Option<f64>,
}

/// A flow-control limit far above what any run reaches: what checking one
/// costs when it never holds anything back.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Unbound {
    Rate,
    Concurrency,
}

impl Unbound {
    fn limit(self) -> flowline::flow_control::Limit {
        use flowline::flow_control::{Limit, MAX_CONCURRENCY};
        match self {
            Unbound::Rate => Limit::rate(u32::MAX, Duration::from_secs(1)).burst(u32::MAX),
            Unbound::Concurrency => Limit::concurrency(MAX_CONCURRENCY),
        }
    }
}

impl Args {
    fn batch(&self) -> usize {
        // One-by-one emits on SQLite would each wait for a commit of their own:
        // that measures the producer, not the executions.
        self.batch.unwrap_or(match self.backend {
            BackendKind::Memory => 0,
            BackendKind::Sqlite | BackendKind::Postgres => 1000,
        })
    }

    /// Executions committed when every input has been handled.
    fn expected(&self) -> u64 {
        match self.scenario {
            Scenario::OneHop | Scenario::Retry | Scenario::Exec => self.events,
            Scenario::Chain => 3 * self.events,
        }
    }

    fn baseline(&self) -> bool {
        self.baseline
            && self.backlog == 0
            && match self.backend {
                BackendKind::Memory => matches!(self.scenario, Scenario::OneHop | Scenario::Chain),
                BackendKind::Sqlite => self.scenario == Scenario::Exec && !self.nats,
                BackendKind::Postgres => self.scenario == Scenario::OneHop && !self.nats,
            }
    }

    fn baseline_name(&self) -> &'static str {
        match self.backend {
            BackendKind::Memory => "raw mpsc",
            BackendKind::Sqlite => "raw SQLite",
            BackendKind::Postgres => "raw PostgreSQL",
        }
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: throughput [--events N] [--scenario one-hop|exec|chain|retry] [--backend memory|sqlite|sqlite+nats|postgres|postgres+nats] [--url URL] \
         [--durability full|normal] [--path FILE] [--cache-kib N] [--keep] [--batch N] [--backlog N] [--backlog-batch N] \
         [--retry-delay-ms N] [--runs N] [--engine-batch N] [--limit rate|concurrency] [--metrics] [--otel-sample R] [--no-baseline]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        events: 1_000_000,
        scenario: Scenario::OneHop,
        // The examples run on the embedded default, SQLite, unless told otherwise.
        backend: if cfg!(feature = "sqlite") {
            BackendKind::Sqlite
        } else {
            BackendKind::Memory
        },
        durability: None,
        path: None,
        cache_kib: None,
        keep: false,
        batch: None,
        backlog: 0,
        backlog_batch: 10_000,
        retry_delay: Duration::from_millis(1),
        baseline: true,
        runs: 1,
        engine_batch: None,
        url: None,
        nats: false,
        limit: None,
        metrics: false,
        otel_sample: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--events" => args.events = value().parse().unwrap_or_else(|_| usage()),
            "--batch" => args.batch = Some(value().parse().unwrap_or_else(|_| usage())),
            "--runs" => args.runs = value().parse().unwrap_or_else(|_| usage()),
            "--engine-batch" => {
                args.engine_batch = Some(value().parse().unwrap_or_else(|_| usage()))
            }
            "--scenario" => {
                args.scenario = match value().as_str() {
                    "one-hop" => Scenario::OneHop,
                    "exec" => Scenario::Exec,
                    "chain" => Scenario::Chain,
                    "retry" => Scenario::Retry,
                    _ => usage(),
                }
            }
            "--backend" => {
                args.backend = match value().as_str() {
                    "memory" => BackendKind::Memory,
                    "sqlite" => BackendKind::Sqlite,
                    "sqlite+nats" => {
                        args.nats = true;
                        BackendKind::Sqlite
                    }
                    "postgres" => BackendKind::Postgres,
                    "postgres+nats" => {
                        args.nats = true;
                        BackendKind::Postgres
                    }
                    _ => usage(),
                }
            }
            "--durability" => {
                args.durability = Some(match value().as_str() {
                    "full" => Synchronous::Full,
                    "normal" => Synchronous::Normal,
                    _ => usage(),
                })
            }
            "--path" => args.path = Some(PathBuf::from(value())),
            "--url" => args.url = Some(value()),
            "--keep" => args.keep = true,
            "--cache-kib" => args.cache_kib = Some(value().parse().unwrap_or_else(|_| usage())),
            "--backlog" => args.backlog = value().parse().unwrap_or_else(|_| usage()),
            "--backlog-batch" => args.backlog_batch = value().parse().unwrap_or_else(|_| usage()),
            "--retry-delay-ms" => {
                args.retry_delay =
                    Duration::from_millis(value().parse().unwrap_or_else(|_| usage()))
            }
            "--limit" => {
                args.limit = Some(match value().as_str() {
                    "rate" => Unbound::Rate,
                    "concurrency" => Unbound::Concurrency,
                    _ => usage(),
                })
            }
            "--metrics" => args.metrics = true,
            "--otel-sample" => args.otel_sample = Some(value().parse().unwrap_or_else(|_| usage())),
            "--baseline" => args.baseline = true,
            "--no-baseline" => args.baseline = false,
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    if args.events == 0 || args.runs == 0 || args.backlog_batch == 0 {
        usage();
    }
    if args.url.is_some() && args.backend != BackendKind::Postgres {
        eprintln!("--url is for --backend postgres");
        usage();
    }
    if args.backend != BackendKind::Sqlite
        && (args.durability.is_some()
            || args.path.is_some()
            || (args.keep && args.backend == BackendKind::Memory)
            || args.cache_kib.is_some())
    {
        eprintln!("--durability, --path and --cache-kib are for --backend sqlite");
        usage();
    }
    args
}

fn flow(args: &Args) -> Result<Flow, flowline::FlowError> {
    let builder: FlowBuilder = match args.scenario {
        Scenario::OneHop => shapes::one_hop(),
        Scenario::Chain => shapes::chain(),
        Scenario::Retry => shapes::retry(args.retry_delay),
        // `exec` has the parked step already (its emits go there by default).
        Scenario::Exec => {
            let limits = args.limit.map(Unbound::limit).into_iter().collect();
            return shapes::exec_with(limits).build();
        }
    };
    if args.backlog > 0 {
        shapes::with_parked(builder).build()
    } else {
        builder.build()
    }
}

/// The database file of one run, when the backend is SQLite.
#[cfg(feature = "sqlite")]
type Db = Option<shapes::DbFile>;
#[cfg(not(feature = "sqlite"))]
type Db = Option<()>;

/// Puts the run's backend into the builder: a new memory backend, or a new
/// SQLite database file.
async fn with_backend(
    args: &Args,
    run: usize,
    builder: EngineBuilder,
) -> Result<(EngineBuilder, Db), Box<dyn std::error::Error>> {
    match args.backend {
        BackendKind::Memory => Ok((builder.backend(MemoryBackend::new()), None)),
        #[cfg(feature = "sqlite")]
        BackendKind::Sqlite => {
            use flowline::{SqliteBackend, SqliteOptions};
            let file = db_file(args, run, "")?;
            let mut options = SqliteOptions::default().durability(durability(args));
            if let Some(kib) = args.cache_kib {
                options = options.cache_kib(kib);
            }
            let backend = SqliteBackend::open_with(&file.path, options)?;
            Ok((store_into(args, run, builder, backend).await?, Some(file)))
        }
        #[cfg(not(feature = "sqlite"))]
        BackendKind::Sqlite => {
            let _ = run;
            Err("this build has no SQLite backend (the `sqlite` feature is off)".into())
        }
        #[cfg(feature = "postgres")]
        BackendKind::Postgres => {
            use flowline::{PostgresBackend, PostgresOptions};
            let options = PostgresOptions::new(postgres_url(args)).schema(run_schema(run));
            let backend = PostgresBackend::connect_with(options).await?;
            Ok((store_into(args, run, builder, backend).await?, None))
        }
        #[cfg(not(feature = "postgres"))]
        BackendKind::Postgres => {
            Err("this build has no PostgreSQL backend (build with --features postgres)".into())
        }
    }
}

/// Puts `store` into the builder: as the backend, or beside NATS for the
/// `+nats` backends.
async fn store_into(
    args: &Args,
    run: usize,
    builder: EngineBuilder,
    store: impl flowline::Backend,
) -> Result<EngineBuilder, Box<dyn std::error::Error>> {
    if !args.nats {
        return Ok(builder.backend(store));
    }
    #[cfg(feature = "nats")]
    return Ok(builder.store(store).transport(nats(run).await?));
    #[cfg(not(feature = "nats"))]
    {
        let _ = run;
        Err("this build has no NATS transport (build with --features nats)".into())
    }
}

/// The JetStream stream of run `run` of a `+nats` backend, on the server
/// at `FLOWLINE_NATS_URL`, else `nats://127.0.0.1:4222`.
#[cfg(feature = "nats")]
async fn nats(run: usize) -> Result<flowline::NatsTransport, Box<dyn std::error::Error>> {
    let url = std::env::var("FLOWLINE_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let stream = format!("FLTHROUGHPUT_{}_{run}", std::process::id());
    let options = flowline::NatsOptions::new(url)
        .stream(stream.clone())
        .subject_prefix(stream);
    Ok(flowline::NatsTransport::connect_with(options).await?)
}

/// Deletes the stream of run `run` of a `+nats` backend unless `--keep`.
async fn drop_stream(args: &Args, run: usize) -> Result<(), Box<dyn std::error::Error>> {
    if !args.nats || args.keep {
        return Ok(());
    }
    #[cfg(feature = "nats")]
    nats(run).await?.delete_stream().await?;
    let _ = run;
    Ok(())
}

/// The server of `--backend postgres`: `--url`, else `FLOWLINE_POSTGRES_URL`, else
/// the local test database.
#[cfg(feature = "postgres")]
fn postgres_url(args: &Args) -> String {
    args.url
        .clone()
        .or_else(|| std::env::var("FLOWLINE_POSTGRES_URL").ok())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// The schema of run `run` (from 0): new for every run of every invocation.
#[cfg(feature = "postgres")]
fn run_schema(run: usize) -> String {
    format!("flowline_throughput_{}_{run}", std::process::id())
}

/// Drops the schema of run `run` unless `--keep`.
#[cfg(feature = "postgres")]
async fn drop_schema(args: &Args, run: usize) -> Result<(), Box<dyn std::error::Error>> {
    if args.backend != BackendKind::Postgres || args.keep {
        return Ok(());
    }
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&postgres_url(args)).await?;
    sqlx::query(&format!(
        "DROP SCHEMA IF EXISTS {} CASCADE",
        run_schema(run)
    ))
    .execute(&mut conn)
    .await?;
    Ok(())
}

#[cfg(not(feature = "postgres"))]
async fn drop_schema(_args: &Args, _run: usize) -> Result<(), Box<dyn std::error::Error>> {
    Ok(())
}

/// The new database file of run `run` (from 0): `--path`, `--path`-k with several
/// runs, or a new name in the temp directory. `label` tells a baseline's file apart.
#[cfg(feature = "sqlite")]
fn db_file(
    args: &Args,
    run: usize,
    label: &str,
) -> Result<shapes::DbFile, Box<dyn std::error::Error>> {
    let path = match &args.path {
        Some(path) => {
            let mut p = path.clone().into_os_string();
            p.push(label);
            if args.runs > 1 {
                p.push(format!("-{}", run + 1));
            }
            PathBuf::from(p)
        }
        None => shapes::DbFile::temp_path(&format!("throughput{label}")),
    };
    Ok(shapes::DbFile::new(path, args.keep)?)
}

#[cfg(feature = "sqlite")]
fn durability(args: &Args) -> flowline::Durability {
    match args.durability.unwrap_or(Synchronous::Full) {
        Synchronous::Full => flowline::Durability::Full,
        Synchronous::Normal => flowline::Durability::Normal,
    }
}

/// What one run measured.
struct Run {
    elapsed: Duration,
    /// The engine's counters when the clock stopped.
    metrics: MetricsSnapshot,
}

/// Parks `args.backlog` deliveries for the `parked` step and waits until it has
/// claimed the one it will hold: from then on the backlog only waits.
async fn preload_backlog(
    args: &Args,
    engine: &Engine,
    tenant: &TenantId,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let started = Instant::now();
    shapes::emit_range(engine, tenant, 0..args.backlog, args.backlog_batch, |n| {
        Parked { n }
    })
    .await?;
    loop {
        let q = engine.metrics().await?.queue;
        if q.in_flight == 1 && q.ready + q.in_flight == args.backlog {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err(format!("the backlog did not settle: {q:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(started.elapsed())
}

/// With `--metrics`, renders the engine's Prometheus metrics every second
/// while the run lasts, as a scraping Prometheus would have it do.
fn scrape_every_second(args: &Args, engine: &Engine) -> Option<tokio::task::JoinHandle<()>> {
    if !args.metrics {
        return None;
    }
    #[cfg(feature = "prometheus")]
    {
        let exporter = flowline::prometheus::PrometheusExporter::new(engine.clone());
        Some(tokio::spawn(async move {
            loop {
                let text = exporter.render().await;
                std::hint::black_box(text);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }))
    }
    #[cfg(not(feature = "prometheus"))]
    {
        let _ = engine;
        eprintln!("--metrics needs a build with --features prometheus");
        std::process::exit(2);
    }
}

/// With `--otel-sample R`, installs the OpenTelemetry export (to a port
/// nothing listens on: with R = 0 nothing is sent) and a subscriber that
/// records every `info` span for it; else the warnings-only log.
fn init_tracing(args: &Args) {
    let log_filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let Some(ratio) = args.otel_sample else {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(log_filter)
            .with_writer(std::io::stderr)
            .try_init();
        return;
    };
    #[cfg(feature = "otel")]
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        use tracing_subscriber::Layer;
        let options = flowline::otel::OtelOptions::new("http://127.0.0.1:9/v1/traces")
            .sample_ratio(ratio)
            .unwrap_or_else(|err| {
                eprintln!("--otel-sample: {err}");
                std::process::exit(2)
            });
        let export = flowline::otel::install(options).unwrap_or_else(|err| {
            eprintln!("--otel-sample: {err}");
            std::process::exit(2)
        });
        let log = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(log_filter);
        let _ = tracing_subscriber::registry()
            .with(export.layer())
            .with(log)
            .try_init();
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = (ratio, log_filter);
        eprintln!("--otel-sample needs a build with --features otel");
        std::process::exit(2);
    }
}

/// Runs the engine once; returns the wall time from the first emit to the last commit.
async fn run_engine(args: &Args, run: usize) -> Result<Run, Box<dyn std::error::Error>> {
    let mut config = flowline::EngineConfig::default();
    if let Some(batch) = args.engine_batch {
        config.batch_size = batch;
    }
    if args.metrics {
        config.tenant_metrics = 100;
    }
    let (builder, db) =
        with_backend(args, run, Engine::builder(flow(args)?).config(config)).await?;
    let engine = builder.start().await?;
    let tenant = TenantId::new("bench")?;
    if args.backlog > 0 {
        let took = preload_backlog(args, &engine, &tenant).await?;
        println!(
            "  (backlog: {} deliveries for `parked` pre-loaded in {:.2} s, not timed)",
            args.backlog,
            took.as_secs_f64()
        );
    }
    let scrapes = scrape_every_second(args, &engine);
    let expected = args.expected();
    let before = engine.local_metrics();
    let started = Instant::now();
    let emitter = {
        let engine = engine.clone();
        let tenant = tenant.clone();
        let (events, batch) = (args.events, args.batch());
        tokio::spawn(async move {
            if batch == 0 {
                shapes::emit_one_by_one(&engine, &tenant, events).await
            } else {
                shapes::emit_batches(&engine, &tenant, events, batch).await
            }
        })
    };
    let metrics = loop {
        let m = engine.local_metrics();
        if m.processed - before.processed >= expected {
            break m;
        }
        if m.dead_lettered > 0 || (args.scenario != Scenario::Retry && m.failed > 0) {
            return Err(format!(
                "{} attempts failed, {} dead-lettered",
                m.failed, m.dead_lettered
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let elapsed = started.elapsed();
    if let Some(scrapes) = scrapes {
        scrapes.abort();
    }
    emitter.await??;
    if std::env::var_os("THROUGHPUT_DEBUG").is_some() {
        let m = engine.metrics().await?;
        eprintln!(
            "  {} executions ({} failed) in {} claims ({:.1} per claim); handler p50 {:?}, end-to-end p50 {:?} p99 {:?}; queue {:?}",
            m.processed,
            m.failed,
            m.dispatch_rounds,
            (m.processed + m.failed) as f64 / m.dispatch_rounds.max(1) as f64,
            m.handler_latency.p50,
            m.end_to_end_latency.p50,
            m.end_to_end_latency.p99,
            m.queue,
        );
        #[cfg(feature = "sqlite")]
        if let Some(file) = &db {
            let (db, wal) = file.sizes();
            eprintln!(
                "  {}: {:.1} MiB, WAL {:.1} MiB",
                file.path.display(),
                db as f64 / 1048576.0,
                wal as f64 / 1048576.0
            );
        }
    }
    // A parked handler never returns: give its delivery back after a moment.
    let deadline = if args.backlog > 0 {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(5)
    };
    engine.shutdown(deadline).await;
    drop(engine);
    drop(db); // removes the database files
    drop_schema(args, run).await?;
    drop_stream(args, run).await?;
    Ok(Run { elapsed, metrics })
}

/// The same shape on raw tokio unbounded mpsc channels, or its SQL on a bare
/// SQLite connection.
async fn run_baseline(args: &Args, run: usize) -> Result<Duration, Box<dyn std::error::Error>> {
    match (args.backend, args.scenario) {
        (BackendKind::Memory, Scenario::Chain) => Ok(shapes::mpsc_chain(args.events).await),
        (BackendKind::Memory, _) => Ok(shapes::mpsc_one_hop(args.events).await),
        #[cfg(feature = "sqlite")]
        (BackendKind::Sqlite, _) => {
            let file = db_file(args, run, "-raw")?;
            let (events, d) = (args.events, durability(args));
            let cache_kib = args.cache_kib.unwrap_or(2_000);
            let group = args.engine_batch.unwrap_or(256) as u64;
            let took = tokio::task::spawn_blocking(move || {
                shapes::raw_sqlite_exec(&file, d, cache_kib, events, group)
            })
            .await?;
            took.map_err(|e| e as Box<dyn std::error::Error>)
        }
        #[cfg(not(feature = "sqlite"))]
        (BackendKind::Sqlite, _) => {
            let _ = run;
            Err("this build has no SQLite backend".into())
        }
        #[cfg(feature = "postgres")]
        (BackendKind::Postgres, _) => {
            let schema = format!("{}_raw", run_schema(run));
            let group = args.engine_batch.unwrap_or(256) as u64;
            let url = postgres_url(args);
            let took = shapes::raw_postgres_one_hop(&url, &schema, args.events, group).await;
            if !args.keep {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .execute(&mut conn)
                    .await?;
            }
            took
        }
        #[cfg(not(feature = "postgres"))]
        (BackendKind::Postgres, _) => Err("this build has no PostgreSQL backend".into()),
    }
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// "median (min – max)" of a set of rates.
fn summary(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.0} (range {lo:.0} – {hi:.0})", median(v.to_vec()))
}

fn describe_backend(args: &Args) -> String {
    match args.backend {
        BackendKind::Memory => "memory backend".into(),
        BackendKind::Sqlite => {
            let sync = match args.durability.unwrap_or(Synchronous::Full) {
                Synchronous::Full => "FULL",
                Synchronous::Normal => "NORMAL",
            };
            let place = match &args.path {
                Some(p) => format!("new file {}", p.display()),
                None => format!("new file per run in {}", std::env::temp_dir().display()),
            };
            let cache = match args.cache_kib {
                Some(kib) => format!(", cache_kib {kib}"),
                None => String::new(),
            };
            let nats = if args.nats {
                " beside NATS JetStream (a new stream per run)"
            } else {
                ""
            };
            format!("sqlite backend (synchronous={sync}{cache}, {place}){nats}")
        }
        BackendKind::Postgres if args.nats => {
            "postgres backend (a new schema per run) beside NATS JetStream (a new stream per run)"
                .into()
        }
        BackendKind::Postgres => "postgres backend (a new schema per run)".into(),
    }
}

/// The engine runs; returns their rates (events, executions or chains per second).
async fn run_engines(args: &Args) -> Result<Vec<f64>, Box<dyn std::error::Error>> {
    let (name, unit) = (args.scenario.name(), args.scenario.unit());
    let mut engine_rates = Vec::new();
    let mut all_rates = Vec::new();
    for run in 0..args.runs {
        let Run { elapsed, metrics } = run_engine(args, run).await?;
        let secs = elapsed.as_secs_f64();
        let r = rate(args.events, elapsed);
        engine_rates.push(r);
        match args.scenario {
            Scenario::Retry => {
                // Attempts that ran: the committed ones and the failed ones.
                let attempts = metrics.processed + metrics.failed;
                let a = rate(attempts, elapsed);
                all_rates.push(a);
                println!(
                    "{name}: {} events completed in {secs:.2} s = {r:.0} events/s; {attempts} executions ({} failed) = {a:.0} executions/s",
                    args.events, metrics.failed
                );
            }
            _ => println!(
                "{name}: {} {unit} in {secs:.2} s = {r:.0} {unit}/s",
                args.events
            ),
        }
    }
    println!(
        "median of {} runs: {} {unit}/s",
        args.runs,
        summary(&engine_rates)
    );
    if !all_rates.is_empty() {
        println!(
            "median of {} runs: {} executions (attempts)/s",
            args.runs,
            summary(&all_rates)
        );
    }
    Ok(engine_rates)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args();
    // Warnings (a claim that failed, say) go to stderr; RUST_LOG sets the level.
    init_tracing(&args);
    let (name, unit) = (args.scenario.name(), args.scenario.unit());
    let mode = match args.batch() {
        0 => "emit one by one".to_string(),
        n => format!("emit_batch of {n}"),
    };
    let mut extra = String::new();
    if args.backlog > 0 {
        extra += &format!(", backlog of {} parked deliveries", args.backlog);
    }
    match args.scenario {
        Scenario::Exec => extra += ", exec emits to `parked` (delayed 24 h, never run)",
        Scenario::Retry => {
            extra += &format!(
                ", {} failures per event, retry delay {:?}",
                shapes::RETRY_FAILURES,
                args.retry_delay
            )
        }
        _ => {}
    }
    println!(
        "flowline {name}, {}, {mode}{extra}, {} worker threads",
        describe_backend(&args),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let engine_rates = run_engines(&args).await?;
    if !args.baseline() {
        return Ok(());
    }
    let raw = args.baseline_name();
    if args.backend != BackendKind::Memory {
        println!(
            "{raw}: the backend's statements for {name} on one connection, groups of {}",
            args.engine_batch.unwrap_or(256),
        );
    }
    let mut raw_rates = Vec::new();
    for run in 0..args.runs {
        let took = run_baseline(&args, run).await?;
        let r = rate(args.events, took);
        raw_rates.push(r);
        println!(
            "{raw} {name}: {} {unit} in {:.3} s = {:.0} {unit}/s",
            args.events,
            took.as_secs_f64(),
            r
        );
    }
    println!(
        "median of {} runs: {} {unit}/s ({raw})",
        args.runs,
        summary(&raw_rates)
    );
    let (e, r) = (median(engine_rates), median(raw_rates));
    println!(
        "ratio (median of {} runs): flowline {:.0} / {raw} {:.0} {unit}/s = {:.3} ({:.1}x slower)",
        args.runs,
        e,
        r,
        e / r,
        r / e
    );
    Ok(())
}
