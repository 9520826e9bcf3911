//! [`Scenario`]: what a user simulates (their flow, a workload drawn from the
//! seed, the invariants).

use async_trait::async_trait;

use super::error::SimError;
use super::world::{Boot, Sim};

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
