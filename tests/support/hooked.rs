//! A backend that forwards every call to another, except a claim or a
//! completion a test wants to intercept (to fail it, hold it or count it).

use std::sync::Arc;

use async_trait::async_trait;
use flowline::backend::{
    ClaimBatch, ClaimRequest, Completion, DeadLetter, DeadLetterQuery, LeaseRef, NewDelivery,
    Outcome, QueueDepth, StepWork, Versioned,
};
use flowline::{Backend, Payload, StepName, Store, StoreError, TenantId, Timestamp, Transport};

/// What a test does instead of forwarding; each default forwards.
#[async_trait]
pub(crate) trait Intercept: Send + Sync + 'static {
    /// A claim.
    async fn claim(
        &self,
        inner: &dyn Backend,
        request: ClaimRequest,
    ) -> Result<ClaimBatch, StoreError> {
        inner.claim(request).await
    }

    /// A batch of completions.
    async fn complete(
        &self,
        inner: &dyn Backend,
        batch: Vec<Completion>,
    ) -> Result<Vec<Outcome>, StoreError> {
        inner.complete(batch).await
    }
}

/// `inner`, with `intercept` in the way of its claims and completions.
pub(crate) struct Hooked<B, I> {
    pub(crate) inner: B,
    pub(crate) intercept: Arc<I>,
}

impl<B: Clone, I> Clone for Hooked<B, I> {
    fn clone(&self) -> Self {
        Hooked {
            inner: self.inner.clone(),
            intercept: self.intercept.clone(),
        }
    }
}

impl<B, I> Hooked<B, I> {
    pub(crate) fn new(inner: B, intercept: I) -> Self {
        Hooked {
            inner,
            intercept: Arc::new(intercept),
        }
    }
}

#[async_trait]
impl<B: Backend, I: Intercept> Store for Hooked<B, I> {
    async fn get(&self, tenant: &TenantId, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.inner.get(tenant, key).await
    }
    async fn get_many(
        &self,
        tenant: &TenantId,
        keys: &[String],
    ) -> Result<Vec<Option<Versioned>>, StoreError> {
        self.inner.get_many(tenant, keys).await
    }
    async fn scan(
        &self,
        tenant: &TenantId,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.inner.scan(tenant, prefix, limit).await
    }
    async fn scan_after(
        &self,
        tenant: &TenantId,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.inner.scan_after(tenant, prefix, after, limit).await
    }
    async fn complete(&self, batch: Vec<Completion>) -> Result<Vec<Outcome>, StoreError> {
        self.intercept.complete(&self.inner, batch).await
    }
    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner.dead_letters(query).await
    }
    async fn replay_dead_letters(&self, ids: &[u64], now: Timestamp) -> Result<usize, StoreError> {
        self.inner.replay_dead_letters(ids, now).await
    }
    async fn amend_dead_letter(&self, id: u64, payload: Payload) -> Result<bool, StoreError> {
        self.inner.amend_dead_letter(id, payload).await
    }
    async fn purge_dead_letters(&self, ids: &[u64]) -> Result<usize, StoreError> {
        self.inner.purge_dead_letters(ids).await
    }
    async fn last_cron_fire(&self, schedule: &StepName) -> Result<Option<Timestamp>, StoreError> {
        self.inner.last_cron_fire(schedule).await
    }
}

#[async_trait]
impl<B: Backend, I: Intercept> Transport for Hooked<B, I> {
    async fn publish(&self, deliveries: Vec<NewDelivery>) -> Result<(), StoreError> {
        self.inner.publish(deliveries).await
    }
    async fn claim(&self, request: ClaimRequest) -> Result<ClaimBatch, StoreError> {
        self.intercept.claim(&self.inner, request).await
    }
    async fn release(&self, leases: &[LeaseRef]) -> Result<(), StoreError> {
        self.inner.release(leases).await
    }
    async fn depth(&self, now: Timestamp) -> Result<QueueDepth, StoreError> {
        self.inner.depth(now).await
    }
    async fn is_drained(&self, now: Timestamp) -> Result<bool, StoreError> {
        self.inner.is_drained(now).await
    }
    async fn steps_with_work(&self, now: Timestamp) -> Result<Vec<StepWork>, StoreError> {
        self.inner.steps_with_work(now).await
    }
    async fn move_deliveries(
        &self,
        from: &StepName,
        to: Option<&StepName>,
    ) -> Result<u64, StoreError> {
        self.inner.move_deliveries(from, to).await
    }
    fn on_new_work(&self, wake: flowline::backend::WakeUp) {
        self.inner.on_new_work(wake);
    }
}
