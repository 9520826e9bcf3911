//! Tracing: every attempt runs in a `step` span that names its step, topic,
//! tenant, trace, event and attempt, and a failure is logged inside that span.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowline::prelude::*;
use flowline::testing::TestHarness;
use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

#[derive(Serialize, Deserialize)]
struct Ping {
    n: u32,
}
impl Event for Ping {
    const TOPIC: &'static str = "ping";
}

#[derive(Serialize, Deserialize)]
struct Pong {
    n: u32,
}
impl Event for Pong {
    const TOPIC: &'static str = "pong";
}

#[derive(Debug, thiserror::Error)]
#[error("injected failure")]
struct Injected;

/// The fields of a span or event, rendered as text.
#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
}

#[derive(Clone, Debug)]
struct SpanRecord {
    name: String,
    fields: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
struct EventRecord {
    message: String,
    fields: BTreeMap<String, String>,
    /// Index into the recorded spans of the span the event happened in.
    span: Option<usize>,
}

/// A layer that records every span and event.
#[derive(Clone, Default)]
struct Recorder {
    spans: Arc<Mutex<Vec<SpanRecord>>>,
    span_index: Arc<Mutex<HashMap<u64, usize>>>,
    events: Arc<Mutex<Vec<EventRecord>>>,
}

impl<S> Layer<S> for Recorder
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let mut spans = self.spans.lock().unwrap();
        spans.push(SpanRecord {
            name: attrs.metadata().name().to_string(),
            fields: fields.0,
        });
        self.span_index
            .lock()
            .unwrap()
            .insert(id.into_u64(), spans.len() - 1);
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let span = ctx.event_span(event).and_then(|s| {
            self.span_index
                .lock()
                .unwrap()
                .get(&s.id().into_u64())
                .copied()
        });
        let message = fields.0.remove("message").unwrap_or_default();
        self.events.lock().unwrap().push(EventRecord {
            message,
            fields: fields.0,
            span,
        });
    }
}

#[tokio::test(start_paused = true)]
async fn every_attempt_runs_in_a_step_span_naming_what_it_handles() {
    let recorder = Recorder::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(recorder.clone()));

    let flow = Flow::builder()
        .external::<Ping>()
        .step(
            Step::event::<Ping>("relay")
                .emits::<Pong>()
                .retry(RetryPolicy::fixed(Duration::from_secs(1)))
                .handle(|ctx: StepContext, ping: Ping| async move {
                    if ctx.attempt() == 1 {
                        return Err(StepError::retryable(Injected));
                    }
                    ctx.emit(&Pong { n: ping.n })?;
                    Ok(())
                }),
        )
        .step(
            Step::event::<Pong>("sink")
                .handle(|_ctx: StepContext, _pong: Pong| async move { Ok::<_, StepError>(()) }),
        )
        .build()
        .unwrap();
    let h = TestHarness::start(flow).await.unwrap();
    let ping_id = h
        .emit(&TenantId::new("acme").unwrap(), &Ping { n: 1 })
        .await
        .unwrap();
    h.advance(Duration::from_secs(5)).await;
    h.shutdown().await;

    let spans = recorder.spans.lock().unwrap().clone();
    let step_spans = |step: &str| -> Vec<(usize, SpanRecord)> {
        spans
            .iter()
            .cloned()
            .enumerate()
            .filter(|(_, s)| {
                s.name == "step" && s.fields.get("step").map(String::as_str) == Some(step)
            })
            .collect()
    };
    let relay = step_spans("relay");
    assert_eq!(relay.len(), 2, "one span per attempt: {relay:?}");
    for (i, (_, span)) in relay.iter().enumerate() {
        let f = &span.fields;
        assert_eq!(f["topic"], "ping");
        assert_eq!(f["tenant"], "acme");
        assert_eq!(f["event_id"], ping_id.to_string());
        assert_eq!(f["attempt"], (i + 1).to_string());
    }
    let trace = relay[0].1.fields["trace_id"].clone();
    assert_eq!(
        relay[1].1.fields["trace_id"], trace,
        "a retry stays in its trace"
    );

    let sink = step_spans("sink");
    assert_eq!(sink.len(), 1, "{sink:?}");
    assert_eq!(sink[0].1.fields["topic"], "pong");
    assert_eq!(
        sink[0].1.fields["trace_id"], trace,
        "an emitted event carries its cause's trace"
    );
    assert_ne!(sink[0].1.fields["event_id"], ping_id.to_string());

    let events = recorder.events.lock().unwrap().clone();
    let failure = events
        .iter()
        .find(|e| e.message.contains("will retry"))
        .unwrap_or_else(|| panic!("no retry was logged: {events:?}"));
    assert_eq!(
        failure.span,
        Some(relay[0].0),
        "the failure is logged inside the failed attempt's span"
    );
    assert!(
        failure.fields["error"].contains("injected failure"),
        "{failure:?}"
    );
}

#[tokio::test]
async fn an_engine_without_a_chosen_backend_says_it_runs_in_memory() {
    let recorder = Recorder::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(recorder.clone()));
    let flow = || {
        Flow::builder()
            .external::<Ping>()
            .step(
                Step::event::<Ping>("sink")
                    .handle(|_ctx: StepContext, _p: Ping| async move { Ok::<_, StepError>(()) }),
            )
            .build()
            .unwrap()
    };
    let warnings = || {
        recorder
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.message.contains("no backend chosen"))
            .count()
    };

    let chosen = Engine::builder(flow())
        .backend(flowline::MemoryBackend::new())
        .start()
        .await
        .unwrap();
    chosen.shutdown(Duration::from_secs(1)).await;
    assert_eq!(warnings(), 0, "memory chosen on purpose is not warned of");

    let defaulted = Engine::builder(flow()).start().await.unwrap();
    defaulted.shutdown(Duration::from_secs(1)).await;
    assert_eq!(
        warnings(),
        1,
        "the default memory backend is warned of once"
    );
}
