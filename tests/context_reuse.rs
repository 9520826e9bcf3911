//! A context a handler keeps after it returns stays the context of its own
//! execution, however many executions run after it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowline::prelude::*;
use flowline::EventId;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Job {
    n: u32,
}
impl Event for Job {
    const TOPIC: &'static str = "job";
}

#[tokio::test]
async fn kept_contexts_keep_their_execution() {
    let kept: Arc<Mutex<Vec<(u32, EventId, StepContext)>>> = Arc::default();
    let seen = kept.clone();
    let flow = Flow::builder()
        .external::<Job>()
        .step(
            Step::event::<Job>("work").handle(move |ctx: StepContext, job: Job| {
                let seen = seen.clone();
                async move {
                    // Keep every third context; let the others go.
                    if job.n.is_multiple_of(3) {
                        let id = ctx.event_id().expect("an event step has an event");
                        seen.lock().unwrap().push((job.n, id, ctx.clone()));
                    }
                    ctx.put(&format!("job/{}", job.n), &job.n)?;
                    Ok::<_, StepError>(())
                }
            }),
        )
        .build()
        .unwrap();
    let engine = Engine::builder(flow).start().await.unwrap();
    let tenant = TenantId::new("t").unwrap();
    let jobs: Vec<Job> = (0..300).map(|n| Job { n }).collect();
    let ids = engine.emit_batch(&tenant, &jobs).await.unwrap();
    engine.wait_idle().await;
    let kept = std::mem::take(&mut *kept.lock().unwrap());
    assert_eq!(kept.len(), 100);
    for (n, id, ctx) in kept.iter() {
        assert_eq!(*id, ids[*n as usize]);
        assert_eq!(ctx.event_id(), Some(*id), "job {n}'s kept context changed");
        assert_eq!(ctx.attempt(), 1);
    }
    for n in 0..300u32 {
        let stored: Option<u32> = engine.state(&tenant, &format!("job/{n}")).await.unwrap();
        assert_eq!(stored, Some(n));
    }
    engine.shutdown(Duration::from_secs(1)).await;
}
