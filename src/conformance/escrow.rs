//! Bounded adds (escrow): a take from a key applies only while enough remains,
//! checked when the commit applies, never against what the handler read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::effects::{claim, delivery, job_envelope, json_write, leased_input, read_json};
use super::{drain, epoch_clock, start_with, tenant, Job};
use crate::backend::Backend;
use crate::backend::{Action, Add, Completion, Outcome};
use crate::engine::{EngineConfig, Flow, Step, StepContext, StepError};
use crate::testing::{test_config, TestHarness, TEST_EPOCH};

fn bounded(key: &str, delta: i64, floor: i64) -> Add {
    Add {
        key: key.to_string(),
        delta,
        floor: Some(floor),
    }
}

fn adds_only(tenant: &crate::event::TenantId, adds: Vec<Add>) -> Completion {
    Completion {
        tenant: tenant.clone(),
        input: None,
        marker: None,
        action: Action::Commit {
            reads: vec![],
            writes: vec![],
            adds,
            emits: vec![],
            cancels: Vec::new(),
        },
    }
}

/// **Contract 3, bounded adds — at the backend boundary.** Takes from one key
/// in one batch apply in order while the key holds enough; the one that would
/// take it below its floor is an [`Outcome::Conflict`] and applies nothing of
/// its completion (writes, other adds, emits, the acknowledgement of its
/// input); the completions after it still apply. A floor above the delta
/// bounds the value before the add: `+1` with a floor of 3 applies only to a
/// key that held 2 or more.
pub async fn bounded_adds_hold_their_floor<B: Backend + Clone>(backend: B) {
    let acme = tenant("acme");
    let now = TEST_EPOCH;
    let lease = std::time::Duration::from_secs(30);
    let complete = |batch: Vec<Completion>| {
        let backend = backend.clone();
        async move {
            backend
                .complete(batch)
                .await
                .unwrap_or_else(|err| panic!("complete failed: {err}"))
        }
    };
    let seeded = complete(vec![adds_only(
        &acme,
        vec![Add {
            key: "stock".into(),
            delta: 5,
            floor: None,
        }],
    )])
    .await;
    assert_eq!(seeded, vec![Outcome::Applied]);

    let lease_ref = leased_input(&backend, &acme, "escrow-input", now, lease).await;
    let greedy = Completion {
        tenant: acme.clone(),
        input: Some(lease_ref),
        marker: None,
        action: Action::Commit {
            reads: vec![],
            writes: vec![json_write("greedy", &true.into())],
            adds: vec![
                Add {
                    key: "sold".into(),
                    delta: 3,
                    floor: None,
                },
                bounded("stock", -3, 0),
            ],
            emits: vec![delivery("escrow-output", job_envelope(&acme, 2, now), now)],
            cancels: Vec::new(),
        },
    };
    let outcomes = complete(vec![
        adds_only(&acme, vec![bounded("stock", -3, 0)]),
        greedy.clone(),
        adds_only(&acme, vec![bounded("stock", -2, 0)]),
        adds_only(&acme, vec![bounded("stock", 1, 3)]),
        adds_only(&acme, vec![bounded("stock", -1, 0)]),
    ])
    .await;
    assert_eq!(
        outcomes,
        vec![
            Outcome::Applied,
            Outcome::Conflict,
            Outcome::Applied,
            Outcome::Conflict,
            Outcome::Conflict,
        ],
        "5 units: take 3, not 3 more, take 2; then +1 only above 2, and nothing left"
    );
    assert_eq!(
        read_json(&backend, &acme, "stock").await.map(|(v, _)| v),
        Some(0.into()),
        "never below the floor"
    );
    assert_eq!(
        read_json(&backend, &acme, "greedy").await,
        None,
        "a broken floor applies none of its completion's writes"
    );
    assert_eq!(read_json(&backend, &acme, "sold").await, None, "nor adds");
    assert!(
        claim(&backend, "escrow-output", 10, now, lease)
            .await
            .is_empty(),
        "nor emits"
    );

    // The input is still leased: the conflict did not acknowledge it, and once
    // units are back the same completion applies.
    let restocked = complete(vec![adds_only(&acme, vec![bounded("stock", 4, 4)])]).await;
    assert_eq!(restocked, vec![Outcome::Applied], "a floor a restock meets");
    assert_eq!(complete(vec![greedy]).await, vec![Outcome::Applied]);
    assert_eq!(
        read_json(&backend, &acme, "stock").await.map(|(v, _)| v),
        Some(1.into())
    );
    assert_eq!(
        read_json(&backend, &acme, "sold").await.map(|(v, _)| v),
        Some(3.into())
    );
}

/// **Contracts 1–3, bounded adds — in the engine, across engines.** Two
/// engines sharing one backend serve 400 buyers of 1 to 3 units from a stock of
/// 300, each handler peeking at the stock, then taking its units if they seem
/// there, else recording a refusal. The stock is never oversold: what was
/// taken is exactly what the stock lost, and it never went below zero. Every buyer's outcome is recorded once, nothing dead-letters, and
/// handlers re-run only where a take found its units gone.
pub async fn takes_never_oversell_across_engines<B: Backend + Clone>(backend: B) {
    const BUYERS: u64 = 400;
    const STOCK: i64 = 300;
    let runs = Arc::new(AtomicU64::new(0));
    let flow = |runs: Arc<AtomicU64>| {
        Flow::builder()
            .external::<Job>()
            .step(
                Step::event::<Job>("buy").handle(move |ctx: StepContext, job: Job| {
                    let runs = runs.clone();
                    async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        let units = 1 + job.n % 3;
                        let wanted = i64::try_from(units).expect("1 to 3 units");
                        let left: i64 = ctx.peek("stock").await?.unwrap_or(0);
                        let key = format!("buyer/{}", job.n);
                        if left >= wanted {
                            ctx.take("stock", units)?;
                            ctx.add("taken", wanted)?;
                            ctx.put(&key, &units)?;
                        } else {
                            ctx.put(&key, &0)?;
                        }
                        Ok::<_, StepError>(())
                    }
                }),
            )
            .build()
            .expect("valid flow")
    };
    let config = || EngineConfig {
        batch_size: 8,
        ..test_config()
    };
    let clock = epoch_clock();
    let one = start_with(flow(runs.clone()), backend.clone(), clock, config()).await;
    let two = start_with(flow(runs.clone()), backend.clone(), clock, config()).await;
    let acme = tenant("acme");
    // Seeded by a commit through the backend, as any writer would.
    let seeded = backend
        .complete(vec![adds_only(
            &acme,
            vec![Add {
                key: "stock".into(),
                delta: STOCK,
                floor: None,
            }],
        )])
        .await
        .expect("seed");
    assert_eq!(seeded, vec![Outcome::Applied]);

    let jobs: Vec<Job> = (0..BUYERS).map(|n| Job { n }).collect();
    let (first, second) = jobs.split_at(jobs.len() / 2);
    one.engine().emit_batch(&acme, first).await.expect("emit");
    two.engine().emit_batch(&acme, second).await.expect("emit");
    drain_both(&one, &two).await;

    let stock = one.state::<i64>(&acme, "stock").await.unwrap_or(0);
    let taken = one.state::<i64>(&acme, "taken").await.unwrap_or(0);
    assert!(stock >= 0, "the stock went below zero: {stock}");
    assert_eq!(
        stock + taken,
        STOCK,
        "what was taken is exactly what the stock lost (nothing lost or taken twice)"
    );
    let mut recorded = 0;
    let mut bought = 0;
    for n in 0..BUYERS {
        if let Some(units) = one.state::<i64>(&acme, &format!("buyer/{n}")).await {
            recorded += 1;
            bought += units;
        }
    }
    assert_eq!(recorded, BUYERS, "every buyer's outcome is recorded once");
    assert_eq!(bought, taken, "each take applied once with its record");
    assert!(
        stock < 3,
        "400 buyers of 1 to 3 units leave fewer than 3 of 300: {stock} left"
    );
    let (m1, m2) = (
        one.engine().metrics().await.expect("metrics"),
        two.engine().metrics().await.expect("metrics"),
    );
    assert_eq!(m1.processed + m2.processed, BUYERS, "{m1:?} {m2:?}");
    assert_eq!(
        (m1.dead_lettered + m2.dead_lettered, m1.failed + m2.failed),
        (0, 0)
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        BUYERS + m1.conflicts + m2.conflicts,
        "a handler re-runs only after a conflict"
    );
    one.shutdown().await;
    two.shutdown().await;
}

/// Drains both engines until neither has anything pending.
async fn drain_both(one: &TestHarness, two: &TestHarness) {
    for _ in 0..100 {
        drain(one).await;
        drain(two).await;
        if pending(one).await == 0 && pending(two).await == 0 {
            return;
        }
    }
    panic!("two engines did not drain");
}

async fn pending(h: &TestHarness) -> u64 {
    h.engine().metrics().await.expect("metrics").queue.pending()
}
