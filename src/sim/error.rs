//! [`SimError`]: how a simulated run goes wrong, and [`ensure`], which says
//! an invariant broke.

use crate::backend::StoreError;
use crate::engine::{EngineError, FlowError};
use crate::vocab::BoxError;

/// How a simulated run went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// An invariant does not hold.
    #[error("invariant violated: {0}")]
    Violated(String),
    /// Work that should have finished did not (a liveness failure).
    #[error("stuck: {0}")]
    Stuck(String),
    /// The scenario or the engine panicked.
    #[error("panicked: {0}")]
    Panicked(String),
    /// The flow did not build.
    #[error(transparent)]
    Flow(#[from] FlowError),
    /// The engine failed where the scenario could not go on.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The backend could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Anything else of the scenario's.
    #[error(transparent)]
    Other(BoxError),
}

impl SimError {
    /// An invariant broken: `what` says which and how.
    pub fn violated(what: impl Into<String>) -> Self {
        SimError::Violated(what.into())
    }

    /// Whether two errors are the same failure: the same kind, and messages
    /// that agree once the words holding numbers (ids, counts, times) are
    /// left out. The shrinker keeps a smaller run only if it fails the same
    /// way, not merely some way.
    pub fn same_failure(&self, other: &SimError) -> bool {
        fn words(error: &SimError) -> Vec<String> {
            error
                .to_string()
                .split_whitespace()
                .filter(|w| !w.bytes().any(|b| b.is_ascii_digit()))
                .take(6)
                .map(str::to_string)
                .collect()
        }
        std::mem::discriminant(self) == std::mem::discriminant(other) && words(self) == words(other)
    }
}

/// Fails with [`SimError::Violated`] unless `condition` holds.
///
/// ```
/// use flowline::sim::{ensure, SimError};
/// fn check(stock: i64) -> Result<(), SimError> {
///     ensure(stock >= 0, || format!("stock went negative: {stock}"))
/// }
/// assert!(check(3).is_ok());
/// assert!(matches!(check(-1), Err(SimError::Violated(_))));
/// ```
///
/// # Errors
/// [`SimError::Violated`] with the message of `what`.
pub fn ensure(condition: bool, what: impl FnOnce() -> String) -> Result<(), SimError> {
    if condition {
        Ok(())
    } else {
        Err(SimError::Violated(what()))
    }
}
