//! The transport adapter: durable delivery of events to subscribing steps.

use async_trait::async_trait;

use super::delivery::{ClaimBatch, ClaimRequest, LeaseRef, NewDelivery, QueueDepth};
use super::error::StoreError;
use crate::time::Timestamp;

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
}
