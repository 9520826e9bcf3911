//! A backend adapter written outside the crate: it wraps [`flowline::MemoryBackend`],
//! forwards every `Store` and `Transport` method to it, and counts the calls per
//! method and the outcomes of `Store::complete`.
//!
//! ```text
//! cargo run --example custom_adapter     # runs a tiny flow on it, prints the counts
//! cargo test --example custom_adapter    # runs the whole conformance suite on it
//! ```
//!
//! It uses only `flowline::backend::*` and the vocabulary (`TenantId`, `StepName`,
//! `Timestamp`), the way an adapter in another crate would; `docs/ADAPTERS.md` is
//! the guide to what each method must guarantee.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flowline::backend::{
    ClaimBatch, ClaimRequest, Completion, DeadLetter, DeadLetterQuery, LeaseRef, NewDelivery,
    Outcome, QueueDepth, StepWork, Store, StoreError, Transport, Versioned,
};
use flowline::prelude::*;
use flowline::{FlowError, Payload, StepName, Timestamp};
use serde::{Deserialize, Serialize};

/// The methods of the contract, in the order they are counted and printed.
const METHODS: [&str; 14] = [
    "get",
    "scan",
    "complete",
    "dead_letters",
    "replay_dead_letters",
    "amend_dead_letter",
    "purge_dead_letters",
    "last_cron_fire",
    "publish",
    "claim",
    "release",
    "depth",
    "steps_with_work",
    "move_deliveries",
];

/// The outcomes of `complete`, in the order they are counted and printed.
const OUTCOMES: [&str; 5] = ["applied", "conflict", "stale", "duplicate", "rejected"];

#[derive(Default)]
struct Counters {
    calls: [AtomicU64; METHODS.len()],
    outcomes: [AtomicU64; OUTCOMES.len()],
}

/// The adapter: a memory backend plus call counters. Clones share both, the way
/// two processes share one database (the conformance suite relies on it).
#[derive(Clone, Default)]
struct CountingBackend {
    inner: MemoryBackend,
    counters: Arc<Counters>,
}

impl CountingBackend {
    fn new() -> Self {
        Self::default()
    }

    fn count(&self, method: &str) {
        let index = METHODS
            .iter()
            .position(|m| *m == method)
            .expect("a method of the contract");
        self.counters.calls[index].fetch_add(1, Ordering::Relaxed);
    }

    fn count_outcome(&self, outcome: &Outcome) {
        let index = match outcome {
            Outcome::Applied => 0,
            Outcome::Conflict => 1,
            Outcome::Stale => 2,
            Outcome::Duplicate => 3,
            Outcome::Rejected(_) => 4,
        };
        self.counters.outcomes[index].fetch_add(1, Ordering::Relaxed);
    }

    /// `(method, calls)` for every method called at least once.
    fn calls(&self) -> Vec<(&'static str, u64)> {
        METHODS
            .iter()
            .zip(&self.counters.calls)
            .map(|(name, n)| (*name, n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// `(outcome, count)` for every outcome `complete` returned at least once.
    fn outcomes(&self) -> Vec<(&'static str, u64)> {
        OUTCOMES
            .iter()
            .zip(&self.counters.outcomes)
            .map(|(name, n)| (*name, n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

#[async_trait]
impl Store for CountingBackend {
    async fn get(&self, tenant: &TenantId, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.count("get");
        self.inner.get(tenant, key).await
    }

    async fn scan(
        &self,
        tenant: &TenantId,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.count("scan");
        self.inner.scan(tenant, prefix, limit).await
    }

    async fn complete(&self, batch: Vec<Completion>) -> Result<Vec<Outcome>, StoreError> {
        self.count("complete");
        let outcomes = self.inner.complete(batch).await?;
        for outcome in &outcomes {
            self.count_outcome(outcome);
        }
        Ok(outcomes)
    }

    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, StoreError> {
        self.count("dead_letters");
        self.inner.dead_letters(query).await
    }

    async fn replay_dead_letters(&self, ids: &[u64], now: Timestamp) -> Result<usize, StoreError> {
        self.count("replay_dead_letters");
        self.inner.replay_dead_letters(ids, now).await
    }

    async fn amend_dead_letter(&self, id: u64, payload: Payload) -> Result<bool, StoreError> {
        self.count("amend_dead_letter");
        self.inner.amend_dead_letter(id, payload).await
    }

    async fn purge_dead_letters(&self, ids: &[u64]) -> Result<usize, StoreError> {
        self.count("purge_dead_letters");
        self.inner.purge_dead_letters(ids).await
    }

    async fn last_cron_fire(&self, schedule: &StepName) -> Result<Option<Timestamp>, StoreError> {
        self.count("last_cron_fire");
        self.inner.last_cron_fire(schedule).await
    }
}

#[async_trait]
impl Transport for CountingBackend {
    async fn publish(&self, deliveries: Vec<NewDelivery>) -> Result<(), StoreError> {
        self.count("publish");
        self.inner.publish(deliveries).await
    }

    async fn claim(&self, request: ClaimRequest) -> Result<ClaimBatch, StoreError> {
        self.count("claim");
        self.inner.claim(request).await
    }

    async fn release(&self, leases: &[LeaseRef]) -> Result<(), StoreError> {
        self.count("release");
        self.inner.release(leases).await
    }

    async fn depth(&self, now: Timestamp) -> Result<QueueDepth, StoreError> {
        self.count("depth");
        self.inner.depth(now).await
    }

    async fn steps_with_work(&self, now: Timestamp) -> Result<Vec<StepWork>, StoreError> {
        self.count("steps_with_work");
        self.inner.steps_with_work(now).await
    }

    async fn move_deliveries(
        &self,
        from: &StepName,
        to: Option<&StepName>,
    ) -> Result<u64, StoreError> {
        self.count("move_deliveries");
        self.inner.move_deliveries(from, to).await
    }

    // Provided methods have defaults; a wrapper forwards those whose inner
    // version matters. Here: wake-ups from other processes (the memory
    // adapter has none, a PostgreSQL one would). `is_drained` keeps its
    // default, which asks `depth` above, so it is counted there.
    fn on_new_work(&self, wake: flowline::backend::WakeUp) {
        self.inner.on_new_work(wake);
    }
}

// === A tiny flow to run on it ===

#[derive(Serialize, Deserialize, Debug)]
struct OrderPlaced {
    order: u32,
    cents: i64,
}
impl Event for OrderPlaced {
    const TOPIC: &'static str = "order.placed";
}

#[derive(Serialize, Deserialize, Debug)]
struct OrderBilled {
    order: u32,
}
impl Event for OrderBilled {
    const TOPIC: &'static str = "order.billed";
}

fn flow() -> Result<Flow, FlowError> {
    Flow::builder()
        .external::<OrderPlaced>()
        .step(
            Step::event::<OrderPlaced>("bill")
                .emits::<OrderBilled>()
                .handle(|ctx: StepContext, placed: OrderPlaced| async move {
                    ctx.add("revenue", placed.cents)?;
                    ctx.emit(&OrderBilled {
                        order: placed.order,
                    })?;
                    Ok::<_, StepError>(())
                }),
        )
        .step(Step::event::<OrderBilled>("ship").handle(
            |ctx: StepContext, billed: OrderBilled| async move {
                ctx.put(&format!("shipped/{}", billed.order), &true)?;
                Ok::<_, StepError>(())
            },
        ))
        .build()
}

/// Runs three orders through the flow on `backend`; returns the revenue counted.
async fn run_demo(backend: CountingBackend) -> Result<i64, Box<dyn std::error::Error>> {
    let engine = Engine::builder(flow()?).backend(backend).start().await?;
    let shop = TenantId::new("shop-1")?;
    for (order, cents) in [(1, 1_250), (2, 990), (3, 4_000)] {
        engine.emit(&shop, &OrderPlaced { order, cents }).await?;
    }
    engine.wait_idle().await;
    let revenue = engine.state::<i64>(&shop, "revenue").await?.unwrap_or(0);
    let shipped = engine.state::<bool>(&shop, "shipped/3").await?;
    assert_eq!(shipped, Some(true), "order 3 was shipped");
    engine.shutdown(Duration::from_secs(5)).await;
    Ok(revenue)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backend = CountingBackend::new();
    let revenue = run_demo(backend.clone()).await?;
    println!("revenue of shop-1: {revenue} cents");
    println!("adapter calls:");
    for (method, n) in backend.calls() {
        println!("  {method:<20} {n:>6}");
    }
    println!("outcomes of complete:");
    for (outcome, n) in backend.outcomes() {
        println!("  {outcome:<20} {n:>6}");
    }
    Ok(())
}

#[cfg(test)]
mod demo {
    #[tokio::test]
    async fn the_demo_runs_and_goes_through_the_adapter() {
        let backend = super::CountingBackend::new();
        let revenue = super::run_demo(backend.clone())
            .await
            .expect("the demo runs");
        assert_eq!(revenue, 1_250 + 990 + 4_000);
        let calls = backend.calls();
        for method in ["publish", "claim", "complete", "get", "depth"] {
            assert!(
                calls.iter().any(|(m, n)| *m == method && *n > 0),
                "{method} was never called: {calls:?}"
            );
        }
        assert!(backend.outcomes().iter().any(|(o, _)| *o == "applied"));
    }
}

/// The shared conformance suite, run on this adapter by `cargo test --example
/// custom_adapter`: one test per check, each on a fresh `CountingBackend`.
#[cfg(test)]
mod conformance {
    flowline::conformance_tests!(super::CountingBackend::new());
}
