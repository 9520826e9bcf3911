//! How the engine's spans join a distributed trace: the seam a tracing
//! exporter fills (feature `otel` fills it with OpenTelemetry; a host may
//! fill it with its own).
//!
//! Without a link installed, work passes on the `traceparent` it came with:
//! every event a request caused carries the request's, and an exporter in
//! another process still joins the caller's trace. With one installed, each
//! execution's span becomes a child of the span that emitted its event, and
//! passes its own span on.
//!
//! Like a `tracing` subscriber, the link is one per process: spans are.

use std::sync::OnceLock;

use crate::event::{Envelope, TraceId};
use crate::trace_context::TraceParent;

/// The target of the `step` spans of executions whose trace is not sampled:
/// a host's log still sees them, and an exporter's layer leaves them out
/// before it spends anything on them (`flowline::otel` does).
pub const UNSAMPLED_TARGET: &str = "flowline::unsampled";

/// Joins `tracing` spans to a distributed trace.
pub trait SpanLink: Send + Sync + 'static {
    /// Makes `span` (just created, not yet entered) a child of `parent` if
    /// there is one (a new trace's root if not), and returns what the work
    /// `span` causes should carry: `span`'s own place in the trace.
    fn join(&self, span: &tracing::Span, parent: Option<&TraceParent>) -> Option<TraceParent>;

    /// `span`'s place in the trace, for an outbound call made inside it.
    fn context_of(&self, span: &tracing::Span) -> Option<TraceParent>;

    /// Links `span` to `to`, a span of work it also carries on (the other
    /// events of a debounced batch). Without links, nothing.
    fn link(&self, span: &tracing::Span, to: &TraceParent) {
        let _ = (span, to);
    }

    /// Whether an execution in trace `trace`, whose event came from
    /// `parent`, is recorded: decided before its span is made, so that an
    /// unsampled one costs next to nothing. Every execution of one trace
    /// must get the same answer. The default records all.
    fn sampled(&self, parent: Option<&TraceParent>, trace: TraceId) -> bool {
        let _ = (parent, trace);
        true
    }
}

static LINK: OnceLock<Box<dyn SpanLink>> = OnceLock::new();

/// Installs the process's link; `false` if one was installed already (the
/// first stays).
pub fn install(link: impl SpanLink) -> bool {
    LINK.set(Box::new(link)).is_ok()
}

/// Whether a link is installed.
pub fn installed() -> bool {
    LINK.get().is_some()
}

/// Joins `span` to `parent` through the installed link; without one,
/// `parent` itself is what the span's work carries.
pub fn join(span: &tracing::Span, parent: Option<&TraceParent>) -> Option<TraceParent> {
    match LINK.get() {
        Some(link) => link.join(span, parent),
        None => parent.cloned(),
    }
}

/// The trace parent an outbound call made inside `span` should send
/// (`None` without a link: the caller sends what its work carries).
pub fn context_of(span: &tracing::Span) -> Option<TraceParent> {
    LINK.get().and_then(|link| link.context_of(span))
}

/// Links `span` to the span each of `events` came from: a window's run
/// carries on the work of every event in it, not only the one whose trace
/// it runs in.
pub(crate) fn link_events<'a>(
    span: &tracing::Span,
    events: impl IntoIterator<Item = &'a Envelope>,
) {
    let Some(link) = LINK.get() else {
        return;
    };
    for event in events {
        if let Some(parent) = TraceParent::from_headers(&event.headers) {
            link.link(span, &parent);
        }
    }
}

/// The trace parent an event came with, if it is of the event's own trace.
/// An event without headers (most, when nothing traces) costs one check.
pub(crate) fn event_parent(event: &Envelope) -> Option<TraceParent> {
    if event.headers.is_empty() {
        return None;
    }
    TraceParent::from_headers(&event.headers).filter(|p| p.trace_id() == event.trace_id)
}

/// Whether an execution of trace `trace` from `parent` is recorded (always,
/// without a link: the spans are the host's log's).
pub(crate) fn sampled(parent: Option<&TraceParent>, trace: TraceId) -> bool {
    LINK.get().is_none_or(|link| link.sampled(parent, trace))
}

/// Joins an execution's span to its event's `parent`, and returns what the
/// execution's emits carry: an unsampled execution passes its parent on as
/// it came (with its unsampled flag, so the work after it is not recorded
/// either).
pub(crate) fn join_execution(
    span: &tracing::Span,
    parent: Option<TraceParent>,
    sampled: bool,
) -> Option<TraceParent> {
    if !sampled || (parent.is_none() && !installed()) {
        return parent;
    }
    join(span, parent.as_ref())
}

/// A `step` span: on [`UNSAMPLED_TARGET`] when its trace is not sampled.
macro_rules! step_span {
    ($sampled:expr, $($fields:tt)*) => {
        if $sampled {
            tracing::info_span!("step", $($fields)*)
        } else {
            tracing::info_span!(target: $crate::engine::trace_link::UNSAMPLED_TARGET, "step", $($fields)*)
        }
    };
}
pub(crate) use step_span;
