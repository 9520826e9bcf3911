//! Dead letters as operators use them: why each failed, what a failure hook
//! emitted with it, queries by time, kind and cursor, and corrected payloads.

use std::sync::Arc;
use std::time::Duration;

use super::effects::{claim, delivery, job_envelope, leased_input};
use super::{drain, epoch_clock, start, tenant, Done, Injected, Job, Log};
use crate::backend::{Action, Backend, Completion, DeadLetterQuery, FailureKind, Marker, Outcome};
use crate::engine::{Flow, Step, StepContext, StepError};
use crate::event::Payload;
use crate::retry::RetryPolicy;
use crate::testing::TEST_EPOCH;

const LEASE: Duration = Duration::from_secs(30);

fn bury(
    key: &str,
    n: u64,
    tenant: &crate::TenantId,
    at_secs: u64,
    kind: FailureKind,
) -> Completion {
    let at = TEST_EPOCH + Duration::from_secs(at_secs);
    Completion {
        tenant: tenant.clone(),
        input: None,
        marker: Some(Marker::Delivery {
            key: Arc::from(key),
        }),
        action: Action::Bury {
            delivery: delivery("fragile", job_envelope(tenant, n, TEST_EPOCH), at),
            attempts: 2,
            first_attempt_at: TEST_EPOCH,
            error: format!("job {n} failed"),
            at,
            kind,
            emits: Vec::new(),
        },
    }
}

/// **Contract 4, dead letters — kinds and hook emits.** A dead letter keeps
/// the [`FailureKind`] it was given, whether it came from the backend's own
/// queue ([`Action::DeadLetter`]) or a broker ([`Action::Bury`]), and the
/// deliveries the action carries (a failure hook's emits) are published with
/// it, or not at all when the completion does not apply.
pub async fn dead_letters_keep_their_kind_and_hook_emits<B: Backend + Clone>(backend: B) {
    let acme = tenant("acme");
    let now = TEST_EPOCH;
    let hook_emit = || vec![delivery("on_failure", job_envelope(&acme, 9, now), now)];

    let lease = leased_input(&backend, &acme, "fragile", now, LEASE).await;
    let dead = |kind| Completion {
        tenant: acme.clone(),
        input: Some(lease),
        marker: None,
        action: Action::DeadLetter {
            error: "out of attempts".into(),
            at: now,
            kind,
            emits: hook_emit(),
        },
    };
    let outcomes = backend
        .complete(vec![
            dead(FailureKind::Exhausted),
            dead(FailureKind::Permanent),
        ])
        .await
        .expect("complete");
    // The second settles a finished input: stale, or a duplicate where a
    // broker carried the delivery (its marker is recorded).
    assert!(
        matches!(
            outcomes[..],
            [Outcome::Applied, Outcome::Stale | Outcome::Duplicate]
        ),
        "{outcomes:?}"
    );
    let emitted = claim(&backend, "on_failure", 10, now, LEASE).await;
    assert_eq!(
        emitted.len(),
        1,
        "a dead letter's emits are published once, a stale one's never"
    );
    assert_eq!(emitted[0].event.tenant, acme);

    let buried = bury("d-1", 2, &acme, 5, FailureKind::Undecodable);
    let mut with_emits = buried.clone();
    if let Action::Bury { emits, .. } = &mut with_emits.action {
        *emits = hook_emit();
    }
    let outcomes = backend
        .complete(vec![with_emits, buried])
        .await
        .expect("complete");
    assert_eq!(outcomes, vec![Outcome::Applied, Outcome::Duplicate]);
    assert_eq!(
        claim(&backend, "on_failure", 10, now, LEASE).await.len(),
        1,
        "a buried delivery's emits are published with it"
    );

    let letters = backend
        .dead_letters(&DeadLetterQuery::new())
        .await
        .expect("list");
    let kinds: Vec<FailureKind> = letters.iter().map(|d| d.kind).collect();
    assert_eq!(
        kinds,
        vec![FailureKind::Exhausted, FailureKind::Undecodable],
        "each dead letter keeps its kind: {letters:?}"
    );
}

/// **Contract 4, dead letters — queries and corrections.** Dead letters are
/// listed by kind, by a range of failure times (`since` inclusive, `until`
/// exclusive) and page by page with the `after` cursor, every filter
/// applying together. A dead letter's payload can be corrected, and a replay
/// delivers the corrected payload; an unknown id is no error.
pub async fn dead_letters_are_queried_and_corrected<B: Backend + Clone>(backend: B) {
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    let kinds = [
        FailureKind::Exhausted,
        FailureKind::Permanent,
        FailureKind::Exhausted,
        FailureKind::Panicked,
        FailureKind::Exhausted,
    ];
    let batch: Vec<Completion> = kinds
        .iter()
        .enumerate()
        .map(|(i, kind)| {
            let owner = if i.is_multiple_of(2) { &acme } else { &globex };
            bury(&format!("q-{i}"), i as u64, owner, 10 * i as u64, *kind)
        })
        .collect();
    let outcomes = backend.complete(batch).await.expect("complete");
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Applied),
        "{outcomes:?}"
    );
    let list = |query: DeadLetterQuery| {
        let backend = backend.clone();
        async move {
            let letters = backend.dead_letters(&query).await.expect("list");
            letters
                .iter()
                .map(|d| d.event.payload.decode::<Job>().expect("a job").n)
                .collect::<Vec<u64>>()
        }
    };
    let at = |secs| TEST_EPOCH + Duration::from_secs(secs);

    assert_eq!(list(DeadLetterQuery::new()).await, vec![0, 1, 2, 3, 4]);
    assert_eq!(
        list(DeadLetterQuery::new().kind(FailureKind::Exhausted)).await,
        vec![0, 2, 4]
    );
    assert_eq!(
        list(DeadLetterQuery::new().since(at(10)).until(at(30))).await,
        vec![1, 2],
        "since is inclusive, until exclusive"
    );
    assert_eq!(
        list(
            DeadLetterQuery::new()
                .tenant(acme.clone())
                .kind(FailureKind::Exhausted)
                .since(at(1))
        )
        .await,
        vec![2, 4],
        "filters apply together"
    );

    // Page through with the cursor, two at a time.
    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let mut query = DeadLetterQuery::new().limit(2);
        query.after = cursor;
        let page = backend.dead_letters(&query).await.expect("list");
        let Some(last) = page.last() else { break };
        cursor = Some(last.id);
        pages.push(page.len());
    }
    assert_eq!(
        pages,
        vec![2, 2, 1],
        "the cursor walks every dead letter once"
    );

    // Correct the payload of job 3, then replay it.
    let third = backend
        .dead_letters(&DeadLetterQuery::new().kind(FailureKind::Panicked))
        .await
        .expect("list");
    assert_eq!(third.len(), 1);
    let corrected = Payload::encode(&Job { n: 33 }).expect("a job serializes");
    assert!(backend
        .amend_dead_letter(third[0].id, corrected)
        .await
        .expect("amend"));
    let missing = third[0].id + 1_000;
    assert!(
        !backend
            .amend_dead_letter(missing, Payload::encode(&Job { n: 0 }).expect("job"))
            .await
            .expect("amend of an unknown id is no error"),
        "an unknown id is not amended"
    );
    assert_eq!(
        list(DeadLetterQuery::new().kind(FailureKind::Panicked)).await,
        vec![33],
        "the listing shows the corrected payload"
    );
    let replayed = backend
        .replay_dead_letters(&[third[0].id], at(100))
        .await
        .expect("replay");
    assert_eq!(replayed, 1);
    let due = claim(&backend, "fragile", 10, at(100), LEASE).await;
    assert_eq!(due.len(), 1);
    assert_eq!(
        due[0].event.payload.decode::<Job>().expect("a job"),
        Job { n: 33 },
        "a replay delivers the corrected payload"
    );
    assert_eq!(due[0].event.id, third[0].event.id, "the event keeps its id");
}

/// **Contract 4, failure hooks.** When a delivery is given up on, its step's
/// failure hook runs once and what it emits is handled like any event; the
/// dead letter says why it failed. A hook that fails emits nothing, and its
/// error joins the dead letter's.
pub async fn failure_hooks_emit_with_the_dead_letter<B: Backend + Clone>(backend: B) {
    let compensated: Log<u64> = Log::new();
    let seen = compensated.clone();
    let flaky = Step::event::<Job>("flaky")
        .retry(RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(3))
        .emits::<Done>()
        .handle(|_ctx: StepContext, job: Job| async move {
            if job.n.is_multiple_of(2) {
                Err(super::injected(format!("job {} failed", job.n)))
            } else {
                Err(StepError::permanent(Injected(format!(
                    "job {} refused",
                    job.n
                ))))
            }
        })
        .on_failure(|cx, failure| {
            let job: Job = failure.input().map_err(StepError::permanent)?;
            if job.n >= 10 {
                return Err(StepError::permanent(Injected("hook refuses".into())));
            }
            cx.emit(&Done { n: job.n })?;
            Ok(())
        });
    let compensate =
        Step::event::<Done>("compensate").handle(move |_ctx: StepContext, done: Done| {
            let seen = seen.clone();
            async move {
                seen.push(done.n);
                Ok(())
            }
        });
    let h = start(
        Flow::builder()
            .external::<Job>()
            .step(flaky)
            .step(compensate)
            .build()
            .expect("valid flow"),
        backend,
        epoch_clock(),
    )
    .await;
    for n in [1, 2, 10] {
        h.emit(&tenant("acme"), &Job { n }).await.expect("emit");
    }
    drain(&h).await;

    let mut ran = compensated.entries();
    ran.sort_unstable();
    assert_eq!(ran, vec![1, 2], "each hook's emit is handled once");
    let dead = h.dead_letters().await;
    let mut found: Vec<(u64, FailureKind, u32)> = dead
        .iter()
        .map(|d| {
            let n = d.event.payload.decode::<Job>().expect("a job").n;
            (n, d.kind, d.attempts)
        })
        .collect();
    found.sort_unstable_by_key(|f| f.0);
    assert_eq!(
        found,
        vec![
            (1, FailureKind::Permanent, 1),
            (2, FailureKind::Exhausted, 3),
            (10, FailureKind::Exhausted, 3),
        ]
    );
    let refused = dead
        .iter()
        .find(|d| d.event.payload.decode::<Job>().expect("a job").n == 10)
        .expect("job 10's dead letter");
    assert!(
        refused
            .last_error
            .contains("the failure hook failed: hook refuses"),
        "{refused:?}"
    );
    h.shutdown().await;
}
