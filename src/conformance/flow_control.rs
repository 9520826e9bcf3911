//! Flow control: rate limits and concurrency keys hold across engines that
//! share a backend, and across a restart; no key starves another; nothing is
//! lost, run twice or charged an attempt for waiting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{epoch_clock, start, tenant, Job, Log, SETTLE_LIMIT};
use crate::backend::Backend;
use crate::engine::flow_control::{Limit, LimitKey, Quota};
use crate::engine::{Flow, Step, StepContext, StepError};
use crate::testing::{TestHarness, TEST_EPOCH};
use crate::time::Timestamp;

/// One execution: tenant, job, when it started, its attempt.
type Run = (String, u64, Timestamp, u32);

/// A flow whose one step, `limited`, logs each execution and runs `work`.
fn logged(limit: Limit, work: Duration, runs: &Log<Run>) -> Flow {
    let runs = runs.clone();
    Flow::builder()
        .external::<Job>()
        .step(Step::event::<Job>("limited").limit(limit).handle(
            move |ctx: StepContext, job: Job| {
                runs.push((ctx.tenant().to_string(), job.n, ctx.now(), ctx.attempt()));
                async move {
                    tokio::time::sleep(work).await;
                    Ok::<_, StepError>(())
                }
            },
        ))
        .build()
        .expect("valid flow")
}

/// Waits (in steps of virtual time) until `runs` holds `n` entries; fails the
/// check if that takes longer than [`SETTLE_LIMIT`].
async fn wait_for_runs(runs: &Log<Run>, n: usize) {
    let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
    while runs.entries().len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} executions ran within {SETTLE_LIMIT:?}",
            runs.entries().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every job of every tenant ran exactly once, as its first attempt.
fn assert_once_each(runs: &[Run], jobs: &[(&str, u64)]) {
    let mut seen: HashMap<(String, u64), usize> = HashMap::new();
    for (tenant, n, _, attempt) in runs {
        assert_eq!(
            *attempt, 1,
            "waiting for a budget counted an attempt: {tenant}/{n}"
        );
        *seen.entry((tenant.clone(), *n)).or_default() += 1;
    }
    for (tenant, count) in jobs {
        for n in 0..*count {
            let times = seen.get(&(tenant.to_string(), n)).copied().unwrap_or(0);
            assert_eq!(times, 1, "{tenant}/{n} ran {times} times");
        }
    }
    assert_eq!(
        runs.len(),
        jobs.iter().map(|(_, n)| *n as usize).sum::<usize>()
    );
}

/// The start times of `tenant`'s executions, in order.
fn starts(runs: &[Run], tenant: &str) -> Vec<Timestamp> {
    let mut times: Vec<Timestamp> = runs.iter().filter(|r| r.0 == tenant).map(|r| r.2).collect();
    times.sort();
    times
}

/// The most executions that started within any window of length `window`.
fn busiest_window(times: &[Timestamp], window: Duration) -> usize {
    times
        .iter()
        .enumerate()
        .map(|(i, start)| {
            times[i..]
                .iter()
                .take_while(|t| **t < *start + window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

async fn three_engines<B: Backend + Clone>(
    backend: B,
    flow: impl Fn() -> Flow,
) -> Vec<TestHarness> {
    let clock = epoch_clock();
    let mut engines = Vec::new();
    for _ in 0..3 {
        engines.push(start(flow(), backend.clone(), clock).await);
    }
    engines
}

/// Emits `busy` jobs for tenant `busy` through the first engine, then
/// `quiet` jobs for tenant `quiet` one by one through the last.
async fn busy_and_quiet(engines: &[TestHarness], busy: u64, quiet: u64) {
    let backlog: Vec<Job> = (0..busy).map(|n| Job { n }).collect();
    engines[0]
        .engine()
        .emit_batch(&tenant("busy"), &backlog)
        .await
        .expect("emit");
    for n in 0..quiet {
        engines[engines.len() - 1]
            .emit(&tenant("quiet"), &Job { n })
            .await
            .expect("emit");
    }
}

/// **Contract 11, flow control: rates.** Three engines share a backend and a
/// per-tenant limit of 5 a second with a burst of 2. A busy tenant's 40 jobs
/// start no more than 7 in any second (burst + rate) and take the time the
/// rate needs; a quiet tenant's 4 jobs run at its own pace meanwhile, not
/// behind the busy one's backlog. Every job runs once, as its first attempt.
pub async fn rate_limits_hold_across_engines<B: Backend + Clone>(backend: B) {
    let runs = Log::new();
    let limit = || Limit::rate(5, Duration::from_secs(1)).burst(2);
    let engines = three_engines(backend, || logged(limit(), Duration::ZERO, &runs)).await;
    busy_and_quiet(&engines, 40, 4).await;
    wait_for_runs(&runs, 44).await;
    let all = runs.entries();
    assert_once_each(&all, &[("busy", 40), ("quiet", 4)]);

    let busy = starts(&all, "busy");
    let second = Duration::from_secs(1);
    let worst = busiest_window(&busy, second);
    assert!(
        worst <= 7,
        "{worst} of the busy tenant's jobs started within a second"
    );
    let took = busy[busy.len() - 1].saturating_since(busy[0]);
    assert!(
        took >= Duration::from_millis(7_600),
        "40 jobs at 5 a second (2 at once) took only {took:?}"
    );
    let quiet = starts(&all, "quiet");
    assert!(busiest_window(&quiet, second) <= 7);
    let quiet_done = quiet[quiet.len() - 1].saturating_since(TEST_EPOCH);
    assert!(
        quiet_done < Duration::from_secs(2),
        "the quiet tenant waited {quiet_done:?} behind the busy one"
    );
    for h in &engines {
        h.shutdown().await;
    }
}

/// **Contract 11, flow control: concurrency keys.** Three engines share a
/// backend and a limit of 2 in flight per tenant; each job holds its slot for
/// 100 ms. No tenant ever has more than 2 running, across the engines; the
/// busy tenant does use both; the quiet tenant finishes long before the busy
/// one. Every job runs once, as its first attempt.
pub async fn concurrency_keys_hold_across_engines<B: Backend + Clone>(backend: B) {
    let runs = Log::new();
    let running: Arc<Mutex<HashMap<String, (usize, usize)>>> = Arc::default();
    let flow = || {
        let (runs, running) = (runs.clone(), running.clone());
        Flow::builder()
            .external::<Job>()
            .step(
                Step::event::<Job>("limited")
                    .limit(Limit::concurrency(2))
                    .handle(move |ctx: StepContext, job: Job| {
                        let (runs, running) = (runs.clone(), running.clone());
                        async move {
                            let who = ctx.tenant().to_string();
                            runs.push((who.clone(), job.n, ctx.now(), ctx.attempt()));
                            {
                                let mut map = running.lock().unwrap_or_else(|p| p.into_inner());
                                let entry = map.entry(who.clone()).or_default();
                                entry.0 += 1;
                                entry.1 = entry.1.max(entry.0);
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            let mut map = running.lock().unwrap_or_else(|p| p.into_inner());
                            map.entry(who).or_default().0 -= 1;
                            Ok::<_, StepError>(())
                        }
                    }),
            )
            .build()
            .expect("valid flow")
    };
    let engines = three_engines(backend, flow).await;
    busy_and_quiet(&engines, 20, 4).await;
    wait_for_runs(&runs, 24).await;
    // The last executions finish.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let all = runs.entries();
    assert_once_each(&all, &[("busy", 20), ("quiet", 4)]);
    let peaks = running.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(
        peaks["busy"].1, 2,
        "the busy tenant ran {} at once",
        peaks["busy"].1
    );
    assert!(
        peaks["quiet"].1 <= 2,
        "the quiet tenant ran {} at once",
        peaks["quiet"].1
    );
    let (busy, quiet) = (starts(&all, "busy"), starts(&all, "quiet"));
    assert!(
        quiet[quiet.len() - 1] < busy[busy.len() / 2],
        "the quiet tenant waited behind the busy one: {quiet:?}"
    );
    for h in &engines {
        h.shutdown().await;
    }
}

/// **Contract 11, flow control: durable budgets.** With a limit of one a
/// minute, an engine runs a first job and is shut down; a new engine on the
/// same backend does not run the second before the minute is up, and runs it
/// then; meanwhile its key counts it as queued. A quota set at run time is
/// kept in the store too: the new engine reads the raised quota without being
/// told.
pub async fn limits_survive_a_restart<B: Backend + Clone>(backend: B) {
    let runs = Log::new();
    let limit = || Limit::rate(1, Duration::from_secs(60));
    let clock = epoch_clock();
    let first = start(
        logged(limit(), Duration::ZERO, &runs),
        backend.clone(),
        clock,
    )
    .await;
    first
        .emit(&tenant("acme"), &Job { n: 0 })
        .await
        .expect("emit");
    first
        .emit(&tenant("acme"), &Job { n: 1 })
        .await
        .expect("emit");
    wait_for_runs(&runs, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(runs.entries().len(), 1, "the second job waits for the rate");
    let waiting = first
        .engine()
        .limit_status("limited", "rate", "acme")
        .await
        .expect("status");
    assert_eq!(waiting.queued, 1, "the second job is queued: {waiting:?}");
    assert!(waiting.throttled_until.is_some(), "{waiting:?}");
    first.shutdown().await;

    let second = start(
        logged(limit(), Duration::ZERO, &runs),
        backend.clone(),
        clock,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        runs.entries().len(),
        1,
        "a new engine must not reset the budget"
    );
    wait_for_runs(&runs, 2).await;
    let all = runs.entries();
    assert_once_each(&all, &[("acme", 2)]);
    let gap = all[1].2.saturating_since(all[0].2);
    assert!(
        gap >= Duration::from_secs(60),
        "the second job ran {gap:?} after the first"
    );

    // The plan is raised at run time, then the engine restarts.
    let raised = Quota::Rate {
        count: 100,
        period: Duration::from_secs(1),
        burst: 10,
    };
    second
        .engine()
        .set_limit("limited", "rate", "acme", raised)
        .await
        .expect("set a quota");
    second.shutdown().await;
    let third = start(logged(limit(), Duration::ZERO, &runs), backend, clock).await;
    let status = third
        .engine()
        .limit_status("limited", "rate", "acme")
        .await
        .expect("status");
    assert_eq!((status.quota, status.overridden), (raised, true));
    let burst: Vec<Job> = (10..20).map(|n| Job { n }).collect();
    third
        .engine()
        .emit_batch(&tenant("acme"), &burst)
        .await
        .expect("emit");
    let before = third.now();
    wait_for_runs(&runs, 12).await;
    let waited = runs.entries()[11].2.saturating_since(before);
    assert!(
        waited < Duration::from_secs(1),
        "10 jobs under the raised quota took {waited:?}"
    );
    third.shutdown().await;
}

/// **Contract 10 and 11: a key that cannot be computed.** A limit keyed by a
/// payload field the event lacks dead-letters that delivery at once, with an
/// error naming the limit and the field; events that have the field run.
pub async fn unkeyable_deliveries_dead_letter<B: Backend + Clone>(backend: B) {
    let runs = Log::new();
    let limit = Limit::concurrency(1).per(LimitKey::field("account"));
    let h = start(logged(limit, Duration::ZERO, &runs), backend, epoch_clock()).await;
    h.emit(&tenant("acme"), &Job { n: 7 }).await.expect("emit");
    let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
    let dead = loop {
        let dead = h
            .engine()
            .dead_letters(&crate::DeadLetterQuery::default())
            .await
            .expect("dead letters");
        if !dead.is_empty() || tokio::time::Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead.len(), 1, "the unkeyable delivery dead-letters");
    assert_eq!(dead[0].kind, crate::FailureKind::Undecodable);
    let error = &dead[0].last_error;
    assert!(
        error.contains("flow control") && error.contains("\"account\""),
        "the dead letter says why: {error}"
    );
    assert!(runs.entries().is_empty(), "the handler never ran");
    h.shutdown().await;
}
