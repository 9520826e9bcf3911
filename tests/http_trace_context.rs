//! W3C Trace Context over HTTP, with no exporter installed: a request's
//! `traceparent` sets its trace, and every event it causes, step after step,
//! carries it on (with its `tracestate`); a malformed one is ignored and the
//! request starts a new trace, never a `4xx`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use flowline::api::{ApiRequest, ApiResponse, Method};
use flowline::http::{api_router, HttpOptions, TRACE_HEADER};
use flowline::prelude::*;
use flowline::trace_context::TraceParent;
use flowline::Envelope;
use serde::{Deserialize, Serialize};
use tower::ServiceExt;

#[derive(Serialize, Deserialize)]
struct SignedUp {
    email: String,
}
impl Event for SignedUp {
    const TOPIC: &'static str = "signed_up";
}

#[derive(Serialize, Deserialize)]
struct Welcomed {
    email: String,
}
impl Event for Welcomed {
    const TOPIC: &'static str = "welcomed";
}

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

struct App {
    engine: Engine,
    router: axum::Router,
    emitted: Arc<Mutex<Vec<Envelope>>>,
}

async fn app() -> App {
    let flow = Flow::builder()
        .step(
            Step::api("signup", Method::Post, "/signup")
                .emits::<SignedUp>()
                .handle(|ctx: StepContext, _: ApiRequest| async move {
                    ctx.emit(&SignedUp {
                        email: "ada@example.com".into(),
                    })?;
                    Ok(ApiResponse::json(201, &serde_json::json!({})))
                }),
        )
        .step(
            Step::event::<SignedUp>("welcome")
                .emits::<Welcomed>()
                .handle(|ctx: StepContext, s: SignedUp| async move {
                    ctx.emit(&Welcomed { email: s.email })?;
                    Ok::<_, StepError>(())
                }),
        )
        .step(
            Step::event::<Welcomed>("log")
                .handle(|_: StepContext, _: Welcomed| async move { Ok::<_, StepError>(()) }),
        )
        .build()
        .unwrap();
    let emitted = Arc::new(Mutex::new(Vec::new()));
    let seen = emitted.clone();
    let engine = Engine::builder(flow)
        .backend(MemoryBackend::new())
        .on_emit(move |e: &Envelope| seen.lock().unwrap().push(e.clone()))
        .start()
        .await
        .unwrap();
    let router = api_router(
        engine.clone(),
        HttpOptions::new().tenant_header("X-Store-ID"),
    );
    App {
        engine,
        router,
        emitted,
    }
}

fn signup(headers: &[(&str, &[u8])]) -> Request<Body> {
    let mut request = Request::post("/signup")
        .header("X-Store-ID", "shop")
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::from("{}")).unwrap()
}

/// Sends `request`, waits for its events to settle, returns the answer's
/// trace id and the events it caused, in emit order.
async fn send(app: &App, request: Request<Body>) -> (StatusCode, String, Vec<Envelope>) {
    let response = app.router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let trace = response.headers()[TRACE_HEADER]
        .to_str()
        .unwrap()
        .to_string();
    app.engine.wait_idle().await;
    let events = std::mem::take(&mut *app.emitted.lock().unwrap());
    (status, trace, events)
}

#[tokio::test]
async fn a_requests_traceparent_reaches_every_event_it_causes() {
    let app = app().await;
    let (status, trace, events) = send(
        &app,
        signup(&[
            ("traceparent", PARENT.as_bytes()),
            ("tracestate", b"congo=t61rcWkgMzE"),
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        trace, "4bf92f35-77b3-4da6-a3ce-929d0e0e4736",
        "the caller's trace"
    );
    let topics: Vec<&str> = events.iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(topics, ["signed_up", "welcomed"]);
    for event in &events {
        assert_eq!(event.trace_id.to_string(), trace);
        let parent = TraceParent::from_headers(&event.headers).expect("a traceparent");
        assert_eq!(
            parent.to_string(),
            PARENT,
            "passed on as it came: nothing traces here"
        );
        assert_eq!(parent.state(), Some("congo=t61rcWkgMzE"));
    }
    app.engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_malformed_traceparent_is_ignored_and_a_new_trace_starts() {
    let app = app().await;
    let malformed: [&[u8]; 6] = [
        b"",
        b"garbage",
        b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-\xff1",
    ];
    let mut traces = Vec::new();
    for value in malformed {
        let (status, trace, events) = send(
            &app,
            signup(&[("traceparent", value), ("tracestate", b"\xfe")]),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "{value:?} is ignored, not refused"
        );
        assert_ne!(trace, "4bf92f35-77b3-4da6-a3ce-929d0e0e4736");
        assert_eq!(events.len(), 2);
        for event in &events {
            assert_eq!(event.trace_id.to_string(), trace, "one new trace");
            assert!(
                TraceParent::from_headers(&event.headers).is_none(),
                "nothing malformed is passed on"
            );
            assert!(!event
                .headers
                .iter()
                .any(|(n, _)| n == "traceparent" || n == "tracestate"));
        }
        traces.push(trace);
    }
    traces.sort();
    traces.dedup();
    assert_eq!(traces.len(), malformed.len(), "each request its own trace");
    app.engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn x_trace_id_still_names_the_trace_when_no_traceparent_comes() {
    let app = app().await;
    let id = "0190f5b4-3c3a-7cc2-9a57-3a4f0b3a1e01";
    let (status, trace, events) = send(&app, signup(&[(TRACE_HEADER, id.as_bytes())])).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(trace, id);
    assert!(events.iter().all(|e| e.trace_id.to_string() == id));
    app.engine.shutdown(Duration::from_secs(5)).await;
}
