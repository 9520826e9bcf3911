//! What can be wrong with a debounce or batch declaration.

use std::time::Duration;

/// The most events one window may hold.
pub const MAX_WINDOW_EVENTS: usize = 10_000;

/// How many events a debounced window holds before it closes anyway.
pub const DEFAULT_DEBOUNCE_EVENTS: usize = 1_000;

/// Why a debounce or batch declaration is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WindowError {
    /// A zero quiet period would close every window at once.
    #[error("a debounce's quiet period must be longer than zero")]
    ZeroQuiet,
    /// A zero maximum wait would close every window at once.
    #[error("a window's maximum wait must be longer than zero")]
    ZeroMaxWait,
    /// The quiet period is longer than the maximum wait, which always wins.
    #[error(
        "a debounce's quiet period ({quiet:?}) is longer than its maximum wait ({max_wait:?})"
    )]
    QuietLongerThanMaxWait {
        /// The quiet period.
        quiet: Duration,
        /// The maximum wait.
        max_wait: Duration,
    },
    /// A window must hold 1 to [`MAX_WINDOW_EVENTS`] events.
    #[error("a window must hold 1 to {MAX_WINDOW_EVENTS} events, not {0}")]
    EventCount(usize),
    /// Flow-control limits were declared before `debounce` or `batch`.
    #[error("limits cannot be combined with debounce or batching yet")]
    WithLimits,
}
