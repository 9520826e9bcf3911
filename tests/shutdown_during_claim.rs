//! A shutdown that lands while a claim is under way still ends the engine,
//! even when that claim fails and the dispatcher backs off for a poll interval.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use flowline::backend::{ClaimBatch, ClaimRequest};
use flowline::testing::test_config;
use flowline::{prelude::*, Backend, MemoryBackend, StoreError};
use tokio::sync::Notify;

#[path = "support/hooked.rs"]
mod hooked;
use hooked::{Hooked, Intercept};

/// A claim made while `hold` is set tells `entered`, waits for `open`, and
/// then fails as if the server had gone away.
struct SlowFailingClaims {
    hold: AtomicBool,
    entered: Notify,
    open: Notify,
}

#[async_trait]
impl Intercept for SlowFailingClaims {
    async fn claim(
        &self,
        inner: &dyn Backend,
        request: ClaimRequest,
    ) -> Result<ClaimBatch, StoreError> {
        if self.hold.load(Ordering::SeqCst) {
            let opened = self.open.notified();
            self.entered.notify_one();
            opened.await;
            return Err(StoreError::Backend("the server went away".into()));
        }
        inner.claim(request).await
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
    let backend = Hooked::new(
        MemoryBackend::new(),
        SlowFailingClaims {
            hold: AtomicBool::new(false),
            entered: Notify::new(),
            open: Notify::new(),
        },
    );
    let engine = Engine::builder(flow)
        .backend(backend.clone())
        .config(test_config())
        .start()
        .await
        .expect("the engine starts");

    let claims = backend.intercept.clone();
    claims.hold.store(true, Ordering::SeqCst);
    let entered = claims.entered.notified();
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
    claims.open.notify_one();

    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the engine ends instead of backing off for its poll interval")
        .expect("the shutdown task ran");
}
