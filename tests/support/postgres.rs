//! PostgreSQL backends for tests, each in a schema of its own
//! (`<prefix><seconds since 1970>_<random hex>`), created by the backend's
//! migrations; schemas with the same prefix more than an hour old are dropped.
//! Each test binary uses one prefix (`flowline_test_` for the conformance
//! suite, `flowline_of_` for the orderflow tests).
//!
//! Each test binary uses the part it needs, so the rest is dead code there.
//!
//! Needs a server: `postgres://postgres@127.0.0.1:5432/test` unless
//! `FLOWLINE_POSTGRES_URL` says otherwise.

#![allow(dead_code)]

/// The server the tests use.
pub(crate) fn url() -> String {
    std::env::var("FLOWLINE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

#[path = "names.rs"]
mod names;

/// A new schema name: `<prefix><seconds since 1970>_<random hex>`.
pub(crate) fn fresh_schema(prefix: &str) -> String {
    names::fresh_name(prefix)
}

/// Drops the schemas earlier runs left behind (those more than an hour old),
/// once per test binary, so the test database does not grow without bound.
fn drop_old_schemas(prefix: &'static str) {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    names::once_on_own_runtime(&DONE, drop_old_schemas_now(prefix));
}

async fn drop_old_schemas_now(prefix: &str) {
    let Ok(pool) = sqlx::PgPool::connect(&url()).await else {
        return; // fresh_backend reports the server's absence
    };
    let pattern = format!("{}%", prefix.replace('_', "\\_"));
    let schemas: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE $1")
            .bind(pattern)
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
    for name in schemas {
        if names::older_than_an_hour(&name, prefix) != Some(false)
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                .execute(&pool)
                .await;
        }
    }
    pool.close().await;
}

/// A PostgreSQL backend in a new schema of its own, named with `prefix`.
pub(crate) async fn fresh_backend(prefix: &'static str) -> flowline::PostgresBackend {
    drop_old_schemas(prefix);
    let options = flowline::PostgresOptions::new(url()).schema(fresh_schema(prefix));
    flowline::PostgresBackend::connect_with(options)
        .await
        .expect("a PostgreSQL server for the tests (set FLOWLINE_POSTGRES_URL)")
}
