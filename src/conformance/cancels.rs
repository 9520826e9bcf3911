//! Keyed deliveries: a completion cancels the ones that still wait.

use std::sync::Arc;
use std::time::Duration;

use super::effects::{claim, delivery, job_envelope};
use super::tenant;
use crate::backend::{Action, Backend, Cancel, Completion, Outcome};
use crate::event::{StepName, TenantId};
use crate::testing::TEST_EPOCH;

const LEASE: Duration = Duration::from_secs(30);

fn cancel(tenant: &TenantId, key: &str) -> Completion {
    Completion {
        tenant: tenant.clone(),
        input: None,
        marker: None,
        action: Action::Commit {
            reads: Vec::new(),
            writes: Vec::new(),
            adds: Vec::new(),
            emits: Vec::new(),
            cancels: vec![Cancel {
                step: StepName::new("timer").expect("a step name"),
                key: Arc::from(key),
            }],
        },
    }
}

/// **Contract 2, keyed deliveries.** A commit's `cancels` remove the
/// deliveries of its tenant and the named step that carry the key and still
/// wait: they are never claimed. Another tenant's delivery with the same key,
/// a delivery without a key and a leased one are untouched (the leased one
/// completes as usual); a key that names nothing is no error.
pub async fn keyed_deliveries_are_cancelled_while_they_wait<B: Backend + Clone>(backend: B) {
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    let now = TEST_EPOCH;
    let later = now + Duration::from_secs(60);
    let keyed = |tenant: &TenantId, n: u64, key: &str, due| {
        let mut d = delivery("timer", job_envelope(tenant, n, now), due);
        d.key = Some(Arc::from(key));
        d
    };
    backend
        .publish(vec![
            keyed(&acme, 1, "wait/u1", later),
            keyed(&globex, 2, "wait/u1", later),
            delivery("timer", job_envelope(&acme, 3, now), later),
            keyed(&acme, 4, "wait/u4", now),
        ])
        .await
        .expect("publish");
    let running = claim(&backend, "timer", 10, now, LEASE).await;
    assert_eq!(running.len(), 1, "only job 4 is due");

    let outcomes = backend
        .complete(vec![
            cancel(&acme, "wait/u1"),
            cancel(&acme, "wait/u4"),
            cancel(&acme, "wait/nothing"),
        ])
        .await
        .expect("complete");
    assert_eq!(outcomes, vec![Outcome::Applied; 3]);

    let finish = Completion {
        tenant: acme.clone(),
        input: Some(running[0].lease),
        marker: None,
        action: Action::acknowledge(),
    };
    assert_eq!(
        backend.complete(vec![finish]).await.expect("complete"),
        vec![Outcome::Applied],
        "a leased delivery is not cancelled: it completes"
    );
    let due = claim(&backend, "timer", 10, later, LEASE).await;
    let mut left: Vec<(String, u64)> = due
        .iter()
        .map(|c| {
            let job: super::Job = c.event.payload.decode().expect("a job");
            (c.event.tenant.to_string(), job.n)
        })
        .collect();
    left.sort();
    assert_eq!(
        left,
        vec![("acme".to_string(), 3), ("globex".to_string(), 2)],
        "acme's keyed timer is gone; globex's and the unkeyed one stay"
    );
}
