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
}
