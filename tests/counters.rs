//! `StepContext::add` from the handler's side: what an execution sees of its own
//! adds, mixing adds with writes, overflow, and a rejected add in an API step.
//! (The backend contract of adds is in the conformance suite.)

use std::sync::{Arc, Mutex};

use flowline::prelude::*;
use flowline::testing::TestHarness;
use flowline::StateError;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Tick {
    n: i64,
}
impl Event for Tick {
    const TOPIC: &'static str = "tick";
}

fn tenant() -> TenantId {
    TenantId::new("t").unwrap()
}

fn flow(step: Step) -> Flow {
    Flow::builder()
        .external::<Tick>()
        .step(step)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn adds_sum_at_commit_and_a_get_does_not_see_its_own_pending_adds() {
    let seen: Arc<Mutex<Vec<Option<i64>>>> = Arc::default();
    let log = seen.clone();
    let step = Step::event::<Tick>("count").handle(move |ctx: StepContext, tick: Tick| {
        let log = log.clone();
        async move {
            ctx.add("n", tick.n)?;
            ctx.add("n", tick.n)?;
            let seen = ctx.get::<i64>("n").await?;
            log.lock().unwrap().push(seen);
            Ok::<_, StepError>(())
        }
    });
    let h = TestHarness::start(flow(step)).await.unwrap();
    h.emit(&tenant(), &Tick { n: 5 }).await.unwrap();
    h.settle().await;
    h.emit(&tenant(), &Tick { n: -1 }).await.unwrap();
    h.settle().await;
    assert_eq!(h.state::<i64>(&tenant(), "n").await, Some(8));
    // Each get saw the committed value, without the execution's own two adds.
    assert_eq!(*seen.lock().unwrap(), vec![None, Some(10)]);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_key_is_added_to_or_written_not_both_and_adds_overflow_as_errors() {
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = errors.clone();
    let step = Step::event::<Tick>("mix").handle(move |ctx: StepContext, _tick: Tick| {
        let log = log.clone();
        async move {
            let record = |r: Result<(), StateError>| {
                log.lock().unwrap().push(match r {
                    Ok(()) => "ok".to_string(),
                    Err(StateError::AddAndWrite { key }) => format!("add-and-write {key}"),
                    Err(StateError::AddOverflow { key }) => format!("overflow {key}"),
                    Err(other) => format!("other {other}"),
                })
            };
            record(ctx.put("written", &1));
            record(ctx.add("written", 1));
            record(ctx.delete("deleted"));
            record(ctx.add("deleted", 1));
            record(ctx.add("added", 1));
            record(ctx.put("added", &1));
            record(ctx.delete("added"));
            record(ctx.add("big", i64::MAX));
            record(ctx.add("big", 1));
            record(ctx.add("", 1));
            record(ctx.put("nul\0key", &1));
            Ok::<_, StepError>(())
        }
    });
    let h = TestHarness::start(flow(step)).await.unwrap();
    h.emit(&tenant(), &Tick { n: 0 }).await.unwrap();
    h.settle().await;
    let errors = errors.lock().unwrap().clone();
    assert_eq!(
        errors[..9],
        [
            "ok",
            "add-and-write written",
            "ok",
            "add-and-write deleted",
            "ok",
            "add-and-write added",
            "add-and-write added",
            "ok",
            "overflow big",
        ]
    );
    assert!(errors[9].contains("invalid state key"), "{}", errors[9]);
    assert!(errors[10].contains("without NUL"), "{}", errors[10]);
    // The handler returned Ok: what was accepted commits, what was refused does not.
    assert_eq!(h.state::<i64>(&tenant(), "written").await, Some(1));
    assert_eq!(h.state::<i64>(&tenant(), "added").await, Some(1));
    assert_eq!(h.state::<i64>(&tenant(), "big").await, Some(i64::MAX));
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_api_step_whose_add_is_rejected_answers_500_and_applies_nothing() {
    let flow = Flow::builder()
        .step(Step::api("label", Method::Post, "/label").handle(
            |ctx: StepContext, _req: ApiRequest| async move {
                ctx.put("label", "ten")?;
                Ok(ApiResponse::ok(&"labelled"))
            },
        ))
        .step(Step::api("bump", Method::Post, "/bump/{key}").handle(
            |ctx: StepContext, req: ApiRequest| async move {
                ctx.add(req.param("key").unwrap_or_default(), 1)?;
                ctx.put("bumped", &true)?;
                Ok(ApiResponse::ok(&"bumped"))
            },
        ))
        .build()
        .unwrap();
    let h = TestHarness::start(flow).await.unwrap();
    let call = |path: &str| ApiRequest::new(Method::Post, path, tenant());
    assert!(h.engine().call(call("/label")).await.is_success());
    let response = h.engine().call(call("/bump/label")).await;
    assert_eq!(response.status, 500, "{response:?}");
    assert_eq!(response.body["code"], "invalid_counter");
    let message = response.body["message"].as_str().unwrap_or_default();
    assert!(message.contains("\"label\""), "{message}");
    assert_eq!(h.state::<bool>(&tenant(), "bumped").await, None);
    assert_eq!(
        h.state::<String>(&tenant(), "label").await.as_deref(),
        Some("ten")
    );
    let response = h.engine().call(call("/bump/hits")).await;
    assert!(response.is_success(), "{response:?}");
    assert_eq!(h.state::<i64>(&tenant(), "hits").await, Some(1));
    h.shutdown().await;
}
