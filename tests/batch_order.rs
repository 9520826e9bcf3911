//! A batch whose handlers finish at different times still commits in claim order:
//! what its executions emit reaches a FIFO step in the order the inputs were claimed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowline::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Input {
    n: u32,
}
impl Event for Input {
    const TOPIC: &'static str = "input";
}

#[derive(Serialize, Deserialize)]
struct Output {
    n: u32,
}
impl Event for Output {
    const TOPIC: &'static str = "output";
}

#[tokio::test(start_paused = true)]
async fn late_handlers_commit_in_claim_order() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let flow = Flow::builder()
        .external::<Input>()
        .step(Step::event::<Input>("relay").emits::<Output>().handle(
            |ctx: StepContext, input: Input| async move {
                // Odd inputs wait a little: their executions finish after the even
                // ones claimed with them.
                if input.n % 2 == 1 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                ctx.emit_with(&Output { n: input.n }, EmitOptions::new().group("lane"))?;
                Ok::<_, StepError>(())
            },
        ))
        .step(Step::event::<Output>("record").fifo().handle(
            move |_ctx: StepContext, output: Output| {
                let log = log.clone();
                async move {
                    log.lock().unwrap().push(output.n);
                    Ok::<_, StepError>(())
                }
            },
        ))
        .build()
        .unwrap();
    let engine = Engine::builder(flow).start().await.unwrap();
    let tenant = TenantId::new("t").unwrap();
    let inputs: Vec<Input> = (0..20).map(|n| Input { n }).collect();
    engine.emit_batch(&tenant, &inputs).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    engine.wait_idle().await;
    assert_eq!(*seen.lock().unwrap(), (0..20).collect::<Vec<_>>());
    engine.shutdown(Duration::from_secs(1)).await;
}
