//! What can go wrong managing keys, and checking one.

use crate::engine::EngineError;

/// Why managing keys failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A scope is not a valid name.
    #[error("scope {scope:?} {reason}")]
    InvalidScope {
        /// The scope as given (at most its first 64 characters).
        scope: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A store's key was asked for with no scope: it could do nothing.
    #[error("a store's key needs at least one scope")]
    NoScopes,
    /// The label is longer than 200 bytes.
    #[error("a key's label is at most 200 bytes")]
    LabelTooLong,
    /// No live key has this id.
    #[error("no key {0}")]
    NotFound(String),
    /// The operating system's random generator failed.
    #[error("no random bits for a key: {0}")]
    Random(String),
    /// The record kept moving under a rotation.
    #[error("key {0} changed during the rotation; try again")]
    Busy(String),
    /// The backend failed.
    #[error(transparent)]
    Storage(#[from] EngineError),
}

/// Why a presented key was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No key, not a key's shape, unknown, wrong secret, or expired: all
    /// the same to the caller.
    #[error("a valid API key is required")]
    Unauthenticated,
    /// The backend failed while looking the key up.
    #[error(transparent)]
    Storage(#[from] EngineError),
}
