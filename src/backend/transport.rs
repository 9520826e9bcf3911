//! The transport adapter: durable delivery of events to subscribing steps.

use std::sync::Arc;

use async_trait::async_trait;

use super::delivery::{ClaimBatch, ClaimRequest, LeaseRef, NewDelivery, QueueDepth, StepWork};
use super::error::StoreError;
use crate::event::StepName;
use crate::time::Timestamp;

/// A callback a transport calls when new work may be claimable: see
/// [`Transport::on_new_work`]. It returns at once (the engine's sets a flag
/// that wakes its dispatcher), and returns `false` once the engine that
/// registered it is gone: the transport may then forget it.
pub type WakeUp = Arc<dyn Fn() -> bool + Send + Sync>;

/// Durable delivery of events to subscribers.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Publishes deliveries (from outside any step execution).
    async fn publish(&self, deliveries: Vec<NewDelivery>) -> Result<(), StoreError>;

    /// Claims due deliveries under a lease, fairly across tenants.
    async fn claim(&self, request: ClaimRequest) -> Result<ClaimBatch, StoreError>;

    /// Gives claimed deliveries back without counting an attempt (shutdown).
    async fn release(&self, leases: &[LeaseRef]) -> Result<(), StoreError>;

    /// Counts deliveries by where they are as of `now`: a delivery whose due time
    /// or lease end has passed counts as ready, since the next claim can take it.
    async fn depth(&self, now: Timestamp) -> Result<QueueDepth, StoreError>;

    /// True when, as of `now`, nothing is ready and nothing is leased: what
    /// [`depth`](Self::depth) would count as `ready == 0 && in_flight == 0`.
    /// The engine asks it whenever it looks idle (`Engine::wait_idle`), so a
    /// backend whose `depth` counts rows should answer it without counting
    /// (the PostgreSQL backend asks whether one such row exists). The
    /// default counts with `depth`.
    async fn is_drained(&self, now: Timestamp) -> Result<bool, StoreError> {
        let depth = self.depth(now).await?;
        Ok(depth.ready == 0 && depth.in_flight == 0)
    }

    /// The steps with unfinished deliveries, each with how many and how many
    /// are claimable as of `now`, in step name order. The engine asks it when
    /// it starts (to report deliveries of steps its flow no longer has) and
    /// when it looks busy but claims nothing.
    async fn steps_with_work(&self, now: Timestamp) -> Result<Vec<StepWork>, StoreError>;

    /// Moves the unfinished, unleased deliveries of step `from` to step `to`
    /// (a step renamed), keeping everything else of them, or deletes them
    /// when `to` is `None` (a step removed). Returns how many. Leased ones
    /// stay: they are running.
    async fn move_deliveries(
        &self,
        from: &StepName,
        to: Option<&StepName>,
    ) -> Result<u64, StoreError>;

    /// Registers `wake`, to be called whenever deliveries may have become
    /// claimable through someone else: another process sharing the backend,
    /// or another engine on a clone of this one. Each engine registers once
    /// when it starts, and claims again when called.
    ///
    /// A transport shared between processes should call it within
    /// milliseconds of such a publish (the PostgreSQL backend uses
    /// `LISTEN/NOTIFY`). Calls may be spurious or merged; a missed call only
    /// costs latency, never work: the engine claims again every
    /// `EngineConfig::poll_interval` anyway. The default never calls it.
    fn on_new_work(&self, wake: WakeUp) {
        let _ = wake;
    }
}
