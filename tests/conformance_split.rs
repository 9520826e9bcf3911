//! The conformance suite against split backends: state and the outbox in a
//! store, deliveries on NATS JetStream, each check on a stream of its own.
//!
//! Needs a NATS server with JetStream (`nats://127.0.0.1:4222` unless
//! `FLOWLINE_NATS_URL` says otherwise) and, for the PostgreSQL store, the
//! server the PostgreSQL suites use. Run with
//! `cargo test --features nats,postgres --test conformance_split`.

#[path = "support/nats.rs"]
mod nats;
// Both support files name their schemas and streams with `support/names.rs`:
// two copies of a small module, each with its own once-per-binary cleanup.
#[allow(clippy::duplicate_mod)]
#[path = "support/postgres.rs"]
mod pg;

/// SQLite (a new file) beside NATS.
mod sqlite_nats {
    use super::nats::fresh_transport;

    async fn fresh() -> flowline::SplitBackend<flowline::SqliteBackend, flowline::NatsTransport> {
        // Kept after the test: SQLite reopens the file by path for its readers.
        let dir = tempfile::Builder::new()
            .prefix("conformance-split-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("a temporary directory")
            .keep();
        let store =
            flowline::SqliteBackend::open(dir.join("flowline.db")).expect("a new database file");
        flowline::SplitBackend::new(store, fresh_transport("FLTEST_SQ_").await)
    }

    flowline::conformance_tests!(fresh().await);
}

/// PostgreSQL (a schema of its own) beside NATS.
mod postgres_nats {
    use super::nats::fresh_transport;

    async fn fresh() -> flowline::SplitBackend<flowline::PostgresBackend, flowline::NatsTransport> {
        let store = super::pg::fresh_backend("flowline_split_").await;
        flowline::SplitBackend::new(store, fresh_transport("FLTEST_PG_").await)
    }

    flowline::conformance_tests!(fresh().await);
}
