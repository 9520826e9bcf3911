//! Per-tenant cron: one run per registered tenant and fire, each under its
//! tenant, with its own retries.

use std::time::Duration;

use flowline::prelude::*;
use flowline::testing::TestHarness;

fn tenant(id: &str) -> TenantId {
    TenantId::new(id).unwrap()
}

async fn harness() -> TestHarness {
    let digest = Step::cron("digest", "0 * * * * *")
        .retry(RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(3))
        .per_tenant()
        .handle(|ctx: StepContext, _tick: CronTick| async move {
            if ctx.tenant().as_str() == "flaky" && ctx.attempt() == 1 {
                return Err(StepError::retryable("report store down"));
            }
            ctx.add("digests", 1)?;
            Ok(())
        });
    let flow = Flow::builder().step(digest).build().unwrap();
    TestHarness::start(flow).await.unwrap()
}

async fn digests(h: &TestHarness, id: &str) -> Option<i64> {
    h.state(&tenant(id), "digests").await
}

#[tokio::test(start_paused = true)]
async fn each_registered_tenant_gets_each_fire_under_its_own_tenant() {
    let h = harness().await;
    let engine = h.engine();
    for id in ["acme", "globex", "flaky"] {
        engine.register_tenant(&tenant(id)).await.unwrap();
    }
    engine.register_tenant(&tenant("acme")).await.unwrap();
    assert_eq!(
        engine.registered_tenants().await.unwrap(),
        [tenant("acme"), tenant("flaky"), tenant("globex")]
    );
    h.advance(Duration::from_secs(62)).await;
    assert_eq!(digests(&h, "acme").await, Some(1));
    assert_eq!(digests(&h, "globex").await, Some(1));
    assert_eq!(digests(&h, "flaky").await, Some(1), "retried alone");
    assert_eq!(h.state::<i64>(&TenantId::system(), "digests").await, None);

    engine.unregister_tenant(&tenant("globex")).await.unwrap();
    h.advance(Duration::from_secs(60)).await;
    assert_eq!(digests(&h, "acme").await, Some(2));
    assert_eq!(digests(&h, "globex").await, Some(1), "unregistered");
    assert!(h.dead_letters().await.is_empty());
}
