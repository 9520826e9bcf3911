//! The two public errors of the dispatcher: an attempt that timed out, and a delivery
//! whose lease expired more often than its retry policy allows attempts.

use std::time::Duration;

/// An attempt ran past its step's timeout.
#[derive(Debug, thiserror::Error)]
#[error("attempt timed out after {0:?}")]
pub struct TimedOut(pub Duration);

/// A delivery's lease expired more often than its retry policy allows attempts.
#[derive(Debug, thiserror::Error)]
#[error("attempts exhausted: {attempts} attempts started, last error: {last_error}")]
pub struct LeaseExhausted {
    pub(super) attempts: u32,
    pub(super) last_error: String,
}
