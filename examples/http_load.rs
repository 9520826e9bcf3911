//! An HTTP load run against the order system: places orders over loopback
//! HTTP with C concurrent clients, bounded in count and in time, and reports
//! the orders accepted per second and the latency of `POST /api/order`
//! (p50, p99, max). By default it serves the orderflow itself (SQLite file in
//! the temp directory, the demo stores, `flowline::http::api_router`), so one
//! command measures the whole path; `--url` targets a server already running
//! on this machine (`orderflow_server`), loopback addresses only.
//!
//! ```text
//! cargo run --release --all-features --example http_load -- --orders 5000 --concurrency 64
//! ```
//!
//! (`axum` is the feature it needs; `--all-features` shares one release build
//! with the other examples' lines.) Against a running `orderflow_server`, add
//! `--url http://127.0.0.1:3000`.
//!
//! Flags: `--orders N` (default 10,000), `--seconds S` (stop placing after S
//! seconds, default 60), `--concurrency C` (default 64), `--url URL`,
//! `--durability full|normal` (own server only, default full).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowline::http::{api_router, HttpOptions};
use flowline::orderflow::{self, MockCarrier, MockGateway, Orderflow, STORE_HEADER};
use flowline::{Clock, Durability, Engine, SqliteBackend, SqliteOptions};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

struct Args {
    orders: usize,
    seconds: u64,
    concurrency: usize,
    url: Option<String>,
    durability: Durability,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        orders: 10_000,
        seconds: 60,
        concurrency: 64,
        url: None,
        durability: Durability::Full,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String, name: &str| v.parse::<u64>().map_err(|e| format!("{name}: {e}"));
        match flag.as_str() {
            "--orders" => args.orders = number(value()?, "--orders")? as usize,
            "--seconds" => args.seconds = number(value()?, "--seconds")?,
            "--concurrency" => {
                args.concurrency = number(value()?, "--concurrency")?.max(1) as usize
            }
            "--url" => args.url = Some(value()?),
            "--durability" => {
                args.durability = match value()?.as_str() {
                    "full" => Durability::Full,
                    "normal" => Durability::Normal,
                    other => return Err(format!("--durability: {other:?} is not full or normal")),
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if let Some(url) = &args.url {
        let host = url
            .strip_prefix("http://")
            .and_then(|rest| rest.split(['/', ':']).next())
            .unwrap_or("");
        if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
            return Err(format!("--url {url:?}: only http:// on a loopback address"));
        }
    }
    Ok(args)
}

/// Serves the orderflow on a loopback port; answers its base URL.
async fn own_server(
    args: &Args,
) -> Result<(String, Engine, tempfile::TempDir), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let gateway = MockGateway::builder().build(Clock::system())?;
    let flow = Orderflow::new(gateway, MockCarrier::new(1)).flow()?;
    let backend = SqliteBackend::open_with(
        dir.path().join("load.db"),
        SqliteOptions::default().durability(args.durability),
    )?;
    let engine = Engine::builder(flow).backend(backend).start().await?;
    orderflow::bootstrap(&engine, &orderflow::demo_stores()).await?;
    orderflow::seed_demo(&engine).await?;
    engine.wait_idle().await;
    let app = api_router(
        engine.clone(),
        HttpOptions::new().tenant_header(STORE_HEADER),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((base, engine, dir))
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = match args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            eprintln!("usage: http_load [--orders N] [--seconds S] [--concurrency C] [--url URL] [--durability full|normal]");
            std::process::exit(2);
        }
    };
    let own = match &args.url {
        Some(_) => None,
        None => Some(own_server(&args).await?),
    };
    let base = match (&args.url, &own) {
        (Some(url), _) => url.trim_end_matches('/').to_string(),
        (None, Some((base, _, _))) => base.clone(),
        (None, None) => unreachable!("own_server ran"),
    };
    let client: Client<_, String> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.concurrency)
        .build_http();
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let run = format!("{:x}", rand::random::<u32>());
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (client, next, base, run) = (client.clone(), next.clone(), base.clone(), run.clone());
        let total = args.orders;
        workers.push(tokio::spawn(async move {
            let (mut latencies, mut refused) = (Vec::new(), 0usize);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total || Instant::now() >= deadline {
                    return (latencies, refused);
                }
                let store = ["X", "Y", "Z"][n % 3];
                let body = serde_json::json!({
                    "orderId": format!("load-{run}-{n}"),
                    "customerName": format!("customer-{}", n % 97),
                    "items": [{ "productId": format!("prod-{}-00{}", store.to_lowercase(), 1 + n % 4), "quantity": 1 }],
                });
                let request = axum::http::Request::post(format!("{base}/api/order"))
                    .header(STORE_HEADER, store)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .expect("a valid request");
                let sent = Instant::now();
                match client.request(request).await {
                    Ok(response) if response.status().is_success() => latencies.push(sent.elapsed()),
                    _ => refused += 1,
                }
            }
        }));
    }
    let mut latencies = Vec::new();
    let mut refused = 0;
    for worker in workers {
        let (l, r) = worker.await?;
        latencies.extend(l);
        refused += r;
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let accepted = latencies.len();
    println!(
        "{accepted} orders accepted ({refused} refused) in {:.2} s over HTTP with {} clients: {:.0} orders/s",
        elapsed.as_secs_f64(),
        args.concurrency,
        accepted as f64 / elapsed.as_secs_f64()
    );
    println!(
        "POST /api/order latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        quantile(&latencies, 0.5).as_secs_f64() * 1e3,
        quantile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    if let Some((_, engine, _dir)) = own {
        let drain = Instant::now();
        engine.wait_idle().await;
        println!(
            "the flow behind them settled {:.2} s later ({} step executions in all)",
            drain.elapsed().as_secs_f64(),
            engine.local_metrics().processed
        );
        engine.shutdown(Duration::from_secs(10)).await;
    }
    Ok(())
}
