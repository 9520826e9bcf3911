//! What a step handler returns when it fails: the error, and whether to retry.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use super::app_data::MissingData;
use super::context::{EmitError, StateError};
use super::wait_error::WaitError;
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

impl ErrorClass {
    /// The class's name: `retryable`, `permanent` or `retry_after` (the
    /// `error.type` of a failed execution's span).
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Permanent => "permanent",
            ErrorClass::RetryAfter(_) => "retry_after",
        }
    }
}

/// The error a step handler returns: what went wrong, and whether to retry.
///
/// With `?`, an error converts by what it is:
/// - the engine's own errors keep their class: a [`StateError`] from a backend
///   that failed is retryable, and every other `StateError` and every
///   [`EmitError`] (an undeclared topic, a value that does not decode) is
///   permanent, since no retry fixes a bug (see [`StateError::class`]);
/// - any other `std::error::Error` is *retryable*.
///
/// Use [`StepError::permanent`] (or [`ResultExt::permanent`]) for failures of
/// your own that no retry can fix, such as a declined card or an invalid order.
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
///
/// A `Box<dyn Error + Send + Sync>` is not itself an `Error`, so `?` cannot
/// convert it (rustc says "the size for values of type `dyn Error` cannot be
/// known"); say its class instead:
///
/// ```
/// use flowline::{ResultExt, StepError};
///
/// fn call_provider() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
///     Err("503 from the mail provider".into())
/// }
///
/// fn send() -> Result<(), StepError> {
///     call_provider().retryable()?;
///     Ok(())
/// }
/// assert!(!send().unwrap_err().is_permanent());
/// ```
///
/// The other way round, a `StepError` goes into a `Box<dyn Error>` with `?`
/// (and from there into `anyhow` or `eyre`), and [`AsRef`] lends it as one:
///
/// ```
/// use flowline::StepError;
///
/// fn outer() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
///     Err(StepError::permanent("card declined"))?;
///     Ok(())
/// }
/// assert_eq!(outer().unwrap_err().to_string(), "permanent: card declined");
/// ```
///
/// [`StateError`]: crate::StateError
/// [`StateError::class`]: crate::StateError::class
/// [`EmitError`]: crate::EmitError
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

    /// Whether the handler panicked (the engine caught it as this error).
    pub(crate) fn is_panic(&self) -> bool {
        self.source().is::<HandlerPanicked>()
    }

    /// The underlying error.
    pub fn source(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }

    /// Consumes the step error, returning the underlying error.
    pub fn into_source(self) -> BoxError {
        self.source
    }

    /// The class as a word, for messages.
    fn class_name(&self) -> &'static str {
        match self.class {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Permanent => "permanent",
            ErrorClass::RetryAfter(_) => "retry-after",
        }
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
        let source: BoxError = Box::new(err);
        let class = engine_class(&*source).unwrap_or(ErrorClass::Retryable);
        StepError { class, source }
    }
}

impl StateError {
    /// How `?` on this error in a handler treats the attempt: a backend that
    /// failed is worth another try ([`ErrorClass::Retryable`]); everything else
    /// (a key, a value or a type that does not fit, data that reads back
    /// corrupt) fails the same way on every try, so it is
    /// [`ErrorClass::Permanent`] and dead-letters at once.
    ///
    /// ```
    /// use flowline::{ErrorClass, StateError};
    ///
    /// let bad_key = StateError::InvalidKey(String::new());
    /// assert_eq!(bad_key.class(), ErrorClass::Permanent);
    /// ```
    pub fn class(&self) -> ErrorClass {
        match self {
            StateError::Store(crate::backend::StoreError::Backend(_)) => ErrorClass::Retryable,
            _ => ErrorClass::Permanent,
        }
    }
}

impl EmitError {
    /// How `?` on this error in a handler treats the attempt: always
    /// [`ErrorClass::Permanent`]. An undeclared topic, a bad name, a payload
    /// that does not serialize or a cross-tenant emit is a bug in the step,
    /// which no retry fixes.
    pub fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }
}

/// The class of one of the engine's own errors, which know whether a retry
/// can help; `None` for any other error.
fn engine_class(err: &(dyn std::error::Error + Send + Sync + 'static)) -> Option<ErrorClass> {
    if let Some(state) = err.downcast_ref::<StateError>() {
        return Some(state.class());
    }
    if err.is::<MissingData>() {
        return Some(ErrorClass::Permanent);
    }
    if let Some(wait) = err.downcast_ref::<WaitError>() {
        return Some(match wait {
            WaitError::State(state) => state.class(),
            _ => ErrorClass::Permanent,
        });
    }
    err.downcast_ref::<EmitError>().map(EmitError::class)
}

/// The step error as a boxed `std::error::Error`, so that `?` carries it into
/// functions that return `Box<dyn Error + Send + Sync>` (or `anyhow::Error`,
/// through the box). Its message keeps the class, as [`StepError`]'s own.
impl From<StepError> for BoxError {
    fn from(err: StepError) -> Self {
        Box::new(Failed(err))
    }
}

/// As the conversion into [`BoxError`], for a box without `Send + Sync`.
impl From<StepError> for Box<dyn std::error::Error + 'static> {
    fn from(err: StepError) -> Self {
        Box::new(Failed(err))
    }
}

/// The underlying error, to inspect or downcast without giving the step
/// error up.
impl AsRef<dyn std::error::Error + Send + Sync + 'static> for StepError {
    fn as_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }
}

/// A [`StepError`] in a box: an `Error` whose source is the step error's.
/// (`StepError` itself cannot be one, or `?` could not turn every error into
/// it.)
struct Failed(StepError);

impl fmt::Debug for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Failed {
    // The causes are the source's to tell (`Error::source`), so a report that
    // walks them does not repeat them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.0.class_name(), self.0.source)
    }
}

impl std::error::Error for Failed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0.source)
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
        write!(f, "{}: {}", self.class_name(), self.chain_message())
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
