//! What a step handler returns when it fails: the error, and whether to retry.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use crate::vocab::BoxError;

/// How a failed step execution should be treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again per the step's retry policy.
    Retryable,
    /// Never retry: dead-letter at once.
    Permanent,
    /// Try again, but not before the given delay.
    RetryAfter(Duration),
}

/// The error a step handler returns: what went wrong, and whether to retry.
///
/// Any `std::error::Error` converts into a *retryable* `StepError` with `?`; use
/// [`StepError::permanent`] (or [`ResultExt::permanent`]) for failures that no
/// retry can fix, such as a declined card or an invalid order.
///
/// ```
/// use flowline::{ResultExt, StepError};
///
/// fn parse(input: &str) -> Result<u32, StepError> {
///     let n: u32 = input.parse().permanent()?; // bad input: never retry
///     Ok(n)
/// }
/// assert!(parse("x").unwrap_err().is_permanent());
/// ```
pub struct StepError {
    class: ErrorClass,
    source: BoxError,
}

impl StepError {
    /// A failure worth retrying (network blip, timeout, 5xx).
    pub fn retryable(source: impl Into<BoxError>) -> Self {
        StepError {
            class: ErrorClass::Retryable,
            source: source.into(),
        }
    }

    /// A failure no retry can fix: the delivery dead-letters at once.
    pub fn permanent(source: impl Into<BoxError>) -> Self {
        StepError {
            class: ErrorClass::Permanent,
            source: source.into(),
        }
    }

    /// A retryable failure that asks to wait at least `delay` (e.g. HTTP 429 Retry-After).
    pub fn retry_after(delay: Duration, source: impl Into<BoxError>) -> Self {
        StepError {
            class: ErrorClass::RetryAfter(delay),
            source: source.into(),
        }
    }

    /// How the engine will treat this error.
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// True if the error is permanent.
    pub fn is_permanent(&self) -> bool {
        self.class == ErrorClass::Permanent
    }

    /// The underlying error.
    pub fn source(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }

    /// Consumes the step error, returning the underlying error.
    pub fn into_source(self) -> BoxError {
        self.source
    }

    /// The error and its causes, joined with ": ".
    pub fn chain_message(&self) -> String {
        let mut message = self.source.to_string();
        let mut cause = self.source.source();
        while let Some(err) = cause {
            message.push_str(": ");
            message.push_str(&err.to_string());
            cause = err.source();
        }
        message
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for StepError {
    fn from(err: E) -> Self {
        StepError::retryable(err)
    }
}

impl fmt::Debug for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepError")
            .field("class", &self.class)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = match self.class {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Permanent => "permanent",
            ErrorClass::RetryAfter(_) => "retry-after",
        };
        write!(f, "{class}: {}", self.chain_message())
    }
}

/// A handler panicked. The attempt fails (retryably) instead of taking a worker down.
#[derive(Debug, thiserror::Error)]
#[error("handler panicked: {0}")]
pub struct HandlerPanicked(pub String);

/// Runs a handler future, turning a panic into a failed attempt.
pub(crate) async fn catch_panic<T>(
    fut: impl Future<Output = Result<T, StepError>>,
) -> Result<T, StepError> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => Err(panicked(payload.as_ref())),
    }
}

/// A handler's panic as a failed (retryable) attempt, with the panic's message.
pub(crate) fn panicked(payload: &(dyn std::any::Any + Send)) -> StepError {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_string());
    StepError::retryable(HandlerPanicked(message))
}

/// Classifies any `Result`'s error as a [`StepError`].
pub trait ResultExt<T> {
    /// The error is permanent: dead-letter without retrying.
    ///
    /// # Errors
    /// The original error, wrapped as permanent.
    fn permanent(self) -> Result<T, StepError>;
    /// The error is retryable.
    ///
    /// # Errors
    /// The original error, wrapped as retryable.
    fn retryable(self) -> Result<T, StepError>;
}

impl<T, E: Into<BoxError>> ResultExt<T> for Result<T, E> {
    fn permanent(self) -> Result<T, StepError> {
        self.map_err(StepError::permanent)
    }
    fn retryable(self) -> Result<T, StepError> {
        self.map_err(StepError::retryable)
    }
}
