//! Deploys: deliveries of a step the new flow does not have.

use std::time::Duration;

use super::{advance, epoch_clock, settle, start, tenant, Job, SETTLE_LIMIT};
use crate::backend::Backend;
use crate::engine::{EngineError, Flow, Step, StepContext, StepError};
use crate::event::{EmitOptions, StepName};

fn flow_with(step: &str) -> Flow {
    let step = Step::event::<Job>(step).handle(|ctx: StepContext, job: Job| async move {
        ctx.add("handled", 1)?;
        ctx.put(&format!("by/{}", job.n), &ctx.step().to_string())?;
        Ok::<_, StepError>(())
    });
    Flow::builder()
        .external::<Job>()
        .step(step)
        .build()
        .expect("valid flow")
}

/// **Deploys.** Deliveries of a step the flow no longer has (renamed
/// `welcome` to `welcome_v2`) are reported by
/// [`steps_with_work`](crate::backend::Transport::steps_with_work), never
/// make `wait_idle` wait, and move to the new step with
/// [`move_deliveries`](crate::backend::Transport::move_deliveries), which
/// runs them; a move from a step of the flow, or to one it lacks, is refused.
pub async fn orphaned_deliveries_are_reported_and_moved<B: Backend + Clone>(backend: B) {
    let acme = tenant("acme");
    let clock = epoch_clock();
    let old = start(flow_with("welcome"), backend.clone(), clock).await;
    for n in 0..3 {
        let later = EmitOptions::new().delay(Duration::from_secs(30));
        old.engine()
            .emit_with(&acme, &Job { n }, later)
            .await
            .expect("emit");
    }
    settle(&old).await;
    old.shutdown().await;

    let new = start(flow_with("welcome_v2"), backend, clock).await;
    let orphans = new.engine().orphaned_deliveries().await.expect("orphans");
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert_eq!(
        (orphans[0].step.as_str(), orphans[0].pending),
        ("welcome", 3)
    );

    advance(&new, Duration::from_secs(31)).await;
    assert!(
        tokio::time::timeout(SETTLE_LIMIT, new.engine().wait_idle())
            .await
            .is_ok(),
        "wait_idle waited for deliveries no step of the flow runs"
    );
    let welcome = StepName::new("welcome").expect("a step name");
    let v2 = StepName::new("welcome_v2").expect("a step name");
    let refused = new.engine().move_orphans(&v2, &welcome).await;
    assert!(
        matches!(refused, Err(EngineError::StepInFlow { .. })),
        "{refused:?}"
    );
    let nowhere = StepName::new("nowhere").expect("a step name");
    let refused = new.engine().move_orphans(&welcome, &nowhere).await;
    assert!(
        matches!(refused, Err(EngineError::UnknownStep { .. })),
        "{refused:?}"
    );

    let moved = new
        .engine()
        .move_orphans(&welcome, &v2)
        .await
        .expect("move");
    assert_eq!(moved, 3);
    advance(&new, Duration::from_secs(1)).await;
    assert_eq!(new.state::<i64>(&acme, "handled").await, Some(3));
    assert_eq!(
        new.state::<String>(&acme, "by/2").await.as_deref(),
        Some("welcome_v2")
    );
    assert!(new
        .engine()
        .orphaned_deliveries()
        .await
        .expect("orphans")
        .is_empty());
    assert_eq!(
        new.engine().purge_orphans(&welcome).await.expect("purge"),
        0,
        "nothing is left to purge"
    );
    new.shutdown().await;
}
