//! Debounce and batching: every event runs in exactly one window, in emit
//! order, across engines that share a backend and across failed runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{epoch_clock, injected, start, tenant, Job, SETTLE_LIMIT};
use crate::backend::Backend;
use crate::engine::{Flow, Step, StepContext, StepError, WindowBuilder};
use crate::testing::TestHarness;
use crate::time::Timestamp;

/// One committed run of a windowed handler: when it ran, the jobs it got.
type Run = (Timestamp, Vec<u64>);

/// A flow with one windowed step. Each run that commits records itself in
/// the tenant's state (`run/<its first job>`) and counts each of its jobs
/// (`count/<job>`): a run that conflicted and ran again leaves no trace of
/// its first try. Its first run fails (retryably) when `fail_once` is set.
fn windowed(
    window: impl Fn(crate::StepBuilder<Job>) -> WindowBuilder<Job>,
    fail_once: &Arc<AtomicBool>,
) -> Flow {
    let fail_once = fail_once.clone();
    Flow::builder()
        .external::<Job>()
        .step(window(Step::event::<Job>("windowed")).handle(
            move |ctx: StepContext, jobs: Vec<Job>| {
                let fail_once = fail_once.clone();
                async move {
                    if fail_once.swap(false, Ordering::SeqCst) {
                        return Err(injected("the first run fails"));
                    }
                    let ns: Vec<u64> = jobs.iter().map(|j| j.n).collect();
                    for n in &ns {
                        ctx.add(&format!("count/{n}"), 1)?;
                    }
                    ctx.put(&format!("run/{}", ns[0]), &(ctx.now(), ns))?;
                    Ok::<_, StepError>(())
                }
            },
        ))
        .build()
        .expect("valid flow")
}

/// Waits in steps of virtual time until every job of `jobs` ran for
/// `tenant`; returns the committed runs, oldest first. Fails the check if a
/// job ran more than once, or not within [`SETTLE_LIMIT`].
async fn committed_runs(h: &TestHarness, tenant_name: &str, jobs: &[u64]) -> Vec<Run> {
    let acme = tenant(tenant_name);
    let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
    loop {
        let mut missing = 0;
        for n in jobs {
            match h.state::<i64>(&acme, &format!("count/{n}")).await {
                None => missing += 1,
                Some(1) => {}
                Some(times) => panic!("job {n} of {tenant_name} ran in {times} windows"),
            }
        }
        if missing == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} of {} jobs did not run within {SETTLE_LIMIT:?}",
            jobs.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut runs = Vec::new();
    for n in jobs {
        if let Some(run) = h.state::<Run>(&acme, &format!("run/{n}")).await {
            runs.push(run);
        }
    }
    runs.sort();
    for (_, ns) in &runs {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "out of emit order: {ns:?}"
        );
    }
    runs
}

async fn engines<B: Backend + Clone>(backend: B, flow: impl Fn() -> Flow) -> Vec<TestHarness> {
    let clock = epoch_clock();
    let mut engines = Vec::new();
    for _ in 0..3 {
        engines.push(start(flow(), backend.clone(), clock).await);
    }
    engines
}

/// **Contract 11, flow control: debounce.** Three engines share a backend
/// and a step debounced by 1 s (at most 5 s). Five events 200 ms apart run
/// once, together, in order, a quiet second after the last; events that keep
/// coming every 500 ms for 8 s run in windows of at most 5 s. Another
/// tenant's window is its own. A failed run is retried with the same events.
pub async fn debounced_events_run_once_together<B: Backend + Clone>(backend: B) {
    let fail_once = Arc::new(AtomicBool::new(true));
    let debounce =
        |b: crate::StepBuilder<Job>| b.debounce(Duration::from_secs(1), Duration::from_secs(5));
    let engines = engines(backend, || windowed(debounce, &fail_once)).await;
    let start_at = engines[0].now();
    for n in 0..5 {
        engines[(n % 3) as usize]
            .emit(&tenant("acme"), &Job { n })
            .await
            .expect("emit");
        engines[0]
            .emit(&tenant("other"), &Job { n: 100 + n })
            .await
            .expect("emit");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let burst = committed_runs(&engines[0], "acme", &[0, 1, 2, 3, 4]).await;
    assert_eq!(burst.len(), 1, "one run for the burst: {burst:?}");
    assert_eq!(burst[0].1, vec![0, 1, 2, 3, 4]);
    let after = burst[0].0.saturating_since(start_at);
    assert!(
        after >= Duration::from_millis(1_800),
        "the window closed {after:?} after the first event, before a quiet second"
    );
    let other = committed_runs(&engines[1], "other", &[100, 101, 102, 103, 104]).await;
    assert_eq!(
        other.len(),
        1,
        "another tenant's window is its own: {other:?}"
    );

    // A steady trickle never goes quiet: the maximum wait closes windows.
    for n in 10..26 {
        engines[(n % 3) as usize]
            .emit(&tenant("acme"), &Job { n })
            .await
            .expect("emit");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let trickle = committed_runs(&engines[2], "acme", &(10..26).collect::<Vec<_>>()).await;
    assert!(
        trickle.len() >= 2,
        "the maximum wait closes windows: {trickle:?}"
    );
    for (_, ns) in &trickle {
        assert!(ns.len() <= 11, "a window of at most 5 s holds {ns:?}");
    }
    for h in &engines {
        h.shutdown().await;
    }
}

/// **Contract 11, flow control: batching.** Three engines share a backend
/// and a step batching 4 events (or 1 s). 10 events emitted together run as
/// two full batches at once and one of 2 after a second; each event runs in
/// exactly one batch, in emit order.
pub async fn batches_close_when_full_or_late<B: Backend + Clone>(backend: B) {
    let fail_once = Arc::new(AtomicBool::new(false));
    let batch = |b: crate::StepBuilder<Job>| b.batch(4, Duration::from_secs(1));
    let engines = engines(backend, || windowed(batch, &fail_once)).await;
    let start_at = engines[0].now();
    let jobs: Vec<Job> = (0..10).map(|n| Job { n }).collect();
    engines[1]
        .engine()
        .emit_batch(&tenant("acme"), &jobs)
        .await
        .expect("emit");
    let runs = committed_runs(&engines[0], "acme", &(0..10).collect::<Vec<_>>()).await;
    let mut sizes: Vec<usize> = runs.iter().map(|r| r.1.len()).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, vec![2, 4, 4], "{runs:?}");
    let late = runs
        .iter()
        .find(|r| r.1.len() == 2)
        .expect("the last batch");
    let waited = late.0.saturating_since(start_at);
    assert!(
        waited >= Duration::from_secs(1),
        "the short batch ran {waited:?} after its first event"
    );
    for h in &engines {
        h.shutdown().await;
    }
}
