//! Safe deploys: deliveries of steps the flow no longer has (a step renamed
//! or removed), found when the engine starts, moved or purged on demand,
//! and never waited for.

use super::error::EngineError;
use super::handle::Engine;
use super::shared::Shared;
use crate::backend::StepWork;
use crate::event::StepName;

impl Engine {
    /// The unfinished deliveries of steps this engine's flow does not have:
    /// left by a version of the flow that had them. No engine of this flow
    /// runs them; move them to the step that does their work now
    /// ([`move_orphans`](Self::move_orphans)) or purge them
    /// ([`purge_orphans`](Self::purge_orphans)). The engine logs them when
    /// it starts.
    ///
    /// ```
    /// # use flowline::{testing::TestHarness, Flow, Step, Event, StepContext};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)] struct Ping;
    /// # impl Event for Ping { const TOPIC: &'static str = "ping"; }
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), flowline::EngineError> {
    /// # let flow = Flow::builder().external::<Ping>().step(Step::event::<Ping>("pong")
    /// #     .handle(|_ctx: StepContext, _p: Ping| async { Ok(()) })).build().unwrap();
    /// # let h = TestHarness::start(flow).await?;
    /// # let engine = h.engine();
    /// for orphan in engine.orphaned_deliveries().await? {
    ///     println!("{} deliveries of {} are left", orphan.pending, orphan.step);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// The backend failed.
    pub async fn orphaned_deliveries(&self) -> Result<Vec<StepWork>, EngineError> {
        orphans(&self.shared).await
    }

    /// Moves the waiting deliveries of `from`, a step this flow does not have,
    /// to `to`, one it has (the step's new name, say); they keep their
    /// attempts and due times. Returns how many moved; leased ones (running
    /// in an engine of the old flow) stay.
    ///
    /// # Errors
    /// [`EngineError::StepInFlow`] if `from` is a step of this flow,
    /// [`EngineError::UnknownStep`] if `to` is not, or the backend failed.
    pub async fn move_orphans(&self, from: &StepName, to: &StepName) -> Result<u64, EngineError> {
        self.check_orphan(from)?;
        if self.shared.flow.step_index(to.as_str()).is_none() {
            return Err(EngineError::UnknownStep {
                step: to.to_string(),
            });
        }
        let moved = self.shared.backend.move_deliveries(from, Some(to)).await?;
        tracing::info!(%from, %to, moved, "orphaned deliveries moved");
        self.shared.wake.notify_one();
        Ok(moved)
    }

    /// Deletes the waiting deliveries of `from`, a step this flow does not
    /// have. Returns how many.
    ///
    /// # Errors
    /// [`EngineError::StepInFlow`] if `from` is a step of this flow, or the
    /// backend failed.
    pub async fn purge_orphans(&self, from: &StepName) -> Result<u64, EngineError> {
        self.check_orphan(from)?;
        let purged = self.shared.backend.move_deliveries(from, None).await?;
        tracing::info!(%from, purged, "orphaned deliveries purged");
        Ok(purged)
    }

    fn check_orphan(&self, step: &StepName) -> Result<(), EngineError> {
        match self.shared.flow.step_index(step.as_str()) {
            Some(_) => Err(EngineError::StepInFlow {
                step: step.to_string(),
            }),
            None => Ok(()),
        }
    }
}

/// The steps with work that `shared`'s flow does not have.
async fn orphans(shared: &Shared) -> Result<Vec<StepWork>, EngineError> {
    let work = shared.backend.steps_with_work(shared.clock.now()).await?;
    Ok(work
        .into_iter()
        .filter(|w| shared.flow.step_index(w.step.as_str()).is_none())
        .collect())
}

/// Logs the orphaned deliveries an engine finds when it starts.
pub(super) async fn report_orphans(shared: &Shared) {
    match orphans(shared).await {
        Ok(found) => {
            for orphan in found {
                tracing::warn!(
                    step = %orphan.step,
                    pending = orphan.pending,
                    "deliveries of a step this flow does not have (renamed or removed?): \
                     no engine of this flow runs them; Engine::move_orphans or purge_orphans"
                );
            }
        }
        Err(err) => tracing::warn!(%err, "could not look for orphaned deliveries"),
    }
}
