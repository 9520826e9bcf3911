//! What `?` makes of an error in a handler: the engine's own errors keep their
//! class (a bug dead-letters at once, a backend hiccup is retried), any other
//! error is retried, and a `StepError` leaves a handler's world as a
//! `Box<dyn Error>`.

use std::time::Duration;

use flowline::prelude::*;
use flowline::testing::TestHarness;
use flowline::{ErrorClass, StateError, StoreError};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Ping {
    n: u32,
}
impl Event for Ping {
    const TOPIC: &'static str = "ping";
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Undeclared;
impl Event for Undeclared {
    const TOPIC: &'static str = "never.declared";
}

fn tenant() -> TenantId {
    TenantId::new("acme").unwrap()
}

/// Eight attempts a second apart: a delivery that dead-letters after one
/// attempt was classed permanent, one that used all eight was retried.
fn eight_tries() -> RetryPolicy {
    RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(8)
}

/// Runs `step` on `pings` (their numbers), one after the other, and returns the
/// one dead letter's attempts and error.
async fn run_until_dead(step: Step, pings: &[u32]) -> (u32, String) {
    let flow = Flow::builder()
        .external::<Ping>()
        .step(step)
        .build()
        .unwrap();
    let h = TestHarness::start(flow).await.unwrap();
    for &n in pings {
        h.emit(&tenant(), &Ping { n }).await.unwrap();
        h.advance(Duration::from_secs(60)).await;
    }
    let dead = h.dead_letters().await;
    assert_eq!(dead.len(), 1, "one delivery dead-lettered: {dead:?}");
    h.shutdown().await;
    (dead[0].attempts, dead[0].last_error.clone())
}

#[tokio::test(start_paused = true)]
async fn emitting_an_undeclared_topic_dead_letters_at_once() {
    let step = Step::event::<Ping>("typo").retry(eight_tries()).handle(
        |ctx: StepContext, _: Ping| async move {
            ctx.emit(&Undeclared)?;
            Ok::<_, StepError>(())
        },
    );
    let (attempts, error) = run_until_dead(step, &[1]).await;
    assert_eq!(attempts, 1, "a bug is not retried: {error}");
    assert!(error.contains("did not declare"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn a_stored_value_that_does_not_decode_dead_letters_at_once() {
    let step = Step::event::<Ping>("counter").retry(eight_tries()).handle(
        |ctx: StepContext, p: Ping| async move {
            if p.n == 0 {
                // A value of another shape, as an older version of the flow wrote it.
                ctx.put("count", "twelve")?;
            } else {
                let _count: Option<u64> = ctx.get("count").await?;
            }
            Ok::<_, StepError>(())
        },
    );
    let (attempts, error) = run_until_dead(step, &[0, 1]).await;
    assert_eq!(
        attempts, 1,
        "a value of the wrong type is not retried: {error}"
    );
    assert!(
        error.contains("does not match the requested type"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_error_of_the_handlers_own_is_retried() {
    let step = Step::event::<Ping>("flaky").retry(eight_tries()).handle(
        |_ctx: StepContext, _: Ping| async move {
            Err(std::io::Error::other("provider timed out"))?;
            Ok::<_, StepError>(())
        },
    );
    let (attempts, error) = run_until_dead(step, &[1]).await;
    assert_eq!(attempts, 8, "{error}");
}

#[test]
fn a_backend_that_failed_is_worth_a_retry_and_corrupt_data_is_not() {
    let down = StateError::Store(StoreError::Backend("connection refused".into()));
    assert_eq!(StepError::from(down).class(), ErrorClass::Retryable);
    let corrupt = StateError::Store(StoreError::Corrupt("half a row".into()));
    assert_eq!(StepError::from(corrupt).class(), ErrorClass::Permanent);
}

#[test]
fn a_step_error_travels_as_a_boxed_error_with_its_cause() {
    fn handler_helper() -> Result<(), StepError> {
        Err(std::io::Error::other("disk full"))?;
        Ok(())
    }
    fn caller() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        handler_helper()?;
        Ok(())
    }
    let err = caller().unwrap_err();
    assert_eq!(err.to_string(), "retryable: disk full");
    let cause = err.source().expect("the step error's cause");
    assert!(cause.downcast_ref::<std::io::Error>().is_some());

    let step_error = handler_helper().unwrap_err();
    let lent: &(dyn std::error::Error + Send + Sync) = step_error.as_ref();
    assert_eq!(lent.to_string(), "disk full");
}
