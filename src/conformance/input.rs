//! Bad input gets a clear, typed error where it enters, and never poisons a queue.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{drain, epoch_clock, start, tenant, Done, Job, Log};
use crate::backend::Backend;
use crate::cron::{CronError, CronTick};
use crate::engine::EngineError;
use crate::engine::{EmitError, StepContext};
use crate::engine::{Flow, FlowError};
use crate::engine::{Step, StepError};
use crate::event::EmitOptions;
use crate::event::{Event, Payload, TenantId, Topic};

/// An event no conformance step declares that it emits.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Stray {}

impl Event for Stray {
    const TOPIC: &'static str = "conformance.stray";
}

/// **Contract 10, bad payloads.** A payload that does not deserialize into a typed
/// step's event is a permanent failure: it dead-letters on the first attempt with
/// an error naming the topic and what did not fit, the handler never sees it,
/// nothing panics, and the queue is not poisoned — the next event in the same FIFO
/// lane is handled.
pub async fn undecodable_payload_dead_letters_without_blocking<B: Backend + Clone>(backend: B) {
    let seen: Log<u64> = Log::new();
    let log = seen.clone();
    let flow = Flow::builder()
        .external::<Job>()
        .step(
            Step::event::<Job>("typed")
                .fifo()
                .handle(move |ctx: StepContext, job: Job| {
                    let log = log.clone();
                    async move {
                        log.push(job.n);
                        ctx.put(&format!("seen/{}", job.n), &true)?;
                        Ok::<_, StepError>(())
                    }
                }),
        )
        .build()
        .expect("valid flow");
    let h = start(flow, backend, epoch_clock()).await;
    let acme = tenant("acme");
    let lane = || EmitOptions::new().group("lane");
    let bad = Payload::from_json(r#"{"n":"not a number"}"#).expect("well-formed JSON");
    let bad_id = h
        .engine()
        .emit_json(&acme, Job::TOPIC, bad, lane())
        .await
        .expect("an untyped emit is accepted");
    h.engine()
        .emit_with(&acme, &Job { n: 7 }, lane())
        .await
        .expect("emit");
    drain(&h).await;

    assert_eq!(
        seen.entries(),
        vec![7],
        "the good event after the bad one is handled"
    );
    assert_eq!(h.state::<bool>(&acme, "seen/7").await, Some(true));
    let dead = h.dead_letters().await;
    assert_eq!(dead.len(), 1, "the bad payload dead-letters: {dead:?}");
    let dl = &dead[0];
    assert_eq!(dl.event.id, bad_id);
    assert_eq!(dl.kind, crate::FailureKind::Undecodable);
    assert_eq!(
        dl.attempts, 1,
        "a payload that does not decode is never retried"
    );
    assert!(
        dl.last_error.contains(Job::TOPIC) && dl.last_error.contains("expected u64"),
        "the error should say where and what: {:?}",
        dl.last_error
    );
    let m = h.engine().metrics().await.expect("metrics");
    assert_eq!((m.processed, m.retried, m.dead_lettered), (1, 0, 1));
    h.shutdown().await;
}

/// **Contract 10, typed errors where input enters.** Invalid tenant ids, topics,
/// header names, group keys, JSON text, cron expressions and time zones are rejected with typed
/// errors that say what and where; an emit with an invalid topic publishes nothing,
/// and the engine keeps working.
pub async fn invalid_input_is_a_typed_error<B: Backend + Clone>(backend: B) {
    for bad in ["", "acme/evil", "white space", &"x".repeat(65)] {
        let err = TenantId::new(bad).expect_err("an invalid tenant id is rejected");
        assert_eq!(err.kind, "tenant id", "{err}");
    }
    let err = Topic::new("Order Created").expect_err("an invalid topic is rejected");
    assert_eq!(err.kind, "topic");
    assert!(err.to_string().contains("Order Created"), "{err}");
    assert!(Payload::from_json("{not json").is_err());

    let cron_step =
        |expression: &str, zone: &str| {
            Flow::builder()
                .step(Step::cron("nightly", expression).time_zone(zone).handle(
                    |_ctx: StepContext, _tick: CronTick| async move { Ok::<_, StepError>(()) },
                ))
                .build()
        };
    match cron_step("every monday", "UTC") {
        Err(FlowError::InvalidCron {
            step,
            source: CronError::Expression { expression, .. },
        }) => {
            assert_eq!(
                (step.as_str(), expression.as_str()),
                ("nightly", "every monday")
            );
        }
        other => panic!("a bad cron expression must be FlowError::InvalidCron, got {other:?}"),
    }
    match cron_step("0 0 3 * * *", "Mars/Olympus_Mons") {
        Err(FlowError::InvalidCron {
            step,
            source: CronError::TimeZone(zone),
        }) => assert_eq!(
            (step.as_str(), zone.as_str()),
            ("nightly", "Mars/Olympus_Mons")
        ),
        other => panic!("a bad time zone must be FlowError::InvalidCron, got {other:?}"),
    }

    let processed: Log<u64> = Log::new();
    let log = processed.clone();
    let flow = Flow::builder()
        .external::<Job>()
        .step(
            Step::event::<Job>("plain").handle(move |_ctx: StepContext, job: Job| {
                let log = log.clone();
                async move {
                    log.push(job.n);
                    Ok::<_, StepError>(())
                }
            }),
        )
        .build()
        .expect("valid flow");
    let h = start(flow, backend, epoch_clock()).await;
    let acme = tenant("acme");
    let payload = Payload::encode(&Job { n: 1 }).expect("serializes");
    match h
        .engine()
        .emit_json(&acme, "Not A Topic", payload.clone(), EmitOptions::new())
        .await
    {
        Err(EngineError::InvalidName(err)) => assert_eq!(err.kind, "topic"),
        other => panic!("an invalid topic must be EngineError::InvalidName, got {other:?}"),
    }
    let bad_header = EmitOptions::new().header("bad header", "x");
    match h
        .engine()
        .emit_json(&acme, Job::TOPIC, payload.clone(), bad_header)
        .await
    {
        Err(EngineError::InvalidName(err)) => assert_eq!(err.kind, "header name"),
        other => panic!("an invalid header must be EngineError::InvalidName, got {other:?}"),
    }
    // A NUL in a group key would be refused by some stores (PostgreSQL's
    // text): it is refused before any store sees it.
    let bad_group = EmitOptions::new().group("lane\0one");
    match h
        .engine()
        .emit_json(&acme, Job::TOPIC, payload, bad_group)
        .await
    {
        Err(EngineError::InvalidName(err)) => assert_eq!(err.kind, "group key"),
        other => panic!("an invalid group key must be EngineError::InvalidName, got {other:?}"),
    }
    drain(&h).await;
    assert!(
        processed.entries().is_empty(),
        "rejected emits publish nothing"
    );
    assert_eq!(
        h.engine().metrics().await.expect("metrics").queue.pending(),
        0
    );
    h.emit(&acme, &Job { n: 2 }).await.expect("emit");
    drain(&h).await;
    assert_eq!(processed.entries(), vec![2], "the engine keeps working");
    h.shutdown().await;
}

/// **Contract 10, undeclared emits.** A handler that emits a topic its step did
/// not declare gets [`EmitError::Undeclared`] naming the step and the topic, and
/// that event is never published; declared emits of the same execution commit.
pub async fn undeclared_emit_is_an_error<B: Backend + Clone>(backend: B) {
    let errors: Log<Arc<EmitError>> = Log::new();
    let log = errors.clone();
    let flow = Flow::builder()
        .external::<Job>()
        .step(Step::event::<Job>("sloppy").emits::<Done>().handle(
            move |ctx: StepContext, job: Job| {
                let log = log.clone();
                async move {
                    if let Err(err) = ctx.emit(&Stray {}) {
                        log.push(Arc::new(err));
                    }
                    let untyped = Payload::encode(&Stray {}).expect("serializes");
                    if let Err(err) = ctx.emit_json(Stray::TOPIC, untyped, EmitOptions::new()) {
                        log.push(Arc::new(err));
                    }
                    ctx.emit(&Done { n: job.n })?;
                    Ok::<_, StepError>(())
                }
            },
        ))
        .step(
            Step::event::<Done>("sink")
                .handle(|_ctx: StepContext, _done: Done| async move { Ok::<_, StepError>(()) }),
        )
        .build()
        .expect("valid flow");
    let h = start(flow, backend, epoch_clock()).await;
    h.emit(&tenant("acme"), &Job { n: 1 }).await.expect("emit");
    drain(&h).await;

    let errors = errors.entries();
    assert_eq!(
        errors.len(),
        2,
        "both undeclared emits must fail: {errors:?}"
    );
    for err in &errors {
        match &**err {
            EmitError::Undeclared { step, topic } => {
                assert_eq!((step.as_str(), topic.as_str()), ("sloppy", Stray::TOPIC));
            }
            other => panic!("expected EmitError::Undeclared, got {other:?}"),
        }
    }
    assert!(
        h.envelopes()
            .iter()
            .all(|e| e.topic.as_str() != Stray::TOPIC),
        "an undeclared event must never be published"
    );
    assert_eq!(
        h.emitted::<Done>(),
        vec![Done { n: 1 }],
        "declared emits still commit"
    );
    h.shutdown().await;
}
