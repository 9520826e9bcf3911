//! The conformance suite against the PostgreSQL backend, each check in a schema
//! of its own (`flowline_test_<seconds>_<random hex>`), created by the
//! backend's migrations; schemas of runs more than an hour old are dropped.
//!
//! Needs a server: `postgres://postgres@127.0.0.1:5432/test` unless
//! `FLOWLINE_POSTGRES_URL` says otherwise. Run with
//! `cargo test --features postgres --test conformance_postgres`.

#[path = "support/postgres.rs"]
mod pg;

use pg::url;

/// The prefix of this suite's schemas.
const PREFIX: &str = "flowline_test_";

fn fresh_schema() -> String {
    pg::fresh_schema(PREFIX)
}

async fn fresh_backend() -> flowline::PostgresBackend {
    pg::fresh_backend(PREFIX).await
}

flowline::conformance_tests!(fresh_backend().await);

/// Opening: typed errors, migrations that concurrent openers share, and a
/// schema from a newer build refused.
mod opening {
    use super::{fresh_schema, url};
    use flowline::{PostgresBackend, PostgresError, PostgresOptions};

    #[tokio::test]
    async fn a_bad_schema_name_or_url_is_a_typed_error() {
        let bad = PostgresOptions::new(url()).schema("x\"; DROP SCHEMA public; --");
        let err = PostgresBackend::connect_with(bad).await.unwrap_err();
        assert!(
            matches!(err, PostgresError::InvalidSchemaName { .. }),
            "{err}"
        );
        let err = PostgresBackend::connect("not a url").await.unwrap_err();
        assert!(matches!(err, PostgresError::InvalidUrl(_)), "{err}");
        // The server is there, the database is not: refused, not a panic.
        let mut missing = url();
        if let Some(slash) = missing.rfind('/') {
            missing.truncate(slash);
        }
        missing.push_str("/flowline_no_such_database");
        let err =
            PostgresBackend::connect_with(PostgresOptions::new(missing).schema(fresh_schema()))
                .await
                .unwrap_err();
        assert!(matches!(err, PostgresError::Connect(_)), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_openers_migrate_once_and_a_newer_schema_is_refused() {
        let schema = fresh_schema();
        let open =
            || PostgresBackend::connect_with(PostgresOptions::new(url()).schema(schema.clone()));
        let opened = futures::future::join_all((0..4).map(|_| open())).await;
        for backend in &opened {
            assert!(backend.is_ok(), "{:?}", backend.as_ref().err());
        }
        // Reopening an up-to-date schema changes nothing.
        open().await.expect("reopen");
        // A build that knows a newer version has been here.
        let pool = sqlx::PgPool::connect(&url()).await.expect("a connection");
        let versions: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM \"{schema}\".flowline_migrations"
        ))
        .fetch_one(&pool)
        .await
        .expect("the migrations table");
        assert_eq!(
            versions,
            PostgresBackend::SCHEMA_VERSION,
            "each migration recorded once"
        );
        sqlx::query(&format!(
            "INSERT INTO \"{schema}\".flowline_migrations (version) VALUES (99)"
        ))
        .execute(&pool)
        .await
        .expect("a newer version recorded");
        let err = open().await.unwrap_err();
        assert!(
            matches!(
                err,
                PostgresError::SchemaTooNew {
                    found: 99,
                    supported: PostgresBackend::SCHEMA_VERSION
                }
            ),
            "{err}"
        );
    }
}

/// Claims from many workers at once: `FOR UPDATE SKIP LOCKED` hands each
/// delivery to exactly one of them, and none waits for another.
mod concurrent_claims {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::time::Duration;

    use flowline::backend::{ClaimRequest, NewDelivery, StepClaim, Transport};
    use flowline::{Envelope, StepName, Timestamp};

    pub(super) fn delivery(step: &StepName, tenant: &str, n: u32, at: Timestamp) -> NewDelivery {
        let json = serde_json::json!({
            "id": uuid::Uuid::now_v7(),
            "topic": "conformance.job",
            "tenant": tenant,
            "trace_id": uuid::Uuid::now_v7(),
            "causation_id": null,
            "group_key": null,
            "emitted_at": at.as_millis(),
            "deliver_at": null,
            "headers": [],
            "payload": format!("{{\"n\":{n}}}"),
        });
        let event: Envelope = serde_json::from_value(json).expect("an envelope");
        NewDelivery {
            step: step.clone(),
            event: Arc::new(event),
            group: None,
            due_at: at,
            key: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_delivery_goes_to_one_claimer() {
        let backend = super::fresh_backend().await;
        let step = StepName::new("work").expect("a step name");
        let now = Timestamp::from_millis(1_767_225_600_000);
        let total = 400;
        let deliveries = (0..total)
            .map(|n| delivery(&step, ["a", "b", "c"][n as usize % 3], n, now))
            .collect();
        backend.publish(deliveries).await.expect("published");
        let workers = (0..6).map(|_| {
            let backend = backend.clone();
            let step = step.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                loop {
                    let batch = backend
                        .claim(ClaimRequest {
                            now,
                            steps: vec![StepClaim {
                                step: step.clone(),
                                max: 7,
                                lease: Duration::from_secs(60),
                            }],
                            tenant_quantum: 2,
                        })
                        .await
                        .expect("a claim");
                    if batch.deliveries.is_empty() {
                        return ids;
                    }
                    ids.extend(batch.deliveries.iter().map(|c| c.lease.id));
                }
            })
        });
        let mut seen = HashSet::new();
        let mut claimed = 0;
        for worker in futures::future::join_all(workers).await {
            for id in worker.expect("a worker") {
                claimed += 1;
                assert!(seen.insert(id), "delivery {id} was claimed twice");
            }
        }
        assert_eq!(claimed, total as usize, "every delivery claimed once");
        let depth = backend.depth(now).await.expect("depth");
        assert_eq!((depth.ready, depth.in_flight), (0, total as u64));
    }
}

/// Priorities: a schema from before them is migrated, its work read as
/// normal; priorities another process publishes are read from its next claim.
mod priorities {
    use std::sync::Arc;
    use std::time::Duration;

    use super::concurrent_claims::delivery;
    use super::{fresh_schema, url};
    use flowline::backend::{ClaimRequest, NewDelivery, StepClaim, Transport};
    use flowline::{PostgresBackend, PostgresOptions, Priority, StepName, Timestamp};

    #[tokio::test]
    async fn a_schema_from_before_priorities_is_migrated_and_its_work_is_normal() {
        let schema = fresh_schema();
        let open =
            || PostgresBackend::connect_with(PostgresOptions::new(url()).schema(schema.clone()));
        let step = StepName::new("work").expect("a step name");
        let now = Timestamp::from_millis(1_767_225_600_000);
        let backend = open().await.expect("open");
        let old = (0..3).map(|n| delivery(&step, "a", n, now)).collect();
        backend.publish(old).await.expect("published");
        drop(backend);
        // Schema version 3 had no priority columns and no priority index (and
        // version 4 no dead letters' kind, version 5 no cancel keys).
        let pool = sqlx::PgPool::connect(&url()).await.expect("a connection");
        sqlx::raw_sql(&format!(
            "SET search_path TO \"{schema}\"; \
             ALTER TABLE deliveries DROP COLUMN priority, DROP COLUMN cancel_key; \
             ALTER TABLE dead_letters DROP COLUMN priority, DROP COLUMN kind; \
             DELETE FROM flowline_migrations WHERE version >= 4;"
        ))
        .execute(&pool)
        .await
        .expect("back to version 3");

        let backend = open().await.expect("reopen, migrating");
        let urgent = prioritised(&step, 3, now, Priority::High);
        backend.publish(vec![urgent]).await.expect("published");
        let batch = backend
            .claim(request(&step, 10, now))
            .await
            .expect("a claim");
        let claimed: Vec<(u64, Priority)> = claimed_jobs(&batch)
            .into_iter()
            .zip(batch.deliveries.iter().map(|c| c.event.priority))
            .collect();
        assert_eq!(
            claimed,
            [
                (3, Priority::High),
                (0, Priority::Normal),
                (1, Priority::Normal),
                (2, Priority::Normal),
            ]
        );
    }

    /// Job `n` of tenant `a` at `priority`.
    fn prioritised(step: &StepName, n: u32, now: Timestamp, priority: Priority) -> NewDelivery {
        let mut d = delivery(step, "a", n, now);
        let mut event = (*d.event).clone();
        event.priority = priority;
        d.event = Arc::new(event);
        d
    }

    fn claimed_jobs(batch: &flowline::backend::ClaimBatch) -> Vec<u64> {
        batch
            .deliveries
            .iter()
            .map(|c| {
                let job: serde_json::Value =
                    serde_json::from_str(c.event.payload.as_json()).expect("a job payload");
                job["n"].as_u64().expect("a job number")
            })
            .collect()
    }

    fn request(step: &StepName, max: usize, now: Timestamp) -> ClaimRequest {
        ClaimRequest {
            now,
            steps: vec![StepClaim {
                step: step.clone(),
                max,
                lease: Duration::from_secs(60),
            }],
            tenant_quantum: 16,
        }
    }

    #[tokio::test]
    async fn priorities_another_process_publishes_are_read_from_the_next_claim() {
        let schema = fresh_schema();
        let open =
            || PostgresBackend::connect_with(PostgresOptions::new(url()).schema(schema.clone()));
        let step = StepName::new("work").expect("a step name");
        let now = Timestamp::from_millis(1_767_225_600_000);
        let claimer = open().await.expect("open");
        // With nothing prioritised, the claimer's claims order by due time alone.
        assert!(claimer
            .claim(request(&step, 10, now))
            .await
            .expect("a claim")
            .deliveries
            .is_empty());
        let publisher = open().await.expect("a second process");
        let published = [
            Priority::Low,
            Priority::Normal,
            Priority::Highest,
            Priority::High,
            Priority::Normal,
        ]
        .into_iter()
        .enumerate()
        .map(|(n, priority)| prioritised(&step, n as u32, now, priority))
        .collect();
        publisher.publish(published).await.expect("published");
        // The first claim may still take the oldest; from the next one on,
        // the claimer knows priorities are in use.
        let first = claimer
            .claim(request(&step, 1, now))
            .await
            .expect("a claim");
        assert_eq!(first.deliveries.len(), 1);
        let taken = claimed_jobs(&first)[0];
        let expected: Vec<u64> = [2, 3, 1, 4, 0]
            .into_iter()
            .filter(|n| *n != taken)
            .collect();
        let rest = claimer
            .claim(request(&step, 10, now))
            .await
            .expect("a claim");
        assert_eq!(claimed_jobs(&rest), expected);
    }
}

/// Group commit: the completions a process hands in together commit in one
/// transaction, and a completion the database refuses fails only its caller.
mod group_commit {
    use super::fresh_backend;
    use flowline::backend::{Action, Completion, Outcome, Store, Write};
    use flowline::TenantId;

    fn write(tenant: &TenantId, key: &str, value: &str) -> Completion {
        Completion {
            tenant: tenant.clone(),
            input: None,
            marker: None,
            action: Action::Commit {
                reads: vec![],
                writes: vec![Write {
                    key: key.to_string(),
                    value: Some(value.as_bytes().into()),
                }],
                adds: vec![],
                emits: vec![],
                cancels: Vec::new(),
            },
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_completion_fails_alone_among_concurrent_ones() {
        let backend = fresh_backend().await;
        let acme = TenantId::new("acme").expect("tenant");
        // Rounds, so that the refused one lands in a group with others in
        // some of them (which calls group is up to timing).
        for round in 0..8 {
            let submit = |c: Completion| {
                let backend = backend.clone();
                tokio::spawn(async move { backend.complete(vec![c]).await })
            };
            let early: Vec<_> = (0..32)
                .map(|n| submit(write(&acme, &format!("good/{round}/a{n}"), "1")))
                .collect();
            // PostgreSQL's text refuses NUL; the engine never sends such a
            // key, a hand-written caller of the contract may.
            let refused = submit(write(&acme, "bad\0key", "1"));
            let late: Vec<_> = (0..32)
                .map(|n| submit(write(&acme, &format!("good/{round}/b{n}"), "1")))
                .collect();
            assert!(refused.await.expect("join").is_err());
            for answer in early.into_iter().chain(late) {
                let outcomes = answer
                    .await
                    .expect("join")
                    .expect("a good completion commits");
                assert_eq!(outcomes, vec![Outcome::Applied]);
            }
            let prefix = format!("good/{round}/");
            let written = backend.scan(&acme, &prefix, 100).await.expect("scan");
            assert_eq!(written.len(), 64, "round {round}");
        }
    }

    /// A fan-out larger than one insert's chunk is inserted apart from the
    /// rest of the commit's statement: all of it applies, in emit order, with
    /// the commit's state write.
    #[tokio::test]
    async fn a_fan_out_beyond_one_insert_commits_whole_and_in_order() {
        use flowline::backend::{ClaimRequest, StepClaim, Transport};
        use flowline::{StepName, Timestamp};
        let backend = fresh_backend().await;
        let acme = TenantId::new("acme").expect("tenant");
        let step = StepName::new("fanned").expect("step");
        let now = Timestamp::from_millis(1_767_225_600_000);
        let total: u32 = 5_001;
        let mut commit = write(&acme, "fanned/out", "yes");
        if let Action::Commit { emits, .. } = &mut commit.action {
            *emits = (0..total)
                .map(|n| super::concurrent_claims::delivery(&step, "acme", n, now))
                .collect();
        }
        let outcomes = backend.complete(vec![commit]).await.expect("commits");
        assert_eq!(outcomes, vec![Outcome::Applied]);
        let written = backend.get(&acme, "fanned/out").await.expect("get");
        assert_eq!(written.map(|v| v.value.to_vec()), Some(b"yes".to_vec()));
        let claimed = backend
            .claim(ClaimRequest {
                now,
                steps: vec![StepClaim {
                    step: step.clone(),
                    max: total as usize,
                    lease: std::time::Duration::from_secs(60),
                }],
                tenant_quantum: total as usize,
            })
            .await
            .expect("claim")
            .deliveries;
        let order: Vec<String> = claimed
            .iter()
            .map(|c| c.event.payload.as_json().to_string())
            .collect();
        let emitted: Vec<String> = (0..total).map(|n| format!("{{\"n\":{n}}}")).collect();
        assert_eq!(order, emitted, "every delivery once, in emit order");
    }
}

/// Wake-ups across processes: an idle engine whose poll interval is a minute
/// runs work another process publishes within moments (`LISTEN/NOTIFY`).
mod wakeups {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use flowline::backend::{NewDelivery, Transport};
    use flowline::prelude::*;
    use flowline::{EngineConfig, Envelope, MemoryBackend, PostgresBackend, PostgresOptions};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Job {
        n: u64,
    }
    impl Event for Job {
        const TOPIC: &'static str = "job";
    }

    fn flow(done: Arc<Mutex<Vec<u64>>>) -> Flow {
        Flow::builder()
            .external::<Job>()
            .step(
                Step::event::<Job>("work").handle(move |_: StepContext, job: Job| {
                    let done = done.clone();
                    async move {
                        done.lock().unwrap().push(job.n);
                        Ok::<_, StepError>(())
                    }
                }),
            )
            .build()
            .expect("flow")
    }

    /// An envelope as an engine makes it, captured from one on the memory backend.
    async fn envelope(n: u64) -> Arc<Envelope> {
        let seen: Arc<Mutex<Vec<Arc<Envelope>>>> = Arc::default();
        let hook = seen.clone();
        let engine = Engine::builder(flow(Arc::default()))
            .backend(MemoryBackend::new())
            .on_emit(move |e| hook.lock().unwrap().push(Arc::new(e.clone())))
            .start()
            .await
            .expect("engine");
        let tenant = TenantId::new("acme").expect("tenant");
        engine.emit(&tenant, &Job { n }).await.expect("emit");
        engine.shutdown(Duration::from_secs(5)).await;
        let envelope = seen.lock().unwrap().pop().expect("an emitted envelope");
        envelope
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_engine_wakes_for_work_another_process_publishes() {
        let worker_side = super::fresh_backend().await;
        let schema = worker_side.schema().to_string();
        let done: Arc<Mutex<Vec<u64>>> = Arc::default();
        let config = EngineConfig {
            poll_interval: Duration::from_secs(60),
            ..EngineConfig::default()
        };
        let engine = Engine::builder(flow(done.clone()))
            .backend(worker_side)
            .config(config)
            .start()
            .await
            .expect("engine");
        // Another process: a backend of its own on the same schema.
        let publisher =
            PostgresBackend::connect_with(PostgresOptions::new(super::url()).schema(schema))
                .await
                .expect("second backend");
        for n in 1..=3u64 {
            // Let the engine's dispatcher go to sleep on its minute.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let event = envelope(n).await;
            let published = Instant::now();
            let due_at = event.emitted_at;
            publisher
                .publish(vec![NewDelivery {
                    step: flowline::StepName::new("work").expect("step name"),
                    event,
                    group: None,
                    due_at,
                    key: None,
                }])
                .await
                .expect("publish");
            while !done.lock().unwrap().contains(&n) {
                assert!(
                    published.elapsed() < Duration::from_secs(10),
                    "job {n} waited for the poll interval: no wake-up arrived"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            println!(
                "job {n} ran {:?} after another process published it",
                published.elapsed()
            );
        }
        engine.shutdown(Duration::from_secs(5)).await;
    }
}

/// Dead letters past their retention are pruned, in engine time.
mod retention {
    use std::time::Duration;

    use flowline::prelude::*;
    use flowline::testing::{TestHarness, TEST_EPOCH};
    use flowline::{PostgresBackend, PostgresOptions};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Poison {
        n: u32,
    }
    impl Event for Poison {
        const TOPIC: &'static str = "poison";
    }

    #[tokio::test(start_paused = true)]
    async fn dead_letters_are_pruned_after_their_retention() {
        let day = Duration::from_secs(24 * 3600);
        let options = PostgresOptions::new(super::url())
            .schema(super::fresh_schema())
            .dead_letter_retention(Some(day));
        let backend = PostgresBackend::connect_with(options)
            .await
            .expect("backend");
        let flow = Flow::builder()
            .external::<Poison>()
            .step(
                Step::event::<Poison>("fail").handle(|_: StepContext, _: Poison| async move {
                    Err::<(), _>(StepError::permanent("never works"))
                }),
            )
            .build()
            .expect("flow");
        let h = TestHarness::start_with(flow, backend, TEST_EPOCH)
            .await
            .expect("harness");
        let tenant = TenantId::new("acme").unwrap();
        h.emit(&tenant, &Poison { n: 1 }).await.unwrap();
        h.settle().await;
        assert_eq!(h.dead_letters().await.len(), 1);
        h.advance(day / 2).await;
        assert_eq!(h.dead_letters().await.len(), 1, "kept within retention");
        h.advance(day).await;
        assert!(h.dead_letters().await.is_empty(), "pruned after a day");
        let depth = h.engine().metrics().await.unwrap().queue;
        assert_eq!(depth.dead, 0, "the count follows the pruning");
        h.shutdown().await;
    }
}
