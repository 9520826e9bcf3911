//! Engine behaviour end to end on the memory backend: chains, retries, panics,
//! bad input, hot keys, idleness and dropping the engine.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flowline::prelude::*;
use flowline::testing::TestHarness;
use flowline::EngineError;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Ping {
    n: u32,
}
impl Event for Ping {
    const TOPIC: &'static str = "ping";
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Pong {
    n: u32,
}
impl Event for Pong {
    const TOPIC: &'static str = "pong";
}

/// A flow of one step, fed by `Ping` events from outside.
fn ping_flow(step: Step) -> Flow {
    Flow::builder()
        .external::<Ping>()
        .step(step)
        .build()
        .unwrap()
}

fn tenant(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_chain_commits_state_and_emits() {
    let flow = Flow::builder()
        .external::<Ping>()
        .step(Step::event::<Ping>("ping").emits::<Pong>().handle(
            |ctx: StepContext, p: Ping| async move {
                ctx.emit(&Pong { n: p.n + 1 })?;
                Ok::<_, StepError>(())
            },
        ))
        .step(
            Step::event::<Pong>("pong").handle(|ctx: StepContext, p: Pong| async move {
                let total: u32 = ctx.get("total").await?.unwrap_or(0);
                ctx.put("total", &(total + p.n))?;
                Ok::<_, StepError>(())
            }),
        )
        .build()
        .unwrap();
    let h = TestHarness::start(flow).await.unwrap();
    for n in 0..10 {
        h.emit(&tenant("a"), &Ping { n }).await.unwrap();
    }
    h.settle().await;
    assert_eq!(
        h.state::<u32>(&tenant("a"), "total").await,
        Some((1..=10).sum())
    );
    assert_eq!(h.emitted::<Pong>().len(), 10);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn fails_twice_then_succeeds() {
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let flow = ping_flow(
        Step::event::<Ping>("flaky")
            .retry(RetryPolicy::fixed(Duration::from_secs(10)).max_attempts(5))
            .handle(move |_ctx: StepContext, _p: Ping| {
                let r = r.clone();
                async move {
                    if r.fetch_add(1, Ordering::SeqCst) < 2 {
                        return Err(StepError::retryable(std::io::Error::other("boom")));
                    }
                    Ok(())
                }
            }),
    );
    let h = TestHarness::start(flow).await.unwrap();
    h.emit(&tenant("a"), &Ping { n: 1 }).await.unwrap();
    h.settle().await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    h.advance(Duration::from_secs(25)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    h.advance(Duration::from_secs(100)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert!(h.dead_letters().await.is_empty());
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_fails_its_attempt_and_the_engine_keeps_going() {
    let flow = ping_flow(
        Step::event::<Ping>("fragile")
            .retry(RetryPolicy::none())
            .handle(|ctx: StepContext, p: Ping| async move {
                if p.n == 0 {
                    panic!("zero is not allowed");
                }
                ctx.put(&format!("seen/{}", p.n), &true)?;
                Ok::<_, StepError>(())
            }),
    );
    let h = TestHarness::start(flow).await.unwrap();
    h.emit(&tenant("a"), &Ping { n: 0 }).await.unwrap();
    h.emit(&tenant("a"), &Ping { n: 1 }).await.unwrap();
    h.settle().await;
    let dead = h.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .last_error
            .contains("handler panicked: zero is not allowed"),
        "{}",
        dead[0].last_error
    );
    assert_eq!(h.state::<bool>(&tenant("a"), "seen/1").await, Some(true));
    // The panicked execution released its concurrency slot: more work still runs.
    h.emit(&tenant("a"), &Ping { n: 2 }).await.unwrap();
    h.settle().await;
    assert_eq!(h.state::<bool>(&tenant("a"), "seen/2").await, Some(true));
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn bad_headers_and_topics_are_typed_errors_where_they_enter() {
    let flow = ping_flow(
        Step::event::<Ping>("sink")
            .handle(|_ctx: StepContext, _p: Ping| async move { Ok::<_, StepError>(()) }),
    );
    let h = TestHarness::start(flow).await.unwrap();
    let engine = h.engine();
    let bad_header = EmitOptions::new().header("bad header", "x");
    let err = engine
        .emit_with(&tenant("a"), &Ping { n: 1 }, bad_header)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid header name"), "{err}");
    let control = EmitOptions::new().header("x-note", "line\nbreak");
    let err = engine
        .emit_with(&tenant("a"), &Ping { n: 1 }, control)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid header value"), "{err}");
    let payload = flowline::Payload::encode(&Ping { n: 1 }).unwrap();
    let err = engine
        .emit_json(&tenant("a"), "Not A Topic", payload, EmitOptions::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid topic"), "{err}");
    assert_eq!(
        engine.metrics().await.unwrap().queue.pending(),
        0,
        "nothing was published"
    );
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_emit_no_step_would_run_is_refused_not_dropped() {
    let flow = ping_flow(
        Step::event::<Ping>("sink")
            .handle(|_ctx: StepContext, _p: Ping| async move { Ok::<_, StepError>(()) }),
    );
    let h = TestHarness::start(flow).await.unwrap();
    let engine = h.engine();
    let no_subscriber = |err: EngineError| match err {
        EngineError::NoSubscriber { topic } => topic,
        other => panic!("expected EngineError::NoSubscriber, got {other:?}"),
    };
    // `Pong` is a real event type, but nothing in this flow subscribes to it.
    let typed = engine.emit(&tenant("a"), &Pong { n: 1 }).await;
    assert_eq!(no_subscriber(typed.unwrap_err()), "pong");
    let batch = engine.emit_batch(&tenant("a"), &[Pong { n: 2 }]).await;
    assert_eq!(no_subscriber(batch.unwrap_err()), "pong");
    let payload = flowline::Payload::encode(&Ping { n: 1 }).unwrap();
    let typo = engine
        .emit_json(&tenant("a"), "pnig", payload, EmitOptions::new())
        .await;
    assert_eq!(no_subscriber(typo.unwrap_err()), "pnig");
    assert!(h.envelopes().is_empty(), "nothing was published");
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_external_topic_no_step_hears_yet_is_accepted() {
    let sink = Step::event::<Ping>("sink").handle(|_ctx: StepContext, _p: Ping| async { Ok(()) });
    let flow = Flow::builder()
        .external::<Ping>()
        .external::<Pong>()
        .step(sink)
        .build()
        .unwrap();
    let h = TestHarness::start(flow).await.unwrap();
    let engine = h.engine();
    engine.emit(&tenant("a"), &Pong { n: 1 }).await.unwrap();
    engine
        .emit_batch(&tenant("a"), &[Pong { n: 2 }])
        .await
        .unwrap();
    assert!(h.envelopes().is_empty(), "nothing to publish");
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_hot_key_costs_linear_reruns_not_quadratic() {
    let flow = ping_flow(Step::event::<Ping>("count").handle(
        |ctx: StepContext, _p: Ping| async move {
            let n: u32 = ctx.get("hits").await?.unwrap_or(0);
            ctx.put("hits", &(n + 1))?;
            Ok::<_, StepError>(())
        },
    ));
    let h = TestHarness::start(flow).await.unwrap();
    let pings: Vec<Ping> = (0..1_000).map(|n| Ping { n }).collect();
    h.engine().emit_batch(&tenant("a"), &pings).await.unwrap();
    h.settle().await;
    assert_eq!(h.state::<u32>(&tenant("a"), "hits").await, Some(1_000));
    let conflicts = h.engine().metrics().await.unwrap().conflicts;
    // Each batch's first round conflicts once per execution but the first; the
    // re-runs then commit one after another. Re-running them together instead
    // would cost about 256²/2 = 32,768 re-runs per batch.
    assert!(
        conflicts < 2_000,
        "{conflicts} conflict re-runs for 1,000 increments"
    );
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_emit_hook_hears_only_runs_that_committed() {
    // Every run reads the hot key and emits; most conflict and run again. The
    // hook (and so `emitted`) must hear each ping's pong once, not once a run.
    let flow = Flow::builder()
        .external::<Ping>()
        .step(Step::event::<Ping>("count").emits::<Pong>().handle(
            |ctx: StepContext, p: Ping| async move {
                let n: u32 = ctx.get("hits").await?.unwrap_or(0);
                ctx.put("hits", &(n + 1))?;
                ctx.emit(&Pong { n: p.n })?;
                Ok::<_, StepError>(())
            },
        ))
        .build()
        .unwrap();
    let h = TestHarness::start(flow).await.unwrap();
    let pings: Vec<Ping> = (0..200).map(|n| Ping { n }).collect();
    h.engine().emit_batch(&tenant("a"), &pings).await.unwrap();
    h.settle().await;
    let conflicts = h.engine().metrics().await.unwrap().conflicts;
    assert!(conflicts > 0, "the key was not contended");
    let mut heard: Vec<u32> = h.emitted::<Pong>().into_iter().map(|p| p.n).collect();
    heard.sort_unstable();
    assert_eq!(heard, (0..200).collect::<Vec<_>>());
    assert_eq!(
        h.emitted::<Ping>().len(),
        200,
        "emits from outside, once each"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_idle_waits_for_retries_that_are_already_due() {
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let flow = ping_flow(
        Step::event::<Ping>("flaky")
            .retry(
                RetryPolicy::default()
                    .backoff(flowline::Backoff::Immediate)
                    .max_attempts(3),
            )
            .handle(move |ctx: StepContext, _p: Ping| {
                let r = r.clone();
                async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    if ctx.attempt() < 3 {
                        return Err(StepError::retryable(std::io::Error::other("not yet")));
                    }
                    Ok(())
                }
            }),
    );
    let engine = Engine::builder(flow).start().await.unwrap();
    for round in 1..=20u32 {
        engine.emit(&tenant("a"), &Ping { n: round }).await.unwrap();
        engine.wait_idle().await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3 * round,
            "round {round}: idle before the due retries ran"
        );
    }
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn dropping_the_engine_stops_it_and_loses_nothing() {
    let backend = MemoryBackend::new();
    let flow = || {
        ping_flow(
            Step::event::<Ping>("slow")
                .lease(Duration::from_secs(60))
                .handle(|ctx: StepContext, p: Ping| async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    ctx.put(&format!("done/{}", p.n), &true)?;
                    Ok::<_, StepError>(())
                }),
        )
    };
    let engine = Engine::builder(flow())
        .backend(backend.clone())
        .start()
        .await
        .unwrap();
    engine.emit(&tenant("a"), &Ping { n: 1 }).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(engine);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let again = Engine::builder(flow())
        .backend(backend.clone())
        .start()
        .await
        .unwrap();
    assert_eq!(
        again.state::<bool>(&tenant("a"), "done/1").await.unwrap(),
        None,
        "the dropped engine committed nothing"
    );
    tokio::time::sleep(Duration::from_secs(70)).await;
    again.wait_idle().await;
    assert_eq!(
        again.state::<bool>(&tenant("a"), "done/1").await.unwrap(),
        Some(true),
        "redelivered after the lease"
    );
    again.shutdown(Duration::from_secs(1)).await;
}
