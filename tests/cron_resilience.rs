//! A cron fire that cannot commit (the backend is down) is retried until it does,
//! and still fires once.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flowline::backend::{Completion, Outcome};
use flowline::testing::{test_config, TestHarness, TEST_EPOCH};
use flowline::{prelude::*, Backend, Clock, MemoryBackend, StoreError, Timestamp};

#[path = "support/hooked.rs"]
mod hooked;
use hooked::{Hooked, Intercept};

/// The first `failures` completions that record a cron fire fail as if the
/// database were unreachable.
struct FlakyCron {
    failures: AtomicU32,
}

#[async_trait]
impl Intercept for FlakyCron {
    async fn complete(
        &self,
        inner: &dyn Backend,
        batch: Vec<Completion>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let is_fire = batch.iter().any(|c| c.marker.is_some());
        if is_fire
            && self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(StoreError::Backend("connection refused".into()));
        }
        inner.complete(batch).await
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
    let backend = Hooked::new(
        MemoryBackend::new(),
        FlakyCron {
            failures: AtomicU32::new(3),
        },
    );
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
        backend.intercept.failures.load(Ordering::SeqCst),
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
