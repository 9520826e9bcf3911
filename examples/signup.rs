//! A sign-up service: a welcome mail through a flaky provider, a durable wait
//! for the address to be verified (or a reminder after ten minutes), a failure
//! hook that marks the user when the mail cannot go out, and a daily digest.
//!
//! ```text
//! cargo run --example signup                  # on ./flowline-signup.db
//! cargo run --example signup -- other.db      # on another file
//! cargo test --example signup                 # its tests, on the virtual clock
//! ```
//!
//! Three users sign up. Ada verifies her address within the ten minutes; Bob
//! never does and is reminded; the provider refuses Eve's address for good,
//! so her welcome dead-letters and its failure hook marks her, in the same
//! commit. A daily digest runs for every registered tenant. The run waits on
//! the real clock with the wait shortened to two seconds (`SIGNUP_WAIT_MS`);
//! the tests run the full ten minutes, and a day of cron, on the virtual
//! clock.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use flowline::prelude::*;
use flowline::{FailureKind, FlowError, Late, WaitFor, Wake};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SignedUp {
    user: String,
    email: String,
}
impl Event for SignedUp {
    const TOPIC: &'static str = "user.signed_up";
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct EmailVerified {
    user: String,
}
impl Event for EmailVerified {
    const TOPIC: &'static str = "email.verified";
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct WelcomeFailed {
    user: String,
    reason: String,
}
impl Event for WelcomeFailed {
    const TOPIC: &'static str = "welcome.failed";
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct RemindToVerify {
    user: String,
}
impl Event for RemindToVerify {
    const TOPIC: &'static str = "user.remind_to_verify";
}

/// Where a user stands, as the service keeps it under `users/<id>`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
enum UserStatus {
    #[default]
    Welcomed,
    Verified,
    Reminded,
    WelcomeFailed,
}

#[derive(Debug, thiserror::Error)]
enum MailError {
    #[error("the mail provider is unavailable")]
    Unavailable,
    #[error("the mail provider refuses {0}")]
    Refused(String),
}

/// A stand-in mail provider: the first call of every message fails, and
/// addresses at `invalid.example` are refused.
#[derive(Default)]
struct Mailer {
    calls: AtomicU32,
}

impl Mailer {
    fn send(&self, to: &str, attempt: u32) -> Result<(), MailError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if to.ends_with("@invalid.example") {
            return Err(MailError::Refused(to.to_string()));
        }
        if attempt == 1 {
            return Err(MailError::Unavailable);
        }
        Ok(())
    }
}

/// How long a new user has to verify their address.
#[derive(Clone, Copy)]
struct VerifyWindow(Duration);

fn send_welcome() -> Step {
    Step::event::<SignedUp>("send_welcome")
        .emits::<WelcomeFailed>()
        .retry(
            RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(5))
                .max_attempts(5),
        )
        .handle(|ctx: StepContext, user: SignedUp| async move {
            let mailer = ctx.data::<Mailer>()?;
            match mailer.send(&user.email, ctx.attempt()) {
                Ok(()) => {}
                Err(refused @ MailError::Refused(_)) => return Err(StepError::permanent(refused)),
                Err(down) => return Err(StepError::retryable(down)),
            }
            ctx.put(&format!("users/{}", user.user), &UserStatus::Welcomed)?;
            let window = ctx.data::<VerifyWindow>()?.0;
            ctx.start_wait(WaitFor::new("await_verification", &user.user, window))
                .await?;
            Ok(())
        })
        // Runs in the dead letter's commit: the user is marked even if the
        // process dies right after.
        .on_failure(|cx, failure| {
            let user: SignedUp = failure.input()?;
            let reason = match failure.kind() {
                FailureKind::Exhausted => "the mail provider stayed down".to_string(),
                _ => failure.error().to_string(),
            };
            cx.emit(&WelcomeFailed {
                user: user.user,
                reason,
            })?;
            Ok(())
        })
}

fn await_verification() -> Step {
    Step::wait::<EmailVerified>("await_verification")
        .correlate(|verified: &EmailVerified| verified.user.clone())
        .late(Late::Deliver)
        .emits::<RemindToVerify>()
        .handle(|ctx: StepContext, wake: Wake<EmailVerified>| async move {
            match wake {
                Wake::Arrived { key, .. } => {
                    ctx.put(&format!("users/{key}"), &UserStatus::Verified)?;
                }
                Wake::TimedOut { key, .. } => {
                    ctx.put(&format!("users/{key}"), &UserStatus::Reminded)?;
                    ctx.emit(&RemindToVerify { user: key })?;
                }
                // Verified after the reminder: still verified.
                Wake::Late { key, .. } => {
                    ctx.put(&format!("users/{key}"), &UserStatus::Verified)?;
                }
            }
            Ok(())
        })
}

fn mark_welcome_failed() -> Step {
    Step::event::<WelcomeFailed>("mark_welcome_failed").handle(
        |ctx: StepContext, failed: WelcomeFailed| async move {
            ctx.put(
                &format!("users/{}", failed.user),
                &UserStatus::WelcomeFailed,
            )?;
            ctx.put(&format!("welcome_failures/{}", failed.user), &failed.reason)?;
            Ok(())
        },
    )
}

fn send_reminder() -> Step {
    Step::event::<RemindToVerify>("send_reminder").handle(
        |ctx: StepContext, remind: RemindToVerify| async move {
            ctx.add("reminders_sent", 1)?;
            println!("  reminder sent to {}", remind.user);
            Ok(())
        },
    )
}

/// Every day at 08:00 UTC, each registered tenant (each app that signs
/// users up here) counts its users.
fn daily_digest() -> Step {
    Step::cron("daily_digest", "0 0 8 * * *")
        .per_tenant()
        .handle(|ctx: StepContext, _tick: CronTick| async move {
            let users: Vec<(String, UserStatus)> = ctx.scan("users/", 10_000).await?;
            let verified = users
                .iter()
                .filter(|(_, s)| *s == UserStatus::Verified)
                .count();
            ctx.put("digest/latest", &(users.len(), verified))?;
            ctx.add("digest/fires", 1)?;
            Ok(())
        })
}

fn flow() -> Result<Flow, FlowError> {
    Flow::builder()
        .external::<SignedUp>()
        .external::<EmailVerified>()
        .steps([
            send_welcome(),
            await_verification(),
            mark_welcome_failed(),
            send_reminder(),
            daily_digest(),
        ])
        .build()
}

fn sign_up(user: &str, email: &str) -> SignedUp {
    SignedUp {
        user: user.into(),
        email: email.into(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "flowline-signup.db".into());
    let wait_ms: u64 = std::env::var("SIGNUP_WAIT_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(2_000);
    let app = TenantId::new("signup-app")?;
    let engine = Engine::builder(flow()?)
        .backend(flowline::SqliteBackend::open(&path)?)
        .data(Mailer::default())
        .data(VerifyWindow(Duration::from_millis(wait_ms)))
        .start()
        .await?;
    engine.register_tenant(&app).await?;
    // A run id keeps the users of each run apart in a file that carries on.
    let run = flowline::Timestamp::system_now().as_millis();
    let (ada, bob, eve) = (
        format!("ada-{run}"),
        format!("bob-{run}"),
        format!("eve-{run}"),
    );
    engine.emit(&app, &sign_up(&ada, "ada@example.com")).await?;
    engine.emit(&app, &sign_up(&bob, "bob@example.com")).await?;
    engine
        .emit(&app, &sign_up(&eve, "eve@invalid.example"))
        .await?;
    println!("three users signed up; waiting for the welcome mails");
    tokio::time::sleep(Duration::from_millis(wait_ms / 2)).await;
    engine
        .emit(&app, &EmailVerified { user: ada.clone() })
        .await?;
    println!("{ada} verified; waiting for {bob}'s reminder");
    tokio::time::sleep(Duration::from_millis(wait_ms + 500)).await;
    tokio::time::timeout(Duration::from_secs(10), engine.wait_idle()).await?;
    for user in [&ada, &bob, &eve] {
        let status: Option<UserStatus> = engine.state(&app, &format!("users/{user}")).await?;
        println!("  {user}: {status:?}");
    }
    engine.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowline::testing::TestHarness;

    async fn service() -> (TestHarness, TenantId) {
        let app = TenantId::new("signup-app").unwrap();
        let builder = Engine::builder(flow().unwrap())
            .backend(flowline::MemoryBackend::new())
            .data(Mailer::default())
            .data(VerifyWindow(Duration::from_secs(600)));
        let h = TestHarness::start_built(builder).await.unwrap();
        h.engine().register_tenant(&app).await.unwrap();
        (h, app)
    }

    async fn status(h: &TestHarness, app: &TenantId, user: &str) -> Option<UserStatus> {
        h.state(app, &format!("users/{user}")).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_user_who_verifies_in_time_is_verified_and_never_reminded() {
        let (h, app) = service().await;
        h.emit(&app, &sign_up("ada", "ada@example.com"))
            .await
            .unwrap();
        h.advance(Duration::from_secs(1)).await; // the provider's first refusal, then the retry
        assert_eq!(status(&h, &app, "ada").await, Some(UserStatus::Welcomed));
        h.advance(Duration::from_secs(300)).await;
        h.emit(&app, &EmailVerified { user: "ada".into() })
            .await
            .unwrap();
        h.advance(Duration::from_secs(3600)).await;
        assert_eq!(status(&h, &app, "ada").await, Some(UserStatus::Verified));
        assert_eq!(h.state::<i64>(&app, "reminders_sent").await, None);
        assert!(h.emitted::<RemindToVerify>().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_user_who_does_not_verify_is_reminded_once_after_ten_minutes() {
        let (h, app) = service().await;
        h.emit(&app, &sign_up("bob", "bob@example.com"))
            .await
            .unwrap();
        h.advance(Duration::from_secs(599)).await;
        assert_eq!(status(&h, &app, "bob").await, Some(UserStatus::Welcomed));
        h.advance(Duration::from_secs(5)).await;
        assert_eq!(status(&h, &app, "bob").await, Some(UserStatus::Reminded));
        assert_eq!(h.state::<i64>(&app, "reminders_sent").await, Some(1));
        // Verifying late still counts.
        h.emit(&app, &EmailVerified { user: "bob".into() })
            .await
            .unwrap();
        h.settle().await;
        assert_eq!(status(&h, &app, "bob").await, Some(UserStatus::Verified));
        assert_eq!(h.state::<i64>(&app, "reminders_sent").await, Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_address_dead_letters_and_the_hook_marks_the_user() {
        let (h, app) = service().await;
        h.emit(&app, &sign_up("eve", "eve@invalid.example"))
            .await
            .unwrap();
        h.settle().await;
        let dead = h.dead_letters().await;
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].kind, FailureKind::Permanent);
        assert_eq!(
            status(&h, &app, "eve").await,
            Some(UserStatus::WelcomeFailed)
        );
        let reason: Option<String> = h.state(&app, "welcome_failures/eve").await;
        assert!(reason.unwrap().contains("refuses eve@invalid.example"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_digest_counts_users_once_a_day() {
        let (h, app) = service().await;
        h.emit(&app, &sign_up("ada", "ada@example.com"))
            .await
            .unwrap();
        h.advance(Duration::from_secs(1)).await;
        h.emit(&app, &EmailVerified { user: "ada".into() })
            .await
            .unwrap();
        h.advance(Duration::from_secs(24 * 3600)).await;
        assert_eq!(h.state::<i64>(&app, "digest/fires").await, Some(1));
        assert_eq!(
            h.state::<(usize, usize)>(&app, "digest/latest").await,
            Some((1, 1)),
            "one user, verified"
        );
    }
}
