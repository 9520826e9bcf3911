//! A shutdown that lands while a claim is under way still ends the engine,
//! even when that claim fails and the dispatcher backs off for a poll interval.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flowline::backend::{ClaimBatch, ClaimRequest, LeaseRef, NewDelivery, QueueDepth, StepWork};
use flowline::backend::{Completion, DeadLetter, DeadLetterQuery, Outcome, Versioned};
use flowline::event::{Payload, StepName};
use flowline::testing::test_config;
use flowline::{prelude::*, MemoryBackend, Store, StoreError, Timestamp, Transport};
use tokio::sync::Notify;

/// The memory backend, but a claim made while `hold` is set tells `entered`,
/// waits for `open`, and then fails as if the server had gone away.
#[derive(Clone)]
struct SlowFailingClaims {
    inner: MemoryBackend,
    hold: Arc<AtomicBool>,
    entered: Arc<Notify>,
    open: Arc<Notify>,
}

#[async_trait]
impl Store for SlowFailingClaims {
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
impl Transport for SlowFailingClaims {
    async fn publish(&self, deliveries: Vec<NewDelivery>) -> Result<(), StoreError> {
        self.inner.publish(deliveries).await
    }
    async fn claim(&self, request: ClaimRequest) -> Result<ClaimBatch, StoreError> {
        if self.hold.load(Ordering::SeqCst) {
            let opened = self.open.notified();
            self.entered.notify_one();
            opened.await;
            return Err(StoreError::Backend("the server went away".into()));
        }
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

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Ping;

impl Event for Ping {
    const TOPIC: &'static str = "test.ping";
}

// Real time: the failed claim's backoff is the poll interval (an hour in
// `test_config`), so an engine that missed the stop would not end in time.
#[tokio::test]
async fn a_stop_during_a_claim_that_fails_ends_the_engine() {
    let flow = Flow::builder()
        .external::<Ping>()
        .step(
            Step::event::<Ping>("pong")
                .handle(|_ctx: StepContext, _: Ping| async move { Ok::<_, StepError>(()) }),
        )
        .build()
        .expect("valid flow");
    let backend = SlowFailingClaims {
        inner: MemoryBackend::new(),
        hold: Arc::new(AtomicBool::new(false)),
        entered: Arc::new(Notify::new()),
        open: Arc::new(Notify::new()),
    };
    let engine = Engine::builder(flow)
        .backend(backend.clone())
        .config(test_config())
        .start()
        .await
        .expect("the engine starts");

    backend.hold.store(true, Ordering::SeqCst);
    let entered = backend.entered.notified();
    engine
        .emit(&TenantId::new("acme").expect("a valid tenant"), &Ping)
        .await
        .expect("accepted");
    tokio::time::timeout(Duration::from_secs(10), entered)
        .await
        .expect("the dispatcher claims the new work");

    // The stop lands while the claim is under way; only then does it fail.
    let stopping = tokio::spawn({
        let engine = engine.clone();
        async move { engine.shutdown(Duration::from_secs(1)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    backend.open.notify_one();

    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the engine ends instead of backing off for its poll interval")
        .expect("the shutdown task ran");
}
