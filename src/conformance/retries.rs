//! Durable retries, dead letters and attempt timeouts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{advance, drain, epoch_clock, injected, settle, start, tenant, Injected, Job, Log};
use crate::backend::Backend;
use crate::backend::DeadLetterQuery;
use crate::engine::Flow;
use crate::engine::StepContext;
use crate::engine::{Step, StepError};
use crate::retry::RetryPolicy;
use crate::time::Timestamp;

/// One attempt a handler saw: which job, which attempt, and when (engine clock).
type Attempt = (u64, u32, Timestamp);

/// A step on [`Job`] that records every attempt and fails the first `failures`
/// attempts of each job with a retryable error.
fn flaky(name: &str, policy: RetryPolicy, failures: u32, attempts: &Log<Attempt>) -> Step {
    let attempts = attempts.clone();
    Step::event::<Job>(name)
        .retry(policy)
        .handle(move |ctx: StepContext, job: Job| {
            let attempts = attempts.clone();
            async move {
                attempts.push((job.n, ctx.attempt(), ctx.now()));
                if ctx.attempt() <= failures {
                    return Err(injected(format!("failure on attempt {}", ctx.attempt())));
                }
                Ok::<_, StepError>(())
            }
        })
}

fn flow_of(step: Step) -> Flow {
    Flow::builder()
        .external::<Job>()
        .step(step)
        .build()
        .expect("valid flow")
}

fn attempts_of(log: &Log<Attempt>, job: u64) -> Vec<(u32, Timestamp)> {
    log.entries()
        .into_iter()
        .filter(|(n, _, _)| *n == job)
        .map(|(_, attempt, at)| (attempt, at))
        .collect()
}

/// **Contract 4, durable retries.** A handler that fails `k` times and then
/// succeeds runs exactly `k + 1` times, with attempts numbered 1 to `k + 1`, and
/// every wait between attempts lies within the policy's
/// [`delay_bounds`](RetryPolicy::delay_bounds) (measured on the engine clock, whose
/// timestamps have millisecond resolution). Nothing dead-letters.
pub async fn retries_follow_the_policy<B: Backend + Clone>(backend: B) {
    const FAILURES: u32 = 4;
    const JOBS: u64 = 3;
    let policy = RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(10))
        .max_attempts(10);
    let log = Log::new();
    let h = start(
        flow_of(flaky("flaky", policy, FAILURES, &log)),
        backend,
        epoch_clock(),
    )
    .await;
    for n in 0..JOBS {
        h.emit(&tenant("acme"), &Job { n }).await.expect("emit");
    }
    advance(&h, Duration::from_secs(10)).await;
    drain(&h).await;

    for n in 0..JOBS {
        let attempts = attempts_of(&log, n);
        let numbers: Vec<u32> = attempts.iter().map(|(a, _)| *a).collect();
        assert_eq!(
            numbers,
            (1..=FAILURES + 1).collect::<Vec<_>>(),
            "job {n} must run exactly {} times",
            FAILURES + 1
        );
        for pair in attempts.windows(2) {
            let (failed, at) = pair[0];
            let waited = pair[1].1.saturating_since(at);
            let (low, high) = policy.delay_bounds(failed);
            let low = Duration::from_millis(low.as_millis() as u64);
            let high = high + Duration::from_millis(1);
            assert!(
                low <= waited && waited <= high,
                "after failed attempt {failed} of job {n} the engine waited {waited:?}, outside the policy's [{low:?}, {high:?}]"
            );
        }
    }
    let m = h.engine().metrics().await.expect("metrics");
    assert_eq!(m.processed, JOBS);
    assert_eq!(m.retried, JOBS * u64::from(FAILURES));
    assert_eq!(m.failed, JOBS * u64::from(FAILURES));
    assert!(h.dead_letters().await.is_empty());
    h.shutdown().await;
}

/// **Contract 4, retry-after.** An error that asks to wait (e.g. HTTP 429 with
/// Retry-After) is retried no sooner than it asks, even when the policy's own delay
/// is shorter.
pub async fn retry_after_sets_a_floor<B: Backend + Clone>(backend: B) {
    let log: Log<Attempt> = Log::new();
    let attempts = log.clone();
    let step = Step::event::<Job>("throttled")
        .retry(RetryPolicy::fixed(Duration::from_secs(1)))
        .handle(move |ctx: StepContext, job: Job| {
            let attempts = attempts.clone();
            async move {
                attempts.push((job.n, ctx.attempt(), ctx.now()));
                if ctx.attempt() == 1 {
                    return Err(StepError::retry_after(
                        Duration::from_secs(30),
                        Injected("429 Too Many Requests".into()),
                    ));
                }
                Ok(())
            }
        });
    let h = start(flow_of(step), backend, epoch_clock()).await;
    h.emit(&tenant("acme"), &Job { n: 0 }).await.expect("emit");
    advance(&h, Duration::from_secs(10)).await;
    assert_eq!(log.len(), 1, "retried before the 30 s the error asked for");
    advance(&h, Duration::from_secs(30)).await;
    let attempts = attempts_of(&log, 0);
    assert_eq!(attempts.len(), 2, "retried once after the floor");
    let waited = attempts[1].1.saturating_since(attempts[0].1);
    assert!(
        waited >= Duration::from_secs(30) && waited <= Duration::from_millis(30_001),
        "waited {waited:?}, expected the 30 s floor"
    );
    h.shutdown().await;
}

/// **Contract 4, max elapsed.** Retries stop once the next attempt would start
/// later than the policy's elapsed-time limit after the first: a handler that
/// always fails with a 10 s delay and a 25 s limit runs at 0 s, 10 s and 20 s,
/// then dead-letters with 3 attempts.
pub async fn retries_stop_at_max_elapsed<B: Backend + Clone>(backend: B) {
    let policy = RetryPolicy::fixed(Duration::from_secs(10))
        .max_attempts(100)
        .max_elapsed(Duration::from_secs(25));
    let log = Log::new();
    let h = start(
        flow_of(flaky("doomed", policy, u32::MAX, &log)),
        backend,
        epoch_clock(),
    )
    .await;
    let started = h.now();
    h.emit(&tenant("acme"), &Job { n: 0 }).await.expect("emit");
    advance(&h, Duration::from_secs(120)).await;

    let offsets: Vec<u64> = attempts_of(&log, 0)
        .iter()
        .map(|(_, at)| at.saturating_since(started).as_secs())
        .collect();
    assert_eq!(
        offsets,
        vec![0, 10, 20],
        "attempts past max elapsed must not start"
    );
    let dead = h.dead_letters().await;
    assert_eq!(dead.len(), 1, "exceeding max elapsed dead-letters");
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].last_error, "failure on attempt 3");
    h.shutdown().await;
}

/// **Contract 4, durable retries across a restart.** A retry scheduled by one
/// engine is kept by the backend: after that engine shuts down, a new engine on
/// the same backend runs it at its time, as attempt 2.
pub async fn pending_retry_survives_restart<B: Backend + Clone>(backend: B) {
    let policy = RetryPolicy::fixed(Duration::from_secs(60));
    let clock = epoch_clock();
    let log = Log::new();
    let first = start(
        flow_of(flaky("durable", policy, 1, &log)),
        backend.clone(),
        clock,
    )
    .await;
    let failed_at = first.now();
    first
        .emit(&tenant("acme"), &Job { n: 0 })
        .await
        .expect("emit");
    settle(&first).await;
    assert_eq!(log.len(), 1, "the first attempt ran");
    first.shutdown().await;

    tokio::time::sleep(Duration::from_secs(10)).await;
    let second = start(flow_of(flaky("durable", policy, 1, &log)), backend, clock).await;
    advance(&second, Duration::from_secs(30)).await;
    assert_eq!(
        log.len(),
        1,
        "the retry must wait for its time after a restart"
    );
    advance(&second, Duration::from_secs(30)).await;
    let attempts = attempts_of(&log, 0);
    assert_eq!(
        attempts.len(),
        2,
        "the pending retry was lost in the restart"
    );
    assert_eq!(attempts[1].0, 2, "the retry keeps its attempt number");
    assert!(attempts[1].1.saturating_since(failed_at) >= Duration::from_secs(60));
    assert_eq!(
        second.engine().metrics().await.expect("metrics").processed,
        1
    );
    second.shutdown().await;
}

/// **Contract 4, dead letters on exhaustion.** A handler that fails every attempt
/// dead-letters exactly once when its attempts run out, with the last attempt's
/// error, the attempt count, and the times of the first and last attempts.
pub async fn exhausted_retries_dead_letter_once<B: Backend + Clone>(backend: B) {
    let policy = RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(3);
    let log = Log::new();
    let h = start(
        flow_of(flaky("hopeless", policy, u32::MAX, &log)),
        backend,
        epoch_clock(),
    )
    .await;
    let acme = tenant("acme");
    let emitted_at = h.now();
    let id = h.emit(&acme, &Job { n: 0 }).await.expect("emit");
    advance(&h, Duration::from_secs(60)).await;

    assert_eq!(log.len(), 3, "runs exactly max_attempts times");
    let dead = h.dead_letters().await;
    assert_eq!(dead.len(), 1, "exactly one dead letter: {dead:?}");
    let dl = &dead[0];
    assert_eq!(dl.step.as_str(), "hopeless");
    assert_eq!(dl.event.id, id);
    assert_eq!(dl.event.tenant, acme);
    assert_eq!(dl.attempts, 3);
    assert_eq!(
        dl.last_error, "failure on attempt 3",
        "the last attempt's error is kept"
    );
    assert_eq!(dl.first_attempt_at, emitted_at);
    assert_eq!(dl.failed_at, emitted_at + Duration::from_secs(2));
    let m = h.engine().metrics().await.expect("metrics");
    assert_eq!((m.failed, m.retried, m.dead_lettered), (3, 2, 1));
    assert_eq!((m.queue.pending(), m.queue.dead), (0, 1));
    h.shutdown().await;
}

/// **Contract 4, permanent errors.** A permanent error dead-letters on the first
/// attempt, whatever the retry policy allows, with its error message.
pub async fn permanent_error_dead_letters_at_once<B: Backend + Clone>(backend: B) {
    let log: Log<u32> = Log::new();
    let runs = log.clone();
    let step = Step::event::<Job>("strict")
        .retry(RetryPolicy::fixed(Duration::ZERO).max_attempts(10))
        .handle(move |ctx: StepContext, _job: Job| {
            let runs = runs.clone();
            async move {
                runs.push(ctx.attempt());
                Err::<(), _>(StepError::permanent(Injected("card declined".into())))
            }
        });
    let h = start(flow_of(step), backend, epoch_clock()).await;
    h.emit(&tenant("acme"), &Job { n: 0 }).await.expect("emit");
    drain(&h).await;

    assert_eq!(log.entries(), vec![1], "a permanent error is never retried");
    let dead = h.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 1);
    assert!(dead[0].last_error.contains("card declined"), "{dead:?}");
    assert!(dead[0].failed_at >= dead[0].first_attempt_at);
    h.shutdown().await;
}

/// **Contract 4, dead-letter operations.** Dead letters can be listed (oldest
/// first, by step, by tenant, with a limit), replayed (the step runs the event
/// again from attempt 1 and, now healthy, succeeds) and purged; unknown ids are
/// ignored.
pub async fn dead_letters_can_be_listed_replayed_and_purged<B: Backend + Clone>(backend: B) {
    let healthy = Arc::new(AtomicBool::new(false));
    let replays: Log<u32> = Log::new();
    let (ok, log) = (healthy.clone(), replays.clone());
    let fragile = Step::event::<Job>("fragile")
        .retry(RetryPolicy::none())
        .handle(move |ctx: StepContext, job: Job| {
            let (healthy, replays) = (ok.clone(), log.clone());
            async move {
                if !healthy.load(Ordering::SeqCst) {
                    return Err(injected(format!("fragile failed on job {}", job.n)));
                }
                replays.push(ctx.attempt());
                ctx.put(&format!("done/{}", job.n), &true)?;
                Ok::<_, StepError>(())
            }
        });
    let picky = Step::event::<Job>("picky")
        .retry(RetryPolicy::none())
        .handle(|_ctx: StepContext, job: Job| async move {
            if job.n == 0 {
                return Err(StepError::permanent(Injected("picky refuses job 0".into())));
            }
            Ok(())
        });
    let flow = Flow::builder()
        .external::<Job>()
        .step(fragile)
        .step(picky)
        .build()
        .expect("valid flow");
    let h = start(flow, backend, epoch_clock()).await;
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    h.emit(&acme, &Job { n: 0 }).await.expect("emit");
    h.emit(&acme, &Job { n: 1 }).await.expect("emit");
    h.emit(&globex, &Job { n: 2 }).await.expect("emit");
    drain(&h).await;

    let engine = h.engine();
    let all = engine
        .dead_letters(&DeadLetterQuery::default())
        .await
        .expect("list");
    assert_eq!(all.len(), 4, "three fragile and one picky: {all:?}");
    assert!(
        all.windows(2).all(|w| w[0].failed_at <= w[1].failed_at),
        "dead letters are listed oldest first"
    );
    let query = |step: Option<&str>, tenant: Option<&crate::TenantId>, limit| {
        let mut query = DeadLetterQuery::new();
        query.step = step.map(|s| crate::StepName::new(s).expect("valid"));
        query.tenant = tenant.cloned();
        query.limit = limit;
        query
    };
    let fragile = engine
        .dead_letters(&query(Some("fragile"), None, None))
        .await
        .expect("list");
    assert_eq!(fragile.len(), 3);
    assert!(fragile.iter().all(|d| d.step.as_str() == "fragile"));
    let of_globex = engine
        .dead_letters(&query(None, Some(&globex), None))
        .await
        .expect("list");
    assert_eq!(of_globex.len(), 1);
    assert_eq!(of_globex[0].event.tenant, globex);
    let picky = engine
        .dead_letters(&query(Some("picky"), Some(&acme), None))
        .await
        .expect("list");
    assert_eq!(picky.len(), 1);
    assert!(picky[0].last_error.contains("picky refuses job 0"));
    assert_eq!(
        engine
            .dead_letters(&query(None, None, Some(2)))
            .await
            .expect("list")
            .len(),
        2
    );

    // Replay one fragile dead letter once the step is healthy again.
    healthy.store(true, Ordering::SeqCst);
    let job0 = fragile
        .iter()
        .find(|d| d.event.decode::<Job>().ok() == Some(Job { n: 0 }))
        .expect("job 0 dead-lettered in fragile");
    assert_eq!(
        engine
            .replay_dead_letters(&[job0.id])
            .await
            .expect("replay"),
        1
    );
    drain(&h).await;
    assert_eq!(
        replays.entries(),
        vec![1],
        "a replay runs again from attempt 1"
    );
    assert_eq!(
        h.state::<bool>(&acme, "done/0").await,
        Some(true),
        "the replay succeeded"
    );
    assert_eq!(
        h.state::<bool>(&acme, "done/1").await,
        None,
        "only the replayed one ran"
    );
    assert_eq!(
        engine
            .replay_dead_letters(&[job0.id])
            .await
            .expect("replay"),
        0,
        "a replayed dead letter is gone from the list"
    );

    // Purge the other two fragile ones.
    let rest: Vec<u64> = fragile
        .iter()
        .filter(|d| d.id != job0.id)
        .map(|d| d.id)
        .collect();
    assert_eq!(engine.purge_dead_letters(&rest).await.expect("purge"), 2);
    assert_eq!(engine.purge_dead_letters(&rest).await.expect("purge"), 0);
    assert_eq!(
        engine.purge_dead_letters(&[u64::MAX]).await.expect("purge"),
        0
    );
    let left = engine
        .dead_letters(&DeadLetterQuery::default())
        .await
        .expect("list");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].step.as_str(), "picky");
    let depth = engine.metrics().await.expect("metrics").queue;
    assert_eq!((depth.pending(), depth.dead), (0, 1));
    h.shutdown().await;
}

/// **Contract 5, timeouts.** A handler still running at its step's timeout fails
/// that attempt (a retryable failure, counted in the metrics); the attempt's
/// buffered writes are dropped and the retry runs as attempt 2.
pub async fn slow_handler_times_out_and_is_retried<B: Backend + Clone>(backend: B) {
    let log: Log<Attempt> = Log::new();
    let finished: Log<u32> = Log::new();
    let (attempts, done) = (log.clone(), finished.clone());
    let step = Step::event::<Job>("slow")
        .timeout(Duration::from_secs(5))
        .retry(RetryPolicy::fixed(Duration::from_secs(1)))
        .handle(move |ctx: StepContext, job: Job| {
            let (attempts, done) = (attempts.clone(), done.clone());
            async move {
                attempts.push((job.n, ctx.attempt(), ctx.now()));
                if ctx.attempt() == 1 {
                    ctx.put("partial", &true)?;
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                ctx.put("finished", &ctx.attempt())?;
                done.push(ctx.attempt());
                Ok::<_, StepError>(())
            }
        });
    let h = start(flow_of(step), backend, epoch_clock()).await;
    let acme = tenant("acme");
    let emitted_at = h.now();
    h.emit(&acme, &Job { n: 0 }).await.expect("emit");
    advance(&h, Duration::from_secs(120)).await;

    let attempts = attempts_of(&log, 0);
    assert_eq!(attempts.len(), 2, "the timed-out attempt is retried once");
    assert_eq!(
        finished.entries(),
        vec![2],
        "the first attempt was cut off at its timeout"
    );
    assert!(
        attempts[1].1.saturating_since(emitted_at) >= Duration::from_secs(6),
        "the retry starts after the 5 s timeout plus the 1 s delay"
    );
    assert!(
        attempts[1].1.saturating_since(emitted_at) < Duration::from_secs(60),
        "the timeout must cut the attempt short, not wait for the handler"
    );
    assert_eq!(
        h.state::<bool>(&acme, "partial").await,
        None,
        "a timed-out attempt's writes are dropped"
    );
    assert_eq!(h.state::<u32>(&acme, "finished").await, Some(2));
    let m = h.engine().metrics().await.expect("metrics");
    assert_eq!(
        (m.timeouts, m.failed, m.retried, m.processed),
        (1, 1, 1, 1),
        "{m:?}"
    );
    h.shutdown().await;
}
