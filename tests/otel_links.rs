//! The trace model for work that is not one call after another (feature
//! `otel`), read back from an OTLP receiver: a retry is another attempt
//! under the same parent, its failed attempt marked with its error class; a
//! replay from the dead letters is a later attempt in the same trace; a
//! debounced batch runs in one event's trace and links to every other
//! event's span; a trace its caller does not record exports nothing. (Its own test binary: the span link is one per process.)

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::Router;
use flowline::otel::{install, OtelOptions};
use flowline::prelude::*;
use flowline::{DeadLetterQuery, EmitOptions};
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[path = "support/otlp.rs"]
mod otlp;

#[derive(Serialize, Deserialize)]
struct Signup {
    n: u32,
}
impl Event for Signup {
    const TOPIC: &'static str = "signup";
}

/// The traceparent of signup `n`: a trace and a caller's span of its own.
fn parent(n: u32) -> (String, String) {
    (
        format!("{:032x}", 0xabc0 + u128::from(n)),
        format!("{:016x}", 0x51 + u64::from(n)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_replays_and_debounced_batches_stay_in_their_traces() {
    let spans = otlp::Spans::default();
    let app = Router::new()
        .route("/v1/traces", post(otlp::receive))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let export =
        install(OtelOptions::new(endpoint).export_every(Duration::from_millis(50))).unwrap();
    tracing_subscriber::registry().with(export.layer()).init();

    let welcome_calls = Arc::new(AtomicU32::new(0));
    let audit_healthy = Arc::new(AtomicBool::new(false));
    let (calls, healthy) = (welcome_calls.clone(), audit_healthy.clone());
    let flow = Flow::builder()
        .external::<Signup>()
        .step(
            Step::event::<Signup>("welcome")
                .retry(RetryPolicy::exponential(
                    Duration::from_millis(10),
                    Duration::from_millis(20),
                ))
                .handle(move |_: StepContext, s: Signup| {
                    let calls = calls.clone();
                    async move {
                        // Signup 0's first attempt fails.
                        if s.n == 0 && calls.fetch_add(1, Ordering::SeqCst) == 0 {
                            return Err(StepError::retryable("the mail server is busy"));
                        }
                        Ok(())
                    }
                }),
        )
        .step(
            Step::event::<Signup>("audit")
                .retry(RetryPolicy::none())
                .handle(move |_: StepContext, s: Signup| {
                    let healthy = healthy.clone();
                    async move {
                        if s.n == 1 && !healthy.load(Ordering::SeqCst) {
                            return Err(StepError::permanent("the audit log refused it"));
                        }
                        Ok(())
                    }
                }),
        )
        .step(
            Step::event::<Signup>("digest")
                .debounce(Duration::from_millis(200), Duration::from_secs(5))
                .handle(|_: StepContext, batch: Vec<Signup>| async move {
                    assert!(!batch.is_empty());
                    Ok::<_, StepError>(())
                }),
        )
        .build()
        .unwrap();
    let engine = Engine::builder(flow)
        .backend(MemoryBackend::new())
        .start()
        .await
        .unwrap();
    let tenant = TenantId::new("shop").unwrap();
    for n in 0..3 {
        let (trace, span) = parent(n);
        let traced = EmitOptions::new().header("traceparent", format!("00-{trace}-{span}-01"));
        engine
            .emit_with(&tenant, &Signup { n }, traced)
            .await
            .unwrap();
    }
    // A caller that does not record its trace: nothing of it is exported.
    let quiet = TenantId::new("quiet").unwrap();
    let (trace, span) = parent(9);
    let unsampled = EmitOptions::new().header("traceparent", format!("00-{trace}-{span}-00"));
    engine
        .emit_with(&quiet, &Signup { n: 9 }, unsampled)
        .await
        .unwrap();
    engine.wait_idle().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    engine.wait_idle().await;
    audit_healthy.store(true, Ordering::SeqCst);
    assert_eq!(
        engine
            .replay_matching(&DeadLetterQuery::new())
            .await
            .unwrap(),
        1
    );
    engine.wait_idle().await;
    export.flush();

    let deadline = Instant::now() + Duration::from_secs(10);
    let step_spans = |step: &str, n: u32| -> Vec<otlp::Received> {
        let (trace, _) = parent(n);
        spans
            .all()
            .into_iter()
            .filter(|s| s.trace == trace && s.step.as_deref() == Some(step))
            .collect()
    };
    while step_spans("audit", 1).len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        export.flush();
    }

    // A retry: two attempts of welcome in signup 0's trace, both children
    // of the caller's span; the first one failed, with its class.
    let (_, caller0) = parent(0);
    let mut welcome = step_spans("welcome", 0);
    welcome.sort_by_key(|s| s.attempt);
    let attempts: Vec<Option<i64>> = welcome.iter().map(|s| s.attempt).collect();
    assert_eq!(attempts, [Some(1), Some(2)], "{welcome:?}");
    assert!(welcome.iter().all(|s| s.parent == caller0));
    assert_eq!(welcome[0].error_type.as_deref(), Some("retryable"));
    assert_eq!(welcome[1].error_type, None);

    // A replay: the dead-lettered audit of signup 1 runs again in its trace.
    let (_, caller1) = parent(1);
    let audit = step_spans("audit", 1);
    assert_eq!(
        audit.len(),
        2,
        "the failed attempt and the replay: {audit:?}"
    );
    assert!(audit.iter().all(|s| s.parent == caller1));
    assert!(audit
        .iter()
        .any(|s| s.error_type.as_deref() == Some("permanent")));

    // A debounced batch: the run links to the span of each signup.
    let all = spans.all();
    let runs: Vec<&otlp::Received> = all.iter().filter(|s| !s.links.is_empty()).collect();
    assert_eq!(runs.len(), 1, "one run of the window: {runs:?}");
    let mut linked = runs[0].links.clone();
    linked.sort();
    let expected: Vec<(String, String)> = (0..3).map(parent).collect();
    assert_eq!(linked, expected, "a link to every signup's caller");
    assert!(
        expected.iter().any(|(trace, _)| *trace == runs[0].trace),
        "the run is in one signup's trace, not a trace of its own"
    );
    let (quiet_trace, _) = parent(9);
    assert!(
        !all.iter().any(|s| s.trace == quiet_trace),
        "an unsampled trace exports nothing"
    );
    engine.shutdown(Duration::from_secs(5)).await;
    export.shutdown();
}
