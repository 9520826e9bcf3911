//! `SqliteBackend::open` on a mutated database file, then what an engine
//! reads first from it: the queue's depth and its steps with work, a claim of
//! their deliveries, the dead letters, the keys of the demo stores and the
//! cron marks.
//!
//! A file flowline cannot use must be refused with a typed [`SqliteError`];
//! one it opens must answer every read, with data or a typed error, and never
//! take a reader or the writer down with a panic.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use flowline::backend::{ClaimRequest, StepClaim};
use flowline::{DeadLetterQuery, SqliteBackend, StepName, Store, TenantId, Timestamp, Transport};

/// Writes `data` as a database file (no WAL beside it) and opens it.
pub fn check(data: &[u8]) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("flowline-fuzz-sqlite-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch folder");
        dir
    });
    check_in(dir, data);
}

/// As [`check`], in the folder `dir`.
pub fn check_in(dir: &std::path::Path, data: &[u8]) {
    let path = dir.join("fuzz.db");
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    std::fs::write(&path, data).expect("the scratch file is written");
    let backend = match SqliteBackend::open(&path) {
        Ok(backend) => backend,
        Err(err) => {
            assert!(!err.to_string().is_empty());
            return;
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime builds");
    runtime.block_on(read_everything(&backend));
}

async fn read_everything(backend: &SqliteBackend) {
    // Far enough ahead that every delayed delivery is due.
    let now = Timestamp::from_millis(4_102_444_800_000); // 2100-01-01
    let _ = Transport::depth(backend, now).await;
    if let Ok(work) = backend.steps_with_work(now).await {
        let request = ClaimRequest {
            now,
            steps: work
                .into_iter()
                .map(|w| StepClaim {
                    step: w.step,
                    max: 64,
                    lease: Duration::from_secs(30),
                })
                .collect(),
            tenant_quantum: 16,
        };
        if let Ok(batch) = Transport::claim(backend, request).await {
            let leases: Vec<_> = batch.deliveries.iter().map(|c| c.lease).collect();
            let _ = Transport::release(backend, &leases).await;
        }
    }
    let _ = backend.dead_letters(&DeadLetterQuery::new()).await;
    for store in ["X", "Y", "Z"] {
        let tenant = TenantId::new(store).expect("a demo store id");
        let _ = backend.scan(&tenant, "", 256).await;
    }
    if let Ok(step) = StepName::new("low_stock_check") {
        let _ = backend.last_cron_fire(&step).await;
    }
}
