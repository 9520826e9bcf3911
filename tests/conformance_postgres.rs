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

/// Opening: typed errors, migrations that concurrent openers share, and a
/// schema from a newer build refused.
mod opening {
    use flowline::{PostgresBackend, PostgresError, PostgresOptions};

    fn url() -> String {
        std::env::var("FLOWLINE_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
    }

    fn fresh_schema() -> String {
        format!("flowline_test_{:016x}", rand::random::<u64>())
    }

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
        assert_eq!(versions, 1, "each migration recorded once");
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
                    supported: 1
                }
            ),
            "{err}"
        );
    }
}
