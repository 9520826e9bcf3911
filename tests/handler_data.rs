//! The host gives the engine its handlers' dependencies once
//! (`EngineBuilder::data`), and each execution borrows them by type
//! (`StepContext::data`) instead of cloning them into every closure.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flowline::prelude::*;
use flowline::testing::{test_config, TestHarness, TEST_EPOCH};
use flowline::{Clock, EngineBuilder, MemoryBackend};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug)]
struct SignedUp {
    email: String,
}
impl Event for SignedUp {
    const TOPIC: &'static str = "user.signed_up";
}

/// A mail client: counts what it sent.
#[derive(Default)]
struct Mailer {
    sent: AtomicU32,
}

/// Configuration, a second type beside the client.
struct Sender(&'static str);

fn welcome_flow() -> Flow {
    Flow::builder()
        .external::<SignedUp>()
        .step(
            Step::event::<SignedUp>("welcome")
                .retry(RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(5))
                .handle(|ctx: StepContext, user: SignedUp| async move {
                    let mailer = ctx.data::<Mailer>()?;
                    let Sender(from) = ctx.data::<Sender>()?;
                    mailer.sent.fetch_add(1, Ordering::SeqCst);
                    ctx.put(&format!("welcomed/{}", user.email), from)?;
                    Ok::<_, StepError>(())
                }),
        )
        .build()
        .unwrap()
}

fn builder() -> EngineBuilder {
    Engine::builder(welcome_flow())
        .backend(MemoryBackend::new())
        .clock(Clock::starting_at(TEST_EPOCH))
        .config(test_config())
}

#[tokio::test(start_paused = true)]
async fn every_execution_borrows_the_data_the_host_gave_once() {
    let mailer = Arc::new(Mailer::default());
    let h = TestHarness::start_built(
        builder()
            .data_arc(mailer.clone())
            .data(Sender("hello@shop.example")),
    )
    .await
    .unwrap();
    let acme = TenantId::new("acme").unwrap();
    for n in 0..3 {
        let user = SignedUp {
            email: format!("u{n}@example.com"),
        };
        h.emit(&acme, &user).await.unwrap();
    }
    h.settle().await;
    assert_eq!(mailer.sent.load(Ordering::SeqCst), 3, "one client, shared");
    assert_eq!(
        h.state::<String>(&acme, "welcomed/u1@example.com").await,
        Some("hello@shop.example".to_string())
    );
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn data_the_host_forgot_dead_letters_at_once_naming_its_type() {
    let h = TestHarness::start_built(builder().data(Mailer::default()))
        .await
        .unwrap();
    let acme = TenantId::new("acme").unwrap();
    let user = SignedUp {
        email: "u@example.com".into(),
    };
    h.emit(&acme, &user).await.unwrap();
    h.advance(Duration::from_secs(30)).await;
    let dead = h.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 1, "a wiring mistake is not retried");
    assert!(
        dead[0].last_error.contains("Sender"),
        "{}",
        dead[0].last_error
    );
    h.shutdown().await;
}
