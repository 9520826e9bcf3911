//! Effects exactly once: atomic completion, optimistic isolation, fan-out, tenancy.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{drain, epoch_clock, injected, start, tenant, Done, Job, Log};
use crate::backend::Backend;
use crate::backend::{Action, Completion, Outcome, ReadCheck, Write};
use crate::backend::{ClaimRequest, Claimed, LeaseRef, NewDelivery, StepClaim};
use crate::engine::Flow;
use crate::engine::StepContext;
use crate::engine::{Step, StepError};
use crate::event::build_envelope;
use crate::event::EmitOptions;
use crate::event::{Envelope, Payload, StepName, TenantId, Topic, TraceId};
use crate::retry::RetryPolicy;
use crate::testing::TEST_EPOCH;
use crate::time::Timestamp;

// === Backend-level helpers, shared with the delivery checks ===

/// A fresh envelope of a [`Job`] for `tenant`, emitted at `at`.
pub(crate) fn job_envelope(tenant: &TenantId, n: u64, at: Timestamp) -> Arc<Envelope> {
    Arc::new(build_envelope(
        at,
        Topic::new(<Job as crate::Event>::TOPIC).expect("valid topic"),
        tenant.clone(),
        TraceId::new(),
        None,
        Payload::encode(&Job { n }).expect("a job serializes"),
        EmitOptions::default(),
    ))
}

/// A delivery of `event` to `step`, due at `due_at`.
pub(crate) fn delivery(step: &str, event: Arc<Envelope>, due_at: Timestamp) -> NewDelivery {
    NewDelivery {
        step: StepName::new(step).expect("valid step name"),
        event,
        group: None,
        due_at,
        key: None,
    }
}

/// Publishes one job to `step` and claims it: an input under a live lease, for
/// a completion to acknowledge.
pub(crate) async fn leased_input<B: Backend>(
    backend: &B,
    tenant: &TenantId,
    step: &str,
    now: Timestamp,
    lease: Duration,
) -> LeaseRef {
    backend
        .publish(vec![delivery(step, job_envelope(tenant, 1, now), now)])
        .await
        .expect("publish");
    let claimed = claim(backend, step, 10, now, lease).await;
    assert_eq!(claimed.len(), 1);
    claimed[0].lease
}

/// Claims up to `max` deliveries of `step` at `now`.
///
/// Also checks what every claim promises: a claim that finds nothing does not
/// name a `next_due` at or before its own `now` (the dispatcher sleeps until
/// `next_due`, so a past one would have it claim again and again at once).
pub(crate) async fn claim<B: Backend>(
    backend: &B,
    step: &str,
    max: usize,
    now: Timestamp,
    lease: Duration,
) -> Vec<Claimed> {
    let request = ClaimRequest {
        now,
        steps: vec![StepClaim {
            step: StepName::new(step).expect("valid step name"),
            max,
            lease,
        }],
        tenant_quantum: 16,
    };
    let batch = backend
        .claim(request)
        .await
        .unwrap_or_else(|err| panic!("claim failed: {err}"));
    if batch.deliveries.is_empty() {
        assert!(
            batch.next_due.is_none_or(|due| due > now),
            "a claim at {now} found nothing but says something is due at {:?}",
            batch.next_due
        );
    }
    batch.deliveries
}

pub(crate) fn json_write(key: &str, value: &serde_json::Value) -> Write {
    Write {
        key: key.to_string(),
        value: Some(Arc::from(serde_json::to_vec(value).expect("json"))),
    }
}

pub(crate) async fn read_json<B: Backend>(
    backend: &B,
    tenant: &TenantId,
    key: &str,
) -> Option<(serde_json::Value, u64)> {
    backend
        .get(tenant, key)
        .await
        .unwrap_or_else(|err| panic!("get {key:?} failed: {err}"))
        .map(|v| {
            let value =
                serde_json::from_slice(&v.value).expect("stored values are the JSON written");
            (value, v.version)
        })
}

async fn complete_one<B: Backend>(backend: &B, completion: Completion) -> Outcome {
    let mut outcomes = backend
        .complete(vec![completion])
        .await
        .unwrap_or_else(|err| panic!("complete failed: {err}"));
    assert_eq!(outcomes.len(), 1, "one outcome per completion");
    outcomes.swap_remove(0)
}

/// **Contract 2, effects exactly once — at the backend boundary.** A completion's
/// state writes, the deliveries it publishes and the acknowledgement of its input
/// apply together or not at all: a completion whose read set changed (conflict) or
/// whose lease was lost (stale) leaves no trace, and an acknowledged delivery is
/// never handed out again. Versions only grow; a `None` write deletes.
pub async fn completion_is_atomic<B: Backend + Clone>(backend: B) {
    let acme = tenant("acme");
    let now = TEST_EPOCH;
    let lease = Duration::from_secs(30);

    // Seed a key the way an API call commits: no input delivery.
    let seed = Completion {
        tenant: acme.clone(),
        input: None,
        marker: None,
        action: Action::Commit {
            reads: vec![],
            writes: vec![json_write("balance", &100.into())],
            adds: vec![],
            emits: vec![],
            cancels: Vec::new(),
        },
    };
    assert_eq!(complete_one(&backend, seed).await, Outcome::Applied);
    let (balance, v1) = read_json(&backend, &acme, "balance")
        .await
        .expect("the seeded key exists");
    assert_eq!(balance, 100);

    let input = job_envelope(&acme, 1, now);
    backend
        .publish(vec![delivery("cf-input", input.clone(), now)])
        .await
        .expect("publish");
    let claimed = claim(&backend, "cf-input", 10, now, lease).await;
    assert_eq!(claimed.len(), 1, "the published delivery is claimable");
    assert_eq!(claimed[0].event.id, input.id);
    let lease_ref = claimed[0].lease;

    let output = job_envelope(&acme, 2, now);
    let execution = |seen: Option<u64>| Completion {
        tenant: acme.clone(),
        input: Some(lease_ref),
        marker: None,
        action: Action::Commit {
            reads: vec![ReadCheck {
                key: "balance".into(),
                version: seen,
            }],
            writes: vec![
                json_write("balance", &50.into()),
                json_write("audit", &"withdrew 50".into()),
            ],
            adds: vec![],
            emits: vec![delivery("cf-output", output.clone(), now)],
            cancels: Vec::new(),
        },
    };

    // The handler saw the key as absent, but it exists: conflict, nothing applies.
    assert_eq!(
        complete_one(&backend, execution(None)).await,
        Outcome::Conflict,
        "a commit whose read version is outdated must be rejected"
    );
    assert_eq!(
        read_json(&backend, &acme, "balance").await,
        Some((100.into(), v1)),
        "a conflicting commit must not write"
    );
    assert_eq!(read_json(&backend, &acme, "audit").await, None);
    assert!(
        claim(&backend, "cf-output", 10, now, lease)
            .await
            .is_empty(),
        "a conflicting commit must not publish its emits"
    );

    // The same execution with the version it really read: everything applies.
    assert_eq!(
        complete_one(&backend, execution(Some(v1))).await,
        Outcome::Applied
    );
    let (balance, v2) = read_json(&backend, &acme, "balance")
        .await
        .expect("balance");
    assert_eq!(balance, 50);
    assert!(v2 > v1, "versions only grow: {v1} then {v2}");
    assert_eq!(
        read_json(&backend, &acme, "audit").await.map(|(v, _)| v),
        Some("withdrew 50".into())
    );
    let published = claim(&backend, "cf-output", 10, now, lease).await;
    assert_eq!(published.len(), 1, "the commit publishes its emit");
    assert_eq!(published[0].event.id, output.id);
    assert!(
        claim(&backend, "cf-input", 10, now + lease * 2, lease)
            .await
            .is_empty(),
        "an acknowledged delivery must not come back, even after its lease"
    );

    // A second completion under the same lease is stale: the delivery was acked.
    let late = Completion {
        tenant: acme.clone(),
        input: Some(lease_ref),
        marker: None,
        action: Action::Commit {
            reads: vec![],
            writes: vec![json_write("late", &true.into())],
            adds: vec![],
            emits: vec![delivery("cf-output", job_envelope(&acme, 3, now), now)],
            cancels: Vec::new(),
        },
    };
    assert_eq!(complete_one(&backend, late).await, Outcome::Stale);
    assert_eq!(
        read_json(&backend, &acme, "late").await,
        None,
        "a stale completion must not write"
    );

    // A batch applies each completion on its own: one conflict spoils nothing else.
    let write_only = |key: &str, seen: Option<u64>| Completion {
        tenant: acme.clone(),
        input: None,
        marker: None,
        action: Action::Commit {
            reads: vec![ReadCheck {
                key: "balance".into(),
                version: seen,
            }],
            writes: vec![json_write(key, &1.into())],
            adds: vec![],
            emits: vec![],
            cancels: Vec::new(),
        },
    };
    let outcomes = backend
        .complete(vec![
            write_only("first", Some(v2)),
            write_only("second", Some(v1)),
            write_only("third", Some(v2)),
        ])
        .await
        .expect("complete");
    assert_eq!(
        outcomes,
        vec![Outcome::Applied, Outcome::Conflict, Outcome::Applied]
    );
    assert!(read_json(&backend, &acme, "first").await.is_some());
    assert!(read_json(&backend, &acme, "second").await.is_none());
    assert!(read_json(&backend, &acme, "third").await.is_some());

    // Deleting is a write like any other.
    let delete = Completion {
        tenant: acme.clone(),
        input: None,
        marker: None,
        action: Action::Commit {
            reads: vec![],
            writes: vec![Write {
                key: "audit".into(),
                value: None,
            }],
            adds: vec![],
            emits: vec![],
            cancels: Vec::new(),
        },
    };
    assert_eq!(complete_one(&backend, delete).await, Outcome::Applied);
    assert_eq!(read_json(&backend, &acme, "audit").await, None);
}

/// **Contract 2, effects exactly once — in the engine.** A handler that writes
/// state and emits an event, then returns an error, leaves no trace: no key, no
/// event, no downstream execution. The same handler succeeding commits both.
pub async fn failed_handler_leaves_no_trace<B: Backend + Clone>(backend: B) {
    let downstream = Arc::new(AtomicU32::new(0));
    let seen = downstream.clone();
    let flow = Flow::builder()
        .external::<Job>()
        .step(
            Step::event::<Job>("careful")
                .emits::<Done>()
                .retry(RetryPolicy::none())
                .handle(|ctx: StepContext, job: Job| async move {
                    ctx.put(&format!("touched/{}", job.n), &true)?;
                    ctx.emit(&Done { n: job.n })?;
                    if job.n == 13 {
                        return Err(StepError::permanent(super::Injected(
                            "failed after writing and emitting".into(),
                        )));
                    }
                    Ok(())
                }),
        )
        .step(
            Step::event::<Done>("downstream").handle(move |_ctx: StepContext, _done: Done| {
                let seen = seen.clone();
                async move {
                    seen.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, StepError>(())
                }
            }),
        )
        .build()
        .expect("valid flow");
    let h = start(flow, backend, epoch_clock()).await;
    let acme = tenant("acme");
    h.emit(&acme, &Job { n: 13 }).await.expect("emit");
    h.emit(&acme, &Job { n: 7 }).await.expect("emit");
    drain(&h).await;

    assert_eq!(
        h.state::<bool>(&acme, "touched/13").await,
        None,
        "the failed execution's write must not be kept"
    );
    assert_eq!(
        h.emitted::<Done>(),
        vec![Done { n: 7 }],
        "only the successful execution's emit commits"
    );
    assert_eq!(
        downstream.load(Ordering::SeqCst),
        1,
        "only the committed event runs downstream"
    );
    assert_eq!(h.state::<bool>(&acme, "touched/7").await, Some(true));
    let dead = h.dead_letters().await;
    assert_eq!(dead.len(), 1, "the failed execution dead-letters: {dead:?}");
    h.shutdown().await;
}

/// **Contract 3, optimistic isolation.** A thousand events published at once, each
/// incrementing one hot key, end at exactly 1,000. Commit conflicts happen and are
/// counted in the metrics, and each one re-runs the handler, but a re-run is not a
/// failed attempt: every handler sees attempt 1 and nothing is retried or failed.
pub async fn hot_key_increments_are_isolated<B: Backend + Clone>(backend: B) {
    const EVENTS: u64 = 1_000;
    let runs = Arc::new(AtomicU64::new(0));
    let highest_attempt = Arc::new(AtomicU32::new(0));
    let (r, a) = (runs.clone(), highest_attempt.clone());
    let flow = Flow::builder()
        .external::<Job>()
        .step(
            Step::event::<Job>("count").handle(move |ctx: StepContext, _job: Job| {
                let (runs, highest_attempt) = (r.clone(), a.clone());
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    highest_attempt.fetch_max(ctx.attempt(), Ordering::SeqCst);
                    let hits: u64 = ctx.get("hits").await?.unwrap_or(0);
                    ctx.put("hits", &(hits + 1))?;
                    Ok::<_, StepError>(())
                }
            }),
        )
        .build()
        .expect("valid flow");
    let h = start(flow, backend, epoch_clock()).await;
    let acme = tenant("acme");
    let jobs: Vec<Job> = (0..EVENTS).map(|n| Job { n }).collect();
    h.engine().emit_batch(&acme, &jobs).await.expect("emit");
    drain(&h).await;

    assert_eq!(
        h.state::<u64>(&acme, "hits").await,
        Some(EVENTS),
        "lost or doubled increments"
    );
    let m = h.engine().metrics().await.expect("metrics");
    assert_eq!(m.processed, EVENTS);
    assert!(
        m.conflicts > 0,
        "1,000 concurrent increments of one key must conflict"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        EVENTS + m.conflicts,
        "every conflict re-runs the handler once, and nothing else does"
    );
    assert_eq!(
        highest_attempt.load(Ordering::SeqCst),
        1,
        "a conflict re-run is not a new attempt"
    );
    assert_eq!(
        (m.failed, m.retried, m.dead_lettered),
        (0, 0, 0),
        "conflicts are not failures: {m:?}"
    );
    h.shutdown().await;
}

/// **Contracts 1–2, fan-out.** Every subscriber of a topic receives each event,
/// and its effect happens once per event — even when another subscriber of the
/// same events fails and retries.
pub async fn fan_out_reaches_every_subscriber_once<B: Backend + Clone>(backend: B) {
    const EVENTS: u64 = 20;
    const STEPS: [&str; 3] = ["audit", "bill", "ship"];
    let counting = |name: &'static str| {
        Step::event::<Job>(name)
            .retry(RetryPolicy::fixed(Duration::ZERO))
            .handle(move |ctx: StepContext, job: Job| async move {
                // "bill" fails the first attempt of every event; the others never fail.
                if name == "bill" && ctx.attempt() == 1 {
                    return Err(injected("bill is flaky"));
                }
                let key = format!("{name}/{}", job.n);
                let n: u32 = ctx.get(&key).await?.unwrap_or(0);
                ctx.put(&key, &(n + 1))?;
                Ok::<_, StepError>(())
            })
    };
    let flow = Flow::builder()
        .external::<Job>()
        .steps(STEPS.map(counting))
        .build()
        .expect("valid flow");
    let h = start(flow, backend, epoch_clock()).await;
    let acme = tenant("acme");
    for n in 0..EVENTS {
        h.emit(&acme, &Job { n }).await.expect("emit");
    }
    drain(&h).await;

    for step in STEPS {
        for n in 0..EVENTS {
            assert_eq!(
                h.state::<u32>(&acme, &format!("{step}/{n}")).await,
                Some(1),
                "subscriber {step} must apply event {n} exactly once"
            );
        }
    }
    let m = h.engine().metrics().await.expect("metrics");
    assert_eq!(m.processed, EVENTS * STEPS.len() as u64);
    assert_eq!(m.retried, EVENTS, "only bill's first attempts failed");
    h.shutdown().await;
}

/// **Contract 7, tenancy.** A handler reaches only the state of its event's
/// tenant: the same key in two tenants holds two separate values, and a handler of
/// one tenant never sees what a handler of another wrote.
pub async fn tenant_state_is_isolated<B: Backend + Clone>(backend: B) {
    let seen: Log<(String, String, Option<String>)> = Log::new();
    let log = seen.clone();
    let flow = Flow::builder()
        .external::<Job>()
        .step(
            Step::event::<Job>("remember").handle(move |ctx: StepContext, _job: Job| {
                let log = log.clone();
                async move {
                    let owner: Option<String> = ctx.get("owner").await?;
                    log.push((ctx.tenant().to_string(), ctx.step().to_string(), owner));
                    ctx.put("owner", ctx.tenant().as_str())?;
                    let count: u32 = ctx.get("count").await?.unwrap_or(0);
                    ctx.put("count", &(count + 1))?;
                    Ok::<_, StepError>(())
                }
            }),
        )
        .build()
        .expect("valid flow");
    let h = start(flow, backend.clone(), epoch_clock()).await;
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    h.emit(&acme, &Job { n: 1 }).await.expect("emit");
    drain(&h).await;
    h.emit(&globex, &Job { n: 2 }).await.expect("emit");
    drain(&h).await;
    for n in 3..6 {
        h.emit(&acme, &Job { n }).await.expect("emit");
    }
    drain(&h).await;

    // Runs re-done after a commit conflict log again, so count what each tenant's
    // handlers saw rather than how often they ran.
    let entries = seen.entries();
    let saw = |t: &str| -> Vec<Option<String>> {
        entries
            .iter()
            .filter(|(tenant, step, _)| tenant == t && step == "remember")
            .map(|(_, _, owner)| owner.clone())
            .collect()
    };
    assert_eq!(
        saw("globex"),
        vec![None],
        "globex's handler must not see acme's value of the same key"
    );
    let acme_saw = saw("acme");
    assert!(acme_saw.len() >= 4, "{entries:?}");
    assert!(
        acme_saw
            .iter()
            .all(|o| o.as_deref().is_none_or(|o| o == "acme")),
        "an acme handler saw another tenant's value: {entries:?}"
    );
    assert_eq!(
        h.state::<String>(&acme, "owner").await.as_deref(),
        Some("acme")
    );
    assert_eq!(
        h.state::<String>(&globex, "owner").await.as_deref(),
        Some("globex")
    );
    assert_eq!(h.state::<u32>(&acme, "count").await, Some(4));
    assert_eq!(h.state::<u32>(&globex, "count").await, Some(1));
    assert_eq!(
        read_json(&backend, &tenant("initech"), "owner").await,
        None,
        "a tenant nobody wrote to has no state"
    );
    h.shutdown().await;
}
