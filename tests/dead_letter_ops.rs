//! Operating dead letters through the engine: by query, with a cursor, by
//! kind, and replayed with a corrected payload.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flowline::prelude::*;
use flowline::testing::TestHarness;
use flowline::{DeadLetterQuery, EngineError, FailureKind};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Order {
    id: u32,
    quantity: u32,
}
impl Event for Order {
    const TOPIC: &'static str = "order.placed";
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Refund {
    id: u32,
}
impl Event for Refund {
    const TOPIC: &'static str = "refund.asked";
}

fn store(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

/// A step that refuses orders of quantity 0 for good, fails the others
/// (three tries) while `down` is set, and writes what it handled.
async fn harness(down: Arc<AtomicBool>) -> TestHarness {
    let reserve = Step::event::<Order>("reserve")
        .retry(RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(3))
        .handle(move |ctx: StepContext, order: Order| {
            let down = down.clone();
            async move {
                if order.quantity == 0 {
                    return Err(StepError::permanent("quantity must be positive"));
                }
                if down.load(Ordering::SeqCst) {
                    return Err(StepError::retryable("stock service unavailable"));
                }
                ctx.put(&format!("reserved/{}", order.id), &order.quantity)?;
                Ok(())
            }
        });
    let refund = Step::event::<Refund>("refund").handle(|_ctx, _r: Refund| async { Ok(()) });
    let flow = Flow::builder()
        .external::<Order>()
        .external::<Refund>()
        .step(reserve)
        .step(refund)
        .build()
        .unwrap();
    TestHarness::start(flow).await.unwrap()
}

async fn place(h: &TestHarness, tenant: &str, id: u32, quantity: u32) {
    h.emit(&store(tenant), &Order { id, quantity })
        .await
        .unwrap();
}

/// Lets the retries run out.
async fn fail_through(h: &TestHarness) {
    for _ in 0..5 {
        h.advance(Duration::from_secs(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn replay_by_query_replays_only_what_matches_and_only_once() {
    let down = Arc::new(AtomicBool::new(true));
    let h = harness(down.clone()).await;
    place(&h, "acme", 1, 0).await; // permanent
    place(&h, "acme", 2, 5).await; // exhausted
    place(&h, "globex", 3, 5).await; // exhausted
    fail_through(&h).await;
    let engine = h.engine();
    let exhausted = DeadLetterQuery::new().kind(FailureKind::Exhausted);
    assert_eq!(engine.dead_letters(&exhausted).await.unwrap().len(), 2);

    // Still down: both fail again, and are not replayed a second time.
    assert_eq!(engine.replay_matching(&exhausted).await.unwrap(), 2);
    fail_through(&h).await;
    assert_eq!(engine.dead_letters(&exhausted).await.unwrap().len(), 2);

    // Back up: one store's exhausted letters only.
    down.store(false, Ordering::SeqCst);
    let acme_only = exhausted.clone().tenant(store("acme"));
    assert_eq!(engine.replay_matching(&acme_only).await.unwrap(), 1);
    h.settle().await;
    assert_eq!(h.state::<u32>(&store("acme"), "reserved/2").await, Some(5));
    assert_eq!(h.state::<u32>(&store("globex"), "reserved/3").await, None);
    let kinds: Vec<FailureKind> = h.dead_letters().await.iter().map(|d| d.kind).collect();
    assert_eq!(kinds, [FailureKind::Permanent, FailureKind::Exhausted]);
}

#[tokio::test(start_paused = true)]
async fn purge_by_query_respects_its_limit_and_filters() {
    let h = harness(Arc::new(AtomicBool::new(false))).await;
    for id in 0..5 {
        place(&h, "acme", id, 0).await;
    }
    place(&h, "globex", 9, 0).await;
    h.settle().await;
    let engine = h.engine();
    let acme = DeadLetterQuery::new().tenant(store("acme"));
    assert_eq!(
        engine.purge_matching(&acme.clone().limit(3)).await.unwrap(),
        3
    );
    assert_eq!(engine.purge_matching(&acme).await.unwrap(), 2);
    let left = h.dead_letters().await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].event.tenant, store("globex"));
}

#[tokio::test(start_paused = true)]
async fn a_corrected_payload_is_replayed_and_runs() {
    let h = harness(Arc::new(AtomicBool::new(false))).await;
    place(&h, "acme", 7, 0).await;
    h.settle().await;
    let engine = h.engine();
    let dead = h.dead_letters().await;
    assert_eq!(dead[0].kind, FailureKind::Permanent);
    let id = dead[0].id;
    assert_eq!(
        engine.dead_letter(id).await.unwrap().map(|d| d.id),
        Some(id)
    );
    assert!(engine.dead_letter(id + 1).await.unwrap().is_none());
    assert!(engine.dead_letter(0).await.unwrap().is_none());

    let wrong = engine.replay_corrected(id, &Refund { id: 7 }).await;
    assert!(
        matches!(wrong, Err(EngineError::WrongTopic { ref expected, .. }) if expected == "order.placed"),
        "{wrong:?}"
    );
    let fixed = Order { id: 7, quantity: 2 };
    assert!(engine.replay_corrected(id, &fixed).await.unwrap());
    h.settle().await;
    assert_eq!(h.state::<u32>(&store("acme"), "reserved/7").await, Some(2));
    assert!(h.dead_letters().await.is_empty());
    assert!(
        !engine.replay_corrected(id, &fixed).await.unwrap(),
        "a replayed dead letter is gone"
    );
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_panics_to_the_end_is_a_panicked_dead_letter() {
    let step = Step::event::<Order>("reserve")
        .retry(RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(2))
        .handle(|_ctx: StepContext, order: Order| async move {
            assert!(order.quantity > 0, "quantity must be positive");
            Ok(())
        });
    let flow = Flow::builder()
        .external::<Order>()
        .step(step)
        .build()
        .unwrap();
    let h = TestHarness::start(flow).await.unwrap();
    place(&h, "acme", 1, 0).await;
    fail_through(&h).await;
    let dead = h.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].kind, dead[0].attempts), (FailureKind::Panicked, 2));
}

#[tokio::test(start_paused = true)]
async fn an_unkeyable_delivery_runs_its_step_s_failure_hook() {
    use flowline::flow_control::{Limit, LimitKey};

    let reserve = Step::event::<Order>("reserve")
        .emits::<Refund>()
        .limit(Limit::concurrency(1).per(LimitKey::field("account")))
        .handle(|_ctx: StepContext, _o: Order| async { Ok(()) })
        .on_failure(|cx, failure| {
            assert_eq!(failure.kind(), FailureKind::Undecodable);
            let order: Order = failure.input()?;
            cx.emit(&Refund { id: order.id })?;
            Ok(())
        });
    let refund = Step::event::<Refund>("refund").handle(|ctx: StepContext, r: Refund| async move {
        ctx.put(&format!("refunded/{}", r.id), &true)?;
        Ok(())
    });
    let flow = Flow::builder()
        .external::<Order>()
        .step(reserve)
        .step(refund)
        .build()
        .unwrap();
    let h = TestHarness::start(flow).await.unwrap();
    place(&h, "acme", 4, 1).await; // no `account` field: no key
    h.settle().await;
    let dead = h.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].kind, FailureKind::Undecodable);
    assert_eq!(
        h.state::<bool>(&store("acme"), "refunded/4").await,
        Some(true)
    );
}
