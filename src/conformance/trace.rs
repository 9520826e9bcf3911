//! Trace context travels with the work: what a backend stores and hands
//! back keeps an event's `traceparent` and `tracestate`, through emits,
//! retries and a replay from the dead letters.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{drain, epoch_clock, injected, start, tenant, Done, Job, Log};
use crate::backend::Backend;
use crate::engine::{Flow, Step, StepContext, StepError};
use crate::event::{EmitOptions, TraceId};
use crate::retry::RetryPolicy;
use crate::trace_context::TraceParent;
use crate::DeadLetterQuery;

/// What an execution saw: its step, attempt, trace parent and state, trace.
type Seen = (String, u32, Option<String>, Option<String>, TraceId);

const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// An event emitted with a `traceparent` runs in its trace; the events its
/// handler emits, stored and claimed again, carry the same trace parent and
/// state; a failed attempt's retry and a replay from the dead letters still
/// see it.
pub async fn trace_context_travels_with_each_event<B: Backend + Clone>(backend: B) {
    let healthy = Arc::new(AtomicBool::new(false));
    let seen: Log<Seen> = Log::new();
    let (ok, first_log, second_log) = (healthy.clone(), seen.clone(), seen.clone());
    let record = |log: &Log<Seen>, step: &str, ctx: &StepContext| {
        log.push((
            step.to_string(),
            ctx.attempt(),
            ctx.trace_parent().map(ToString::to_string),
            ctx.trace_parent()
                .and_then(|p| p.state().map(str::to_string)),
            ctx.trace_id(),
        ));
    };
    let first = Step::event::<Job>("first")
        .emits::<Done>()
        .retry(RetryPolicy::none())
        .handle(move |ctx: StepContext, job: Job| {
            let log = first_log.clone();
            async move {
                record(&log, "first", &ctx);
                ctx.emit(&Done { n: job.n })?;
                Ok::<_, StepError>(())
            }
        });
    let second = Step::event::<Done>("second")
        .retry(RetryPolicy::none())
        .handle(move |ctx: StepContext, _: Done| {
            let (log, healthy) = (second_log.clone(), ok.clone());
            async move {
                record(&log, "second", &ctx);
                if !healthy.load(Ordering::SeqCst) {
                    return Err(injected("second is down".to_string()));
                }
                Ok::<_, StepError>(())
            }
        });
    let flow = Flow::builder()
        .external::<Job>()
        .step(first)
        .step(second)
        .build()
        .expect("valid flow");
    let h = start(flow, backend, epoch_clock()).await;
    let options = EmitOptions::new()
        .header("traceparent", PARENT)
        .header("tracestate", "rojo=00f067aa0ba902b7");
    h.engine()
        .emit_with(&tenant("acme"), &Job { n: 7 }, options)
        .await
        .expect("emit");
    drain(&h).await;
    healthy.store(true, Ordering::SeqCst);
    let replayed = h
        .engine()
        .replay_matching(&DeadLetterQuery::new())
        .await
        .expect("replay");
    assert_eq!(replayed, 1, "second failed once, for good");
    drain(&h).await;

    let trace: TraceId = PARENT.parse::<TraceParent>().expect("valid").trace_id();
    let runs = seen.entries();
    let steps: Vec<&str> = runs.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(steps, ["first", "second", "second"], "{runs:?}");
    for (step, _, parent, state, trace_id) in &runs {
        assert_eq!(*trace_id, trace, "{step} runs in the emitter's trace");
        assert_eq!(parent.as_deref(), Some(PARENT), "{step}: {runs:?}");
        assert_eq!(state.as_deref(), Some("rojo=00f067aa0ba902b7"), "{step}");
    }
}
