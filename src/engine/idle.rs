//! What "idle" means when deliveries of steps the flow does not have keep
//! the backend from draining.

use super::shared::Shared;

/// Whether nothing of this flow's steps is ready or leased, whatever the
/// orphaned deliveries: what idle means when the backend is not drained.
pub(super) async fn idle_but_orphans(shared: &Shared) -> bool {
    match shared.backend.steps_with_work(shared.clock.now()).await {
        Ok(work) => work.iter().all(|w| {
            shared.flow.step_index(w.step.as_str()).is_none() || (w.ready == 0 && w.leased == 0)
        }),
        Err(_) => false,
    }
}
