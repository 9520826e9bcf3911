//! The workbench's dead-letter endpoints: filters and the cursor, replay and
//! purge by query, a corrected replay, and bad input as `400` JSON errors.

use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use axum::Router;
use flowline::http::workbench_router;
use flowline::prelude::*;
use flowline::testing::{TestHarness, TEST_EPOCH};
use flowline::{EmitOptions, MemoryBackend};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tower::ServiceExt;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Charge {
    id: u32,
    cents: i64,
}
impl Event for Charge {
    const TOPIC: &'static str = "charge.asked";
}

/// A step that refuses negative amounts for good and writes the others.
async fn harness() -> TestHarness {
    TestHarness::start(flow()).await.unwrap()
}

fn flow() -> Flow {
    let charge = Step::event::<Charge>("charge")
        .retry(RetryPolicy::none())
        .handle(|ctx: StepContext, charge: Charge| async move {
            if charge.cents < 0 {
                return Err(StepError::permanent("negative amount"));
            }
            ctx.put(&format!("charged/{}", charge.id), &charge.cents)?;
            Ok(())
        });
    Flow::builder()
        .external::<Charge>()
        .step(charge)
        .build()
        .unwrap()
}

async fn call(app: &Router, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn ids(body: &Value) -> Vec<u64> {
    body["deadLetters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn dead_letters_are_paged_filtered_replayed_and_corrected_over_http() {
    let h = harness().await;
    let acme = TenantId::new("acme").unwrap();
    for id in 0..5 {
        h.emit(&acme, &Charge { id, cents: -1 }).await.unwrap();
        h.advance(Duration::from_secs(1)).await;
    }
    let app = workbench_router(h.engine().clone());

    let (status, first) = call(
        &app,
        "GET",
        "/_flowline/api/dead-letters?limit=2&kind=permanent",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["deadLetters"][0]["kind"], "permanent");
    let cursor = first["nextAfter"].as_u64().expect("a cursor");
    let (_, second) = call(
        &app,
        "GET",
        &format!("/_flowline/api/dead-letters?limit=2&after={cursor}"),
        None,
    )
    .await;
    let (_, third) = call(
        &app,
        "GET",
        &format!(
            "/_flowline/api/dead-letters?limit=2&after={}",
            second["nextAfter"]
        ),
        None,
    )
    .await;
    assert_eq!(third["deadLetters"].as_array().unwrap().len(), 1);
    assert_eq!(
        third["nextAfter"],
        Value::Null,
        "the last page has no cursor"
    );
    let all = [ids(&first), ids(&second), ids(&third)].concat();
    assert_eq!(all.len(), 5);

    let since = all_failed_at(&app).await[3];
    let (_, recent) = call(
        &app,
        "GET",
        &format!("/_flowline/api/dead-letters?since={since}"),
        None,
    )
    .await;
    assert_eq!(ids(&recent), all[3..].to_vec());

    // Correct one and replay it: it runs, and its dead letter is gone.
    let (status, done) = call(
        &app,
        "POST",
        &format!("/_flowline/api/dead-letters/{}/replay", all[0]),
        Some(json!({ "payload": { "id": 0, "cents": 250 } })),
    )
    .await;
    assert_eq!((status, done), (StatusCode::OK, json!({ "replayed": 1 })));
    h.settle().await;
    assert_eq!(h.state::<i64>(&acme, "charged/0").await, Some(250));
    let (status, _) = call(
        &app,
        "POST",
        &format!("/_flowline/api/dead-letters/{}/replay", all[0]),
        Some(json!({ "payload": {} })),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Purge by query: the two oldest left.
    let (_, purged) = call(
        &app,
        "POST",
        "/_flowline/api/dead-letters/purge",
        Some(json!({ "query": { "tenant": "acme", "kind": "permanent", "limit": 2 } })),
    )
    .await;
    assert_eq!(purged, json!({ "purged": 2 }));
    // Replay the rest by query: they fail again, as new dead letters.
    let (_, replayed) = call(
        &app,
        "POST",
        "/_flowline/api/dead-letters/replay",
        Some(json!({ "query": { "step": "charge" } })),
    )
    .await;
    assert_eq!(replayed, json!({ "replayed": 2 }));
    h.settle().await;
    assert_eq!(h.dead_letters().await.len(), 2);

    for (method, path, body, code) in [
        (
            "GET",
            "/_flowline/api/dead-letters?kind=sad",
            None,
            "invalid_kind",
        ),
        (
            "GET",
            "/_flowline/api/dead-letters?since=yesterday",
            None,
            "invalid_query",
        ),
        (
            "GET",
            "/_flowline/api/dead-letters?after=-1",
            None,
            "invalid_query",
        ),
        (
            "POST",
            "/_flowline/api/dead-letters/replay",
            Some(json!({ "ids": [1], "query": {} })),
            "invalid_body",
        ),
        (
            "POST",
            "/_flowline/api/dead-letters/purge",
            Some(json!({ "query": { "kind": 7 } })),
            "invalid_kind",
        ),
        (
            "POST",
            "/_flowline/api/dead-letters/1/replay",
            Some(json!({ "body": {} })),
            "invalid_body",
        ),
    ] {
        let (status, answer) = call(&app, method, path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {answer}");
        assert_eq!(answer["code"], code, "{path}: {answer}");
    }
    h.shutdown().await;
}

async fn all_failed_at(app: &Router) -> Vec<i64> {
    let (_, body) = call(app, "GET", "/_flowline/api/dead-letters", None).await;
    body["deadLetters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["failedAt"].as_i64().unwrap())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn orphaned_deliveries_are_listed_moved_and_purged_over_http() {
    let backend = MemoryBackend::new();
    let acme = TenantId::new("acme").unwrap();
    // The previous version called the step `bill`.
    let bill =
        Step::event::<Charge>("bill").handle(|_ctx: StepContext, _c: Charge| async { Ok(()) });
    let old = Flow::builder()
        .external::<Charge>()
        .step(bill)
        .build()
        .unwrap();
    let v1 = TestHarness::start_with(old, backend.clone(), TEST_EPOCH)
        .await
        .unwrap();
    let later = EmitOptions::new().delay(Duration::from_secs(60));
    for id in 0..2 {
        let charge = Charge { id, cents: 5 };
        v1.engine()
            .emit_with(&acme, &charge, later.clone())
            .await
            .unwrap();
    }
    v1.shutdown().await;
    let h = TestHarness::start_with(flow(), backend, TEST_EPOCH)
        .await
        .unwrap();
    let app = workbench_router(h.engine().clone());

    let (status, listed) = call(&app, "GET", "/_flowline/api/orphans", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["orphans"][0]["step"], "bill");
    assert_eq!(listed["orphans"][0]["pending"], 2);
    for (path, body, expected, code) in [
        (
            "/_flowline/api/orphans/move",
            json!({ "from": "charge", "to": "bill" }),
            StatusCode::CONFLICT,
            "refused",
        ),
        (
            "/_flowline/api/orphans/move",
            json!({ "from": "bill", "to": "nowhere" }),
            StatusCode::CONFLICT,
            "refused",
        ),
        (
            "/_flowline/api/orphans/move",
            json!({ "from": "bill" }),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "/_flowline/api/orphans/purge",
            json!({ "from": "Bad Name" }),
            StatusCode::BAD_REQUEST,
            "invalid_step",
        ),
    ] {
        let (status, answer) = call(&app, "POST", path, Some(body)).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (expected, Some(code)),
            "{answer}"
        );
    }
    let move_them = json!({ "from": "bill", "to": "charge" });
    let (status, moved) = call(&app, "POST", "/_flowline/api/orphans/move", Some(move_them)).await;
    assert_eq!((status, moved), (StatusCode::OK, json!({ "moved": 2 })));
    h.advance(Duration::from_secs(61)).await;
    assert_eq!(h.state::<i64>(&acme, "charged/1").await, Some(5));
    let (_, listed) = call(&app, "GET", "/_flowline/api/orphans", None).await;
    assert_eq!(listed, json!({ "orphans": [] }));
    h.shutdown().await;
}
