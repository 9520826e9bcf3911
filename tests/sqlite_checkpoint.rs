//! The SQLite backend checkpoints its write-ahead log on a thread of its own:
//! the log's pages reach the database file without the writer stopping for
//! them, and the log does not grow without bound.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowline::event::TenantId;
use flowline::store::{Action, Completion, Outcome, Write};
use flowline::{SqliteBackend, Store};

/// Values of a whole page each, so that every commit adds at least one frame.
const VALUE_BYTES: usize = 4096;
const BACKGROUND_ONLY: usize = 600;
const COMMITS: usize = 3_000;

fn put(tenant: &TenantId, n: usize) -> Completion {
    Completion {
        tenant: tenant.clone(),
        input: None,
        marker: None,
        action: Action::Commit {
            reads: vec![],
            writes: vec![Write {
                key: format!("blob/{n:05}"),
                value: Some(Arc::from(vec![b'x'; VALUE_BYTES])),
            }],
            adds: vec![],
            emits: vec![],
        },
    }
}

async fn commit(backend: &SqliteBackend, tenant: &TenantId, n: usize) {
    let outcome = backend
        .complete(vec![put(tenant, n)])
        .await
        .expect("complete");
    assert_eq!(outcome, vec![Outcome::Applied]);
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_pages_reach_the_database_file_in_the_background() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("checkpoint.db");
    let wal = dir.path().join("checkpoint.db-wal");
    let backend = SqliteBackend::open(&path).expect("open");
    let tenant = TenantId::new("acme").expect("tenant");
    let before = size(&path);

    // Each commit adds two or three frames: 600 of them go past the
    // background thread's threshold (1,000 frames) and stay short of the
    // writer's own (4,000), so only the thread can have copied them.
    for n in 0..BACKGROUND_ONLY {
        commit(&backend, &tenant, n).await;
    }
    let written = (BACKGROUND_ONLY * VALUE_BYTES) as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while size(&path) < before + written / 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        size(&path) >= before + written / 2,
        "the database file holds {} bytes after {written} bytes were committed: \
         nothing checkpointed the log",
        size(&path)
    );

    for n in BACKGROUND_ONLY..COMMITS {
        commit(&backend, &tenant, n).await;
    }
    let written = (COMMITS * VALUE_BYTES) as u64;
    // A log that never started over would hold every frame: about 32 MB here.
    // Past 4,000 frames (16 MiB) the writer checkpoints what is left itself and
    // the log starts over.
    assert!(
        size(&wal) < 24 * 1024 * 1024,
        "the log grew to {} bytes for {written} bytes of values",
        size(&wal)
    );
    // Everything reads back, from the file as well as from the cache.
    drop(backend);
    let reopened = SqliteBackend::open(&path).expect("reopen");
    for n in [0, COMMITS / 2, COMMITS - 1] {
        let found = reopened
            .get(&tenant, &format!("blob/{n:05}"))
            .await
            .expect("get")
            .expect("present");
        assert_eq!(found.value.len(), VALUE_BYTES);
    }
}
