//! `Engine::emit_once`: one publication per key and tenant, kept across a
//! restart.

use flowline::prelude::*;
use flowline::testing::{TestHarness, TEST_EPOCH};
use flowline::{Backend, MemoryBackend, SqliteBackend};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Paid {
    order: String,
}
impl Event for Paid {
    const TOPIC: &'static str = "order.paid";
}

fn flow() -> Flow {
    let ship = Step::event::<Paid>("ship").handle(|ctx: StepContext, p: Paid| async move {
        ctx.add(&format!("shipped/{}", p.order), 1)?;
        Ok(())
    });
    Flow::builder()
        .external::<Paid>()
        .step(ship)
        .build()
        .unwrap()
}

async fn start(backend: impl Backend) -> TestHarness {
    TestHarness::start_with(flow(), backend, TEST_EPOCH)
        .await
        .unwrap()
}

async fn once(h: &TestHarness, tenant: &str, key: &str) -> bool {
    let tenant = TenantId::new(tenant).unwrap();
    let paid = Paid {
        order: "o-1".into(),
    };
    let id = h.engine().emit_once(&tenant, &paid, key).await.unwrap();
    h.settle().await;
    id.is_some()
}

#[tokio::test(start_paused = true)]
async fn a_key_publishes_once_per_tenant() {
    let h = start(MemoryBackend::new()).await;
    assert!(once(&h, "acme", "req-1").await);
    assert!(!once(&h, "acme", "req-1").await, "the same key again");
    assert!(once(&h, "globex", "req-1").await, "another tenant's key");
    assert!(once(&h, "acme", "req-2").await, "another key");
    let acme = TenantId::new("acme").unwrap();
    assert_eq!(h.state::<i64>(&acme, "shipped/o-1").await, Some(2));
}

#[tokio::test]
async fn a_key_is_remembered_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flow.db");
    {
        let h = start(SqliteBackend::open(&path).unwrap()).await;
        assert!(once(&h, "acme", "req-1").await);
        h.shutdown().await;
    }
    let h = start(SqliteBackend::open(&path).unwrap()).await;
    assert!(!once(&h, "acme", "req-1").await);
    let acme = TenantId::new("acme").unwrap();
    assert_eq!(h.state::<i64>(&acme, "shipped/o-1").await, Some(1));
    h.shutdown().await;
}
