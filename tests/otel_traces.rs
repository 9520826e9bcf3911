//! One order's trace, whole, from two engine processes sharing PostgreSQL
//! (feature `otel`): an OTLP receiver in this test decodes what both
//! processes export and finds every span of the order in the caller's
//! trace, each one's parent among them.
//!
//! This binary is its own worker: with `FLOWLINE_OTEL_CHILD=a|b` it runs the
//! order system (payments through the HTTP gateway client to a mock gateway
//! this test serves, webhooks to a receiver it serves) on the schema it is
//! given, exporting spans to the test's receiver. Worker `a` also serves
//! the HTTP API. The test places an order at `a` with a `traceparent`, stops
//! `a` once the payment is exported (fulfilment and delivery are due later,
//! so worker `b` runs them), waits for the delivery's spans, then stops `b`
//! and checks the tree:
//! - the `http` span's parent is the caller's span; every other span's
//!   parent is a span of the trace (no orphans);
//! - intake, fraud screening, stock reservation, payment (with the gateway's
//!   `gateway.call` client span as its child), fulfilment, delivery and a
//!   webhook delivery are there, from both processes;
//! - the webhook receiver was sent the trace.
//!
//! Needs a server: `postgres://postgres@127.0.0.1:5432/test` unless
//! `FLOWLINE_POSTGRES_URL` says otherwise.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use flowline::orderflow::{self, HttpGateway, MockCarrier, MockGateway, Orderflow, Timings};
use flowline::webhooks::{Destinations, EndpointSpec, WebhookOptions, Webhooks};
use flowline::{Clock, Engine, PostgresBackend, PostgresOptions, TenantId};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[path = "support/otlp.rs"]
mod otlp;
#[path = "support/postgres.rs"]
mod pg;

use otlp::Received;

/// The caller's trace and span: the `traceparent` the order is placed with.
const TRACE: &str = "5f1c2d3e4a5b6c7d8e9fa0b1c2d3e4f5";
const CALLER_SPAN: &str = "a1b2c3d4e5f60718";

#[derive(Clone, Default)]
struct Inbox {
    spans: otlp::Spans,
    hook_traces: Arc<Mutex<Vec<String>>>,
}

async fn hook(State(inbox): State<Inbox>, headers: HeaderMap) -> StatusCode {
    if let Some(parent) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        inbox.hook_traces.lock().unwrap().push(parent.to_string());
    }
    StatusCode::NO_CONTENT
}

fn timings() -> Timings {
    Timings {
        ship_after: Duration::from_secs(2),
        in_transit_after: Duration::from_millis(200),
        out_for_delivery_after: Duration::from_millis(200),
        redeliver_after: Duration::from_millis(200),
        ..Timings::default()
    }
}

/// A worker: the order system on `schema`, exporting spans, until stdin closes.
async fn child(role: &str) -> Result<(), Box<dyn std::error::Error>> {
    let env = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let export = flowline::otel::install(
        flowline::otel::OtelOptions::new(format!("{}/v1/traces", env("FLOWLINE_OTEL_COLLECTOR")?))
            .service_name(format!("orders-{role}"))
            .export_every(Duration::from_millis(100)),
    )?;
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("flowline=info"))
        .with(export.layer())
        .init();
    let options = PostgresOptions::new(pg::url()).schema(env("FLOWLINE_OTEL_SCHEMA")?);
    let backend = PostgresBackend::connect_with(options).await?;
    let webhooks = Webhooks::new(orderflow::WEBHOOK_TOPICS).options(
        WebhookOptions::default().destinations(Destinations::public_only().allow_loopback()),
    );
    let flow = Orderflow::new(
        HttpGateway::new(env("FLOWLINE_OTEL_GATEWAY")?)?,
        MockCarrier::new(7).failed_attempt_rate(0.0),
    )
    .timings(timings())
    .flow_with(Orderflow::webhook_steps(&webhooks)?)?;
    let engine = Engine::builder(flow).backend(backend).start().await?;
    let mut out = std::io::stdout();
    if role == "a" {
        orderflow::bootstrap(&engine, &orderflow::demo_stores()).await?;
        orderflow::seed_demo(&engine).await?;
        engine.wait_idle().await;
        let store = TenantId::new("X")?;
        let spec = EndpointSpec::new(env("FLOWLINE_OTEL_HOOKS")?, ["order.created"]);
        webhooks
            .endpoints(engine.clone())
            .register(&store, spec)
            .await?;
        let options = flowline::http::HttpOptions::new().tenant_header(orderflow::STORE_HEADER);
        let app = flowline::http::api_router(engine.clone(), options);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        writeln!(out, "listening {}", listener.local_addr()?)?;
        tokio::spawn(async move { axum::serve(listener, app).await });
    } else {
        writeln!(out, "ready")?;
    }
    out.flush()?;
    // Until the test closes stdin.
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            line.clear();
        }
    })
    .await?;
    engine.shutdown(Duration::from_secs(10)).await;
    export.flush();
    export.shutdown();
    Ok(())
}

struct Worker {
    child: Child,
    first_line: String,
}

fn spawn(role: &str, env: &[(&str, String)]) -> Result<Worker, String> {
    let mut child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .env("FLOWLINE_OTEL_CHILD", role)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut first_line = String::new();
    BufReader::new(stdout)
        .read_line(&mut first_line)
        .map_err(|e| e.to_string())?;
    if first_line.is_empty() {
        let status = child.wait().map_err(|e| e.to_string())?;
        return Err(format!(
            "worker {role} exited before it was ready: {status}"
        ));
    }
    Ok(Worker { child, first_line })
}

/// Stops a worker gracefully (stdin closed) and waits for it.
fn stop(mut worker: Worker) -> Result<(), String> {
    drop(worker.child.stdin.take());
    let status = worker.child.wait().map_err(|e| e.to_string())?;
    status
        .success()
        .then_some(())
        .ok_or(format!("a worker failed: {status}"))
}

async fn until(what: &str, seconds: u64, done: impl Fn() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn run() -> Result<(), String> {
    let inbox = Inbox::default();
    let app = Router::new()
        .route("/v1/traces", post(otlp::receive))
        .with_state(inbox.spans.clone())
        .merge(
            Router::new()
                .route("/hooks", post(hook))
                .with_state(inbox.clone()),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let receiver = format!(
        "http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let gateway = MockGateway::builder()
        .approval_rate(1.0)
        .build(Clock::system())
        .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let gateway_url = format!(
        "http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let gateway_app = orderflow::gateway_router(gateway);
    tokio::spawn(async move { axum::serve(listener, gateway_app).await });

    let schema = pg::fresh_schema("flowline_otel_");
    let env = [
        ("FLOWLINE_OTEL_SCHEMA", schema.clone()),
        ("FLOWLINE_OTEL_COLLECTOR", receiver.clone()),
        ("FLOWLINE_OTEL_GATEWAY", gateway_url),
        ("FLOWLINE_OTEL_HOOKS", format!("{receiver}/hooks")),
    ];
    let b = spawn("b", &env)?;
    let a = spawn("a", &env)?;
    let api = a
        .first_line
        .trim()
        .strip_prefix("listening ")
        .ok_or(format!("worker a said {:?}", a.first_line))?
        .to_string();

    let order = serde_json::json!({
        "orderId": "traced-1",
        "customerName": "Ada",
        "items": [{"productId": "prod-x-001", "quantity": 1}],
    });
    let answer = reqwest_post(&api, &order).await?;
    if answer != 201 {
        return Err(format!("the order was answered {answer}"));
    }
    let has_step = |step: &str| {
        inbox
            .spans
            .all()
            .iter()
            .any(|s| s.trace == TRACE && s.step.as_deref() == Some(step))
    };
    until("the payment's span", 30, || has_step("payment_processing")).await?;
    // Fulfilment is due two seconds after the payment: worker b runs it.
    stop(a)?;
    until("the delivery's spans", 60, || {
        has_step("delivery") && !inbox.hook_traces.lock().unwrap().is_empty()
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop(b)?;

    check(&inbox)
}

async fn reqwest_post(api: &str, order: &serde_json::Value) -> Result<u16, String> {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, axum::body::Body> = Client::builder(TokioExecutor::new()).build_http();
    let request = axum::http::Request::post(format!("http://{api}/api/order"))
        .header("content-type", "application/json")
        .header("X-Store-ID", "X")
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .body(axum::body::Body::from(order.to_string()))
        .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    Ok(response.status().as_u16())
}

fn check(inbox: &Inbox) -> Result<(), String> {
    let spans: Vec<Received> = inbox
        .spans
        .all()
        .into_iter()
        .filter(|s| s.trace == TRACE)
        .collect();
    let ids: HashSet<&str> = spans.iter().map(|s| s.span.as_str()).collect();
    let mut problems = Vec::new();
    let roots: Vec<&Received> = spans.iter().filter(|s| s.parent == CALLER_SPAN).collect();
    if roots.len() != 1 || roots[0].name != "http" {
        problems.push(format!(
            "one root, the http span under the caller's: {roots:?}"
        ));
    }
    for span in &spans {
        if span.parent != CALLER_SPAN && !ids.contains(span.parent.as_str()) {
            problems.push(format!("an orphan: {span:?}"));
        }
    }
    let by_id: HashMap<&str, &Received> = spans.iter().map(|s| (s.span.as_str(), s)).collect();
    for step in [
        "order_create_api",
        "fraud_guard",
        "inventory_update",
        "payment_processing",
        "order_fulfillment",
        "delivery",
        "webhook.sender",
    ] {
        if !spans.iter().any(|s| s.step.as_deref() == Some(step)) {
            problems.push(format!("no span of step {step}"));
        }
    }
    let gateway_under_payment = spans.iter().any(|s| {
        s.name == "gateway.call"
            && by_id
                .get(s.parent.as_str())
                .is_some_and(|p| p.step.as_deref() == Some("payment_processing"))
    });
    if !gateway_under_payment {
        problems.push("no gateway.call span under the payment's".to_string());
    }
    if !spans.iter().any(|s| s.name == "webhook.deliver") {
        problems.push("no webhook.deliver span".to_string());
    }
    let services: HashSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    if !(services.contains("orders-a") && services.contains("orders-b")) {
        problems.push(format!("spans from both processes: {services:?}"));
    }
    let hooks = inbox.hook_traces.lock().unwrap();
    if !hooks.iter().all(|p| p.contains(TRACE)) || hooks.is_empty() {
        problems.push(format!(
            "the webhook receiver was sent the trace: {hooks:?}"
        ));
    }
    let mut summary: Vec<String> = spans
        .iter()
        .map(|s| {
            format!(
                "{} {}{}",
                s.service,
                s.name,
                s.step
                    .as_deref()
                    .map(|x| format!(" {x}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    summary.sort();
    summary.dedup();
    println!(
        "{} spans in the order's trace:\n  {}",
        spans.len(),
        summary.join("\n  ")
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    if let Ok(role) = std::env::var("FLOWLINE_OTEL_CHILD") {
        return match runtime.block_on(child(&role)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("worker {role}: {err}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(run()) {
        Ok(()) => {
            println!("test one_orders_trace_is_whole_across_two_processes ... ok");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("one order's trace across two processes: {err}");
            ExitCode::FAILURE
        }
    }
}
