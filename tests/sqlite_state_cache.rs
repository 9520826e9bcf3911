//! The SQLite backend answers most reads from its own cache of committed state
//! (`SqliteOptions::state_cache_kib`). These tests check that the cache never
//! hands out a value older than one whose commit has already been acknowledged,
//! however reads, commits and evictions interleave.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use flowline::event::TenantId;
use flowline::store::{Action, Completion, Outcome, Write};
use flowline::{SqliteBackend, SqliteOptions, Store};

// More keys than the 1 KiB cache below holds, so reads keep missing and filling.
const KEYS: usize = 64;
const COMMITS: u64 = 3_000;

fn write(tenant: &TenantId, key: &str, value: Option<u64>) -> Completion {
    Completion {
        tenant: tenant.clone(),
        input: None,
        marker: None,
        action: Action::Commit {
            reads: vec![],
            writes: vec![Write {
                key: key.to_string(),
                value: value.map(|v| Arc::from(v.to_string().into_bytes())),
            }],
            adds: vec![],
            emits: vec![],
        },
    }
}

fn number(found: Option<flowline::store::Versioned>) -> u64 {
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

    for n in 1..=COMMITS {
        let i = (n as usize) % KEYS;
        let outcome = backend
            .complete(vec![write(&tenant, &format!("k{i}"), Some(n))])
            .await
            .expect("complete");
        assert_eq!(outcome, vec![Outcome::Applied]);
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
        backend
            .complete(vec![write(&tenant, "k", Some(7))])
            .await
            .expect("write");
        assert_eq!(number(backend.get(&tenant, "k").await.expect("get")), 7);
        backend
            .complete(vec![write(&tenant, "k", None)])
            .await
            .expect("delete");
        assert_eq!(backend.get(&tenant, "k").await.expect("get"), None);
    }
    let reopened = SqliteBackend::open(&path).expect("reopen");
    assert_eq!(reopened.get(&tenant, "k").await.expect("get"), None);
}
