//! W3C Trace Context: the `traceparent` and `tracestate` headers that join
//! an event to a distributed trace. They come in on an HTTP request, travel
//! in an event's headers through every backend and broker, and go out on
//! the HTTP calls a step makes.
//!
//! A flowline [`TraceId`] is a W3C trace id (both are 16 bytes): a request
//! with a `traceparent` runs its steps in that trace.

use std::fmt;
use std::str::FromStr;

use crate::event::TraceId;

/// The header with an event's trace parent, as W3C's `traceparent`.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The header with vendors' trace state, as W3C's `tracestate`.
pub const TRACESTATE_HEADER: &str = "tracestate";

/// The longest `tracestate` carried on; a longer one is dropped (W3C asks
/// vendors to keep theirs within 512 characters).
pub const MAX_TRACESTATE_LEN: usize = 512;

/// The id of one span of a trace: 8 bytes, never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId([u8; 8]);

impl SpanId {
    /// A span id from its bytes; `None` for all zeros, which W3C reserves.
    pub fn from_bytes(bytes: [u8; 8]) -> Option<Self> {
        (bytes != [0; 8]).then_some(SpanId(bytes))
    }

    /// A random span id.
    pub fn random() -> Self {
        let n = crate::vocab::chance::next_u64().max(1);
        SpanId(n.to_be_bytes())
    }

    /// The id's bytes.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// Why a `traceparent` value was not understood. The HTTP face ignores
/// such a header and starts a new trace (as W3C asks), so this is for hosts
/// that parse one themselves.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceParentError {
    /// Not `version-traceid-parentid-flags` in lowercase hex of the right lengths.
    #[error("a traceparent is 00-<32 hex>-<16 hex>-<2 hex>, in lowercase")]
    Malformed,
    /// Version `ff`, which W3C forbids.
    #[error("traceparent version ff is invalid")]
    InvalidVersion,
    /// A trace id or parent id of zeros, which W3C forbids.
    #[error("a traceparent's trace id and parent id may not be all zeros")]
    ZeroId,
}

/// Where an event sits in a distributed trace: the trace, the span that
/// caused it, and whether that trace is sampled; with the vendors'
/// `tracestate`, passed on unread.
///
/// ```
/// use flowline::trace_context::TraceParent;
///
/// let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// let parent: TraceParent = header.parse()?;
/// assert!(parent.sampled());
/// assert_eq!(parent.trace_id().to_string(), "4bf92f35-77b3-4da6-a3ce-929d0e0e4736");
/// assert_eq!(parent.to_string(), header);
///
/// // Malformed values are refused, never half-read.
/// assert!("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01".parse::<TraceParent>().is_err());
/// assert!("not a traceparent".parse::<TraceParent>().is_err());
/// # Ok::<(), flowline::trace_context::TraceParentError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: TraceId,
    parent_id: SpanId,
    flags: u8,
    state: Option<String>,
}

impl TraceParent {
    /// A trace parent: span `parent_id` of trace `trace_id`.
    pub fn new(trace_id: TraceId, parent_id: SpanId, sampled: bool) -> Self {
        TraceParent {
            trace_id,
            parent_id,
            flags: u8::from(sampled),
            state: None,
        }
    }

    /// The trace.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The span the event came from.
    pub fn parent_id(&self) -> SpanId {
        self.parent_id
    }

    /// Whether the caller records this trace (the `sampled` flag).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The vendors' `tracestate`, if one came along.
    pub fn state(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// Carries `state` along: trimmed, and dropped if empty, longer than
    /// [`MAX_TRACESTATE_LEN`] or not visible ASCII (spaces, commas and tabs
    /// allowed), so no header it is copied into is ever malformed.
    pub fn with_state(mut self, state: &str) -> Self {
        let state = state.trim();
        let fits = !state.is_empty()
            && state.len() <= MAX_TRACESTATE_LEN
            && state
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
        self.state = fits.then(|| state.to_string());
        self
    }

    /// The same trace and flags, from span `span` instead: what a span
    /// passes on to the work it causes.
    pub fn child(&self, span: SpanId) -> Self {
        TraceParent {
            parent_id: span,
            ..self.clone()
        }
    }

    /// Reads the trace parent an event carries in its `headers`; `None` if
    /// it has none or a malformed one.
    pub fn from_headers(headers: &[(String, String)]) -> Option<Self> {
        let value = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(TRACEPARENT_HEADER))?;
        let parent: TraceParent = value.1.parse().ok()?;
        Some(
            match headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(TRACESTATE_HEADER))
            {
                Some((_, state)) => parent.with_state(state),
                None => parent,
            },
        )
    }

    /// The headers that carry it: `traceparent`, and `tracestate` if it
    /// has one (for an outbound HTTP call, say).
    pub fn header_pairs(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        std::iter::once((TRACEPARENT_HEADER, self.to_string()))
            .chain(self.state.iter().map(|s| (TRACESTATE_HEADER, s.clone())))
    }

    /// Writes it into `headers` (replacing any trace headers there).
    pub fn write_headers(&self, headers: &mut Vec<(String, String)>) {
        headers.retain(|(name, _)| {
            !name.eq_ignore_ascii_case(TRACEPARENT_HEADER)
                && !name.eq_ignore_ascii_case(TRACESTATE_HEADER)
        });
        headers.extend(
            self.header_pairs()
                .map(|(name, value)| (name.to_string(), value)),
        );
    }
}

fn hex_bytes<const N: usize>(text: &str) -> Result<[u8; N], TraceParentError> {
    let lower_hex = |b: u8| matches!(b, b'0'..=b'9' | b'a'..=b'f');
    if text.len() != 2 * N || !text.bytes().all(lower_hex) {
        return Err(TraceParentError::Malformed);
    }
    let mut bytes = [0u8; N];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .map_err(|_| TraceParentError::Malformed)?;
    }
    Ok(bytes)
}

impl FromStr for TraceParent {
    type Err = TraceParentError;

    /// Parses a `traceparent` value as W3C Trace Context level 1 says: a
    /// version other than `00` is read for its first four fields (a later
    /// version may add fields after a `-`).
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim();
        if !value.is_ascii() {
            return Err(TraceParentError::Malformed);
        }
        let [version] = hex_bytes::<1>(value.get(..2).ok_or(TraceParentError::Malformed)?)?;
        if version == 0xff {
            return Err(TraceParentError::InvalidVersion);
        }
        let fields = match (version, value.len()) {
            (0, 55) => value,
            (0, _) => return Err(TraceParentError::Malformed),
            (_, 55) => value,
            (_, n) if n > 55 && value.as_bytes()[55] == b'-' => &value[..55],
            _ => return Err(TraceParentError::Malformed),
        };
        let mut parts = fields.split('-');
        let (Some(_), Some(trace), Some(parent), Some(flags), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TraceParentError::Malformed);
        };
        let trace = hex_bytes::<16>(trace)?;
        let parent = hex_bytes::<8>(parent)?;
        let [flags] = hex_bytes::<1>(flags)?;
        if trace == [0; 16] {
            return Err(TraceParentError::ZeroId);
        }
        let parent_id = SpanId::from_bytes(parent).ok_or(TraceParentError::ZeroId)?;
        Ok(TraceParent {
            trace_id: TraceId::from_uuid(uuid::Uuid::from_bytes(trace)),
            parent_id,
            flags,
            state: None,
        })
    }
}

impl fmt::Display for TraceParent {
    /// The `traceparent` value, version `00`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id.as_uuid().simple(),
            self.parent_id,
            self.flags
        )
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_reads_and_writes_back() {
        let parent: TraceParent = EXAMPLE.parse().unwrap();
        assert_eq!(parent.parent_id().to_string(), "00f067aa0ba902b7");
        assert!(parent.sampled());
        assert_eq!(parent.to_string(), EXAMPLE);
        let unsampled: TraceParent = EXAMPLE.replace("-01", "-00").parse().unwrap();
        assert!(!unsampled.sampled());
    }

    #[test]
    fn what_w3c_forbids_is_refused() {
        let refused = [
            ("", TraceParentError::Malformed),
            ("00", TraceParentError::Malformed),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceParentError::InvalidVersion,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                TraceParentError::ZeroId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                TraceParentError::ZeroId,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                TraceParentError::Malformed,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                TraceParentError::Malformed,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
                TraceParentError::Malformed,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
                TraceParentError::Malformed,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
                TraceParentError::Malformed,
            ),
            (
                "0é-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceParentError::Malformed,
            ),
        ];
        for (value, error) in refused {
            assert_eq!(value.parse::<TraceParent>(), Err(error), "{value:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_for_the_fields_it_shares() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        let parent: TraceParent = later.parse().unwrap();
        assert_eq!(parent.to_string(), EXAMPLE, "written back as version 00");
        assert!("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"
            .parse::<TraceParent>()
            .is_err());
    }

    #[test]
    fn headers_carry_it_with_its_state_and_replace_an_old_one() {
        let mut headers = vec![
            ("Traceparent".to_string(), "junk".to_string()),
            ("other".to_string(), "kept".to_string()),
        ];
        let parent = EXAMPLE
            .parse::<TraceParent>()
            .unwrap()
            .with_state("congo=t61rcWkgMzE");
        parent.write_headers(&mut headers);
        assert_eq!(headers.len(), 3);
        assert_eq!(TraceParent::from_headers(&headers), Some(parent.clone()));
        assert_eq!(parent.state(), Some("congo=t61rcWkgMzE"));
        let child = parent.child(SpanId::from_bytes([1; 8]).unwrap());
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_eq!(child.state(), parent.state());
        assert_ne!(child.parent_id(), parent.parent_id());
        assert_eq!(parent.clone().with_state("bad\nstate").state(), None);
        assert_eq!(parent.with_state(&"x".repeat(513)).state(), None);
    }

    proptest! {
        #[test]
        fn any_text_is_read_or_refused_without_a_panic(text in "\\PC{0,80}") {
            let _ = text.parse::<TraceParent>();
        }

        #[test]
        fn any_valid_traceparent_writes_back_as_it_was_read(
            trace in any::<[u8; 16]>(),
            span in any::<[u8; 8]>(),
            flags in any::<u8>(),
        ) {
            prop_assume!(trace != [0; 16] && span != [0; 8]);
            let text = format!(
                "00-{}-{}-{flags:02x}",
                trace.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                span.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            );
            let parent: TraceParent = text.parse().unwrap();
            prop_assert_eq!(parent.to_string(), text);
        }
    }
}
