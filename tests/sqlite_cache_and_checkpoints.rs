//! What the SQLite backend does beside its writer: the cache of committed
//! state that answers most reads (`SqliteOptions::state_cache_kib`), and the
//! thread that checkpoints the write-ahead log.
//!
//! The cache must never hand out a value older than one whose commit has
//! already been acknowledged, however reads, commits and evictions interleave.
//! The checkpoint thread must get the log's pages into the database file
//! without the writer stopping for them, and the log must not grow without
//! bound.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowline::backend::{Action, Completion, Outcome, Write};
use flowline::event::TenantId;
use flowline::{SqliteBackend, SqliteOptions, Store};

/// A completion that writes `value` to `key` (`None` deletes it).
fn write(tenant: &TenantId, key: &str, value: Option<Vec<u8>>) -> Completion {
    Completion {
        tenant: tenant.clone(),
        input: None,
        marker: None,
        action: Action::Commit {
            reads: vec![],
            writes: vec![Write {
                key: key.to_string(),
                value: value.map(Arc::from),
            }],
            adds: vec![],
            emits: vec![],
            cancels: Vec::new(),
        },
    }
}

async fn commit(backend: &SqliteBackend, completion: Completion) {
    let outcome = backend.complete(vec![completion]).await.expect("complete");
    assert_eq!(outcome, vec![Outcome::Applied]);
}

// The cache.

// More keys than the 1 KiB cache below holds, so reads keep missing and filling.
const KEYS: usize = 64;
const CACHE_COMMITS: u64 = 3_000;

fn number(found: Option<flowline::backend::Versioned>) -> u64 {
    found.map_or(0, |v| {
        std::str::from_utf8(&v.value)
            .expect("utf-8")
            .parse()
            .expect("a number")
    })
}

/// One writer commits increasing numbers to a few keys while readers read
/// them; a reader must never see less than what was acknowledged before its
/// read began.
async fn reads_never_go_back(options: SqliteOptions) {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = SqliteBackend::open_with(dir.path().join("cache.db"), options).expect("open");
    let tenant = TenantId::new("acme").expect("tenant");
    let acknowledged: Arc<Vec<AtomicU64>> =
        Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));

    let mut readers = Vec::new();
    for reader in 0..3 {
        let (backend, tenant, acknowledged, done) = (
            backend.clone(),
            tenant.clone(),
            Arc::clone(&acknowledged),
            Arc::clone(&done),
        );
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            let mut i = reader;
            while !done.load(Ordering::Acquire) {
                i = (i + 1) % KEYS;
                let floor = acknowledged[i].load(Ordering::Acquire);
                let seen = number(backend.get(&tenant, &format!("k{i}")).await.expect("get"));
                assert!(
                    seen >= floor,
                    "key k{i}: read {seen} after {floor} was acknowledged"
                );
                reads += 1;
                tokio::task::yield_now().await;
            }
            reads
        }));
    }

    for n in 1..=CACHE_COMMITS {
        let i = (n as usize) % KEYS;
        let number = n.to_string().into_bytes();
        commit(&backend, write(&tenant, &format!("k{i}"), Some(number))).await;
        acknowledged[i].store(n, Ordering::Release);
    }
    done.store(true, Ordering::Release);
    for reader in readers {
        assert!(reader.await.expect("reader") > 0, "a reader never ran");
    }
    for (i, last) in acknowledged.iter().enumerate() {
        let found = number(backend.get(&tenant, &format!("k{i}")).await.expect("get"));
        assert_eq!(found, last.load(Ordering::Acquire));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_never_see_a_value_older_than_an_acknowledged_commit() {
    reads_never_go_back(SqliteOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_too_small_to_hold_the_keys_still_never_serves_an_older_value() {
    // 1 KiB: every few commits drop a generation, so reads keep missing and filling.
    reads_never_go_back(SqliteOptions::default().state_cache_kib(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_without_the_cache_behave_the_same() {
    reads_never_go_back(SqliteOptions::default().state_cache_kib(0)).await;
}

#[tokio::test]
async fn a_deleted_key_reads_as_absent_and_survives_a_reopen_as_absent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("deleted.db");
    let tenant = TenantId::new("acme").expect("tenant");
    {
        let backend = SqliteBackend::open(&path).expect("open");
        commit(&backend, write(&tenant, "k", Some(b"7".to_vec()))).await;
        assert_eq!(number(backend.get(&tenant, "k").await.expect("get")), 7);
        commit(&backend, write(&tenant, "k", None)).await;
        assert_eq!(backend.get(&tenant, "k").await.expect("get"), None);
    }
    let reopened = SqliteBackend::open(&path).expect("reopen");
    assert_eq!(reopened.get(&tenant, "k").await.expect("get"), None);
}

// The checkpoint thread.

/// Values of a whole page each, so that every commit adds at least one frame.
const VALUE_BYTES: usize = 4096;
const BACKGROUND_ONLY: usize = 600;
const BLOB_COMMITS: usize = 3_000;

fn blob(tenant: &TenantId, n: usize) -> Completion {
    write(
        tenant,
        &format!("blob/{n:05}"),
        Some(vec![b'x'; VALUE_BYTES]),
    )
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
        commit(&backend, blob(&tenant, n)).await;
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

    for n in BACKGROUND_ONLY..BLOB_COMMITS {
        commit(&backend, blob(&tenant, n)).await;
    }
    let written = (BLOB_COMMITS * VALUE_BYTES) as u64;
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
    for n in [0, BLOB_COMMITS / 2, BLOB_COMMITS - 1] {
        let found = reopened
            .get(&tenant, &format!("blob/{n:05}"))
            .await
            .expect("get")
            .expect("present");
        assert_eq!(found.value.len(), VALUE_BYTES);
    }
}
