//! Durable waits from a flow author's side: the mistakes a wait refuses, the
//! late-event rules, and cancellable delayed events.

use std::time::Duration;

use flowline::prelude::*;
use flowline::testing::TestHarness;
use flowline::{EmitOptions, FailureKind, Late, WaitFor, Wake};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Begin {
    step: String,
    key: String,
}
impl Event for Begin {
    const TOPIC: &'static str = "begin";
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Answer {
    key: String,
}
impl Event for Answer {
    const TOPIC: &'static str = "answer";
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Reminder {
    key: String,
}
impl Event for Reminder {
    const TOPIC: &'static str = "reminder";
}

fn acme() -> TenantId {
    TenantId::new("acme").unwrap()
}

/// `begin` starts a wait at the step it names (twice when asked) and
/// schedules a reminder an hour out; `answer` cancels the reminder.
async fn harness(late: Late) -> TestHarness {
    let begin = Step::event::<Begin>("begin").emits::<Reminder>().handle(
        |ctx: StepContext, b: Begin| async move {
            ctx.start_wait(WaitFor::new(&b.step, &b.key, Duration::from_secs(60)))
                .await?;
            let options = EmitOptions::new()
                .delay(Duration::from_secs(3600))
                .cancel_key(format!("remind/{}", b.key));
            ctx.emit_with(&Reminder { key: b.key }, options)?;
            Ok(())
        },
    );
    let waiter = Step::wait::<Answer>("waiter")
        .correlate(|a: &Answer| a.key.clone())
        .late(late)
        .handle(|ctx: StepContext, wake: Wake<Answer>| async move {
            let (what, key) = match wake {
                Wake::Arrived { key, .. } => {
                    ctx.cancel_emit::<Reminder>(&format!("remind/{key}"));
                    ("arrived", key)
                }
                Wake::TimedOut { key, .. } => ("timed out", key),
                Wake::Late { key, .. } => ("late", key),
            };
            ctx.put(&format!("{what}/{key}"), &true)?;
            Ok(())
        });
    let remind =
        Step::event::<Reminder>("remind").handle(|ctx: StepContext, r: Reminder| async move {
            ctx.put(&format!("reminded/{}", r.key), &true)?;
            Ok(())
        });
    let flow = Flow::builder()
        .external::<Begin>()
        .external::<Answer>()
        .step(begin)
        .step(waiter)
        .step(remind)
        .build()
        .unwrap();
    TestHarness::start(flow).await.unwrap()
}

async fn begin(h: &TestHarness, step: &str, key: &str) {
    let event = Begin {
        step: step.into(),
        key: key.into(),
    };
    h.emit(&acme(), &event).await.unwrap();
    h.settle().await;
}

#[tokio::test(start_paused = true)]
async fn an_answer_wakes_the_wait_and_cancels_its_timer_and_the_reminder() {
    let h = harness(Late::Ignore).await;
    begin(&h, "waiter", "u1").await;
    assert_eq!(
        h.engine().metrics().await.unwrap().queue.delayed,
        2,
        "the timer and the reminder"
    );
    h.emit(&acme(), &Answer { key: "u1".into() }).await.unwrap();
    h.settle().await;
    assert_eq!(h.state::<bool>(&acme(), "arrived/u1").await, Some(true));
    assert_eq!(
        h.engine().metrics().await.unwrap().queue.pending(),
        0,
        "both timers were cancelled"
    );
    h.advance(Duration::from_secs(7200)).await;
    assert_eq!(h.state::<bool>(&acme(), "reminded/u1").await, None);
    assert_eq!(h.state::<bool>(&acme(), "timed out/u1").await, None);
}

#[tokio::test(start_paused = true)]
async fn a_wait_refuses_unknown_steps_bad_keys_and_a_second_start() {
    let h = harness(Late::Ignore).await;
    begin(&h, "remind", "u1").await; // not a wait step
    begin(&h, "waiter", "").await;
    begin(&h, "waiter", "u2").await;
    begin(&h, "waiter", "u2").await;
    let dead = h.dead_letters().await;
    let errors: Vec<(&str, FailureKind, u32)> = dead
        .iter()
        .map(|d| (d.last_error.as_str(), d.kind, d.attempts))
        .collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors[0].0.contains("no wait step named \"remind\""),
        "{errors:?}"
    );
    assert!(
        errors[1].0.contains("invalid correlation key"),
        "{errors:?}"
    );
    assert!(
        errors[2].0.contains("already waits for key \"u2\""),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .all(|e| e.1 == FailureKind::Permanent && e.2 == 1),
        "mistakes are permanent: {errors:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn late_answers_follow_the_step_s_rule() {
    for (rule, late_seen, dead) in [
        (Late::Ignore, None, 0),
        (Late::Deliver, Some(true), 0),
        (Late::DeadLetter, None, 1),
    ] {
        let h = harness(rule).await;
        begin(&h, "waiter", "u3").await;
        h.advance(Duration::from_secs(61)).await;
        assert_eq!(
            h.state::<bool>(&acme(), "timed out/u3").await,
            Some(true),
            "{rule:?}"
        );
        h.emit(&acme(), &Answer { key: "u3".into() }).await.unwrap();
        h.settle().await;
        assert_eq!(
            h.state::<bool>(&acme(), "late/u3").await,
            late_seen,
            "{rule:?}"
        );
        let letters = h.dead_letters().await;
        assert_eq!(letters.len(), dead, "{rule:?}: {letters:?}");
        if dead == 1 {
            assert!(letters[0].last_error.contains("late event for key \"u3\""));
        }
    }
}
