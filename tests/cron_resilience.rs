//! A cron fire that cannot commit (the backend is down) is retried until it does,
//! and still fires once.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flowline::backend::{ClaimBatch, ClaimRequest, LeaseRef, NewDelivery, QueueDepth, StepWork};
use flowline::backend::{Completion, DeadLetter, DeadLetterQuery, Outcome, Versioned};
use flowline::event::{Payload, StepName};
use flowline::testing::{test_config, TestHarness, TEST_EPOCH};
use flowline::{prelude::*, Clock, MemoryBackend, Store, StoreError, Timestamp, Transport};

/// The memory backend, but the first `failures` completions that record a cron
/// fire fail as if the database were unreachable.
#[derive(Clone)]
struct FlakyCron {
    inner: MemoryBackend,
    failures: Arc<AtomicU32>,
}

#[async_trait]
impl Store for FlakyCron {
    async fn get(&self, tenant: &TenantId, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.inner.get(tenant, key).await
    }
    async fn scan(
        &self,
        tenant: &TenantId,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.inner.scan(tenant, prefix, limit).await
    }
    async fn complete(&self, batch: Vec<Completion>) -> Result<Vec<Outcome>, StoreError> {
        let is_fire = batch.iter().any(|c| c.marker.is_some());
        if is_fire
            && self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(StoreError::Backend("connection refused".into()));
        }
        self.inner.complete(batch).await
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
impl Transport for FlakyCron {
    async fn publish(&self, deliveries: Vec<NewDelivery>) -> Result<(), StoreError> {
        self.inner.publish(deliveries).await
    }
    async fn claim(&self, request: ClaimRequest) -> Result<ClaimBatch, StoreError> {
        self.inner.claim(request).await
    }
    async fn release(&self, leases: &[LeaseRef]) -> Result<(), StoreError> {
        self.inner.release(leases).await
    }
    async fn depth(&self, now: Timestamp) -> Result<QueueDepth, StoreError> {
        self.inner.depth(now).await
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
}

#[tokio::test(start_paused = true)]
async fn a_cron_fire_that_fails_to_commit_is_retried_and_fires_once() {
    let flow = Flow::builder()
        .step(Step::cron("minutely", "0 * * * * *").handle(
            |ctx: StepContext, tick: CronTick| async move {
                let fires: Vec<Timestamp> = ctx.get("fires").await?.unwrap_or_default();
                ctx.put("fires", &[fires, vec![tick.fire_at]].concat())?;
                Ok::<_, StepError>(())
            },
        ))
        .build()
        .unwrap();
    let backend = FlakyCron {
        inner: MemoryBackend::new(),
        failures: Arc::new(AtomicU32::new(3)),
    };
    let h = TestHarness::start_configured(
        flow,
        Arc::new(backend.clone()),
        Clock::starting_at(TEST_EPOCH),
        test_config(),
    )
    .await
    .unwrap();
    h.advance(Duration::from_secs(90)).await;
    assert_eq!(
        backend.failures.load(Ordering::SeqCst),
        0,
        "the three failures were used up"
    );
    let fires: Vec<Timestamp> = h
        .state(&TenantId::system(), "fires")
        .await
        .unwrap_or_default();
    assert_eq!(
        fires,
        vec![TEST_EPOCH + Duration::from_secs(60)],
        "the 00:01 fire happened exactly once"
    );
    h.shutdown().await;
}
