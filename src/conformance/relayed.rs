//! The store's part of a split backend: delivery markers, and the retries and
//! dead letters of deliveries a broker carried.

use std::sync::Arc;
use std::time::Duration;

use super::effects::{claim, delivery, job_envelope, json_write, read_json};
use super::tenant;
use crate::backend::{Action, Backend, Completion, DeadLetterQuery, FailureKind, Marker, Outcome};
use crate::testing::TEST_EPOCH;

fn marked(key: &str, tenant: &crate::TenantId, action: Action) -> Completion {
    Completion {
        tenant: tenant.clone(),
        input: None,
        marker: Some(Marker::Delivery {
            key: Arc::from(key),
        }),
        action,
    }
}

/// **Contract 2, effects exactly once — across a split.** A completion that
/// carries a [`Marker::Delivery`] applies once: a second completion with the
/// same key (a redelivered copy of the delivery) is [`Outcome::Duplicate`] and
/// applies nothing, whether it commits, retries or dead-letters. An
/// [`Action::Requeue`] queues the delivery with its attempts, first attempt
/// time, last error and FIFO group kept; an [`Action::Bury`] records its dead
/// letter as given.
pub async fn broker_deliveries_apply_once<B: Backend + Clone>(backend: B) {
    let acme = tenant("acme");
    let now = TEST_EPOCH;
    let event = job_envelope(&acme, 1, now);
    let commit = |value: i64| Action::Commit {
        reads: vec![],
        writes: vec![json_write("seen", &value.into())],
        adds: vec![],
        emits: vec![delivery("next", event.clone(), now)],
        cancels: Vec::new(),
    };

    let first = backend
        .complete(vec![marked("d-1", &acme, commit(1))])
        .await
        .expect("complete");
    assert_eq!(first, vec![Outcome::Applied]);
    // The copy: in a later batch, and twice within one batch.
    let again = backend
        .complete(vec![
            marked("d-1", &acme, commit(2)),
            marked("d-2", &acme, commit(3)),
            marked("d-2", &acme, commit(4)),
        ])
        .await
        .expect("complete");
    assert_eq!(
        again,
        vec![Outcome::Duplicate, Outcome::Applied, Outcome::Duplicate],
        "a delivery key applies once, in any batch"
    );
    let seen = read_json(&backend, &acme, "seen")
        .await
        .map(|(value, _)| value);
    assert_eq!(
        seen,
        Some(3.into()),
        "only the first completion of each key wrote"
    );
    let emitted = claim(&backend, "next", 10, now, Duration::from_secs(30)).await;
    assert_eq!(emitted.len(), 2, "one emit per applied completion");

    // A retry of a broker delivery: queued with its history, due later.
    let retry_at = now + Duration::from_secs(10);
    let first_attempt_at = now - Duration::from_secs(5);
    let mut retried = delivery("work", job_envelope(&acme, 2, now), retry_at);
    retried.group = Some(Arc::from("lane-1"));
    let requeue = Action::Requeue {
        delivery: retried.clone(),
        attempts: 3,
        first_attempt_at,
        error: "timed out".into(),
    };
    let outcomes = backend
        .complete(vec![
            marked("d-3", &acme, requeue.clone()),
            marked("d-3", &acme, requeue),
        ])
        .await
        .expect("complete");
    assert_eq!(outcomes, vec![Outcome::Applied, Outcome::Duplicate]);
    let lease = Duration::from_secs(30);
    assert!(
        claim(&backend, "work", 10, now, lease).await.is_empty(),
        "a requeued delivery waits for its due time"
    );
    let due = claim(&backend, "work", 10, retry_at, lease).await;
    assert_eq!(due.len(), 1, "requeued once");
    assert_eq!(
        due[0].attempt, 4,
        "attempts carried over, this claim counted"
    );
    assert_eq!(due[0].first_attempt_at, first_attempt_at);
    assert_eq!(due[0].last_error.as_deref(), Some("timed out"));
    assert_eq!(
        due[0].group.as_deref(),
        Some("lane-1"),
        "a claim names the group"
    );
    assert_eq!(due[0].event.id, retried.event.id);

    // A dead letter of a broker delivery.
    let failed_at = now + Duration::from_secs(20);
    let buried = delivery("work", job_envelope(&acme, 3, now), now);
    let bury = Action::Bury {
        delivery: buried.clone(),
        attempts: 5,
        first_attempt_at,
        error: "gave up".into(),
        at: failed_at,
        kind: FailureKind::Exhausted,
        emits: Vec::new(),
    };
    let outcomes = backend
        .complete(vec![
            marked("d-4", &acme, bury.clone()),
            marked("d-4", &acme, bury),
        ])
        .await
        .expect("complete");
    assert_eq!(outcomes, vec![Outcome::Applied, Outcome::Duplicate]);
    let dead = backend
        .dead_letters(&DeadLetterQuery::default())
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 1, "buried once");
    let dl = &dead[0];
    assert_eq!((dl.step.as_str(), dl.attempts), ("work", 5));
    assert_eq!(
        (dl.first_attempt_at, dl.failed_at),
        (first_attempt_at, failed_at)
    );
    assert_eq!(dl.last_error, "gave up");
    assert_eq!(dl.event.id, buried.event.id);
    assert_eq!(dl.event.tenant, acme);
}
