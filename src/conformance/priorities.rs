//! Priorities: a tenant's higher-priority work is claimed first, oldest first
//! within a priority, and tenants still take fair turns whatever priorities
//! they use.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::effects::{claim, delivery, job_envelope};
use super::{epoch_clock, start, tenant, Done, Job, Log, SETTLE_LIMIT};
use crate::backend::{Backend, ClaimRequest, StepClaim};
use crate::engine::{Flow, Step, StepContext, StepError};
use crate::event::{EmitOptions, Envelope, Priority, StepName};
use crate::testing::TEST_EPOCH;
use crate::time::Timestamp;

/// Job `n` of `tenant` at `priority`, emitted at [`TEST_EPOCH`].
fn job_at(tenant_name: &str, n: u64, priority: Priority) -> Arc<Envelope> {
    let mut event = (*job_envelope(&tenant(tenant_name), n, TEST_EPOCH)).clone();
    event.priority = priority;
    Arc::new(event)
}

/// The job numbers of claimed deliveries, in the order the claim gave them.
fn job_numbers(claimed: &[crate::backend::Claimed]) -> Vec<u64> {
    claimed
        .iter()
        .map(|c| c.event.decode::<Job>().expect("a job").n)
        .collect()
}

/// **Contract 11, flow control: priorities — in the claim.** A tenant's
/// deliveries are claimed highest priority first and in publish order within
/// a priority. Priorities order work within a tenant's turn: a tenant whose
/// every event is [`Priority::Highest`] does not keep another tenant's
/// [`Priority::Lowest`] event out of a claim.
pub async fn claims_take_higher_priorities_first<B: Backend + Clone>(backend: B) {
    use Priority::{High, Highest, Low, Lowest, Normal};
    let lease = Duration::from_secs(60);
    let published = [Normal, Low, Highest, Normal, High, Lowest, High];
    let backlog = published
        .iter()
        .enumerate()
        .map(|(n, p)| delivery("ranked", job_at("shop", n as u64, *p), TEST_EPOCH))
        .collect();
    backend.publish(backlog).await.expect("publish");
    let claimed = claim(&backend, "ranked", 100, TEST_EPOCH, lease).await;
    assert_eq!(
        job_numbers(&claimed),
        [2, 4, 6, 0, 3, 1, 5],
        "claim order of jobs published as {published:?}"
    );
    for c in &claimed {
        let n = c.event.decode::<Job>().expect("a job").n as usize;
        assert_eq!(c.event.priority, published[n], "job {n} lost its priority");
    }

    let mut turns: Vec<_> = (0..8)
        .map(|n| delivery("turns", job_at("vip", n, Highest), TEST_EPOCH))
        .collect();
    turns.push(delivery("turns", job_at("plain", 0, Lowest), TEST_EPOCH));
    backend.publish(turns).await.expect("publish");
    let request = ClaimRequest {
        now: TEST_EPOCH,
        steps: vec![StepClaim {
            step: StepName::new("turns").expect("valid"),
            max: 4,
            lease,
        }],
        tenant_quantum: 2,
    };
    let batch = backend.claim(request).await.expect("claim");
    assert_eq!(batch.deliveries.len(), 4, "a full claim");
    assert!(
        batch
            .deliveries
            .iter()
            .any(|c| c.event.tenant.as_str() == "plain"),
        "tenant vip's highest-priority backlog kept tenant plain out of a claim of two turns"
    );
}

/// One execution: tenant, job, when it started, the priority it ran at.
type Run = (String, u64, Timestamp, Priority);

/// **Contract 11, flow control: priorities — across engines.** Three engines
/// share a backend; one step runs one job at a time per engine. Two tenants'
/// jobs of every priority fall due together. Within each tenant, no job starts
/// after a job of lower priority; the tenant whose every job is of the lowest
/// priority is not left until the other's backlog is done. The events a
/// handler emits carry the priority of the job it handled, and every job runs
/// once.
pub async fn priorities_order_work_across_engines<B: Backend + Clone>(backend: B) {
    let runs: Log<Run> = Log::new();
    let follow_ups: Log<(String, u64, Priority)> = Log::new();
    let flow = || {
        let runs = runs.clone();
        let follow_ups = follow_ups.clone();
        Flow::builder()
            .external::<Job>()
            .step(
                Step::event::<Job>("ranked")
                    .concurrency(1)
                    .emits::<Done>()
                    .handle(move |ctx: StepContext, job: Job| {
                        runs.push((ctx.tenant().to_string(), job.n, ctx.now(), ctx.priority()));
                        async move {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            ctx.emit(&Done { n: job.n })?;
                            Ok::<_, StepError>(())
                        }
                    }),
            )
            .step(
                Step::event::<Done>("followed").handle(move |ctx: StepContext, done: Done| {
                    follow_ups.push((ctx.tenant().to_string(), done.n, ctx.priority()));
                    async { Ok::<_, StepError>(()) }
                }),
            )
            .build()
            .expect("valid flow")
    };
    let clock = epoch_clock();
    let mut engines = Vec::new();
    for _ in 0..3 {
        engines.push(start(flow(), backend.clone(), clock).await);
    }
    // Everything falls due at one instant, so the claims choose among all of it.
    let due_in = Duration::from_secs(5);
    let mut expected: HashMap<(String, u64), Priority> = HashMap::new();
    for n in 0..15u64 {
        let priority = Priority::ALL[n as usize % Priority::ALL.len()];
        let options = EmitOptions::new().delay(due_in).priority(priority);
        engines[0]
            .engine()
            .emit_with(&tenant("vip"), &Job { n }, options)
            .await
            .expect("emit");
        expected.insert(("vip".into(), n), priority);
    }
    for n in 0..4u64 {
        let options = EmitOptions::new().delay(due_in).priority(Priority::Lowest);
        engines[2]
            .engine()
            .emit_with(&tenant("plain"), &Job { n }, options)
            .await
            .expect("emit");
        expected.insert(("plain".into(), n), Priority::Lowest);
    }

    let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
    while follow_ups.len() < expected.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} jobs were followed up within {SETTLE_LIMIT:?}",
            follow_ups.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = runs.entries();
    assert_eq!(all.len(), expected.len(), "every job runs once: {all:?}");
    for (tenant_name, n, _, priority) in &all {
        let key = (tenant_name.clone(), *n);
        assert_eq!(
            expected.get(&key),
            Some(priority),
            "job {key:?} ran once, at its priority"
        );
    }
    for (tenant_name, n, priority) in follow_ups.entries() {
        let key = (tenant_name, n);
        assert_eq!(
            expected.get(&key),
            Some(&priority),
            "the follow-up of job {key:?} did not inherit its priority"
        );
    }

    let mut vip: Vec<&Run> = all.iter().filter(|r| r.0 == "vip").collect();
    vip.sort_by_key(|r| r.2);
    for pair in vip.windows(2) {
        let (earlier, later) = (pair[0], pair[1]);
        assert!(
            earlier.2 == later.2 || earlier.3 >= later.3,
            "vip's job {} ({}) started at {} after job {} ({}) at {}",
            later.1,
            later.3,
            later.2,
            earlier.1,
            earlier.3,
            earlier.2
        );
    }
    let plain_first = all
        .iter()
        .filter(|r| r.0 == "plain")
        .map(|r| r.2)
        .min()
        .expect("plain ran");
    let vip_last = vip.last().expect("vip ran").2;
    assert!(
        plain_first < vip_last,
        "tenant plain's lowest-priority jobs waited for all of vip's: first at {plain_first}, vip's last at {vip_last}"
    );
    for h in &engines {
        h.engine().shutdown(Duration::from_millis(1)).await;
    }
}
