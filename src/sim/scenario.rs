//! [`Scenario`]: what a user simulates (their flow, a workload drawn from the
//! seed, the invariants), and [`SimError`], how a run goes wrong.

use std::sync::Arc;

use async_trait::async_trait;

use super::world::Sim;
use crate::backend::StoreError;
use crate::engine::{EngineBuilder, EngineError, FlowError};
use crate::vocab::BoxError;

/// Builds the engine of one process of a run: the flow and whatever else it
/// needs ([`data`](EngineBuilder::data), [`config`](EngineBuilder::config)).
/// Called at the start and again after every crash; the simulation sets the
/// backend, the clock and an emit hook of its own.
pub type Boot = Arc<dyn Fn() -> Result<EngineBuilder, SimError> + Send + Sync>;

/// A flow under simulation: how its processes are built, the workload a seed
/// draws, and what must hold.
///
/// A run calls [`setup`](Self::setup) with faults off, then
/// [`act`](Self::act) `size` times with faults on, each followed by
/// [`check_always`](Self::check_always), then, with faults off again,
/// [`finish`](Self::finish), which lets the flow settle and checks the end.
/// Draw every random choice from [`Sim::rng`], so that one seed makes one run.
/// Its methods' futures need not be `Send`: a run is one thread (implement it
/// with `#[async_trait(?Send)]`).
#[async_trait(?Send)]
pub trait Scenario {
    /// How each process of the run is built.
    fn boot(&self) -> Boot;

    /// Prepares the world (tenants, catalogues) before faults begin.
    ///
    /// # Errors
    /// What stops the run.
    async fn setup(&mut self, sim: &mut Sim) -> Result<(), SimError> {
        let _ = sim;
        Ok(())
    }

    /// The `index`-th action of the workload: a request, a wait, a fire.
    ///
    /// # Errors
    /// An invariant seen broken, or what stops the run.
    async fn act(&mut self, sim: &mut Sim, index: usize) -> Result<(), SimError>;

    /// What must hold at every instant, checked after every action.
    ///
    /// # Errors
    /// [`SimError::Violated`] for an invariant broken.
    async fn check_always(&mut self, sim: &mut Sim) -> Result<(), SimError> {
        let _ = sim;
        Ok(())
    }

    /// Lets the flow finish its work (faults are off) and checks the end.
    ///
    /// # Errors
    /// [`SimError::Violated`] for an invariant broken.
    async fn finish(&mut self, sim: &mut Sim) -> Result<(), SimError>;
}

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
