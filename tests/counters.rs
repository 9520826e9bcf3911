//! `StepContext::add`, `take` and `add_at_least` from the handler's side: what an
//! execution sees of its own adds, mixing adds with writes, overflow, floors, and
//! a rejected add in an API step.
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

/// `take` and `add_at_least` from the handler's side: a peek reads without a
/// check and sees the execution's own writes, not its adds; the highest floor
/// of an execution's bounded adds to a key bounds their sum; a take too large
/// for an `i64` is a typed error, not a panic.
#[tokio::test(start_paused = true)]
async fn takes_bound_the_sum_of_an_executions_adds_and_peeks_check_nothing() {
    // What each run peeked: the units, and (for the first case) its own write.
    type Peeked = Vec<(Option<i64>, Option<i64>)>;
    let seen: Arc<Mutex<Peeked>> = Arc::default();
    let log = seen.clone();
    let step = Step::event::<Tick>("stock").handle(move |ctx: StepContext, tick: Tick| {
        let log = log.clone();
        async move {
            match tick.n {
                // Seed 10 units.
                0 => ctx.add("units", 10)?,
                // Takes 4, gives 1 back: 10 - 3 = 7, above both floors.
                1 => {
                    ctx.take("units", 4)?;
                    ctx.add_at_least("units", 1, 5)?;
                    ctx.put("note", &1)?;
                    let units = ctx.peek::<i64>("units").await?;
                    let note = ctx.peek::<i64>("note").await?;
                    log.lock().unwrap().push((units, note));
                }
                // The first run takes 3 more with a floor of 5 (the higher of
                // 0 and 5) on 7 units: 4 breaks it, so nothing applies and the
                // execution re-runs; the re-run peeks 7 again and takes 2.
                2 => {
                    let units = ctx.peek::<i64>("units").await?;
                    let first = {
                        let mut log = log.lock().unwrap();
                        log.push((units, None));
                        log.len() == 2
                    };
                    if first {
                        ctx.take("units", 3)?;
                        ctx.add_at_least("units", 0, 5)?;
                        ctx.put("first-run", &true)?;
                    } else {
                        ctx.take("units", 2)?;
                    }
                }
                _ => {
                    let err = ctx.take("units", u64::MAX).unwrap_err();
                    assert!(matches!(err, StateError::AddOverflow { .. }), "{err}");
                }
            }
            Ok::<_, StepError>(())
        }
    });
    let h = TestHarness::start(flow(step)).await.unwrap();
    for n in 0..4 {
        h.emit(&tenant(), &Tick { n }).await.unwrap();
        h.settle().await;
    }
    assert_eq!(
        seen.lock().unwrap()[0],
        (Some(10), Some(1)),
        "a peek sees the committed units and this execution's own write"
    );
    assert_eq!(
        seen.lock().unwrap()[1..],
        [(Some(7), None), (Some(7), None)],
        "the broken floor re-ran the execution once, and applied nothing"
    );
    assert_eq!(h.state::<i64>(&tenant(), "units").await, Some(5));
    assert_eq!(h.state::<bool>(&tenant(), "first-run").await, None);
    let m = h.engine().metrics().await.unwrap();
    assert_eq!(
        (m.conflicts, m.dead_lettered, m.processed),
        (1, 0, 4),
        "{m:?}"
    );
    h.shutdown().await;
}
