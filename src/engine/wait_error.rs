//! What starting a wait can fail with.

use super::context::StateError;
use crate::vocab::BoxError;

/// Starting a wait ([`StepContext::start_wait`](crate::StepContext::start_wait))
/// failed. With `?` in a handler it is permanent (a bug in the flow), unless
/// the backend failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// No wait step ([`Step::wait`](crate::Step::wait)) of this name is in the flow.
    #[error("no wait step named {0:?} is in the flow")]
    UnknownStep(String),
    /// The correlation key is empty or longer than 200 bytes.
    #[error("invalid correlation key {0:?}: it must be 1 to 200 bytes")]
    InvalidKey(String),
    /// A wait of this step for this key is already pending.
    #[error("step {step} already waits for key {key:?}")]
    AlreadyWaiting {
        /// The wait step.
        step: String,
        /// The correlation key.
        key: String,
    },
    /// The wait's context did not serialize.
    #[error("the wait's context does not serialize: {0}")]
    Context(#[source] BoxError),
    /// Reading or writing the wait's record failed.
    #[error(transparent)]
    State(#[from] StateError),
}
