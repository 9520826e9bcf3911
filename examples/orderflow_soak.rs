//! Memory and speed over a long run (issue 21): millions of orders through the
//! whole order lifecycle on SQLite, in waves, printing after each wave the
//! process's anonymous resident memory (`RssAnon`) and the wave's orders/s.
//!
//! ```text
//! cargo build --release --example orderflow_soak
//! MALLOC_ARENA_MAX=2 target/release/examples/orderflow_soak --orders 150000 --every 25000 \
//!     --warmup 3 --tolerance 15 --check
//! ```
//!
//! CI runs both lines as written (`target/` is its `CARGO_TARGET_DIR`); with
//! no options the soak runs the 2,000,000 orders of `docs/PERFORMANCE.md`.
//! Why 3 waves of warm-up and 15 % in the short run: with waves of 25,000,
//! `RssAnon` still rises by a few per cent until about 100,000 orders; a leak
//! of about 160 bytes an order shows over the last 50,000 (the gateway's
//! ledger left unbounded, about 375 bytes an order, failed it at +44 %).
//!
//! Options: `--orders N` (default 2,000,000), `--every W` (orders per wave:
//! place W orders, wait until they are delivered, print a line, place the next
//! W; default 100,000), `--concurrency C` (API callers placing orders at once;
//! default 64), `--products P` (per store; default 20), `--ledger-keys K` (the
//! mock gateway keeps the K newest idempotency keys; default 10,000),
//! `--warmup K` (waves left out of the summary; default 2), `--tolerance T`
//! (per cent; default 10), `--check` (fail unless the last wave's `RssAnon` is
//! within T % of the first wave's after the warm-up), `--path FILE` (a new
//! SQLite file; default: a new file in the system's temp directory, removed
//! at the end).
//!
//! The order shape is `orderflow_throughput`'s: three stores, 20 products
//! each, zero delivery timers, a gateway that approves everything at once, a
//! carrier that always delivers. `--check` judges memory only, never speed:
//! the rate depends on the machine and on whatever else runs on it.
//!
//! `MALLOC_ARENA_MAX=2`: glibc's malloc gives a thread that meets contention
//! an arena of its own, up to 8 per core, and this process has about 15
//! threads that allocate (the runtime's workers, the threads `block_in_place`
//! hands a worker's queue to while the SQLite writer works, the sync and
//! checkpoint threads); memory freed in one arena is not reused by another.
//! Without the bound `RssAnon` settles far higher.
//! The figures, and those of jemalloc and mimalloc, are in
//! `docs/PERFORMANCE.md`, "Memory over a long run (issue 21)". The library
//! leaves the allocator to the application.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flowline::orderflow::{self, MockCarrier, MockGateway, Orderflow, Timings};
use flowline::{Clock, Engine, SqliteBackend, SqliteOptions, TenantId};

#[path = "support/orders.rs"]
mod orders;
use orders::{catalogue, delivered, STORES};

/// How long no order may be delivered before the run gives up as stalled.
const STALL: Duration = Duration::from_secs(120);

struct Args {
    orders: usize,
    every: usize,
    concurrency: usize,
    products: usize,
    ledger_keys: usize,
    warmup: usize,
    tolerance: f64,
    check: bool,
    path: Option<String>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        orders: 2_000_000,
        every: 100_000,
        concurrency: 64,
        products: 20,
        ledger_keys: 10_000,
        warmup: 2,
        tolerance: 10.0,
        check: false,
        path: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{arg}: {e}"));
        match arg.as_str() {
            "--orders" => a.orders = number(value()?)?,
            "--every" => a.every = number(value()?)?.max(1),
            "--concurrency" => a.concurrency = number(value()?)?.max(1),
            "--products" => a.products = number(value()?)?.clamp(1, 1_000),
            "--ledger-keys" => a.ledger_keys = number(value()?)?.max(1),
            "--warmup" => a.warmup = number(value()?)?,
            "--tolerance" => {
                a.tolerance = value()?.parse::<f64>().map_err(|e| format!("{arg}: {e}"))?
            }
            "--check" => a.check = true,
            "--path" => a.path = Some(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.tolerance.is_nan() || a.tolerance < 0.0 {
        return Err(format!(
            "--tolerance must be a percentage, not {}",
            a.tolerance
        ));
    }
    if a.check && a.orders.div_ceil(a.every) < a.warmup + 2 {
        return Err(format!(
            "--check compares waves after the warm-up: {} orders in waves of {} make {} waves, \
             and --warmup {} needs at least {}",
            a.orders,
            a.every,
            a.orders.div_ceil(a.every),
            a.warmup,
            a.warmup + 2
        ));
    }
    Ok(a)
}

/// The process's anonymous resident memory (`RssAnon` in
/// `/proc/self/status`: the heap and the stacks, not the mapped files), in
/// MB of 2^20 bytes as `top` counts them.
fn rss_anon_mb() -> Result<f64, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("/proc/self/status (the soak reads Linux's RssAnon): {e}"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .ok_or("no RssAnon in /proc/self/status")?;
    let kib: u64 = line
        .trim_start_matches("RssAnon:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    #[allow(clippy::cast_precision_loss)]
    Ok(kib as f64 / 1024.0)
}

/// The database file's size in MB (its write-ahead log not included).
fn file_mb(path: &str) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / 1e6)
}

/// What one wave measured.
struct Wave {
    rss_mb: f64,
    rate: f64,
}

/// Lowest, highest, and the spread between them in per cent of the lowest.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64, f64) {
    let (min, max) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    (min, max, (max - min) / min * 100.0)
}

/// Waits until `target` orders are delivered; an error if none is for [`STALL`].
async fn await_delivered(engine: &Engine, target: i64) -> Result<(), String> {
    let mut last = (delivered(engine).await, Instant::now());
    loop {
        // An engine that never goes idle is a stall too: look at the count anyway.
        let _ = tokio::time::timeout(STALL, engine.wait_idle()).await;
        let now = delivered(engine).await;
        if now >= target {
            return Ok(());
        }
        if now > last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > STALL {
            return Err(format!(
                "stalled: {now} of {target} orders delivered, none for {} s",
                STALL.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse()?;
    let (path, _dir) = match &args.path {
        Some(path) if std::path::Path::new(path).exists() => {
            return Err(format!("--path {path}: the file exists; the soak needs a new one").into())
        }
        Some(path) => (path.clone(), None),
        None => {
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("orders.db").display().to_string();
            (path, Some(dir))
        }
    };
    println!(
        "orderflow soak: SQLite file {path}, {} orders in waves of {}, {} concurrent callers, \
         {} products per store, gateway ledger of {} keys, {} cores, MALLOC_ARENA_MAX {}",
        args.orders,
        args.every,
        args.concurrency,
        args.products,
        args.ledger_keys,
        std::thread::available_parallelism().map_or(1, usize::from),
        std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "unset".into()),
    );

    let backend = SqliteBackend::open_with(&path, SqliteOptions::default())?;
    let clock = Clock::system();
    let gateway = MockGateway::builder()
        .ledger_capacity(args.ledger_keys)
        .build(clock)?;
    let flow = Orderflow::new(gateway.clone(), MockCarrier::new(1))
        .timings(Timings::default().instant_delivery())
        .flow()?;
    let engine = Engine::builder(flow)
        .backend_arc(Arc::new(backend))
        .clock(clock)
        .start()
        .await?;
    orderflow::bootstrap(&engine, &orderflow::demo_stores()).await?;
    for store in STORES {
        engine
            .emit(&TenantId::new(store)?, &catalogue(store, args.products))
            .await?;
    }
    engine.wait_idle().await;
    println!("after seeding: RssAnon {:.1} MB", rss_anon_mb()?);
    println!("wave  orders     RssAnon MB  orders/s  file MB");

    let mut waves: Vec<Wave> = Vec::new();
    let mut refused = 0;
    let mut first = 0;
    while first < args.orders {
        let last = (first + args.every).min(args.orders);
        let started = Instant::now();
        refused += orders::place(&engine, first..last, args.products, args.concurrency).await;
        await_delivered(&engine, i64::try_from(last - refused)?).await?;
        let elapsed = started.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let wave = Wave {
            rss_mb: rss_anon_mb()?,
            rate: (last - first) as f64 / elapsed,
        };
        println!(
            "{:>4}  {last:>9}  {:>10.1}  {:>8.0}  {:>7.0}",
            waves.len() + 1,
            wave.rss_mb,
            wave.rate,
            file_mb(&path),
        );
        waves.push(wave);
        first = last;
    }
    if refused > 0 {
        println!("{refused} orders refused by the API");
    }
    let kept = gateway.ledger().len();
    let expected = args.ledger_keys.min(args.orders - refused);
    if kept != expected {
        return Err(format!("the gateway's ledger holds {kept} keys, not {expected}").into());
    }
    engine.shutdown(Duration::from_secs(10)).await;

    let measured = &waves[args.warmup.min(waves.len())..];
    if measured.is_empty() {
        println!("no wave after the {} of warm-up: no summary", args.warmup);
        return Ok(());
    }
    let (lo, hi, spread) = range(measured.iter().map(|w| w.rss_mb));
    let (slow, fast, rate_spread) = range(measured.iter().map(|w| w.rate));
    println!(
        "after warm-up (waves {} to {}): RssAnon {lo:.1} to {hi:.1} MB (spread {spread:.1} %); \
         {slow:.0} to {fast:.0} orders/s (spread {rate_spread:.1} %)",
        args.warmup + 1,
        waves.len(),
    );
    let base = measured[0].rss_mb;
    let end = measured[measured.len() - 1].rss_mb;
    let growth = (end - base) / base * 100.0;
    println!(
        "memory: wave {} {end:.1} MB against wave {} {base:.1} MB: {growth:+.1} % (tolerance {} %)",
        waves.len(),
        args.warmup + 1,
        args.tolerance,
    );
    if args.check && growth > args.tolerance {
        return Err(format!(
            "memory grew after the warm-up: RssAnon {base:.1} MB after wave {} -> {end:.1} MB \
             after wave {} ({growth:+.1} %, more than the {} % allowed)",
            args.warmup + 1,
            waves.len(),
            args.tolerance,
        )
        .into());
    }
    Ok(())
}
