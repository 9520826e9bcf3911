//! Hot keys: many executions of one step read-modify-write a few keys (stock
//! counters of a dozen products). Every increment lands exactly once on both
//! backends, and after a conflict the re-runs commit in rounds, not one by one.
//!
//! The ignored test at the end is the timing run of docs/PERFORMANCE.md ("Hot
//! keys"):
//!
//! ```text
//! cargo test --release --test hot_keys -- --ignored --nocapture
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use flowline::backend::{Action, Completion, DeadLetterQuery, Outcome};
use flowline::testing::test_config;
use flowline::{
    prelude::*, Backend, Durability, EngineConfig, MetricsSnapshot, SqliteOptions, StoreError,
};
use serde::{Deserialize, Serialize};

#[path = "support/hooked.rs"]
mod hooked;
use hooked::{Hooked, Intercept};

const KEYS: u64 = 12;

#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
struct Reserve {
    n: u64,
}
impl Event for Reserve {
    const TOPIC: &'static str = "stock.reserve";
}

/// One step: each delivery increments `stock/{n % keys}` with a get and a put.
fn flow(keys: u64) -> Flow {
    Flow::builder()
        .external::<Reserve>()
        .step(Step::event::<Reserve>("reserve").handle(
            move |ctx: StepContext, r: Reserve| async move {
                let key = format!("stock/{}", r.n % keys);
                let n: u64 = ctx.get(&key).await?.unwrap_or(0);
                ctx.put(&key, &(n + 1))?;
                Ok::<_, StepError>(())
            },
        ))
        .build()
        .expect("valid flow")
}

/// Counts the `complete` calls it forwards (one per commit round), and
/// answers `Conflict` to every commit that writes `cursed`, without
/// forwarding it.
struct Counted {
    completes: Arc<AtomicU64>,
    cursed: Option<&'static str>,
}

#[async_trait]
impl Intercept for Counted {
    async fn complete(
        &self,
        inner: &dyn Backend,
        batch: Vec<Completion>,
    ) -> Result<Vec<Outcome>, StoreError> {
        self.completes.fetch_add(1, Ordering::Relaxed);
        let Some(cursed) = self.cursed else {
            return inner.complete(batch).await;
        };
        let is_cursed = |c: &Completion| matches!(&c.action, Action::Commit { writes, .. } if writes.iter().any(|w| w.key == cursed));
        let cursed: Vec<bool> = batch.iter().map(is_cursed).collect();
        let mut applied = inner
            .complete(batch.into_iter().filter(|c| !is_cursed(c)).collect())
            .await?
            .into_iter();
        Ok(cursed
            .into_iter()
            .map(|c| {
                if c {
                    Outcome::Conflict
                } else {
                    applied.next().expect("one outcome per completion")
                }
            })
            .collect())
    }
}

/// Runs `events` reservations over `keys` keys on `backend`; checks every key's
/// exact count and returns the metrics, how many `complete` calls the engine
/// made, and the time from the emit until the engine was idle.
async fn run<B: Backend + Clone>(
    backend: B,
    events: u64,
    keys: u64,
    config: EngineConfig,
) -> (MetricsSnapshot, u64, Duration) {
    let completes = Arc::new(AtomicU64::new(0));
    let backend = Hooked::new(
        backend,
        Counted {
            completes: completes.clone(),
            cursed: None,
        },
    );
    let engine = Engine::builder(flow(keys))
        .backend(backend)
        .config(config)
        .start()
        .await
        .expect("start");
    let shop = TenantId::new("shop").expect("tenant");
    let reservations: Vec<Reserve> = (0..events).map(|n| Reserve { n }).collect();
    let started = Instant::now();
    engine.emit_batch(&shop, &reservations).await.expect("emit");
    tokio::time::timeout(Duration::from_secs(300), engine.wait_idle())
        .await
        .expect("the engine went idle");
    let took = started.elapsed();
    for k in 0..keys {
        let expected = events / keys + u64::from(k < events % keys);
        assert_eq!(
            engine
                .state::<u64>(&shop, &format!("stock/{k}"))
                .await
                .expect("state"),
            Some(expected),
            "key stock/{k}: lost or doubled increments"
        );
    }
    let m = engine.metrics().await.expect("metrics");
    assert_eq!(m.processed, events, "{m:?}");
    assert_eq!((m.failed, m.retried, m.dead_lettered), (0, 0, 0), "{m:?}");
    engine.shutdown(Duration::from_secs(5)).await;
    (m, completes.load(Ordering::Relaxed), took)
}

/// One batch in flight at a time, so the rounds of each batch are undisturbed.
fn one_batch_at_a_time() -> EngineConfig {
    EngineConfig {
        max_in_flight: 256,
        ..test_config()
    }
}

/// 1,536 deliveries in six batches of 256, one batch at a time: each batch's
/// first round commits one execution per key and conflicts the other 244. Re-run
/// one at a time they would take 244 commits a batch (1,464 in all); in rounds of
/// executions whose keys do not overlap, about 244 / 12 ≈ 21 a batch.
async fn rounds_not_one_by_one<B: Backend + Clone>(backend: B) {
    const EVENTS: u64 = 1_536;
    let (m, completes, _) = run(backend, EVENTS, KEYS, one_batch_at_a_time()).await;
    assert!(m.conflicts > 0, "twelve hot keys must conflict: {m:?}");
    assert!(
        completes < 300,
        "{completes} commit rounds for {EVENTS} executions over {KEYS} keys \
         ({} conflicts): the re-runs did not commit in rounds",
        m.conflicts
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_commits_re_runs_in_rounds() {
    rounds_not_one_by_one(MemoryBackend::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_commits_re_runs_in_rounds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = SqliteBackend::open_with(
        dir.path().join("hot.db"),
        SqliteOptions::default().durability(Durability::Normal),
    )
    .expect("open");
    rounds_not_one_by_one(backend).await;
}

/// An execution that conflicts every time is re-run at most
/// `max_conflict_reruns` times per lease, and the executions behind it (on other
/// keys, or on its key) are not held up: they commit, in rounds, meanwhile.
#[tokio::test(start_paused = true)]
async fn re_runs_stay_bounded_and_nothing_behind_a_hopeless_execution_starves() {
    const RERUNS: u32 = 3;
    const ATTEMPTS: u32 = 2;
    let runs: Arc<std::sync::Mutex<Vec<u64>>> = Arc::default();
    let log = runs.clone();
    let flow = Flow::builder()
        .external::<Reserve>()
        .step(
            Step::event::<Reserve>("reserve")
                .lease(Duration::from_secs(1))
                .retry(RetryPolicy::fixed(Duration::ZERO).max_attempts(ATTEMPTS))
                .handle(move |ctx: StepContext, r: Reserve| {
                    let log = log.clone();
                    async move {
                        log.lock().unwrap().push(r.n);
                        // Delivery 0 also writes the cursed key: it can never commit.
                        if r.n == 0 {
                            ctx.put("cursed", &true)?;
                        }
                        let key = format!("stock/{}", r.n % 4);
                        let n: u64 = ctx.get(&key).await?.unwrap_or(0);
                        ctx.put(&key, &(n + 1))?;
                        Ok::<_, StepError>(())
                    }
                }),
        )
        .build()
        .expect("valid flow");
    let backend = Hooked::new(
        MemoryBackend::new(),
        Counted {
            completes: Arc::default(),
            cursed: Some("cursed"),
        },
    );
    let config = EngineConfig {
        max_conflict_reruns: RERUNS,
        ..one_batch_at_a_time()
    };
    let engine = Engine::builder(flow)
        .backend(backend)
        .config(config)
        .start()
        .await
        .expect("start");
    let shop = TenantId::new("shop").expect("tenant");
    let reservations: Vec<Reserve> = (0..40).map(|n| Reserve { n }).collect();
    engine.emit_batch(&shop, &reservations).await.expect("emit");
    engine.wait_idle().await;

    // Delivery 0 ran once plus RERUNS re-runs in each of its attempts, then
    // dead-lettered when its leases ran out.
    let runs = runs.lock().unwrap().clone();
    let hopeless = runs.iter().filter(|n| **n == 0).count() as u32;
    assert_eq!(hopeless, ATTEMPTS * (1 + RERUNS), "{runs:?}");
    let dead = engine
        .dead_letters(&DeadLetterQuery::default())
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].last_error.contains("attempts exhausted"),
        "{dead:?}"
    );
    // Everything else committed exactly once, its own key included.
    let expected = [9, 10, 10, 10];
    for (k, expected) in expected.iter().enumerate() {
        assert_eq!(
            engine
                .state::<u64>(&shop, &format!("stock/{k}"))
                .await
                .expect("state"),
            Some(*expected),
            "stock/{k}"
        );
    }
    let m = engine.metrics().await.expect("metrics");
    assert_eq!(m.processed, 39, "{m:?}");
    engine.shutdown(Duration::from_secs(5)).await;
}

/// Many batches at once (the default settings) contend for the same keys across
/// batches too: every increment still lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_keep_exact_counts_on_memory() {
    run(MemoryBackend::new(), 3_000, KEYS, test_config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_keep_exact_counts_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = SqliteBackend::open(dir.path().join("hot.db")).expect("open");
    run(backend, 3_000, KEYS, test_config()).await;
}

/// The timing run: `HOT_EVENTS` (50,000) deliveries over `HOT_KEYS` (12) keys on
/// each backend of `HOT_BACKENDS` (`memory,sqlite-normal`; `sqlite-full` is the
/// third), default engine settings, `HOT_RUNS` (3) runs each. The clock runs from the `emit_batch` of all the
/// deliveries until the engine is idle. Prints the executions per second of each
/// run; asserts only correctness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a timing run: cargo test --release --test hot_keys -- --ignored --nocapture"]
async fn hot_key_timing() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let events = env("HOT_EVENTS", 50_000);
    let runs = env("HOT_RUNS", 3);
    let keys = env("HOT_KEYS", KEYS);
    let backends =
        std::env::var("HOT_BACKENDS").unwrap_or_else(|_| "memory,sqlite-normal".to_string());
    for backend in backends.split(',') {
        for i in 1..=runs {
            let dir = tempfile::tempdir().expect("tempdir");
            let (m, completes, took) = match backend {
                "memory" => run(MemoryBackend::new(), events, keys, EngineConfig::default()).await,
                "sqlite-normal" | "sqlite-full" => {
                    let durability = if backend == "sqlite-full" {
                        Durability::Full
                    } else {
                        Durability::Normal
                    };
                    let sqlite = SqliteBackend::open_with(
                        dir.path().join("hot.db"),
                        SqliteOptions::default().durability(durability),
                    )
                    .expect("open");
                    run(sqlite, events, keys, EngineConfig::default()).await
                }
                other => panic!("HOT_BACKENDS: unknown backend {other:?}"),
            };
            let secs = took.as_secs_f64();
            println!(
                "hot keys: {backend} run {i}: {events} executions over {keys} keys in {secs:.2} s \
                 = {:.0} executions/s; {} conflict re-runs, {completes} complete calls",
                events as f64 / secs,
                m.conflicts,
            );
        }
    }
}
