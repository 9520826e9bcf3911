//! Observability and graceful shutdown.

use std::time::Duration;

use super::{
    advance, epoch_clock, injected, settle, start, tenant, Injected, Job, Log, SETTLE_LIMIT,
};
use crate::backend::Backend;
use crate::backend::QueueDepth;
use crate::engine::EngineError;
use crate::engine::Flow;
use crate::engine::StepContext;
use crate::engine::{Step, StepError};
use crate::event::EmitOptions;
use crate::retry::RetryPolicy;

/// How long every handler in the metrics scenario runs.
const WORK: Duration = Duration::from_millis(20);

/// **Observability.** After a known scenario the metrics snapshot counts exactly
/// what happened: five events succeed, one fails once and succeeds on its retry,
/// one fails permanently, one waits an hour as a delayed event. Processed, failed,
/// retried and dead-lettered counts, queue depth at each stage, handler latency
/// (every handler runs 20 ms) and end-to-end latency all match.
pub async fn metrics_count_a_known_scenario<B: Backend + Clone>(backend: B) {
    let flow = Flow::builder()
        .external::<Job>()
        .step(
            Step::event::<Job>("measured")
                .retry(RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(3))
                .handle(|ctx: StepContext, job: Job| async move {
                    tokio::time::sleep(WORK).await;
                    match job.n {
                        5 if ctx.attempt() == 1 => Err(injected("fails once")),
                        6 => Err(StepError::permanent(Injected("always fails".into()))),
                        _ => Ok(()),
                    }
                }),
        )
        .build()
        .expect("valid flow");
    let h = start(flow, backend, epoch_clock()).await;
    let acme = tenant("acme");
    for n in 0..=6 {
        h.emit(&acme, &Job { n }).await.expect("emit");
    }
    let later = EmitOptions::new().delay(Duration::from_secs(3600));
    h.engine()
        .emit_with(&acme, &Job { n: 7 }, later)
        .await
        .expect("emit");
    settle(&h).await;

    let m = h.engine().metrics().await.expect("metrics");
    assert_eq!(
        (m.processed, m.failed, m.retried, m.dead_lettered),
        (5, 2, 1, 1),
        "after the first round: {m:?}"
    );
    let expected = QueueDepth {
        ready: 0,
        delayed: 2,
        waiting: 0,
        in_flight: 0,
        dead: 1,
    };
    assert_eq!(m.queue, expected, "one retry and one delayed event wait");

    advance(&h, Duration::from_secs(2)).await;
    let m = h.engine().metrics().await.expect("metrics");
    assert_eq!(
        (m.processed, m.failed, m.retried, m.dead_lettered),
        (6, 2, 1, 1),
        "after the retry: {m:?}"
    );
    assert_eq!(
        m.queue,
        QueueDepth {
            delayed: 1,
            ..expected
        }
    );

    advance(&h, Duration::from_secs(3600)).await;
    let m = h.engine().metrics().await.expect("metrics");
    assert_eq!(
        (m.processed, m.failed, m.retried, m.dead_lettered),
        (7, 2, 1, 1),
        "after the delayed event: {m:?}"
    );
    assert_eq!(
        m.queue,
        QueueDepth {
            delayed: 0,
            ..expected
        }
    );
    assert_eq!((m.conflicts, m.timeouts, m.stale), (0, 0, 0));

    // Nine attempts ran, 20 ms each; quantiles are power-of-two bucket bounds.
    let handler = m.handler_latency;
    assert_eq!(handler.count, 9, "{handler:?}");
    assert!(
        handler.max >= WORK && handler.max < WORK + Duration::from_millis(2),
        "{handler:?}"
    );
    assert!(
        handler.p50 >= WORK && handler.p50 <= 2 * WORK,
        "{handler:?}"
    );
    // End to end: from due time to commit, once per processed event. The slowest
    // is the retried one: 20 ms, the 1 s retry delay, 20 ms.
    let end_to_end = m.end_to_end_latency;
    assert_eq!(end_to_end.count, 7, "{end_to_end:?}");
    let slowest = Duration::from_millis(1_040);
    assert!(
        end_to_end.max >= slowest && end_to_end.max < slowest + Duration::from_millis(50),
        "{end_to_end:?}"
    );
    assert!(
        end_to_end.p50 >= WORK && end_to_end.p50 <= 2 * WORK,
        "{end_to_end:?}"
    );
    h.shutdown().await;
}

/// **Contract 9, graceful shutdown: finish.** Shutdown stops accepting work and
/// lets in-flight handlers finish within the deadline: all of them commit, none
/// is released, nothing is left in the queue.
pub async fn shutdown_finishes_in_flight_work<B: Backend + Clone>(backend: B) {
    const JOBS: u64 = 8;
    let (started, mut running) = tokio::sync::watch::channel(0u64);
    let flow = Flow::builder()
        .external::<Job>()
        .step(
            Step::event::<Job>("steady").handle(move |ctx: StepContext, job: Job| {
                started.send_modify(|n| *n += 1);
                async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    ctx.put(&format!("done/{}", job.n), &true)?;
                    Ok::<_, StepError>(())
                }
            }),
        )
        .build()
        .expect("valid flow");
    let h = start(flow, backend, epoch_clock()).await;
    let acme = tenant("acme");
    for n in 0..JOBS {
        h.emit(&acme, &Job { n }).await.expect("emit");
    }
    // Shut down once every job is in flight. (A fixed pause raced the claims:
    // under the paused clock it ends as soon as the runtime waits on a
    // broker's I/O, before every job was claimed, and unclaimed work rightly
    // stays queued through a shutdown.)
    tokio::time::timeout(SETTLE_LIMIT, running.wait_for(|n| *n == JOBS))
        .await
        .expect("every job starts")
        .expect("the flow is alive");
    let report = h.engine().shutdown(Duration::from_secs(5)).await;

    assert_eq!(
        (report.finished, report.released),
        (JOBS as usize, 0),
        "{report:?}"
    );
    for n in 0..JOBS {
        assert_eq!(
            h.state::<bool>(&acme, &format!("done/{n}")).await,
            Some(true)
        );
    }
    let m = h.engine().metrics().await.expect("metrics");
    assert_eq!(m.processed, JOBS);
    assert_eq!(m.queue.pending(), 0, "{:?}", m.queue);
    assert!(
        matches!(
            h.emit(&acme, &Job { n: 99 }).await,
            Err(EngineError::ShuttingDown)
        ),
        "a shut-down engine refuses new events"
    );
}

/// **Contract 9, graceful shutdown: release.** Handlers still running at the
/// deadline are stopped and their deliveries released, with nothing committed;
/// a new engine on the same backend picks them up at once (no lease wait), as
/// attempt 1, and finishes them. Nothing is lost or done twice.
pub async fn shutdown_releases_unfinished_work<B: Backend + Clone>(backend: B) {
    const JOBS: u64 = 4;
    let runs: Log<(&'static str, u64, u32)> = Log::new();
    let flow = |engine: &'static str, work: Duration| {
        let runs = runs.clone();
        Flow::builder()
            .external::<Job>()
            .step(
                Step::event::<Job>("stuck").handle(move |ctx: StepContext, job: Job| {
                    let runs = runs.clone();
                    async move {
                        runs.push((engine, job.n, ctx.attempt()));
                        tokio::time::sleep(work).await;
                        let n: u32 = ctx.get(&format!("done/{}", job.n)).await?.unwrap_or(0);
                        ctx.put(&format!("done/{}", job.n), &(n + 1))?;
                        Ok::<_, StepError>(())
                    }
                }),
            )
            .build()
            .expect("valid flow")
    };
    let clock = epoch_clock();
    let first = start(
        flow("first", Duration::from_secs(3600)),
        backend.clone(),
        clock,
    )
    .await;
    let acme = tenant("acme");
    for n in 0..JOBS {
        first.emit(&acme, &Job { n }).await.expect("emit");
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(runs.len(), JOBS as usize, "all jobs were in flight");
    let report = first.engine().shutdown(Duration::from_secs(1)).await;
    assert_eq!(
        (report.finished, report.released),
        (0, JOBS as usize),
        "{report:?}"
    );
    for n in 0..JOBS {
        assert_eq!(
            first.state::<u32>(&acme, &format!("done/{n}")).await,
            None,
            "a released execution must not commit"
        );
    }
    let depth = backend.depth(clock.now()).await.expect("depth");
    assert_eq!(
        (depth.pending(), depth.in_flight),
        (JOBS, 0),
        "released, not leased: {depth:?}"
    );

    let second = start(flow("second", Duration::ZERO), backend, clock).await;
    settle(&second).await;
    let rerun: Vec<(u64, u32)> = runs
        .entries()
        .into_iter()
        .filter(|(engine, _, _)| *engine == "second")
        .map(|(_, n, attempt)| (n, attempt))
        .collect();
    assert_eq!(
        rerun.len(),
        JOBS as usize,
        "the second engine runs every released job: {rerun:?}"
    );
    assert!(
        rerun.iter().all(|(_, attempt)| *attempt == 1),
        "a release is not an attempt: {rerun:?}"
    );
    for n in 0..JOBS {
        assert_eq!(
            second.state::<u32>(&acme, &format!("done/{n}")).await,
            Some(1)
        );
    }
    assert!(second.dead_letters().await.is_empty());
    second.shutdown().await;
}
