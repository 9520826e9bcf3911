//! The conformance suite against the PostgreSQL backend, each check in a schema
//! of its own (`flowline_test_<random hex>`), created by the backend's
//! migrations.
//!
//! Needs a server: `postgres://postgres@127.0.0.1:5432/test` unless
//! `FLOWLINE_POSTGRES_URL` says otherwise. Run with
//! `cargo test --features postgres --test conformance_postgres`.

async fn fresh_backend() -> flowline::PostgresBackend {
    let url = std::env::var("FLOWLINE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let schema = format!("flowline_test_{:016x}", rand::random::<u64>());
    let options = flowline::PostgresOptions::new(url).schema(schema);
    flowline::PostgresBackend::connect_with(options)
        .await
        .expect("a PostgreSQL server for the conformance suite (set FLOWLINE_POSTGRES_URL)")
}

flowline::conformance_tests!(fresh_backend().await);
