//! The span link of OpenTelemetry: an execution's `tracing` span becomes a
//! child of the remote span its event names, and passes its own on.

use std::str::FromStr;

use opentelemetry::trace::{
    SpanContext, SpanId as OtelSpanId, TraceContextExt, TraceFlags, TraceId as OtelTraceId,
    TraceState,
};
use opentelemetry::Context;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::engine::trace_link::SpanLink;
use crate::event::TraceId;
use crate::trace_context::{SpanId, TraceParent};

/// Joins spans through `tracing-opentelemetry`, recording a share `ratio`
/// of new traces.
#[derive(Debug)]
pub(super) struct OtelLink {
    pub(super) ratio: f64,
}

/// The remote span context `parent` names.
pub(super) fn remote_context(parent: &TraceParent) -> SpanContext {
    let state = parent
        .state()
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    SpanContext::new(
        OtelTraceId::from_bytes(parent.trace_id().as_uuid().into_bytes()),
        OtelSpanId::from_bytes(parent.parent_id().to_bytes()),
        if parent.sampled() {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        true,
        state,
    )
}

/// The trace parent a span context passes on; `None` for an invalid one
/// (the span is not recorded by an OpenTelemetry layer).
fn trace_parent_of(context: &SpanContext) -> Option<TraceParent> {
    if !context.is_valid() {
        return None;
    }
    let span = SpanId::from_bytes(context.span_id().to_bytes())?;
    let trace = TraceId::from_uuid(uuid::Uuid::from_bytes(context.trace_id().to_bytes()));
    let parent = TraceParent::new(trace, span, context.is_sampled());
    let state = context.trace_state().header();
    Some(if state.is_empty() {
        parent
    } else {
        parent.with_state(&state)
    })
}

impl SpanLink for OtelLink {
    fn join(&self, span: &tracing::Span, parent: Option<&TraceParent>) -> Option<TraceParent> {
        if let Some(parent) = parent {
            let remote = Context::new().with_remote_span_context(remote_context(parent));
            // Fails only where no OpenTelemetry layer records the span (it
            // is filtered out): the work then carries the parent as it came.
            if span.set_parent(remote).is_err() {
                return Some(parent.clone());
            }
        }
        self.context_of(span).or_else(|| parent.cloned())
    }

    fn context_of(&self, span: &tracing::Span) -> Option<TraceParent> {
        trace_parent_of(span.context().span().span_context())
    }

    fn link(&self, span: &tracing::Span, to: &TraceParent) {
        span.add_link(remote_context(to));
    }

    fn sampled(&self, parent: Option<&TraceParent>, trace: TraceId) -> bool {
        match parent {
            Some(parent) => parent.sampled(),
            None => super::sampling::trace_hit(trace, self.ratio),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_parent_and_its_remote_context_say_the_same() {
        let parent: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse::<TraceParent>()
            .unwrap()
            .with_state("rojo=00f067aa0ba902b7");
        let remote = remote_context(&parent);
        assert!(remote.is_valid() && remote.is_remote() && remote.is_sampled());
        assert_eq!(
            remote.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(trace_parent_of(&remote), Some(parent));
        assert_eq!(trace_parent_of(&SpanContext::empty_context()), None);
    }
}
