//! Webhook deliveries per second to a local receiver, and the time from an
//! event's commit to the receiver's `2xx` (p50, p99, max): events emitted
//! into one store with one endpoint (or several stores, one each), every
//! message signed, sent, verified and answered `204`.
//!
//! ```text
//! cargo run --release --all-features --example webhook_load -- --events 5000
//! cargo run --release --all-features --example webhook_load -- --events 5000 --backend memory --stores 4
//! ```
//!
//! (`webhooks` and `axum` are the features it needs; `--all-features` shares
//! one release build with the other examples' lines.) Flags: `--events N`
//! (default 20,000, spread over the stores), `--stores S` (default 1),
//! `--backend sqlite|memory` (default sqlite: a new file in the temp
//! directory), `--per-endpoint C` (attempts in flight per endpoint, default
//! 32). The latency is the receiver's clock at the answer minus the event's
//! commit time carried in the message (`timestamp`, millisecond precision).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use flowline::webhooks::{
    verify, Destinations, EndpointSpec, Signed, WebhookOptions, WebhookSecret, Webhooks,
};
use flowline::{Engine, Event, Flow, MemoryBackend, SqliteBackend, TenantId};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Ping {
    n: usize,
}
impl Event for Ping {
    const TOPIC: &'static str = "load.ping";
}

struct Args {
    events: usize,
    stores: usize,
    backend: String,
    per_endpoint: u32,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        events: 20_000,
        stores: 1,
        backend: "sqlite".into(),
        per_endpoint: 32,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--events" => args.events = number(value()?)?.max(1),
            "--stores" => args.stores = number(value()?)?.clamp(1, 50),
            "--backend" => args.backend = value()?,
            "--per-endpoint" => {
                args.per_endpoint = u32::try_from(number(value()?)?).map_err(|e| e.to_string())?
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if !matches!(args.backend.as_str(), "sqlite" | "memory") {
        return Err(format!("--backend {:?}: sqlite or memory", args.backend));
    }
    Ok(args)
}

#[derive(Clone)]
struct Receiver {
    secrets: Arc<Mutex<Vec<WebhookSecret>>>,
    latencies: Arc<Mutex<Vec<i64>>>,
    received: Arc<AtomicUsize>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let signed = Signed {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signatures: header("webhook-signature"),
    };
    let now = chrono::Utc::now();
    let secrets = r.secrets.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if verify(&secrets, &signed, &body, now.timestamp()).is_err() {
        return StatusCode::UNAUTHORIZED;
    }
    let message: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if let Some(at) = message["timestamp"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    {
        let latency = now.timestamp_millis() - at.timestamp_millis();
        r.latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(latency);
    }
    r.received.fetch_add(1, Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = match args() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("{err}\nusage: webhook_load [--events N] [--stores S] [--backend sqlite|memory] [--per-endpoint C]");
            std::process::exit(2);
        }
    };
    let receiver = Receiver {
        secrets: Arc::default(),
        latencies: Arc::default(),
        received: Arc::default(),
    };
    let app = Router::new()
        .route("/hooks", post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hooks", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let webhooks = Webhooks::new([Ping::TOPIC]).options(
        WebhookOptions::default()
            .destinations(Destinations::public_only().allow_loopback())
            .per_endpoint(args.per_endpoint),
    );
    let flow = Flow::builder().steps(webhooks.steps()?).build()?;
    let dir = std::env::temp_dir().join(format!("flowline-webhook-load-{}", std::process::id()));
    let engine = if args.backend == "memory" {
        Engine::builder(flow)
            .backend(MemoryBackend::new())
            .start()
            .await?
    } else {
        std::fs::create_dir_all(&dir)?;
        let backend = SqliteBackend::open(dir.join("load.db"))?;
        Engine::builder(flow).backend(backend).start().await?
    };
    let endpoints = webhooks.endpoints(engine.clone());
    let stores: Vec<TenantId> = (0..args.stores)
        .map(|i| TenantId::new(format!("store-{i}")))
        .collect::<Result<_, _>>()?;
    for store in &stores {
        let registered = endpoints
            .register(store, EndpointSpec::new(&url, ["load.*"]))
            .await?;
        receiver
            .secrets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(WebhookSecret::parse(registered.secret())?);
    }

    let started = Instant::now();
    for n in 0..args.events {
        engine.emit(&stores[n % stores.len()], &Ping { n }).await?;
    }
    let emitted = started.elapsed();
    while receiver.received.load(Ordering::Relaxed) < args.events {
        if started.elapsed() > Duration::from_secs(600) {
            return Err("not every message arrived within 10 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    let mut latencies = receiver
        .latencies
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    latencies.sort_unstable();
    println!(
        "{} deliveries to {} endpoint(s) on {} in {:.2} s (events emitted in {:.2} s): {:.0} deliveries/s",
        args.events,
        args.stores,
        args.backend,
        took.as_secs_f64(),
        emitted.as_secs_f64(),
        args.events as f64 / took.as_secs_f64()
    );
    println!(
        "event commit to receiver's 2xx: p50 {} ms, p99 {} ms, max {} ms",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0)
    );
    engine.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
