//! Which traces are recorded: a share of new traces, and what their callers
//! chose for the rest, decided once per trace. The engine asks before it
//! makes an execution's span ([`SpanLink::sampled`]), and OpenTelemetry's
//! sampler gives the same answer for a root span: both hash flowline's
//! trace id, so a trace is recorded whole or not at all, and an execution
//! that is not recorded costs next to nothing.
//!
//! [`SpanLink::sampled`]: crate::engine::trace_link::SpanLink::sampled

use opentelemetry::trace::{Link, SpanKind, TraceState};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult, ShouldSample};

use crate::event::TraceId;

/// Whether a trace of id `bytes` is among the `ratio` recorded. The id is
/// mixed first: a UUID v7 has a clock, a counter and fixed bits among its
/// random ones.
fn hit(bytes: [u8; 16], ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let id = u128::from_be_bytes(bytes);
    // splitmix64's finaliser over both halves.
    let mut x = (id as u64) ^ ((id >> 64) as u64).rotate_left(32);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    // The top 53 bits as a fraction in [0, 1): exact in an f64.
    ((x >> 11) as f64) / ((1u64 << 53) as f64) < ratio
}

/// Whether flowline trace `trace` is among the `ratio` recorded.
pub(super) fn trace_hit(trace: TraceId, ratio: f64) -> bool {
    hit(trace.as_uuid().into_bytes(), ratio)
}

/// The sampler of root spans: a span with flowline's `trace_id` attribute
/// (an execution's, a request's) by that id, any other by its own.
#[derive(Clone, Debug)]
pub(super) struct RootSampler {
    pub(super) ratio: f64,
}

impl ShouldSample for RootSampler {
    fn should_sample(
        &self,
        _parent: Option<&Context>,
        trace_id: opentelemetry::trace::TraceId,
        _name: &str,
        _kind: &SpanKind,
        attributes: &[KeyValue],
        _links: &[Link],
    ) -> SamplingResult {
        let flowline = attributes
            .iter()
            .find(|a| a.key.as_str() == "trace_id")
            .and_then(|a| a.value.as_str().parse::<TraceId>().ok());
        let recorded = match flowline {
            Some(trace) => trace_hit(trace, self.ratio),
            None => hit(trace_id.to_bytes(), self.ratio),
        };
        SamplingResult {
            decision: if recorded {
                SamplingDecision::RecordAndSample
            } else {
                SamplingDecision::Drop
            },
            attributes: Vec::new(),
            trace_state: TraceState::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_is_the_share_recorded_and_each_trace_gets_one_answer() {
        let traces: Vec<TraceId> = (0..10_000).map(|_| TraceId::new()).collect();
        for ratio in [0.0, 0.1, 0.5, 1.0] {
            let recorded = traces.iter().filter(|t| trace_hit(**t, ratio)).count();
            let share = recorded as f64 / traces.len() as f64;
            assert!((share - ratio).abs() < 0.03, "{ratio}: {share}");
        }
        let one = traces[0];
        assert_eq!(trace_hit(one, 0.5), trace_hit(one, 0.5));
    }

    #[test]
    fn a_root_span_with_flowlines_trace_id_is_sampled_by_it() {
        let sampler = RootSampler { ratio: 0.5 };
        let trace = TraceId::new();
        let attributes = [KeyValue::new("trace_id", trace.to_string())];
        let decide = |otel: u128| {
            sampler
                .should_sample(
                    None,
                    opentelemetry::trace::TraceId::from(otel),
                    "step",
                    &SpanKind::Internal,
                    &attributes,
                    &[],
                )
                .decision
        };
        let expected = if trace_hit(trace, 0.5) {
            SamplingDecision::RecordAndSample
        } else {
            SamplingDecision::Drop
        };
        assert_eq!(decide(1), expected, "whatever OpenTelemetry's own id");
        assert_eq!(decide(u128::MAX), expected);
    }
}
