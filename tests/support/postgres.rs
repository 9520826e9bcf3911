//! A PostgreSQL backend for the orderflow tests, each in a schema of its own
//! (`flowline_of_<seconds since 1970>_<random hex>`), created by the backend's
//! migrations; schemas of orderflow runs more than an hour old are dropped.
//!
//! Needs a server: `postgres://postgres@127.0.0.1:5432/test` unless
//! `FLOWLINE_POSTGRES_URL` says otherwise.

const PREFIX: &str = "flowline_of_";

fn url() -> String {
    std::env::var("FLOWLINE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A new schema name: `flowline_of_<seconds since 1970>_<random hex>`.
fn fresh_schema() -> String {
    format!("{PREFIX}{}_{:016x}", now_secs(), rand::random::<u64>())
}

/// Drops the schemas earlier runs left behind (those more than an hour old),
/// once per test binary, so the test database does not grow without bound.
///
/// It runs on a thread and runtime of its own, with real time: the tests'
/// runtimes may have a paused clock, which would fire the pool's timeouts.
fn drop_old_schemas() {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if DONE.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let cleanup = std::thread::spawn(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for dropping old schemas")
            .block_on(drop_old_schemas_now());
    });
    let _ = cleanup.join();
}

async fn drop_old_schemas_now() {
    let Ok(pool) = sqlx::PgPool::connect(&url()).await else {
        return; // fresh_backend reports the server's absence
    };
    let cutoff = now_secs().saturating_sub(3600);
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'flowline\\_of\\_%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap_or_default();
    for name in names {
        let secs = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if secs.is_none_or(|secs| secs < cutoff)
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                .execute(&pool)
                .await;
        }
    }
    pool.close().await;
}

/// A PostgreSQL backend in a new schema of its own.
pub(crate) async fn fresh_backend() -> flowline::PostgresBackend {
    drop_old_schemas();
    let options = flowline::PostgresOptions::new(url()).schema(fresh_schema());
    flowline::PostgresBackend::connect_with(options)
        .await
        .expect("a PostgreSQL server for the orderflow tests (set FLOWLINE_POSTGRES_URL)")
}
