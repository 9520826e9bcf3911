//! What an operator's view reads: per-step counters and the recent executions,
//! with the causation between them.

use std::time::Duration;

use flowline::prelude::*;
use flowline::testing::TestHarness;
use flowline::ExecutionOutcome;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Placed {
    n: u32,
}
impl Event for Placed {
    const TOPIC: &'static str = "placed";
}

#[derive(Serialize, Deserialize)]
struct Billed {
    n: u32,
}
impl Event for Billed {
    const TOPIC: &'static str = "billed";
}

fn flow() -> Flow {
    let bill = Step::event::<Placed>("bill").emits::<Billed>().handle(
        |ctx: StepContext, p: Placed| async move {
            ctx.emit(&Billed { n: p.n })?;
            Ok::<_, StepError>(())
        },
    );
    // Fails on its first attempt, then succeeds.
    let ship = Step::event::<Billed>("ship")
        .retry(RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(3))
        .handle(|ctx: StepContext, _b: Billed| async move {
            if ctx.attempt() == 1 {
                return Err(StepError::retryable("carrier busy"));
            }
            Ok(())
        });
    Flow::builder()
        .external::<Placed>()
        .steps([bill, ship])
        .build()
        .expect("flow")
}

#[tokio::test(start_paused = true)]
async fn step_metrics_and_recent_executions_follow_a_chain() {
    let h = TestHarness::start(flow()).await.expect("harness");
    let tenant = TenantId::new("acme").unwrap();
    h.emit(&tenant, &Placed { n: 1 }).await.unwrap();
    h.advance(Duration::from_secs(5)).await;

    let steps = h.engine().step_metrics();
    let by_name = |name: &str| steps.iter().find(|s| s.step.as_str() == name).unwrap();
    assert_eq!(by_name("bill").processed, 1);
    assert_eq!((by_name("bill").failed, by_name("bill").retried), (0, 0));
    assert_eq!(by_name("ship").processed, 1);
    assert_eq!((by_name("ship").failed, by_name("ship").retried), (1, 1));

    let recent = h.engine().recent_executions(10);
    let outcomes: Vec<(&str, ExecutionOutcome, u32)> = recent
        .iter()
        .map(|r| (r.step.as_str(), r.outcome, r.attempt))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("ship", ExecutionOutcome::Committed, 2),
            ("ship", ExecutionOutcome::Retried, 1),
            ("bill", ExecutionOutcome::Committed, 1),
        ],
        "newest first"
    );
    // ship handled the event bill emitted: its cause is bill's input event.
    assert_eq!(recent[0].causation_id, recent[2].event_id);
    assert!(recent.iter().all(|r| r.trace_id == recent[2].trace_id));
    assert_eq!(h.engine().recent_executions(1).len(), 1);
    h.shutdown().await;
}
