//! The HTTP face: the orderflow's API steps through `flowline::http::api_router`
//! and the workbench's endpoints, requests sent with `tower::ServiceExt::oneshot`
//! (no socket). Bad input is a `4xx` JSON error, never a `500`, and stores
//! nothing.

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use axum::Router;
use flowline::http::{api_router, workbench_router, HttpOptions, TRACE_HEADER};
use flowline::orderflow::{MockCarrier, MockGateway, Orderflow, STORE_HEADER};
use flowline::{Clock, Engine};
use serde_json::{json, Value};
use tower::ServiceExt;

#[path = "support/orderflow_demo.rs"]
mod demo;
use demo::demo_engine;

async fn engine() -> Engine {
    let gateway = MockGateway::builder().build(Clock::system()).unwrap();
    demo_engine(Orderflow::new(gateway, MockCarrier::new(1)).flow().unwrap()).await
}

fn app(engine: &Engine) -> Router {
    workbench_router(engine.clone()).merge(api_router(
        engine.clone(),
        HttpOptions::new()
            .tenant_header(STORE_HEADER)
            .body_limit(16 * 1024),
    ))
}

fn order(id: &str) -> Value {
    json!({
        "orderId": id,
        "customerName": "Ada Lovelace",
        "items": [{ "productId": "prod-x-001", "quantity": 1 }],
    })
}

struct Answer {
    status: StatusCode,
    trace: Option<String>,
    body: Value,
}

async fn send(app: &Router, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let trace = response
        .headers()
        .get(TRACE_HEADER)
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Answer {
        status,
        trace,
        body,
    }
}

fn post(
    path: &str,
    store: Option<&str>,
    content_type: &str,
    body: impl Into<Body>,
) -> Request<Body> {
    let mut request = Request::post(path).header("content-type", content_type);
    if let Some(store) = store {
        request = request.header(STORE_HEADER, store);
    }
    request.body(body.into()).unwrap()
}

fn get(path: &str, store: Option<&str>) -> Request<Body> {
    let mut request = Request::get(path);
    if let Some(store) = store {
        request = request.header(STORE_HEADER, store);
    }
    request.body(Body::empty()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_over_http_runs_the_flow_under_the_callers_trace() {
    let engine = engine().await;
    let app = app(&engine);
    let trace = flowline::TraceId::new().to_string();
    let mut request = post(
        "/api/order",
        Some("X"),
        "application/json",
        order("web-1").to_string(),
    );
    request
        .headers_mut()
        .insert(TRACE_HEADER, trace.parse().unwrap());
    let created = send(&app, request).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.trace.as_deref(), Some(trace.as_str()));
    engine.wait_idle().await;
    let tracked = send(&app, get("/api/order/tracking/web-1", Some("X"))).await;
    assert_eq!(tracked.status, StatusCode::OK, "{}", tracked.body);
    // The order's steps ran under the trace the request named.
    let in_trace = send(
        &app,
        get(&format!("/_flowline/api/executions?trace={trace}"), None),
    )
    .await;
    let steps: Vec<&str> = in_trace.body["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["step"].as_str().unwrap())
        .collect();
    assert!(steps.contains(&"order_create_api"), "{steps:?}");
    assert!(
        steps.len() >= 3,
        "the order's steps ran in the trace: {steps:?}"
    );
    // Another store does not see it.
    let elsewhere = send(&app, get("/api/order/tracking/web-1", Some("Y"))).await;
    assert_eq!(elsewhere.status, StatusCode::NOT_FOUND);
    engine.shutdown(std::time::Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_4xx_json_error_and_stores_nothing() {
    let engine = engine().await;
    let app = app(&engine);
    let calls_before = engine.local_metrics().api_calls;
    let big = "x".repeat(20 * 1024);
    let cases: Vec<(&str, Request<Body>, StatusCode, &str)> = vec![
        (
            "no store header",
            post(
                "/api/order",
                None,
                "application/json",
                order("b-1").to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "missing_tenant",
        ),
        (
            "a bad store id",
            post(
                "/api/order",
                Some("not a store!"),
                "application/json",
                order("b-2").to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
        ),
        (
            "malformed JSON",
            post(
                "/api/order",
                Some("X"),
                "application/json",
                "{\"orderId\": ",
            ),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "not JSON",
            post("/api/order", Some("X"), "text/plain", "orderId=b-3"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "too large",
            post(
                "/api/order",
                Some("X"),
                "application/json",
                format!("{{\"pad\": \"{big}\"}}"),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "an unknown route",
            get("/api/nothing/here", Some("X")),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "an unknown route, no store",
            get("/nowhere", None),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "a wrong method",
            get("/api/order", Some("X")),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "a bad trace id",
            {
                let mut r = post(
                    "/api/order",
                    Some("X"),
                    "application/json",
                    order("b-4").to_string(),
                );
                r.headers_mut()
                    .insert(TRACE_HEADER, "not-a-uuid".parse().unwrap());
                r
            },
            StatusCode::BAD_REQUEST,
            "invalid_header",
        ),
    ];
    for (what, request, status, code) in cases {
        let answer = send(&app, request).await;
        assert_eq!(answer.status, status, "{what}: {}", answer.body);
        assert_eq!(answer.body["code"], code, "{what}: {}", answer.body);
        assert!(
            answer.body["message"].is_string(),
            "{what}: {}",
            answer.body
        );
    }
    let wrong = app
        .clone()
        .oneshot(get("/api/order", Some("X")))
        .await
        .unwrap();
    assert_eq!(
        wrong.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("POST"),
        "a 405 says which methods the path takes"
    );
    // None of them reached a step, and none of the orders exists.
    assert_eq!(
        engine.local_metrics().api_calls,
        calls_before,
        "no step ran"
    );
    for id in ["b-1", "b-2", "b-3", "b-4"] {
        let answer = send(&app, get(&format!("/api/order/tracking/{id}"), Some("X"))).await;
        assert_eq!(
            answer.status,
            StatusCode::NOT_FOUND,
            "order {id} must not exist"
        );
    }

    // A reused Idempotency-Key with another body is refused, and the first order stands.
    let keyed = |body: Value| {
        let mut r = post(
            "/api/order",
            Some("X"),
            "application/json",
            body.to_string(),
        );
        r.headers_mut()
            .insert("idempotency-key", "k-1".parse().unwrap());
        r
    };
    assert_eq!(
        send(&app, keyed(order("k-1"))).await.status,
        StatusCode::CREATED
    );
    let replayed = send(&app, keyed(order("k-1"))).await;
    assert_eq!(
        replayed.status,
        StatusCode::CREATED,
        "the same key and body: the first answer"
    );
    let conflict = send(&app, keyed(order("k-2"))).await;
    assert!(conflict.status.is_client_error(), "{}", conflict.body);
    assert_eq!(conflict.body["code"], "idempotency_conflict");
    let second = send(&app, get("/api/order/tracking/k-2", Some("X"))).await;
    assert_eq!(second.status, StatusCode::NOT_FOUND);
    engine.shutdown(std::time::Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workbench_serves_its_page_and_answers_bad_queries_with_400() {
    let engine = engine().await;
    let app = app(&engine);
    let page = app.clone().oneshot(get("/_flowline", None)).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = to_bytes(page.into_body(), usize::MAX).await.unwrap();
    assert!(String::from_utf8_lossy(&html).contains("flowline workbench"));
    for asset in ["/_flowline/app.js", "/_flowline/style.css"] {
        assert_eq!(
            app.clone()
                .oneshot(get(asset, None))
                .await
                .unwrap()
                .status(),
            StatusCode::OK,
            "{asset}"
        );
    }

    let flow = send(&app, get("/_flowline/api/flow", None)).await;
    let steps = engine.flow().step_names().len();
    assert_eq!(flow.body["flow"]["steps"].as_array().unwrap().len(), steps);
    assert!(flow.body["mermaid"]
        .as_str()
        .unwrap()
        .starts_with("flowchart"));
    let stats = send(&app, get("/_flowline/api/stats?tenant=X", None)).await;
    assert_eq!(stats.status, StatusCode::OK, "{}", stats.body);
    assert_eq!(stats.body["steps"].as_array().unwrap().len(), steps);
    assert_eq!(stats.body["tenant"]["id"], "X");
    // Store X's catalogue was seeded: its recent executions count per step.
    assert!(
        stats.body["tenant"]["recentByStep"]["seed_database"]["committed"].as_u64() >= Some(1),
        "{}",
        stats.body["tenant"]
    );
    let schedules = send(&app, get("/_flowline/api/schedules", None)).await;
    let first = &schedules.body["schedules"][0];
    assert!(first["nextFire"].as_i64().unwrap() > schedules.body["now"].as_i64().unwrap());

    for (path, code) in [
        ("/_flowline/api/executions?limit=many", "invalid_limit"),
        ("/_flowline/api/executions?tenant=a%20b", "invalid_tenant"),
        (
            "/_flowline/api/dead-letters?step=Not%20A%20Step",
            "invalid_step",
        ),
        ("/_flowline/api/executions?trace=nope", "invalid_trace"),
    ] {
        let answer = send(&app, get(path, None)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(answer.body["code"], code, "{path}");
    }
    let replay = send(
        &app,
        post(
            "/_flowline/api/dead-letters/replay",
            None,
            "application/json",
            "{\"ids\": \"all\"}",
        ),
    )
    .await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST, "{}", replay.body);
    let none = send(
        &app,
        post(
            "/_flowline/api/dead-letters/replay",
            None,
            "application/json",
            "{\"ids\": [424242]}",
        ),
    )
    .await;
    assert_eq!(none.body["replayed"], 0);
    let purged = send(
        &app,
        post(
            "/_flowline/api/dead-letters/purge",
            None,
            "application/json",
            "{\"ids\": [424242]}",
        ),
    )
    .await;
    assert_eq!(purged.body["purged"], 0, "{}", purged.body);
    engine.shutdown(std::time::Duration::from_secs(5)).await;
}
