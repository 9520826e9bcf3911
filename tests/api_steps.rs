//! API steps: routing, atomic commit of writes and emits, errors, tenancy.

use flowline::prelude::*;
use flowline::testing::TestHarness;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct NoteAdded {
    id: String,
}
impl Event for NoteAdded {
    const TOPIC: &'static str = "note.added";
}

fn flow() -> Flow {
    Flow::builder()
        .step(
            Step::api("add-note", Method::Post, "/notes/{id}")
                .emits::<NoteAdded>()
                .handle(|ctx: StepContext, req: ApiRequest| async move {
                    let id = req.param("id").unwrap_or_default().to_string();
                    let Some(text) = req.body.get("text").and_then(|t| t.as_str()) else {
                        return Ok(ApiResponse::error(
                            422,
                            "validation",
                            "body.text is required",
                        ));
                    };
                    if text == "later" {
                        return Err(StepError::retry_after(
                            std::time::Duration::from_millis(1500),
                            std::io::Error::other("the index is busy"),
                        ));
                    }
                    if text == "explode" {
                        ctx.put(&format!("notes/{id}"), &text)?;
                        return Err(StepError::permanent(std::io::Error::other(
                            "handler failed",
                        )));
                    }
                    ctx.put(&format!("notes/{id}"), &text)?;
                    ctx.emit(&NoteAdded { id: id.clone() })?;
                    Ok(ApiResponse::json(201, &serde_json::json!({ "id": id })))
                }),
        )
        .step(Step::api("get-note", Method::Get, "/notes/{id}").handle(
            |ctx: StepContext, req: ApiRequest| async move {
                let id = req.param("id").unwrap_or_default();
                Ok(match ctx.get::<String>(&format!("notes/{id}")).await? {
                    Some(text) => ApiResponse::ok(&serde_json::json!({ "text": text })),
                    None => ApiResponse::error(404, "not_found", format!("no note {id}")),
                })
            },
        ))
        .step(Step::event::<NoteAdded>("index").handle(
            |ctx: StepContext, e: NoteAdded| async move {
                ctx.put(&format!("index/{}", e.id), &true)?;
                Ok::<_, StepError>(())
            },
        ))
        .build()
        .unwrap()
}

fn tenant(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_call_commits_its_writes_and_emits_together() {
    let h = TestHarness::start(flow()).await.unwrap();
    let a = tenant("a");
    let response = h
        .engine()
        .call(
            ApiRequest::new(Method::Post, "/notes/n1", a.clone())
                .json(serde_json::json!({ "text": "hi" })),
        )
        .await;
    assert_eq!(response.status, 201);
    assert_eq!(response.body["id"], "n1");
    assert_eq!(
        h.state::<String>(&a, "notes/n1").await.as_deref(),
        Some("hi")
    );
    h.settle().await;
    assert_eq!(
        h.emitted::<NoteAdded>(),
        vec![NoteAdded { id: "n1".into() }]
    );
    assert_eq!(h.state::<bool>(&a, "index/n1").await, Some(true));
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_handler_answers_500_and_commits_nothing() {
    let h = TestHarness::start(flow()).await.unwrap();
    let a = tenant("a");
    let response = h
        .engine()
        .call(
            ApiRequest::new(Method::Post, "/notes/n2", a.clone())
                .json(serde_json::json!({ "text": "explode" })),
        )
        .await;
    assert_eq!(response.status, 500);
    assert_eq!(response.body["code"], "internal");
    assert!(response.body["message"]
        .as_str()
        .unwrap()
        .contains("handler failed"));
    assert_eq!(h.state::<String>(&a, "notes/n2").await, None);
    h.settle().await;
    assert!(h.emitted::<NoteAdded>().is_empty());
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn unknown_routes_are_404_and_handler_errors_pass_through() {
    let h = TestHarness::start(flow()).await.unwrap();
    let a = tenant("a");
    let missing = h
        .engine()
        .call(ApiRequest::new(Method::Delete, "/notes/n1", a.clone()))
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["code"], "not_found");
    let invalid = h
        .engine()
        .call(ApiRequest::new(Method::Post, "/notes/n1", a.clone()))
        .await;
    assert_eq!(invalid.status, 422);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn another_tenants_note_is_not_found() {
    let h = TestHarness::start(flow()).await.unwrap();
    let post = ApiRequest::new(Method::Post, "/notes/n1", tenant("a"))
        .json(serde_json::json!({ "text": "secret" }));
    assert_eq!(h.engine().call(post).await.status, 201);
    let own = h
        .engine()
        .call(ApiRequest::new(Method::Get, "/notes/n1", tenant("a")))
        .await;
    assert_eq!(own.body["text"], "secret");
    let other = h
        .engine()
        .call(ApiRequest::new(Method::Get, "/notes/n1", tenant("b")))
        .await;
    assert_eq!(other.status, 404);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_shut_down_engine_refuses_calls_and_emits() {
    let h = TestHarness::start(flow()).await.unwrap();
    h.shutdown().await;
    let response = h
        .engine()
        .call(ApiRequest::new(Method::Get, "/notes/n1", tenant("a")))
        .await;
    assert_eq!(response.status, 503);
    let err = h
        .emit(&tenant("a"), &NoteAdded { id: "x".into() })
        .await
        .unwrap_err();
    assert!(matches!(err, flowline::EngineError::ShuttingDown));
}

#[tokio::test(start_paused = true)]
async fn a_failure_a_retry_can_cure_answers_503_with_retry_after() {
    let h = TestHarness::start(flow()).await.unwrap();
    let a = tenant("a");
    let response = h
        .engine()
        .call(
            ApiRequest::new(Method::Post, "/notes/n3", a.clone())
                .json(serde_json::json!({ "text": "later" })),
        )
        .await;
    assert_eq!(response.status, 503);
    assert_eq!(response.body["code"], "unavailable");
    assert_eq!(response.header_value("Retry-After"), Some("2"));
    assert_eq!(h.state::<String>(&a, "notes/n3").await, None);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_api_handler_answers_500() {
    let flow = Flow::builder()
        .step(Step::api("boom", Method::Get, "/boom").handle(
            |_ctx: StepContext, _r: ApiRequest| async move {
                panic!("bad day");
                #[allow(unreachable_code)]
                Ok::<_, StepError>(ApiResponse::ok(&()))
            },
        ))
        .build()
        .unwrap();
    let h = TestHarness::start(flow).await.unwrap();
    let response = h
        .engine()
        .call(ApiRequest::new(Method::Get, "/boom", tenant("a")))
        .await;
    assert_eq!(response.status, 500);
    assert!(response.body["message"]
        .as_str()
        .unwrap()
        .contains("bad day"));
    h.shutdown().await;
}
