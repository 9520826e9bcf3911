//! Opening SQLite files: what survives a reopen, and the typed error for every
//! file that cannot be used.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flowline::prelude::*;
use flowline::testing::{TestHarness, TEST_EPOCH};
use flowline::{SqliteBackend, SqliteError, StepName, Store, Timestamp, Transport};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Note {
    text: String,
}
impl Event for Note {
    const TOPIC: &'static str = "note";
}

fn flow() -> Flow {
    Flow::builder()
        .external::<Note>()
        .step(
            Step::event::<Note>("keep").handle(|ctx: StepContext, note: Note| async move {
                if note.text == "poison" {
                    return Err(StepError::permanent(std::io::Error::other("refused")));
                }
                ctx.put(&format!("notes/{}", note.text), &note.text)?;
                Ok(())
            }),
        )
        .build()
        .unwrap()
}

fn note(text: &str) -> Note {
    Note { text: text.into() }
}

fn temp_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flowline.db");
    (dir, path)
}

fn tenant() -> TenantId {
    TenantId::new("acme").unwrap()
}

#[tokio::test(start_paused = true)]
async fn state_delayed_work_and_dead_letters_survive_a_reopen() {
    let (_dir, path) = temp_file();
    {
        let harness =
            TestHarness::start_with(flow(), SqliteBackend::open(&path).unwrap(), TEST_EPOCH)
                .await
                .unwrap();
        let engine = harness.engine();
        engine.emit(&tenant(), &note("kept")).await.unwrap();
        engine.emit(&tenant(), &note("poison")).await.unwrap();
        engine
            .emit_with(
                &tenant(),
                &note("later"),
                EmitOptions::default().delay(Duration::from_secs(3600)),
            )
            .await
            .unwrap();
        harness.settle().await;
        harness.shutdown().await;
    }
    let backend = SqliteBackend::open(&path).expect("the file opens again");
    let kept = backend.get(&tenant(), "notes/kept").await.unwrap();
    assert!(kept.is_some(), "committed state survives");
    let depth = backend.depth(TEST_EPOCH).await.unwrap();
    assert_eq!((depth.delayed, depth.dead), (1, 1), "{depth:?}");

    // The delayed note runs when due, on the reopened file.
    let harness = TestHarness::start_with(flow(), backend.clone(), TEST_EPOCH)
        .await
        .unwrap();
    harness.advance(Duration::from_secs(3601)).await;
    assert_eq!(
        harness
            .state::<String>(&tenant(), "notes/later")
            .await
            .as_deref(),
        Some("later")
    );
    let dead = harness.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].last_error, "refused");
}

/// Emits one delayed note per priority (lowest first), then shuts down.
async fn leave_prioritised_notes(path: &Path) {
    let harness = TestHarness::start_with(flow(), SqliteBackend::open(path).unwrap(), TEST_EPOCH)
        .await
        .unwrap();
    for priority in Priority::ALL {
        let options = EmitOptions::new()
            .delay(Duration::from_secs(3600))
            .priority(priority);
        harness
            .engine()
            .emit_with(&tenant(), &note(priority.as_str()), options)
            .await
            .unwrap();
    }
    harness.shutdown().await;
}

/// What a claim after the notes fell due hands out, in order.
async fn claimed_notes(backend: &SqliteBackend) -> Vec<(String, Priority)> {
    let request = flowline::backend::ClaimRequest {
        now: TEST_EPOCH + Duration::from_secs(7200),
        steps: vec![flowline::backend::StepClaim {
            step: StepName::new("keep").unwrap(),
            max: 10,
            lease: Duration::from_secs(60),
        }],
        tenant_quantum: 16,
    };
    let batch = backend.claim(request).await.unwrap();
    batch
        .deliveries
        .iter()
        .map(|c| (c.event.decode::<Note>().unwrap().text, c.event.priority))
        .collect()
}

fn highest_first() -> Vec<(String, Priority)> {
    Priority::ALL
        .iter()
        .rev()
        .map(|p| (p.as_str().to_string(), *p))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn priorities_survive_a_reopen() {
    let (_dir, path) = temp_file();
    leave_prioritised_notes(&path).await;
    let backend = reopen(&path).await;
    assert_eq!(claimed_notes(&backend).await, highest_first());
}

#[tokio::test(start_paused = true)]
async fn a_file_from_before_priorities_is_migrated_and_its_work_is_normal() {
    let (_dir, path) = temp_file();
    leave_prioritised_notes(&path).await;
    {
        // Schema version 2 had no priority columns (and version 3 no dead
        // letters' kind).
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "ALTER TABLE deliveries DROP COLUMN priority; \
             ALTER TABLE dead_letters DROP COLUMN priority; \
             ALTER TABLE dead_letters DROP COLUMN kind; \
             DROP INDEX deliveries_by_cancel_key; \
             ALTER TABLE deliveries DROP COLUMN cancel_key; \
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    let backend = reopen(&path).await;
    let claimed = claimed_notes(&backend).await;
    let texts: Vec<&str> = claimed.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        texts,
        ["lowest", "low", "normal", "high", "highest"],
        "emit order"
    );
    assert!(
        claimed.iter().all(|(_, p)| *p == Priority::Normal),
        "{claimed:?}"
    );
}

#[tokio::test]
async fn dead_letters_from_before_their_kind_read_as_unrecorded() {
    use flowline::backend::{Action, ClaimRequest, Completion, NewDelivery, StepClaim};
    use flowline::{DeadLetterQuery, Envelope, FailureKind};

    let (_dir, path) = temp_file();
    let step = StepName::new("work").unwrap();
    let tenant = TenantId::new("acme").unwrap();
    let event: Envelope = serde_json::from_value(serde_json::json!({
        "id": "0190a5f0-0000-7000-8000-000000000001",
        "topic": "note.left",
        "tenant": "acme",
        "trace_id": "0190a5f0-0000-7000-8000-000000000002",
        "causation_id": null,
        "group_key": null,
        "emitted_at": TEST_EPOCH,
        "deliver_at": null,
        "headers": [],
        "payload": "{\"text\":\"old\"}",
    }))
    .expect("an envelope");
    {
        let backend = SqliteBackend::open(&path).unwrap();
        let delivery = NewDelivery {
            step: step.clone(),
            event: std::sync::Arc::new(event),
            group: None,
            due_at: TEST_EPOCH,
            key: None,
        };
        backend.publish(vec![delivery]).await.unwrap();
        let claimed = backend
            .claim(ClaimRequest {
                now: TEST_EPOCH,
                steps: vec![StepClaim {
                    step: step.clone(),
                    max: 1,
                    lease: Duration::from_secs(30),
                }],
                tenant_quantum: 1,
            })
            .await
            .unwrap()
            .deliveries;
        let done = Completion {
            tenant,
            input: Some(claimed[0].lease),
            marker: None,
            action: Action::DeadLetter {
                error: "gave up".into(),
                at: TEST_EPOCH,
                kind: FailureKind::Exhausted,
                emits: Vec::new(),
            },
        };
        backend.complete(vec![done]).await.unwrap();
    }
    {
        // Schema version 3 kept no kind (and no cancel keys).
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "ALTER TABLE dead_letters DROP COLUMN kind; \
             DROP INDEX deliveries_by_cancel_key; \
             ALTER TABLE deliveries DROP COLUMN cancel_key; \
             PRAGMA user_version = 3;",
        )
        .unwrap();
    }
    let backend = reopen(&path).await;
    let dead = backend.dead_letters(&DeadLetterQuery::new()).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].kind, FailureKind::Unrecorded);
    assert_eq!(dead[0].last_error, "gave up");
}

#[test]
fn a_second_owner_is_refused_until_the_first_is_gone() {
    let (_dir, path) = temp_file();
    let first = SqliteBackend::open(&path).unwrap();
    let clone = first.clone();
    match SqliteBackend::open(&path) {
        Err(SqliteError::InUse { path: p }) => assert_eq!(p, path),
        other => panic!("expected InUse, got {other:?}"),
    }
    drop(first);
    assert!(
        SqliteBackend::open(&path).is_err(),
        "a clone still owns the file"
    );
    drop(clone);
    SqliteBackend::open(&path).expect("free once every clone is dropped");
}

fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn another_programs_database_is_refused_and_left_untouched() {
    let (_dir, path) = temp_file();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE invoices (id INTEGER PRIMARY KEY); INSERT INTO invoices VALUES (7);",
        )
        .unwrap();
    }
    let before = file_bytes(&path);
    match SqliteBackend::open(&path) {
        Err(SqliteError::NotFlowline { reason, .. }) => {
            assert!(reason.contains("another program"), "{reason}")
        }
        other => panic!("expected NotFlowline, got {other:?}"),
    }
    assert_eq!(file_bytes(&path), before, "the file was changed");
    assert!(!path.with_extension("db-wal").exists(), "a WAL was created");
}

#[test]
fn a_file_that_is_not_sqlite_is_refused() {
    let (_dir, path) = temp_file();
    std::fs::write(&path, "order_id,amount\n1,100\n".repeat(100)).unwrap();
    let err = SqliteBackend::open(&path).unwrap_err();
    assert!(
        matches!(&err, SqliteError::NotFlowline { reason, .. } if reason.contains("not a SQLite")),
        "{err:?}"
    );
    assert!(err.to_string().contains("not a flowline database"), "{err}");
}

#[test]
fn a_newer_schema_is_refused() {
    let (_dir, path) = temp_file();
    drop(SqliteBackend::open(&path).unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    match SqliteBackend::open(&path) {
        Err(SqliteError::NewerSchema {
            found, supported, ..
        }) => {
            assert_eq!(found, 99);
            assert!(supported < 99);
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_damaged_file_is_reported_as_corrupt() {
    let (_dir, path) = temp_file();
    {
        // Enough delayed deliveries to fill many pages.
        let harness =
            TestHarness::start_with(flow(), SqliteBackend::open(&path).unwrap(), TEST_EPOCH)
                .await
                .unwrap();
        let later = EmitOptions::default().delay(Duration::from_secs(3600));
        for n in 0..2_000 {
            let note = Note {
                text: format!("note number {n} with some padding to take room"),
            };
            harness
                .engine()
                .emit_with(&tenant(), &note, later.clone())
                .await
                .unwrap();
        }
        harness.shutdown().await;
    }
    // Every page but the header page is overwritten.
    let mut bytes = file_bytes(&path);
    assert!(bytes.len() > 16 * 4096, "the file is {} bytes", bytes.len());
    for byte in &mut bytes[4096..] {
        *byte = 0xA5;
    }
    std::fs::write(&path, bytes).unwrap();
    match SqliteBackend::open(&path) {
        Err(SqliteError::Corrupt { detail, .. }) => assert!(!detail.is_empty()),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_read_only_location_is_refused() {
    // sysfs refuses new files even to root, unlike a directory without write
    // permission.
    let path = Path::new("/sys/flowline-test.db");
    match SqliteBackend::open(path) {
        Err(SqliteError::ReadOnly { detail, .. }) => assert!(!detail.is_empty()),
        other => panic!("expected ReadOnly, got {other:?}"),
    }
}

#[test]
fn files_are_in_wal_mode_whatever_the_durability() {
    for durability in [flowline::Durability::Full, flowline::Durability::Normal] {
        let (_dir, path) = temp_file();
        let options = flowline::SqliteOptions::default().durability(durability);
        let backend = SqliteBackend::open_with(&path, options).unwrap();
        drop(backend);
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
}

/// Opens a file the previous owner is still letting go of: an engine that is
/// dropped aborts its tasks, and the last of them releases the file.
async fn reopen(path: &Path) -> SqliteBackend {
    for _ in 0..500 {
        match SqliteBackend::open(path) {
            Ok(backend) => return backend,
            Err(SqliteError::InUse { .. }) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(other) => panic!("reopening failed: {other}"),
        }
    }
    panic!("the file stayed in use");
}

#[tokio::test]
async fn attempts_cut_short_by_a_dead_process_count_and_a_poison_delivery_dead_letters() {
    let (_dir, path) = temp_file();
    let started = std::sync::Arc::new(tokio::sync::Notify::new());
    let flow = |started: std::sync::Arc<tokio::sync::Notify>| {
        Flow::builder()
            .external::<Note>()
            .step(
                Step::event::<Note>("hang")
                    .retry(RetryPolicy::fixed(Duration::from_millis(1)).max_attempts(3))
                    .handle(move |_ctx: StepContext, _note: Note| {
                        let started = started.clone();
                        async move {
                            // Like a handler that takes the process down: it never
                            // finishes, and the process is gone before its lease ends.
                            started.notify_one();
                            std::future::pending::<()>().await;
                            Ok::<_, StepError>(())
                        }
                    }),
            )
            .build()
            .unwrap()
    };
    let mut backend = SqliteBackend::open(&path).unwrap();
    for life in 1..=3 {
        let engine = Engine::builder(flow(started.clone()))
            .backend(backend)
            .start()
            .await
            .unwrap();
        if life == 1 {
            engine.emit(&tenant(), &note("poison")).await.unwrap();
        }
        started.notified().await;
        drop(engine); // no shutdown: the lease is never given back
        backend = reopen(&path).await;
    }
    let engine = Engine::builder(flow(started.clone()))
        .backend(backend)
        .start()
        .await
        .unwrap();
    let mut dead = Vec::new();
    for _ in 0..500 {
        dead = engine
            .dead_letters(&flowline::DeadLetterQuery::default())
            .await
            .unwrap();
        if !dead.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(dead.len(), 1, "three lives used up the three attempts");
    assert!(
        dead[0].last_error.contains("3 attempts started"),
        "{}",
        dead[0].last_error
    );
    // The fourth claim, which found the attempts used up, counts too.
    assert_eq!(dead[0].attempts, 4, "{:?}", dead[0]);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn dead_letters_are_pruned_after_their_retention() {
    let (_dir, path) = temp_file();
    let day = Duration::from_secs(24 * 3600);
    let options = flowline::SqliteOptions::default().dead_letter_retention(Some(day));
    let backend = SqliteBackend::open_with(&path, options).unwrap();
    let harness = TestHarness::start_with(flow(), backend, TEST_EPOCH)
        .await
        .unwrap();
    harness.emit(&tenant(), &note("poison")).await.unwrap();
    harness.settle().await;
    assert_eq!(harness.dead_letters().await.len(), 1);
    harness.advance(day / 2).await;
    assert_eq!(
        harness.dead_letters().await.len(),
        1,
        "kept within retention"
    );
    harness.advance(day).await;
    assert!(
        harness.dead_letters().await.is_empty(),
        "pruned after a day"
    );
    let depth = harness.engine().metrics().await.unwrap().queue;
    assert_eq!(depth.dead, 0, "the count follows the pruning");
}

#[tokio::test]
async fn cron_fire_records_stay_bounded_and_old_instants_stay_settled() {
    use flowline::backend::{Action, Completion, Marker, Outcome};
    let (_dir, path) = temp_file();
    let backend = SqliteBackend::open(&path).unwrap();
    let schedule = flowline::event::StepName::new("every-minute").unwrap();
    let fire = |at: Timestamp| Completion {
        tenant: TenantId::system(),
        input: None,
        marker: Some(Marker::CronFire {
            schedule: schedule.clone(),
            at,
        }),
        action: Action::Commit {
            reads: vec![],
            writes: vec![],
            adds: vec![],
            emits: vec![],
            cancels: Vec::new(),
        },
    };
    let minute = Duration::from_secs(60);
    let fires = 30 * 24 * 60; // a month of minutely fires
    let batch: Vec<_> = (0..fires).map(|i| fire(TEST_EPOCH + minute * i)).collect();
    let outcomes = backend.complete(batch).await.unwrap();
    assert!(outcomes.iter().all(|o| *o == Outcome::Applied));
    let last = TEST_EPOCH + minute * (fires - 1);
    assert_eq!(backend.last_cron_fire(&schedule).await.unwrap(), Some(last));
    drop(backend);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let kept: i64 = conn
        .query_row("SELECT count(*) FROM cron_fires", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, 7 * 24 * 60 + 1, "a week of records, not a month");
    drop(conn);
    let backend = SqliteBackend::open(&path).unwrap();
    for at in [last, last - minute * 100, TEST_EPOCH, TEST_EPOCH + minute] {
        let outcome = backend.complete(vec![fire(at)]).await.unwrap();
        assert_eq!(outcome, vec![Outcome::Duplicate], "{at}");
    }
}

/// A file opened through a symbolic link is the file it points to: its lock is
/// that file's lock, and `Durability::Full` (which syncs the write-ahead log
/// itself) syncs the log SQLite writes, beside the real file.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_opened_through_a_symbolic_link_is_the_file_it_points_to() {
    use flowline::backend::{Action, Completion, Outcome, Write};

    let dir = tempfile::tempdir().unwrap();
    let real_dir = dir.path().join("data");
    std::fs::create_dir(&real_dir).unwrap();
    let real = real_dir.join("orders.db");
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(&real, &link).unwrap();

    let backend = SqliteBackend::open(&link).unwrap();
    match SqliteBackend::open(&real) {
        Err(SqliteError::InUse { .. }) => {}
        other => panic!("the real path must be owned too, got {other:?}"),
    }
    let write = Completion {
        tenant: tenant(),
        input: None,
        marker: None,
        action: Action::Commit {
            reads: vec![],
            writes: vec![Write {
                key: "notes/kept".into(),
                value: Some(std::sync::Arc::from(&b"\"kept\""[..])),
            }],
            adds: vec![],
            emits: vec![],
            cancels: Vec::new(),
        },
    };
    assert_eq!(
        backend.complete(vec![write]).await.unwrap(),
        vec![Outcome::Applied]
    );
    assert!(
        real_dir.join("orders.db-wal").exists(),
        "SQLite's log is beside the real file"
    );
    assert!(
        !dir.path().join("link.db-wal").exists(),
        "no second log beside the link"
    );
    drop(backend);
    let reopened = SqliteBackend::open(&real).unwrap();
    assert!(reopened
        .get(&tenant(), "notes/kept")
        .await
        .unwrap()
        .is_some());
}
