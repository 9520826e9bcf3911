//! Browsers on other origins: nothing is allowed until an origin is named in
//! `HttpOptions::cors`; then that origin's preflights are answered on every
//! path, its calls carry `Access-Control-Allow-Origin` and may read the
//! exposed headers, and any other origin gets no CORS header at all.

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use flowline::http::{api_router, Cors, HttpOptions};
use flowline::{ApiResponse, Engine, Flow, MemoryBackend, Method, Step, StepContext, StepError};
use serde_json::json;
use tower::ServiceExt;

const STORE_PAGE: &str = "http://127.0.0.1:5173";

async fn engine() -> Engine {
    let flow = Flow::builder()
        .step(Step::api("note", Method::Post, "/api/notes").handle(
            |_ctx: StepContext, _request| async move {
                Ok::<_, StepError>(ApiResponse::json(201, &json!({ "noted": true })))
            },
        ))
        .build()
        .unwrap();
    Engine::builder(flow)
        .backend(MemoryBackend::new())
        .start()
        .await
        .unwrap()
}

fn options(cors: Cors) -> HttpOptions {
    HttpOptions::new().tenant_header("X-Store-ID").cors(cors)
}

fn preflight(path: &str, origin: &str) -> Request<Body> {
    Request::builder()
        .method("OPTIONS")
        .uri(path)
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,x-store-id")
        .body(Body::empty())
        .unwrap()
}

fn post_note(origin: &str) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri("/api/notes")
        .header("origin", origin)
        .header("x-store-id", "X")
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap()
}

fn header<'a>(response: &'a Response<Body>, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("visible ASCII"))
}

#[tokio::test]
async fn without_an_allowed_origin_no_preflight_is_answered() {
    let router = api_router(engine().await, HttpOptions::new());
    let answer = router
        .oneshot(preflight("/api/notes", STORE_PAGE))
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&answer, "access-control-allow-origin"), None);
}

#[tokio::test]
async fn an_allowed_origin_gets_its_preflights_answered_on_every_path() {
    let cors = Cors::new().allow_origin(STORE_PAGE).unwrap();
    let router = api_router(engine().await, options(cors));
    for path in ["/api/notes", "/api/order/o-1/review", "/no/step/here"] {
        let answer = router
            .clone()
            .oneshot(preflight(path, STORE_PAGE))
            .await
            .unwrap();
        assert!(answer.status().is_success(), "{path}: {}", answer.status());
        assert_eq!(
            header(&answer, "access-control-allow-origin"),
            Some(STORE_PAGE)
        );
        let methods = header(&answer, "access-control-allow-methods").unwrap();
        assert!(methods.contains("POST"), "{methods}");
        let headers = header(&answer, "access-control-allow-headers").unwrap();
        assert!(
            headers.contains("x-store-id") && headers.contains("idempotency-key"),
            "{headers}"
        );
    }
}

#[tokio::test]
async fn an_allowed_origin_may_read_the_trace_and_retry_headers() {
    let cors = Cors::new().allow_origin(STORE_PAGE).unwrap();
    let router = api_router(engine().await, options(cors));
    let answer = router.oneshot(post_note(STORE_PAGE)).await.unwrap();
    assert_eq!(answer.status(), StatusCode::CREATED);
    assert_eq!(
        header(&answer, "access-control-allow-origin"),
        Some(STORE_PAGE)
    );
    let exposed = header(&answer, "access-control-expose-headers").unwrap();
    for name in [
        "retry-after",
        "x-trace-id",
        "idempotency-key",
        "idempotent-replayed",
    ] {
        assert!(exposed.contains(name), "{name} not in {exposed}");
    }
    assert!(header(&answer, "x-trace-id").is_some());
}

#[tokio::test]
async fn another_origin_gets_no_cors_header_and_nothing_breaks() {
    let cors = Cors::new().allow_origin(STORE_PAGE).unwrap();
    let router = api_router(engine().await, options(cors));
    for origin in [
        "http://evil.example",
        "http://127.0.0.1:5174",
        "null",
        "http://127.0.0.1:5173.evil.example",
        "HTTP://127.0.0.1:5173",
        "",
    ] {
        let answer = router
            .clone()
            .oneshot(preflight("/api/notes", origin))
            .await
            .unwrap();
        assert_eq!(
            header(&answer, "access-control-allow-origin"),
            None,
            "{origin}"
        );
        // The call itself is not refused by the server (the browser is what
        // withholds the answer): it runs as any call would.
        let answer = router.clone().oneshot(post_note(origin)).await.unwrap();
        assert_eq!(answer.status(), StatusCode::CREATED);
        assert_eq!(header(&answer, "access-control-allow-origin"), None);
    }
}
