//! The order system over real HTTP: every orderflow API (create, legacy submit,
//! track, cancel, fraud review, alerts, resolve, dashboard stats) served by
//! axum on the SQLite default, the demo stores X, Y and Z seeded, live
//! updates over server-sent events (an order's, a store's alerts), and the
//! workbench at `/_flowline`.
//!
//! ```text
//! cargo run --features axum,orderflow --example orderflow_server -- --listen 127.0.0.1:3000 --no-auth --cors-origin http://127.0.0.1:5173
//! curl -sf -X POST 127.0.0.1:3000/api/order -H 'X-Store-ID: X' -H 'content-type: application/json' \
//!   -d '{"orderId":"doc-1","customerName":"Ada","items":[{"productId":"prod-x-001","quantity":1}]}'
//! curl -sf 127.0.0.1:3000/api/order/tracking/doc-1 -H 'X-Store-ID: X'
//! curl -sN --max-time 3 '127.0.0.1:3000/api/order/doc-1/events?store=X' | grep -m1 '^event: order'
//! curl -sf 127.0.0.1:3000/openapi.json | grep -m1 '"openapi": "3.1.0"'
//! curl -sf -X OPTIONS 127.0.0.1:3000/api/order -H 'Origin: http://127.0.0.1:5173' \
//!   -H 'Access-Control-Request-Method: POST' -H 'Access-Control-Request-Headers: content-type,x-store-id' \
//!   -D - -o /dev/null | grep -i '^access-control-allow-origin: http://127.0.0.1:5173'
//! ```
//!
//! Then open `http://127.0.0.1:3000/` in a browser, place an order in the
//! store front and follow it, and open `http://127.0.0.1:3000/_flowline` to
//! watch it go through the engine. CI starts the server and runs each `curl` above
//! (`.ci/doc-commands`).
//!
//! **Webhooks** (built with the `webhooks` feature too): each store registers
//! endpoints for the events of `orderflow::WEBHOOK_TOPICS` (`order.*`, the
//! payment and delivery events) at `/admin/stores/{store}/webhooks`, with its
//! `admin` key or the operator's, and reads each endpoint's delivery log
//! there. Deliveries go to public addresses only; `--webhooks-to-loopback`
//! lets them reach a receiver on this machine (`examples/webhook_receiver.rs`).
//!
//! **Metrics** (built with the `prometheus` feature too): `GET /metrics`
//! serves the engine's metrics for Prometheus (an operator key when API keys
//! are on); `.ci/prometheus` has a real Prometheus scrape it, and
//! `docs/OPERATING.md` says what to query.
//!
//! **API keys.** `--no-auth` above turns them off, and the server says so
//! when it starts. Without it, every API route and live stream wants
//! `Authorization: Bearer <key>` of its store (`orders:read` to read,
//! `orders:write` for the rest; `401` without a live key, `403` for another
//! store's), and the workbench and the admin API (`/admin/keys`) an operator
//! key (a browser asks for it: give it as the password). At each start the
//! server creates a key for each demo store and one for the operator and
//! prints them, with a store-front link that carries the stores' keys (in
//! the URL's fragment, which browsers never send).
//!
//! Flags: `--listen ADDR` (default `127.0.0.1:3000`), `--backend sqlite|postgres`
//! (default `sqlite`; `postgres` needs a build with `--features postgres`),
//! `--path FILE` (SQLite; default `./flowline-orders.db`), `--url URL` and
//! `--schema NAME` (PostgreSQL; default `FLOWLINE_POSTGRES_URL`, else
//! `postgres://postgres@127.0.0.1:5432/test`, schema `flowline_orders`: run
//! several servers on one schema and they share the orders), `--seed S` (the mock gateway's and carrier's seed,
//! default 42), `--failure-rate F` (the share of charges the mock gateway
//! answers with a server error, default 0.05; `1` makes every payment fail
//! until it is dead-lettered, to see the workbench's dead letters),
//! `--otlp-endpoint URL` (a build with the `otel` feature: the spans go to
//! that OTLP/HTTP traces URL, `http://127.0.0.1:4318/v1/traces` for a local
//! collector; `docs/OPERATING.md` says what one order's trace holds),
//! `--intake-rate N` (orders a second each store may place, with a burst of
//! 2N; beyond it `POST /api/order` answers `429` with `Retry-After` and the
//! store's dashboard says `Throttled`; default: no limit), `--cors-origin
//! ORIGIN` (repeatable: a page on that origin may call the API from a browser;
//! default: none), `--no-auth` (no API keys). Ctrl-C stops
//! it gracefully: the HTTP server drains, then the engine finishes what it
//! holds.
//!
//! For a long run on Linux, start it with `MALLOC_ARENA_MAX=2`: with glibc's
//! default of up to 8 malloc arenas per core, memory freed by one of its
//! threads is not reused by the others, and the resident size settles far
//! higher (`docs/PERFORMANCE.md`, "Memory over a long run (issue 21)").

use std::sync::Arc;
use std::time::Duration;

use flowline::http::{
    admin_router, api_router, operator_only, workbench_router, ApiKeys, Cors, HttpOptions, KeyOwner,
};
use flowline::orderflow::{
    self, live_router, openapi_router, storefront_router, MockCarrier, MockGateway, OrderLimits,
    Orderflow, Timings, STORE_HEADER,
};
use flowline::{Backend, Clock, Engine, RetryPolicy, SqliteBackend};

struct Args {
    listen: String,
    backend: String,
    path: String,
    url: Option<String>,
    schema: String,
    seed: u64,
    failure_rate: f64,
    intake_rate: u32,
    cors_origins: Vec<String>,
    no_auth: bool,
    webhooks_to_loopback: bool,
    otlp_endpoint: Option<String>,
}

const USAGE: &str = "usage: orderflow_server [--listen ADDR] [--backend sqlite|postgres] \
    [--path FILE] [--url URL] [--schema NAME] [--seed S] [--failure-rate F] [--intake-rate N] \
    [--cors-origin ORIGIN]... [--no-auth] [--webhooks-to-loopback] [--otlp-endpoint URL]";

fn args() -> Result<Args, String> {
    let mut args = Args {
        listen: "127.0.0.1:3000".into(),
        backend: "sqlite".into(),
        path: "flowline-orders.db".into(),
        url: None,
        schema: "flowline_orders".into(),
        seed: 42,
        failure_rate: 0.05,
        intake_rate: 0,
        cors_origins: Vec::new(),
        no_auth: false,
        webhooks_to_loopback: false,
        otlp_endpoint: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => args.listen = value()?,
            "--path" => args.path = value()?,
            "--backend" => args.backend = value()?,
            "--url" => args.url = Some(value()?),
            "--schema" => args.schema = value()?,
            "--cors-origin" => args.cors_origins.push(value()?),
            "--no-auth" => args.no_auth = true,
            "--webhooks-to-loopback" => args.webhooks_to_loopback = true,
            "--otlp-endpoint" => args.otlp_endpoint = Some(value()?),
            "--seed" => args.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--intake-rate" => {
                args.intake_rate = value()?
                    .parse()
                    .map_err(|e| format!("--intake-rate: {e}"))?
            }
            "--failure-rate" => {
                args.failure_rate = value()?
                    .parse()
                    .map_err(|e| format!("--failure-rate: {e}"))?
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !matches!(args.backend.as_str(), "sqlite" | "postgres") {
        return Err(format!("--backend {:?}: sqlite or postgres", args.backend));
    }
    Ok(args)
}

/// The backend `--backend` names, and where its data is, for the banner.
async fn open_backend(
    args: &Args,
) -> Result<(Arc<dyn Backend>, String), Box<dyn std::error::Error>> {
    if args.backend == "sqlite" {
        let backend = SqliteBackend::open(&args.path)?;
        return Ok((Arc::new(backend), format!("SQLite file {}", args.path)));
    }
    #[cfg(feature = "postgres")]
    {
        let url = args
            .url
            .clone()
            .or_else(|| std::env::var("FLOWLINE_POSTGRES_URL").ok())
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_string());
        let options = flowline::PostgresOptions::new(url).schema(args.schema.clone());
        let backend = flowline::PostgresBackend::connect_with(options).await?;
        Ok((
            Arc::new(backend),
            format!("PostgreSQL schema {}", args.schema),
        ))
    }
    #[cfg(not(feature = "postgres"))]
    {
        let _ = (&args.url, &args.schema);
        Err("this build has no PostgreSQL backend (build with --features postgres)".into())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = match args() {
        Ok(args) => args,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("{message}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let traces = init_tracing(&args)?;
    let clock = Clock::system();
    let gateway = MockGateway::builder()
        .seed(args.seed)
        .approval_rate(0.9)
        .server_error_rate(args.failure_rate)
        .latency(Duration::from_millis(5))
        // A bounded ledger: the server runs for hours. 200,000 keys outlast the
        // payment retries (seconds) even at full intake speed.
        .ledger_capacity(200_000)
        .build(clock)?;
    let timings = Timings {
        payment_retry: RetryPolicy::exponential(Duration::from_millis(200), Duration::from_secs(2))
            .max_attempts(5),
        ship_after: Duration::from_secs(2),
        in_transit_after: Duration::from_secs(3),
        out_for_delivery_after: Duration::from_secs(3),
        redeliver_after: Duration::from_secs(3),
        ..Timings::default()
    };
    let flow = Orderflow::new(
        gateway,
        MockCarrier::new(args.seed).failed_attempt_rate(0.15),
    )
    .timings(timings)
    .limits(limits(&args));
    #[cfg(feature = "webhooks")]
    let webhooks = {
        let mut allowed = flowline::webhooks::Destinations::public_only();
        if args.webhooks_to_loopback {
            allowed = allowed.allow_loopback();
        }
        flowline::webhooks::Webhooks::new(orderflow::WEBHOOK_TOPICS)
            .options(flowline::webhooks::WebhookOptions::default().destinations(allowed))
    };
    #[cfg(feature = "webhooks")]
    let flow = flow.flow_with(Orderflow::webhook_steps(&webhooks)?)?;
    #[cfg(not(feature = "webhooks"))]
    let flow = flow.flow()?;
    let (backend, data) = open_backend(&args).await?;
    let engine = Engine::builder(flow)
        .backend_arc(backend)
        .clock(clock)
        // Counts per store for the metrics: the demo has three, a platform
        // caps them (later stores count together as "other").
        .config(flowline::EngineConfig {
            tenant_metrics: 100,
            ..flowline::EngineConfig::default()
        })
        .start()
        .await?;
    orderflow::bootstrap(&engine, &orderflow::demo_stores()).await?;
    orderflow::seed_demo(&engine).await?;

    let mut cors = Cors::new();
    for origin in &args.cors_origins {
        cors = cors.allow_origin(origin)?;
    }
    let mut options = HttpOptions::new().tenant_header(STORE_HEADER).cors(cors);
    let keys = ApiKeys::new(engine.clone());
    let mut app = storefront_router().merge(openapi_router());
    if args.no_auth {
        app = app.merge(workbench_router(engine.clone()));
    } else {
        options = options.api_keys(orderflow::auth_options(keys.clone()));
        app = app
            .merge(operator_only(
                workbench_router(engine.clone()),
                keys.clone(),
            ))
            .merge(admin_router(keys.clone()));
        #[cfg(feature = "webhooks")]
        {
            let endpoints = webhooks.endpoints(engine.clone());
            app = app.merge(flowline::http::webhooks_router(endpoints, keys.clone()));
        }
    }
    #[cfg(feature = "prometheus")]
    {
        let exporter = flowline::prometheus::PrometheusExporter::new(engine.clone());
        #[cfg(feature = "webhooks")]
        let exporter = exporter.webhooks(&webhooks);
        #[cfg(feature = "otel")]
        let exporter = match &traces {
            Some(traces) => exporter.traces(traces),
            None => exporter,
        };
        let metrics = flowline::http::metrics_router(exporter);
        app = if args.no_auth {
            app.merge(metrics)
        } else {
            app.merge(operator_only(metrics, keys.clone()))
        };
    }
    let app = app
        .merge(live_router(engine.clone(), &options))
        .merge(api_router(engine.clone(), options));
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let addr = listener.local_addr()?;
    println!("orderflow on http://{addr} (stores X, Y, Z; {data})");
    if args.no_auth {
        println!("API keys: OFF (--no-auth): anyone who can reach this port acts as any store");
        println!("store front: http://{addr}/");
    } else {
        let fragment = demo_keys(&keys).await?;
        println!("store front (with the stores' keys): http://{addr}/#keys={fragment}");
    }
    println!("OpenAPI document: http://{addr}/openapi.json");
    println!("workbench: http://{addr}/_flowline");
    #[cfg(feature = "prometheus")]
    println!("metrics (Prometheus): http://{addr}/metrics");
    if !args.cors_origins.is_empty() {
        println!("browsers may call from: {}", args.cors_origins.join(", "));
    }
    // The client's address, so that the live streams can be capped per client.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    let report = engine.shutdown(Duration::from_secs(10)).await;
    println!("stopped: {report:?}");
    #[cfg(feature = "otel")]
    if let Some(traces) = &traces {
        traces.shutdown();
    }
    let _ = traces;
    Ok(())
}

/// The log on stdout (`RUST_LOG` sets its level); with `--otlp-endpoint`
/// (a build with the `otel` feature), the spans to that OTLP collector too.
#[cfg(feature = "otel")]
fn init_tracing(
    args: &Args,
) -> Result<Option<flowline::otel::OtelExport>, Box<dyn std::error::Error>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let traces = match &args.otlp_endpoint {
        Some(url) => Some(flowline::otel::install(
            flowline::otel::OtelOptions::new(url).service_name("orderflow"),
        )?),
        None => None,
    };
    let spans = traces.as_ref().map(|t| {
        t.layer()
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_filter(log_filter()))
        .with(spans)
        .init();
    Ok(traces)
}

/// The log on stdout (`RUST_LOG` sets its level).
#[cfg(not(feature = "otel"))]
fn init_tracing(args: &Args) -> Result<Option<()>, Box<dyn std::error::Error>> {
    if args.otlp_endpoint.is_some() {
        return Err("--otlp-endpoint needs a build with --features otel".into());
    }
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .init();
    Ok(None)
}

fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,flowline=info".into())
}

/// Creates and prints a key for each demo store (read and write) and one
/// for the operator; the stores' keys as the store front's URL fragment.
async fn demo_keys(keys: &ApiKeys) -> Result<String, Box<dyn std::error::Error>> {
    println!("API keys: ON; each shown once (send `Authorization: Bearer <key>`):");
    let scopes = [orderflow::read_scope(), orderflow::write_scope()];
    let mut fragment = Vec::new();
    for store in orderflow::demo_stores() {
        let id = store.store.clone();
        let key = keys
            .create(KeyOwner::Store(id.clone()), &scopes, "demo")
            .await?;
        println!("  store {id}: {}", key.secret());
        fragment.push(format!("{id}:{}", key.secret()));
    }
    let operator = keys
        .create(KeyOwner::Operator, &[], "demo operator")
        .await?;
    println!("  operator (workbench, /admin/keys): {}", operator.secret());
    Ok(fragment.join(","))
}

/// `--intake-rate N`: each store's intake limited to N orders a second.
fn limits(args: &Args) -> OrderLimits {
    if args.intake_rate == 0 {
        return OrderLimits::default();
    }
    OrderLimits::default().intake_rate(
        args.intake_rate,
        Duration::from_secs(1),
        args.intake_rate.saturating_mul(2),
    )
}
