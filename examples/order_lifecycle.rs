//! The order lifecycle of three stores, end to end, on a SQLite file (or a
//! PostgreSQL schema).
//!
//! ```text
//! cargo run --example order_lifecycle                        # 1,000 orders on ./flowline-orders.db
//! cargo run --example order_lifecycle -- --orders 200 --path other.db --seed 7
//! cargo run --features postgres --example order_lifecycle -- --backend postgres --schema my_orders
//! ```
//!
//! | flag | default | meaning |
//! |---|---|---|
//! | `--backend sqlite\|postgres` | `sqlite` | `sqlite`: `SqliteBackend` on `--path`; `postgres` (build with `--features postgres`): `PostgresBackend` in the schema `--schema` |
//! | `--path FILE` | `flowline-orders.db` | sqlite only: the database file |
//! | `--url URL` | `FLOWLINE_POSTGRES_URL`, else `postgres://postgres@127.0.0.1:5432/test` | postgres only: the server |
//! | `--schema NAME` | `flowline_orders` | postgres only: the schema, created if missing and kept after the run |
//! | `--orders N` | `1000` | how many orders this run places |
//! | `--seed S` | `42` | the mock gateway's and carrier's seed |
//!
//! It registers stores X, Y and Z, seeds the demo catalogue (insert-only), and
//! drives orders through intake, fraud screening, stock reservation, payment,
//! fulfilment and delivery, while the mock gateway declines a share of charges,
//! answers some with 5xx or not at all, and has one outage window; the carrier
//! misses some deliveries. Orders held by fraud screening are reviewed through
//! the review API. It runs until every order is terminal, then prints the counts
//! per status per store, charges, retries, dead letters, alerts, the dashboard
//! stats and the flow graph.
//!
//! Run it again on the same file (or schema) and it goes on from there: earlier orders,
//! stock, alerts and counters are kept, and an order a killed run left half-way
//! is finished.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowline::orderflow::{self, MockCarrier, MockGateway, OrderStatus, Orderflow, Timings};
use flowline::{
    ApiRequest, ApiResponse, Backend, Clock, DeadLetterQuery, Engine, Method, RetryPolicy, TenantId,
};
use serde_json::{json, Value};

const STORES: [&str; 3] = ["X", "Y", "Z"];
/// How long without an order becoming terminal before the run gives up.
const STALL: Duration = Duration::from_secs(60);
/// The statuses an order ends in.
fn terminal() -> impl Iterator<Item = &'static str> {
    OrderStatus::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .map(OrderStatus::as_str)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BackendKind {
    Sqlite,
    Postgres,
}

struct Args {
    backend: BackendKind,
    path: Option<String>,
    url: Option<String>,
    schema: Option<String>,
    orders: usize,
    seed: u64,
}

const USAGE: &str = "usage: order_lifecycle [--backend sqlite|postgres] [--path FILE] [--url URL] \
                     [--schema NAME] [--orders N] [--seed S]";

fn args() -> Result<Args, String> {
    let mut args = Args {
        backend: BackendKind::Sqlite,
        path: None,
        url: None,
        schema: None,
        orders: 1_000,
        seed: 42,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--backend" => {
                args.backend = match value()?.as_str() {
                    "sqlite" => BackendKind::Sqlite,
                    "postgres" => BackendKind::Postgres,
                    other => return Err(format!("--backend: {other:?} is not sqlite or postgres")),
                }
            }
            "--path" => args.path = Some(value()?),
            "--url" => args.url = Some(value()?),
            "--schema" => args.schema = Some(value()?),
            "--orders" => args.orders = value()?.parse().map_err(|e| format!("--orders: {e}"))?,
            "--seed" => args.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    match args.backend {
        BackendKind::Sqlite if args.url.is_some() || args.schema.is_some() => {
            Err("--url and --schema are for --backend postgres".into())
        }
        BackendKind::Postgres if args.path.is_some() => {
            Err("--path is for --backend sqlite".into())
        }
        _ => Ok(args),
    }
}

/// The backend `args` ask for; says which on standard output.
async fn open_backend(args: &Args) -> Result<Arc<dyn Backend>, Box<dyn std::error::Error>> {
    match args.backend {
        BackendKind::Sqlite => {
            let path = args.path.as_deref().unwrap_or("flowline-orders.db");
            println!("database: {path}");
            Ok(Arc::new(flowline::SqliteBackend::open(path)?))
        }
        #[cfg(feature = "postgres")]
        BackendKind::Postgres => {
            let url = args
                .url
                .clone()
                .or_else(|| std::env::var("FLOWLINE_POSTGRES_URL").ok())
                .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_string());
            let schema = args.schema.as_deref().unwrap_or("flowline_orders");
            println!("database: PostgreSQL schema {schema}");
            let options = flowline::PostgresOptions::new(url).schema(schema);
            Ok(Arc::new(
                flowline::PostgresBackend::connect_with(options).await?,
            ))
        }
        #[cfg(not(feature = "postgres"))]
        BackendKind::Postgres => {
            Err("this build has no PostgreSQL backend (build with --features postgres)".into())
        }
    }
}

async fn call(
    engine: &Engine,
    method: Method,
    path: &str,
    store: &str,
    body: Value,
) -> ApiResponse {
    let store = TenantId::new(store).expect("a valid store id");
    engine
        .call(ApiRequest::new(method, path, store).json(body))
        .await
}

async fn stats(engine: &Engine, store: &str) -> Value {
    call(
        engine,
        Method::Get,
        "/api/dashboard/stats",
        store,
        Value::Null,
    )
    .await
    .body
}

/// Orders of every store, and how many of them are terminal.
async fn progress(engine: &Engine) -> (i64, i64) {
    let (mut total, mut done) = (0, 0);
    for store in STORES {
        let s = stats(engine, store).await;
        total += s["totalOrders"].as_i64().unwrap_or(0);
        done += terminal()
            .map(|t| s["ordersByStatus"][t].as_i64().unwrap_or(0))
            .sum::<i64>();
    }
    (total, done)
}

/// Releases or rejects every order held for review, as a reviewer would: each
/// store's review queue is read, each order decided, and its alert acknowledged.
async fn review_held(engine: &Engine, seed: u64) -> (usize, usize) {
    let (mut released, mut rejected) = (0, 0);
    for store in STORES {
        let queue = call(engine, Method::Get, "/api/order/held", store, Value::Null)
            .await
            .body;
        for held in queue["held"].as_array().into_iter().flatten() {
            let Some(order) = held["orderId"].as_str() else {
                continue;
            };
            let release = !(order.bytes().map(u64::from).sum::<u64>() ^ seed).is_multiple_of(3);
            let decision = if release { "release" } else { "reject" };
            let review = json!({ "decision": decision, "note": "reviewed by the example" });
            let path = format!("/api/order/{order}/review");
            if call(engine, Method::Post, &path, store, review)
                .await
                .is_success()
            {
                if release {
                    released += 1;
                } else {
                    rejected += 1;
                }
            }
            let path = format!("/api/alerts/order_flagged:{order}/acknowledge");
            call(engine, Method::Post, &path, store, Value::Null).await;
        }
    }
    (released, rejected)
}

/// Order `n`: one to three lines of the store's products, one to three units each.
fn order_body(n: usize, store: &str, customers: &[String], seed: u64) -> Value {
    let s = store.to_lowercase();
    let lines = 1 + (n * 7 + usize::try_from(seed % 3).unwrap_or(0)) % 3;
    let mut items: Vec<Value> = (0..lines)
        .map(|l| {
            let product = 1 + (n / 3 + l * 3) % 4;
            json!({ "productId": format!("prod-{s}-{product:03}"), "quantity": 1 + (n + l) % 3 })
        })
        .collect();
    items.sort_by(|a, b| a["productId"].as_str().cmp(&b["productId"].as_str()));
    items.dedup_by(|a, b| a["productId"] == b["productId"]);
    json!({
        "orderId": format!("o-{n:06}"),
        "customerName": customers[(n * 13) % customers.len()],
        "items": items,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let started = Instant::now();
    let clock = Clock::system();
    let now = clock.now();
    // Down from 1 s to 4 s after the start: payments during it are retried.
    let gateway = MockGateway::builder()
        .seed(args.seed)
        .approval_rate(0.9)
        .server_error_rate(0.05)
        .lost_response_rate(0.02)
        .latency(Duration::from_millis(2))
        .outage(now + Duration::from_secs(1), now + Duration::from_secs(4))
        .build(clock)?;
    let carrier = MockCarrier::new(args.seed).failed_attempt_rate(0.15);
    let timings = Timings {
        payment_retry: RetryPolicy::exponential(Duration::from_millis(200), Duration::from_secs(2))
            .max_attempts(20)
            .unlimited_elapsed(),
        ship_after: Duration::from_millis(200),
        in_transit_after: Duration::from_millis(200),
        out_for_delivery_after: Duration::from_millis(300),
        redeliver_after: Duration::from_millis(300),
        // Every 2 seconds rather than every minute, so that a short run sees it.
        stock_check: "*/2 * * * * *".into(),
        ..Timings::default()
    };
    let flow = Orderflow::new(gateway.clone(), carrier)
        .timings(timings)
        .flow()?;

    let retries = Arc::new(AtomicU64::new(0));
    let counted = retries.clone();
    let backend = open_backend(&args).await?;
    let engine = Engine::builder(flow)
        .backend_arc(backend)
        .clock(clock)
        .on_emit(move |event| {
            if event.topic.as_str() == "payment.retrying" {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        })
        .start()
        .await?;
    orderflow::bootstrap(&engine, &orderflow::demo_stores()).await?;
    orderflow::seed_demo(&engine).await?;
    engine.wait_idle().await;

    let (before, _) = progress(&engine).await;
    println!(
        "{before} orders from earlier runs; placing {} more",
        args.orders
    );
    let customers: Vec<String> = (1..=40).map(|n| format!("customer-{n:02}")).collect();
    let mut last_report = Instant::now();
    let first = usize::try_from(before).unwrap_or(0) + 1;
    // Placed 50 at a time, as concurrent callers would: their commits share
    // fsyncs (group commit), where one caller at a time pays one each.
    for (round, chunk) in (first..first + args.orders)
        .collect::<Vec<_>>()
        .chunks(50)
        .enumerate()
    {
        let calls = chunk.iter().map(|&n| {
            let store = STORES[n % STORES.len()];
            let body = order_body(n, store, &customers, args.seed);
            let request = ApiRequest::new(
                Method::Post,
                "/api/order",
                TenantId::new(store).expect("a valid store id"),
            )
            .header("Idempotency-Key", format!("example-{n}"))
            .json(body);
            let engine = &engine;
            async move { (n, engine.call(request).await) }
        });
        for (n, answer) in futures::future::join_all(calls).await {
            if !answer.is_success() {
                println!(
                    "  order o-{n:06} refused: {} {}",
                    answer.status, answer.body
                );
            }
        }
        // A delivery arrives every 50 orders: 20 more of each product.
        for store in STORES {
            let s = store.to_lowercase();
            for product in 1..=4 {
                let id = format!("prod-{s}-{product:03}");
                orderflow::restock(&engine, &TenantId::new(store)?, &id, 20).await?;
            }
        }
        if last_report.elapsed() > Duration::from_millis(500) {
            let (total, done) = progress(&engine).await;
            let placed = (round + 1) * 50;
            println!(
                "  placed {}/{}; {done} of {total} orders terminal",
                placed.min(args.orders),
                args.orders
            );
            last_report = Instant::now();
        }
    }

    let (mut released, mut rejected) = (0, 0);
    let (mut last_done, mut last_change) = (-1, Instant::now());
    loop {
        let (total, done) = progress(&engine).await;
        if done == total {
            break;
        }
        if done != last_done {
            (last_done, last_change) = (done, Instant::now());
        } else if last_change.elapsed() > STALL {
            let dead = engine.dead_letters(&DeadLetterQuery::default()).await?;
            for d in dead.iter().take(5) {
                println!(
                    "  dead letter #{} {} on {}: {}",
                    d.id, d.step, d.event.topic, d.last_error
                );
            }
            return Err(format!(
                "stalled: {} of {total} orders not terminal after {} s without progress; {} dead letters",
                total - done,
                STALL.as_secs(),
                dead.len()
            )
            .into());
        }
        let (r, j) = review_held(&engine, args.seed).await;
        released += r;
        rejected += j;
        if last_report.elapsed() > Duration::from_millis(500) {
            let retried = retries.load(Ordering::Relaxed);
            println!("  {done} of {total} orders terminal ({retried} payment retries so far)");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    engine.wait_idle().await;
    let elapsed = started.elapsed();

    // Every order is terminal by now, so these columns add up to the total.
    println!("\ncounts per status per store:");
    let statuses: Vec<&str> = terminal().collect();
    print!("  {:<6}", "store");
    for s in &statuses {
        print!("{s:>10}");
    }
    println!("{:>10}", "total");
    let mut dashboards = BTreeMap::new();
    for store in STORES {
        let s = stats(&engine, store).await;
        print!("  {store:<6}");
        for status in &statuses {
            print!("{:>10}", s["ordersByStatus"][*status].as_i64().unwrap_or(0));
        }
        println!("{:>10}", s["totalOrders"].as_i64().unwrap_or(0));
        dashboards.insert(store, s);
    }

    let ledger = gateway.ledger();
    let captured = ledger.iter().filter(|e| e.transaction_id.is_some()).count();
    let refunded = ledger.iter().filter(|e| e.refunded).count();
    let declined = ledger.iter().filter(|e| e.declined.is_some()).count();
    let calls: u32 = ledger.iter().map(|e| e.calls).sum();
    println!(
        "\ncharges this run: {captured} captured ({refunded} refunded), {declined} declined, {calls} gateway calls; {} payment retries announced",
        retries.load(Ordering::Relaxed)
    );
    println!("reviews this run: {released} released, {rejected} rejected");
    let dead = engine.dead_letters(&DeadLetterQuery::default()).await?;
    println!("dead letters: {}", dead.len());
    for d in dead.iter().take(5) {
        println!(
            "  #{} {} on {}: {}",
            d.id, d.step, d.event.topic, d.last_error
        );
    }

    println!("\nalerts (all runs):");
    let kinds = [
        "order_created",
        "order_flagged",
        "inventory_failed",
        "payment_retrying",
        "payment_failed",
        "low_stock",
    ];
    for store in STORES {
        let mut counts = Vec::new();
        for kind in kinds {
            let path = format!("/api/alerts?kind={kind}&limit=200");
            let listed = call(&engine, Method::Get, &path, store, Value::Null)
                .await
                .body;
            let n = listed["alerts"].as_array().map_or(0, Vec::len);
            counts.push(format!("{kind} {n}{}", if n == 200 { "+" } else { "" }));
        }
        println!(
            "  store {store}, among its newest 1,000: {}",
            counts.join(", ")
        );
        let path = "/api/alerts?kind=low_stock&limit=3";
        let low = call(&engine, Method::Get, path, store, Value::Null)
            .await
            .body;
        for alert in low["alerts"].as_array().into_iter().flatten() {
            let field = |name: &str| alert[name].as_str().unwrap_or("").to_string();
            println!(
                "    {} [{}] {}",
                field("id"),
                field("state"),
                field("message")
            );
        }
    }

    println!("\ndashboard stats:");
    for (store, s) in &dashboards {
        let mut shown = s.clone();
        if let Some(recent) = shown["recentOrders"].as_array_mut() {
            recent.truncate(3);
        }
        println!("  {store}: {shown}");
    }

    println!("\nflow graph (Mermaid):\n{}", engine.flow().to_mermaid());
    let metrics = engine.metrics().await?;
    println!(
        "{} orders placed in {:.1} s; {} step executions, {} conflicts re-run",
        args.orders,
        elapsed.as_secs_f64(),
        metrics.processed,
        metrics.conflicts
    );
    engine.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
