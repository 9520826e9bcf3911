//! Commutative counters: adds are blind, never conflict, and apply with the commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::effects::{claim, delivery, job_envelope, json_write, leased_input, read_json};
use super::{drain, epoch_clock, start_with, tenant, Job};
use crate::backend::Backend;
use crate::backend::{Action, Add, AddError, Completion, FailureKind, Outcome, ReadCheck, Write};
use crate::engine::EngineConfig;
use crate::engine::Flow;
use crate::engine::StepContext;
use crate::engine::{Step, StepError};
use crate::retry::RetryPolicy;
use crate::testing::{test_config, TEST_EPOCH};

fn add(key: &str, delta: i64) -> Add {
    Add {
        key: key.to_string(),
        delta,
        floor: None,
    }
}

fn commit(reads: Vec<ReadCheck>, writes: Vec<Write>, adds: Vec<Add>) -> Action {
    Action::Commit {
        reads,
        writes,
        adds,
        emits: vec![],
        cancels: Vec::new(),
    }
}

/// **Contract 3, commutative counters — in the engine.** Two hundred executions
/// committing in many interleaved batches add to the same two keys: the totals
/// are exact (negative deltas included), no commit conflicts and no handler runs
/// twice. An execution that adds and then fails adds nothing. An add to a key
/// that does not hold an integer fails that execution alone: it dead-letters with
/// an error naming the key, and nothing of it applies.
pub async fn adds_never_conflict<B: Backend + Clone>(backend: B) {
    const ADDERS: u64 = 200;
    const FAILING: u64 = 10;
    const BROKEN: u64 = 1_000;
    let runs = Arc::new(AtomicU64::new(0));
    let r = runs.clone();
    let flow = Flow::builder()
        .external::<Job>()
        .step(
            Step::event::<Job>("tally")
                .retry(RetryPolicy::none())
                .handle(move |ctx: StepContext, job: Job| {
                    let runs = r.clone();
                    async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        // Every fifth adder takes 3 away; the others add 1.
                        let delta = if job.n.is_multiple_of(5) { -3 } else { 1 };
                        ctx.add("total", delta)?;
                        ctx.add("orders", 1)?;
                        ctx.put(&format!("seen/{}", job.n), &true)?;
                        if job.n == BROKEN {
                            ctx.add("label", 1)?;
                        }
                        if (ADDERS..ADDERS + FAILING).contains(&job.n) {
                            return Err(StepError::permanent(super::Injected(
                                "failed after adding".into(),
                            )));
                        }
                        Ok::<_, StepError>(())
                    }
                }),
        )
        .build()
        .expect("valid flow");
    // Small batches, so adds to one key commit in many interleaved groups.
    let config = EngineConfig {
        batch_size: 8,
        ..test_config()
    };
    let h = start_with(flow, backend.clone(), epoch_clock(), config).await;
    let acme = tenant("acme");
    let seed = Completion {
        tenant: acme.clone(),
        input: None,
        marker: None,
        action: commit(vec![], vec![json_write("label", &"ten".into())], vec![]),
    };
    let outcomes = backend.complete(vec![seed]).await.expect("complete");
    assert_eq!(outcomes, vec![Outcome::Applied]);

    let mut jobs: Vec<Job> = (0..ADDERS + FAILING).map(|n| Job { n }).collect();
    jobs.insert(100, Job { n: BROKEN });
    h.engine().emit_batch(&acme, &jobs).await.expect("emit");
    drain(&h).await;

    let expected: i64 = (0..ADDERS)
        .map(|n| if n.is_multiple_of(5) { -3 } else { 1 })
        .sum();
    assert_eq!(
        h.state::<i64>(&acme, "total").await,
        Some(expected),
        "lost, doubled or leaked adds (failed executions must add nothing)"
    );
    assert_eq!(
        h.state::<i64>(&acme, "orders").await,
        Some(ADDERS as i64),
        "one add per committed execution"
    );
    let m = h.engine().metrics().await.expect("metrics");
    assert_eq!(m.conflicts, 0, "adds must never conflict: {m:?}");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        ADDERS + FAILING + 1,
        "no handler re-runs"
    );
    assert_eq!(m.processed, ADDERS);
    assert_eq!(m.dead_lettered, FAILING + 1, "{m:?}");

    // The execution whose add could not apply left no trace and says why.
    assert_eq!(
        h.state::<bool>(&acme, &format!("seen/{BROKEN}")).await,
        None,
        "a rejected commit must not write"
    );
    assert_eq!(
        h.state::<String>(&acme, "label").await.as_deref(),
        Some("ten")
    );
    let dead = h.dead_letters().await;
    let broken: Vec<_> = dead
        .iter()
        .filter(|d| d.event.decode::<Job>().is_ok_and(|j| j.n == BROKEN))
        .collect();
    assert_eq!(broken.len(), 1, "{dead:?}");
    let error = &broken[0].last_error;
    assert!(
        error.contains("\"label\"") && error.contains("not a JSON integer"),
        "the error names the key and the reason: {error}"
    );
    assert_eq!(broken[0].attempts, 1, "it dead-letters at once");
    h.shutdown().await;
}

/// **Contract 3, commutative counters — at the backend boundary.** An add applies
/// after the commit's writes, to the value then stored (absent: 0), and bumps the
/// key's version, so a handler that read the key before conflicts. Adds record
/// no read, so concurrent adders all apply. A commit whose add cannot apply (not a
/// JSON integer, or an `i64` overflow) is [`Outcome::Rejected`] and applies
/// nothing, not even the acknowledgement of its input; the other completions of
/// its batch apply.
pub async fn adds_apply_with_the_commit<B: Backend + Clone>(backend: B) {
    let acme = tenant("acme");
    let now = TEST_EPOCH;
    let lease = Duration::from_secs(30);
    let complete = |batch: Vec<Completion>| {
        let backend = backend.clone();
        async move {
            backend
                .complete(batch)
                .await
                .unwrap_or_else(|err| panic!("complete failed: {err}"))
        }
    };
    let free = |action: Action| Completion {
        tenant: acme.clone(),
        input: None,
        marker: None,
        action,
    };

    // An add to an absent key starts from 0; adds of one commit apply in order.
    let outcomes = complete(vec![free(commit(
        vec![],
        vec![],
        vec![add("total", 5), add("total", -2)],
    ))])
    .await;
    assert_eq!(outcomes, vec![Outcome::Applied]);
    let (total, v1) = read_json(&backend, &acme, "total")
        .await
        .expect("an add creates the key");
    assert_eq!(total, 3);

    // Two blind adders with no reads both apply, in one batch or in two.
    let outcomes = complete(vec![
        free(commit(vec![], vec![], vec![add("total", 10)])),
        free(commit(vec![], vec![], vec![add("total", 100)])),
    ])
    .await;
    assert_eq!(outcomes, vec![Outcome::Applied, Outcome::Applied]);
    let (total, v2) = read_json(&backend, &acme, "total").await.expect("total");
    assert_eq!(total, 113);
    assert!(v2 > v1, "an add bumps the version: {v1} then {v2}");

    // A handler that read the key before an add committed conflicts, and its
    // own adds do not apply.
    let stale_reader = free(commit(
        vec![ReadCheck {
            key: "total".into(),
            version: Some(v1),
        }],
        vec![json_write("reader", &true.into())],
        vec![add("total", 1_000)],
    ));
    assert_eq!(complete(vec![stale_reader]).await, vec![Outcome::Conflict]);
    assert_eq!(
        read_json(&backend, &acme, "total").await,
        Some((113.into(), v2)),
        "a conflicting commit must not add"
    );
    assert_eq!(read_json(&backend, &acme, "reader").await, None);

    // Adds apply after the commit's writes, to the value they left.
    let outcomes = complete(vec![free(commit(
        vec![],
        vec![
            json_write("written", &40.into()),
            Write {
                key: "total".into(),
                value: None,
            },
        ],
        vec![add("written", 2), add("total", 7)],
    ))])
    .await;
    assert_eq!(outcomes, vec![Outcome::Applied]);
    assert_eq!(
        read_json(&backend, &acme, "written").await.map(|(v, _)| v),
        Some(42.into())
    );
    assert_eq!(
        read_json(&backend, &acme, "total").await.map(|(v, _)| v),
        Some(7.into()),
        "an add after a delete starts from 0"
    );

    // A rejected add: nothing of its completion applies, not even the ack of
    // its input; the completions around it in the batch apply.
    complete(vec![free(commit(
        vec![],
        vec![
            json_write("label", &"ten".into()),
            json_write("big", &(i64::MAX - 1).into()),
            json_write("float", &1.5.into()),
        ],
        vec![],
    ))])
    .await;
    let lease_ref = leased_input(&backend, &acme, "ad-input", now, lease).await;
    let rejected = |key: &str, delta: i64| Completion {
        tenant: acme.clone(),
        input: Some(lease_ref),
        marker: None,
        action: Action::Commit {
            reads: vec![],
            writes: vec![json_write("side-effect", &true.into())],
            adds: vec![add("total", 1), add(key, delta)],
            emits: vec![delivery("ad-output", job_envelope(&acme, 2, now), now)],
            cancels: Vec::new(),
        },
    };
    let outcomes = complete(vec![
        free(commit(vec![], vec![], vec![add("total", 1)])),
        rejected("label", 1),
        rejected("float", 1),
        rejected("big", 5),
        free(commit(vec![], vec![], vec![add("total", 1)])),
    ])
    .await;
    let not_an_integer = |key: &str| {
        Outcome::Rejected(AddError::NotAnInteger {
            key: key.into(),
            delta: 1,
        })
    };
    assert_eq!(
        outcomes,
        vec![
            Outcome::Applied,
            not_an_integer("label"),
            not_an_integer("float"),
            Outcome::Rejected(AddError::Overflow {
                key: "big".into(),
                current: i64::MAX - 1,
                delta: 5,
            }),
            Outcome::Applied,
        ]
    );
    assert_eq!(
        read_json(&backend, &acme, "total").await.map(|(v, _)| v),
        Some(9.into()),
        "the rejected completions must not add; the others must"
    );
    assert_eq!(
        read_json(&backend, &acme, "big").await.map(|(v, _)| v),
        Some((i64::MAX - 1).into())
    );
    assert_eq!(read_json(&backend, &acme, "side-effect").await, None);
    assert!(
        claim(&backend, "ad-output", 10, now, lease)
            .await
            .is_empty(),
        "a rejected completion must not publish its emits"
    );
    // The input is still leased under the same lease: the rejection did not
    // acknowledge it, so the engine can still settle it.
    let settle = Completion {
        tenant: acme.clone(),
        input: Some(lease_ref),
        marker: None,
        action: Action::DeadLetter {
            error: "rejected".into(),
            at: now,
            kind: FailureKind::Permanent,
            emits: Vec::new(),
        },
    };
    assert_eq!(complete(vec![settle]).await, vec![Outcome::Applied]);
}

/// **Contract 3, commutative counters — inside one batch.** Completions of one
/// `complete` call apply in order even where a backend defers the writing of
/// counters to the end of the batch: an add earlier in the batch conflicts a
/// later completion that read the key before; a later write replaces the sum;
/// a later add adds to that write.
pub async fn adds_keep_their_order_within_a_batch<B: Backend + Clone>(backend: B) {
    let acme = tenant("acme");
    let free = |action: Action| Completion {
        tenant: acme.clone(),
        input: None,
        marker: None,
        action,
    };
    let seeded = backend
        .complete(vec![free(commit(
            vec![],
            vec![json_write("hits", &10.into())],
            vec![],
        ))])
        .await
        .expect("complete");
    assert_eq!(seeded, vec![Outcome::Applied]);
    let (_, version) = read_json(&backend, &acme, "hits").await.expect("hits");

    let read_before = ReadCheck {
        key: "hits".into(),
        version: Some(version),
    };
    let outcomes = backend
        .complete(vec![
            free(commit(vec![], vec![], vec![add("hits", 1)])),
            free(commit(
                vec![read_before],
                vec![json_write("seen", &true.into())],
                vec![],
            )),
            free(commit(vec![], vec![], vec![add("hits", 2)])),
            free(commit(
                vec![],
                vec![json_write("hits", &100.into())],
                vec![],
            )),
            free(commit(vec![], vec![], vec![add("hits", 5)])),
            free(commit(vec![], vec![], vec![add("misses", -1)])),
        ])
        .await
        .expect("complete");
    assert_eq!(
        outcomes,
        vec![
            Outcome::Applied,
            Outcome::Conflict,
            Outcome::Applied,
            Outcome::Applied,
            Outcome::Applied,
            Outcome::Applied,
        ],
        "a read of a key added to earlier in the batch is stale"
    );
    let (hits, after) = read_json(&backend, &acme, "hits").await.expect("hits");
    assert_eq!(hits, 105, "the write replaced 13, then 5 was added");
    assert!(after > version);
    assert_eq!(
        read_json(&backend, &acme, "seen").await,
        None,
        "the stale reader applied nothing"
    );
    let (misses, _) = read_json(&backend, &acme, "misses").await.expect("misses");
    assert_eq!(misses, -1);
}
