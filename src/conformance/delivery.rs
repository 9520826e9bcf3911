//! Delivery: leases, due times, fairness across tenants, FIFO groups.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::effects::{claim, delivery, job_envelope, json_write, read_json};
use super::{advance, drain, epoch_clock, injected, start, start_with, tenant, Job, Log};
use crate::backend::Backend;
use crate::backend::LeaseRef;
use crate::backend::{Action, Completion, DeadLetterQuery, FailureKind, Outcome};
use crate::engine::Flow;
use crate::engine::StepContext;
use crate::engine::{Step, StepError};
use crate::event::EmitOptions;
use crate::retry::RetryPolicy;
use crate::testing::{test_config, TEST_EPOCH};

fn commit_writing(tenant: &crate::TenantId, lease: LeaseRef, key: &str) -> Completion {
    Completion {
        tenant: tenant.clone(),
        input: Some(lease),
        marker: None,
        action: Action::Commit {
            reads: vec![],
            writes: vec![json_write(key, &true.into())],
            adds: vec![],
            emits: vec![],
            cancels: Vec::new(),
        },
    }
}

/// **Contract 5, leases — at the transport.** A claimed delivery is not handed out
/// again while its lease runs; when the worker vanishes it comes back after the
/// lease as the same delivery with a higher attempt number, and a completion under
/// the old lease is [`Outcome::Stale`] and applies nothing. A released delivery
/// comes back at once without counting an attempt.
pub async fn expired_lease_redelivers_and_fences_the_old_worker<B: Backend + Clone>(backend: B) {
    let acme = tenant("acme");
    let now = TEST_EPOCH;
    let lease = Duration::from_secs(10);
    let event = job_envelope(&acme, 1, now);
    backend
        .publish(vec![delivery("leased", event.clone(), now)])
        .await
        .expect("publish");

    let first = claim(&backend, "leased", 10, now, lease).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].attempt, 1);
    assert!(
        claim(&backend, "leased", 10, now + Duration::from_secs(5), lease)
            .await
            .is_empty(),
        "a delivery must not be claimed twice while its lease runs"
    );

    // The first worker vanished; its lease ends at now + 10 s.
    let later = now + Duration::from_secs(11);
    let second = claim(&backend, "leased", 10, later, lease).await;
    assert_eq!(
        second.len(),
        1,
        "an expired lease must make the delivery claimable again"
    );
    assert_eq!(second[0].event.id, event.id, "the same event comes back");
    assert_eq!(
        second[0].lease.id, first[0].lease.id,
        "as the same delivery"
    );
    assert_ne!(second[0].lease, first[0].lease, "under a new lease");
    assert_eq!(
        second[0].attempt, 2,
        "an expired lease counts as an attempt"
    );
    assert_eq!(second[0].first_attempt_at, first[0].first_attempt_at);

    let outcomes = backend
        .complete(vec![commit_writing(
            &acme,
            first[0].lease,
            "by-first-worker",
        )])
        .await
        .expect("complete");
    assert_eq!(
        outcomes,
        vec![Outcome::Stale],
        "the old lease no longer completes"
    );
    assert_eq!(read_json(&backend, &acme, "by-first-worker").await, None);
    assert!(
        claim(
            &backend,
            "leased",
            10,
            later + Duration::from_secs(1),
            lease
        )
        .await
        .is_empty(),
        "a stale completion must not release or ack the new claim"
    );
    let outcomes = backend
        .complete(vec![commit_writing(
            &acme,
            second[0].lease,
            "by-second-worker",
        )])
        .await
        .expect("complete");
    assert_eq!(outcomes, vec![Outcome::Applied]);
    assert!(read_json(&backend, &acme, "by-second-worker")
        .await
        .is_some());
    assert!(claim(&backend, "leased", 10, later + lease * 10, lease)
        .await
        .is_empty());

    // Release (shutdown): back at once, and the attempt does not count.
    let event = job_envelope(&acme, 2, now);
    backend
        .publish(vec![delivery("released", event.clone(), now)])
        .await
        .expect("publish");
    let claimed = claim(&backend, "released", 10, now, lease).await;
    assert_eq!(claimed.len(), 1);
    backend.release(&[claimed[0].lease]).await.expect("release");
    let again = claim(&backend, "released", 10, now, lease).await;
    assert_eq!(again.len(), 1, "a released delivery is claimable at once");
    assert_eq!(again[0].event.id, event.id);
    assert_eq!(again[0].attempt, 1, "a release does not count an attempt");
    let outcomes = backend
        .complete(vec![commit_writing(
            &acme,
            claimed[0].lease,
            "released-late",
        )])
        .await
        .expect("complete");
    assert_eq!(
        outcomes,
        vec![Outcome::Stale],
        "a released lease no longer completes"
    );
}

/// **Contracts 4–5, durable delays — at the transport.** A delayed delivery is not
/// claimable before its due time; a retry makes the delivery claimable again at the
/// time it names, with the attempt count and the last error kept; a dead-lettered
/// delivery is never claimed again and keeps its attempts, error and times;
/// `is_drained` agrees with `depth` at each point.
pub async fn deliveries_wait_until_due<B: Backend + Clone>(backend: B) {
    let acme = tenant("acme");
    let now = TEST_EPOCH;
    let lease = Duration::from_secs(30);
    let secs = |s: u64| now + Duration::from_secs(s);
    let event = job_envelope(&acme, 1, now);
    backend
        .publish(vec![delivery("later", event.clone(), secs(60))])
        .await
        .expect("publish");
    assert!(claim(&backend, "later", 10, now, lease).await.is_empty());
    assert_drained(&backend, now, true).await;
    assert!(
        claim(&backend, "later", 10, secs(59), lease)
            .await
            .is_empty(),
        "a delayed delivery must not be claimable before its due time"
    );
    let first = claim(&backend, "later", 10, secs(60), lease).await;
    assert_eq!(
        first.len(),
        1,
        "a delayed delivery is claimable at its due time"
    );
    assert_eq!(first[0].attempt, 1);
    assert_eq!(first[0].first_attempt_at, secs(60));
    assert_drained(&backend, secs(61), false).await;

    let retry = Completion {
        tenant: acme.clone(),
        input: Some(first[0].lease),
        marker: None,
        action: Action::Retry {
            at: secs(70),
            error: "try again later".into(),
        },
    };
    assert_eq!(
        backend.complete(vec![retry]).await.expect("complete"),
        vec![Outcome::Applied]
    );
    assert!(
        claim(&backend, "later", 10, secs(69), lease)
            .await
            .is_empty(),
        "a retry must wait for its time"
    );
    let second = claim(&backend, "later", 10, secs(70), lease).await;
    assert_eq!(second.len(), 1, "a retry is claimable at its time");
    assert_eq!(second[0].attempt, 2);
    assert_eq!(second[0].last_error.as_deref(), Some("try again later"));
    assert_eq!(second[0].first_attempt_at, secs(60));

    let give_up = Completion {
        tenant: acme.clone(),
        input: Some(second[0].lease),
        marker: None,
        action: Action::DeadLetter {
            error: "gave up".into(),
            at: secs(71),
            kind: FailureKind::Exhausted,
            emits: Vec::new(),
        },
    };
    assert_eq!(
        backend.complete(vec![give_up]).await.expect("complete"),
        vec![Outcome::Applied]
    );
    assert!(claim(&backend, "later", 10, secs(1_000), lease)
        .await
        .is_empty());
    let dead = backend
        .dead_letters(&DeadLetterQuery::default())
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 1);
    let dl = &dead[0];
    assert_eq!(dl.step.as_str(), "later");
    assert_eq!(dl.event.id, event.id);
    assert_eq!(dl.attempts, 2);
    assert_eq!(dl.last_error, "gave up");
    assert_eq!((dl.first_attempt_at, dl.failed_at), (secs(60), secs(71)));
    let depth = backend.depth(secs(1_000)).await.expect("depth");
    assert_eq!((depth.pending(), depth.dead), (0, 1), "{depth:?}");
    assert_drained(&backend, secs(1_000), true).await;
}

/// `is_drained` answers as `depth` counts: nothing ready, nothing leased.
async fn assert_drained<B: Backend>(backend: &B, at: crate::time::Timestamp, want: bool) {
    let depth = backend.depth(at).await.expect("depth");
    assert_eq!(depth.ready == 0 && depth.in_flight == 0, want, "{depth:?}");
    assert_eq!(
        backend.is_drained(at).await.expect("is_drained"),
        want,
        "is_drained must agree with depth: {depth:?}"
    );
}

/// **Contract 7, fairness — at the transport.** With one tenant's backlog of
/// 100,000 deliveries published first, a claim for more than one quantum takes at
/// most a quantum from the backlog before serving the other tenant's single
/// delivery; and claims of one quantum each serve it within two claims.
pub async fn claims_are_fair_across_tenants<B: Backend + Clone>(backend: B) {
    const BACKLOG: u64 = 100_000;
    const QUANTUM: usize = 16;
    let (flood, trickle) = (tenant("flood"), tenant("trickle"));
    let now = TEST_EPOCH;
    let lease = Duration::from_secs(60);
    let request = |max: usize| crate::backend::ClaimRequest {
        now,
        steps: vec![crate::backend::StepClaim {
            step: crate::StepName::new("fair").expect("valid"),
            max,
            lease,
        }],
        tenant_quantum: QUANTUM,
    };
    // One payload shared by the whole backlog; every event has its own id.
    let template = job_envelope(&flood, 0, now);
    let backlog = (0..BACKLOG)
        .map(|_| {
            let mut event = (*template).clone();
            event.id = crate::EventId::new();
            delivery("fair", std::sync::Arc::new(event), now)
        })
        .collect();
    backend.publish(backlog).await.expect("publish backlog");

    // One claim of four quanta: the backlog may fill at most one before trickle.
    let first = job_envelope(&trickle, 0, now);
    backend
        .publish(vec![delivery("fair", first.clone(), now)])
        .await
        .expect("publish");
    let batch = backend.claim(request(4 * QUANTUM)).await.expect("claim");
    assert_eq!(batch.deliveries.len(), 4 * QUANTUM, "a full claim");
    assert!(
        batch.deliveries.iter().any(|c| c.event.id == first.id),
        "a claim of four quanta took only tenant flood's backlog"
    );

    // Claims of one quantum each: trickle is served by the second at the latest.
    let second = job_envelope(&trickle, 1, now);
    backend
        .publish(vec![delivery("fair", second.clone(), now)])
        .await
        .expect("publish");
    let mut served_in = None;
    for round in 1..=2 {
        let batch = backend.claim(request(QUANTUM)).await.expect("claim");
        assert!(
            !batch.deliveries.is_empty(),
            "round {round} claimed nothing"
        );
        if batch.deliveries.iter().any(|c| c.event.id == second.id) {
            served_in = Some(round);
            break;
        }
    }
    assert!(
        served_in.is_some(),
        "tenant trickle was starved by tenant flood's backlog for 2 rounds"
    );
}

/// **Contract 7, fairness — in the engine.** With one tenant's backlog of 100,000
/// events published and every handler of it taking a second, another tenant's
/// event is handled in the first dispatch round (read from
/// `metrics().dispatch_rounds`), without waiting for any of the backlog.
pub async fn dispatch_is_fair_across_tenants<B: Backend + Clone>(backend: B) {
    const BACKLOG: u64 = 100_000;
    let served: Log<crate::Timestamp> = Log::new();
    let log = served.clone();
    let flow = Flow::builder()
        .external::<Job>()
        .step(Step::event::<Job>("work").concurrency(64).handle(
            move |ctx: StepContext, _job: Job| {
                let served = log.clone();
                async move {
                    if ctx.tenant().as_str() == "trickle" {
                        served.push(ctx.now());
                    } else {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Ok::<_, StepError>(())
                }
            },
        ))
        .build()
        .expect("valid flow");
    let config = crate::EngineConfig {
        tenant_quantum: 16,
        ..test_config()
    };
    let h = start_with(flow, backend, epoch_clock(), config).await;
    let backlog: Vec<Job> = (0..BACKLOG).map(|n| Job { n }).collect();
    h.engine()
        .emit_batch(&tenant("flood"), &backlog)
        .await
        .expect("emit backlog");
    let published = h.now();
    h.emit(&tenant("trickle"), &Job { n: 0 })
        .await
        .expect("emit");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let rounds = h.engine().metrics().await.expect("metrics").dispatch_rounds;
    assert_eq!(
        served.entries(),
        vec![published],
        "tenant trickle's event must run at once, not after tenant flood's backlog"
    );
    assert!(
        rounds <= 2,
        "{rounds} dispatch rounds ran in the first half second"
    );
    h.engine().shutdown(Duration::from_millis(1)).await;
}

/// A delivery of `event` to `step` in FIFO group `group`, due at `due_at`.
fn grouped(
    step: &str,
    event: std::sync::Arc<crate::Envelope>,
    group: &str,
) -> crate::backend::NewDelivery {
    let due_at = event.emitted_at;
    crate::backend::NewDelivery {
        group: Some(group.into()),
        ..delivery(step, event, due_at)
    }
}

fn finish(tenant: &crate::TenantId, lease: LeaseRef, action: Action) -> Completion {
    Completion {
        tenant: tenant.clone(),
        input: Some(lease),
        marker: None,
        action,
    }
}

/// **Contract 8, ordering — at the transport.** Of the deliveries sharing a group
/// key only the oldest is claimable; the next becomes ready the moment the one
/// before it commits or dead-letters, and not while it waits for a retry.
/// Deliveries of another group are not held back.
pub async fn fifo_groups_hold_back_successors<B: Backend + Clone>(backend: B) {
    let acme = tenant("acme");
    let now = TEST_EPOCH;
    let lease = Duration::from_secs(30);
    let secs = |s: u64| now + Duration::from_secs(s);
    let events: Vec<_> = (0..5).map(|n| job_envelope(&acme, n, now)).collect();
    backend
        .publish(vec![
            grouped("lanes", events[0].clone(), "one"),
            grouped("lanes", events[1].clone(), "one"),
            grouped("lanes", events[2].clone(), "one"),
            grouped("lanes", events[3].clone(), "two"),
            grouped("lanes", events[4].clone(), "two"),
        ])
        .await
        .expect("publish");
    let ids = |claimed: &[crate::backend::Claimed]| -> Vec<crate::EventId> {
        claimed.iter().map(|c| c.event.id).collect()
    };

    let heads = claim(&backend, "lanes", 10, now, lease).await;
    let mut got = ids(&heads);
    got.sort();
    let mut want = vec![events[0].id, events[3].id];
    want.sort();
    assert_eq!(got, want, "only the head of each group is claimable");
    assert_drained(&backend, now, false).await;
    let depth = backend.depth(now).await.expect("depth");
    assert_eq!(
        (depth.in_flight, depth.waiting, depth.ready),
        (2, 3, 0),
        "{depth:?}"
    );
    let lease_of = |claimed: &[crate::backend::Claimed], i: usize| {
        claimed
            .iter()
            .find(|c| c.event.id == events[i].id)
            .map(|c| c.lease)
            .unwrap_or_else(|| panic!("event {i} was not claimed"))
    };

    // Group one's head commits: its successor is ready at once.
    let commit = Action::Commit {
        reads: vec![],
        writes: vec![],
        adds: vec![],
        emits: vec![],
        cancels: Vec::new(),
    };
    let outcome = backend
        .complete(vec![finish(&acme, lease_of(&heads, 0), commit)])
        .await
        .expect("complete");
    assert_eq!(outcome, vec![Outcome::Applied]);
    let depth = backend.depth(now).await.expect("depth");
    assert_eq!(
        (depth.ready, depth.delayed, depth.waiting, depth.in_flight),
        (1, 0, 2, 1),
        "the next of a group is ready once the one before it commits: {depth:?}"
    );

    // Group two's head waits for a retry: its successor waits with it.
    let retry = Action::Retry {
        at: secs(10),
        error: "later".into(),
    };
    backend
        .complete(vec![finish(&acme, lease_of(&heads, 3), retry)])
        .await
        .expect("complete");
    let next = claim(&backend, "lanes", 10, secs(5), lease).await;
    assert_eq!(
        ids(&next),
        vec![events[1].id],
        "group two is held by its retrying head"
    );

    // Group one's second dead-letters: the third is released.
    let dead = Action::DeadLetter {
        error: "gave up".into(),
        at: secs(6),
        kind: FailureKind::Exhausted,
        emits: Vec::new(),
    };
    backend
        .complete(vec![finish(&acme, lease_of(&next, 1), dead)])
        .await
        .expect("complete");
    let third = claim(&backend, "lanes", 10, secs(7), lease).await;
    assert_eq!(
        ids(&third),
        vec![events[2].id],
        "a dead letter does not block its group"
    );

    let retried = claim(&backend, "lanes", 10, secs(10), lease).await;
    assert_eq!(
        ids(&retried),
        vec![events[3].id],
        "the retrying head comes back first"
    );
    assert_eq!(retried[0].attempt, 2);
    let commit = Action::Commit {
        reads: vec![],
        writes: vec![],
        adds: vec![],
        emits: vec![],
        cancels: Vec::new(),
    };
    backend
        .complete(vec![finish(&acme, lease_of(&retried, 3), commit)])
        .await
        .expect("complete");
    let last = claim(&backend, "lanes", 10, secs(11), lease).await;
    assert_eq!(ids(&last), vec![events[4].id]);
}

#[derive(Default)]
struct Lanes {
    running: HashMap<(String, u64), u32>,
    most_per_lane: HashMap<(String, u64), u32>,
    running_total: HashMap<String, u32>,
    most_total: HashMap<String, u32>,
}

impl Lanes {
    fn enter(&mut self, step: &str, lane: u64) {
        let key = (step.to_string(), lane);
        let n = self.running.entry(key.clone()).or_default();
        *n += 1;
        let n = *n;
        let most = self.most_per_lane.entry(key).or_default();
        *most = (*most).max(n);
        let total = self.running_total.entry(step.to_string()).or_default();
        *total += 1;
        let total = *total;
        let most = self.most_total.entry(step.to_string()).or_default();
        *most = (*most).max(total);
    }

    fn leave(&mut self, step: &str, lane: u64) {
        if let Some(n) = self.running.get_mut(&(step.to_string(), lane)) {
            *n -= 1;
        }
        if let Some(n) = self.running_total.get_mut(step) {
            *n -= 1;
        }
    }
}

/// **Contract 8, ordering when asked.** Deliveries sharing a group key run one at a
/// time and in emit order for a step declared `.fifo()`, even when one of them
/// fails and waits for its retry; different groups run concurrently; and a step
/// that did not ask for ordering runs the same events concurrently.
pub async fn fifo_groups_run_one_at_a_time_in_order<B: Backend + Clone>(backend: B) {
    const PER_LANE: u64 = 10;
    let lanes = Arc::new(Mutex::new(Lanes::default()));
    let finished: Log<(String, u64)> = Log::new();
    let step = |name: &'static str, fifo: bool| {
        let (lanes, finished) = (lanes.clone(), finished.clone());
        let builder = Step::event::<Job>(name)
            .concurrency(64)
            .retry(RetryPolicy::fixed(Duration::from_secs(1)));
        let builder = if fifo { builder.fifo() } else { builder };
        builder.handle(move |ctx: StepContext, job: Job| {
            let (lanes, finished) = (lanes.clone(), finished.clone());
            async move {
                let lane = job.n / 100;
                lanes.lock().expect("lock").enter(name, lane);
                tokio::time::sleep(Duration::from_millis(10)).await;
                lanes.lock().expect("lock").leave(name, lane);
                if job.n == 3 && ctx.attempt() == 1 {
                    return Err(injected("the third of lane 0 fails once"));
                }
                finished.push((name.to_string(), job.n));
                Ok::<_, StepError>(())
            }
        })
    };
    let flow = Flow::builder()
        .external::<Job>()
        .step(step("ordered", true))
        .step(step("unordered", false))
        .build()
        .expect("valid flow");
    let h = start(flow, backend, epoch_clock()).await;
    let acme = tenant("acme");
    for i in 0..PER_LANE {
        for lane in 0..2 {
            let options = EmitOptions::new().group(format!("lane-{lane}"));
            h.engine()
                .emit_with(&acme, &Job { n: lane * 100 + i }, options)
                .await
                .expect("emit");
        }
    }
    advance(&h, Duration::from_secs(5)).await;
    drain(&h).await;

    let finished = finished.entries();
    let order = |step: &str, lane: u64| -> Vec<u64> {
        finished
            .iter()
            .filter(|(s, n)| s == step && n / 100 == lane)
            .map(|(_, n)| *n)
            .collect()
    };
    for lane in 0..2 {
        let expected: Vec<u64> = (0..PER_LANE).map(|i| lane * 100 + i).collect();
        assert_eq!(
            order("ordered", lane),
            expected,
            "lane {lane} ran out of emit order"
        );
        let mut unordered = order("unordered", lane);
        unordered.sort_unstable();
        assert_eq!(
            unordered, expected,
            "the unordered step handles every event"
        );
    }
    {
        let seen = lanes.lock().expect("lock");
        for lane in 0..2 {
            assert_eq!(
                seen.most_per_lane[&("ordered".to_string(), lane)],
                1,
                "two deliveries of group lane-{lane} ran at once"
            );
            assert!(
                seen.most_per_lane[&("unordered".to_string(), lane)] > 1,
                "a step without .fifo() should not serialize groups"
            );
        }
        assert!(
            seen.most_total["ordered"] >= 2,
            "different groups should run concurrently"
        );
    }
    h.shutdown().await;
}
