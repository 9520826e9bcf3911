//! Deferral: what flow control asks of a backend when a delivery is out of
//! budget.

use std::time::Duration;

use super::effects::{claim, delivery, job_envelope};
use super::tenant;
use crate::backend::{Action, Backend, Completion, LeaseRef, Outcome};
use crate::testing::TEST_EPOCH;
use crate::time::Timestamp;

fn defer(tenant: &crate::TenantId, lease: LeaseRef, at: Timestamp) -> Completion {
    Completion {
        tenant: tenant.clone(),
        input: Some(lease),
        marker: None,
        action: Action::Defer { at },
    }
}

/// **Contract 11, flow control — at the transport.** A deferred delivery
/// ([`Action::Defer`]) is not claimable before the time it names and is
/// claimable at it; its claim does not count as an attempt (a first attempt
/// deferred is still the first, and starts its clock when it really runs), and
/// a retried delivery deferred keeps its attempts and last error. A deferral
/// under a lease that was lost is [`Outcome::Stale`] and changes nothing.
pub async fn deferred_deliveries_keep_their_attempts<B: Backend + Clone>(backend: B) {
    let acme = tenant("acme");
    let lease = Duration::from_secs(30);
    let secs = |s: u64| TEST_EPOCH + Duration::from_secs(s);
    backend
        .publish(vec![delivery(
            "held",
            job_envelope(&acme, 1, secs(0)),
            secs(0),
        )])
        .await
        .expect("publish");

    let first = claim(&backend, "held", 10, secs(1), lease).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].attempt, 1);
    let outcomes = backend
        .complete(vec![defer(&acme, first[0].lease, secs(10))])
        .await
        .expect("complete");
    assert_eq!(outcomes, vec![Outcome::Applied]);
    assert!(
        claim(&backend, "held", 10, secs(9), lease).await.is_empty(),
        "a deferred delivery waits for its time"
    );
    let again = claim(&backend, "held", 10, secs(10), lease).await;
    assert_eq!(
        again.len(),
        1,
        "a deferred delivery is claimable at its time"
    );
    assert_eq!(again[0].attempt, 1, "a deferral is not an attempt");
    assert_eq!(
        again[0].first_attempt_at,
        secs(10),
        "the first attempt is the one that runs, not the one deferred"
    );
    assert_eq!(again[0].last_error, None);

    let stale = backend
        .complete(vec![defer(&acme, first[0].lease, secs(500))])
        .await
        .expect("complete");
    assert_eq!(stale, vec![Outcome::Stale], "the old lease defers nothing");

    let retry = Completion {
        tenant: acme.clone(),
        input: Some(again[0].lease),
        marker: None,
        action: Action::Retry {
            at: secs(20),
            error: "flaky".into(),
        },
    };
    let outcomes = backend.complete(vec![retry]).await.expect("complete");
    assert_eq!(outcomes, vec![Outcome::Applied]);
    let second = claim(&backend, "held", 10, secs(20), lease).await;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].attempt, 2);
    let outcomes = backend
        .complete(vec![defer(&acme, second[0].lease, secs(30))])
        .await
        .expect("complete");
    assert_eq!(outcomes, vec![Outcome::Applied]);
    let third = claim(&backend, "held", 10, secs(30), lease).await;
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].attempt, 2, "a deferred retry keeps its attempts");
    assert_eq!(third[0].last_error.as_deref(), Some("flaky"));
    assert_eq!(third[0].first_attempt_at, secs(10));
}
