//! TLS to PostgreSQL (feature `postgres-tls`): a URL with `sslmode=require`
//! connects over TLS, and every connection the backend opens is encrypted, as
//! the server's own `pg_stat_ssl` reports.
//!
//! Needs a server with TLS on (`ssl = on`; Debian's package enables it with a
//! self-signed certificate, which `require` accepts without verifying).
//! Run with `cargo test --features postgres-tls --test postgres_tls`.

#[path = "support/postgres.rs"]
mod pg;

use std::time::Duration;

use flowline::prelude::*;
use flowline::{PostgresBackend, PostgresOptions};

#[derive(serde::Serialize, serde::Deserialize)]
struct Ping {
    n: u32,
}
impl Event for Ping {
    const TOPIC: &'static str = "ping";
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_connects_over_tls() {
    let app = format!("flowline_tls_{:016x}", rand::random::<u64>());
    let base = pg::url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}sslmode=require&application_name={app}");
    let schema = pg::fresh_schema("flowline_test_");
    let backend = PostgresBackend::connect_with(PostgresOptions::new(url).schema(schema.clone()))
        .await
        .expect("a TLS connection (is ssl on in the server?)");
    let flow = Flow::builder()
        .external::<Ping>()
        .step(
            Step::event::<Ping>("pong").handle(|ctx: StepContext, p: Ping| async move {
                ctx.put(&format!("pong/{}", p.n), &true)?;
                Ok::<_, StepError>(())
            }),
        )
        .build()
        .unwrap();
    let engine = Engine::builder(flow)
        .backend(backend)
        .start()
        .await
        .unwrap();
    let tenant = TenantId::new("acme").unwrap();
    engine.emit(&tenant, &Ping { n: 1 }).await.unwrap();
    engine.wait_idle().await;
    assert_eq!(
        engine.state::<bool>(&tenant, "pong/1").await.unwrap(),
        Some(true)
    );

    let admin = sqlx::PgPool::connect(&pg::url()).await.unwrap();
    let ssl: Vec<bool> = sqlx::query_scalar(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = $1",
    )
    .bind(&app)
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(!ssl.is_empty(), "no connection named {app} was found");
    assert!(ssl.iter().all(|on| *on), "connections without TLS: {ssl:?}");
    engine.shutdown(Duration::from_secs(5)).await;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
}
