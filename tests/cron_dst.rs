//! Cron across daylight-saving changes, on the engine and tokio's paused clock:
//! a wall time that does not exist fires once, just after the gap; a wall time
//! that happens twice fires once.

use std::sync::Arc;
use std::time::Duration;

use flowline::prelude::*;
use flowline::testing::{test_config, TestHarness};
use flowline::{Clock, MemoryBackend, Timestamp};

fn at(rfc3339: &str) -> Timestamp {
    Timestamp::from_chrono(&chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap())
}

/// Runs a Berlin-time cron from `start` for `days` and returns the instants it
/// fired for (a fire at the very end included).
async fn fires(expression: &str, start: &str, days: u64) -> Vec<Timestamp> {
    let flow = Flow::builder()
        .step(
            Step::cron("berlin", expression)
                .time_zone("Europe/Berlin")
                .handle(|ctx: StepContext, tick: CronTick| async move {
                    let mut fired: Vec<Timestamp> = ctx.get("fired").await?.unwrap_or_default();
                    fired.push(tick.fire_at);
                    ctx.put("fired", &fired)?;
                    Ok::<_, StepError>(())
                }),
        )
        .build()
        .unwrap();
    let h = TestHarness::start_configured(
        flow,
        Arc::new(MemoryBackend::new()),
        Clock::starting_at(at(start)),
        test_config(),
    )
    .await
    .unwrap();
    h.advance(Duration::from_secs(days * 24 * 3600)).await;
    let fired = h
        .state(&TenantId::system(), "fired")
        .await
        .unwrap_or_default();
    h.shutdown().await;
    fired
}

#[tokio::test(start_paused = true)]
async fn spring_forward_fires_the_missing_time_once_after_the_gap() {
    // 2026-03-29: Berlin jumps from 02:00 CET to 03:00 CEST; 02:30 does not exist.
    let fired = fires("0 30 2 * * *", "2026-03-28T12:00:00Z", 3).await;
    assert_eq!(
        fired,
        vec![
            at("2026-03-29T01:00:00Z"), // 03:00 CEST, the first instant after the gap
            at("2026-03-30T00:30:00Z"), // 02:30 CEST
            at("2026-03-31T00:30:00Z"),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn fall_back_fires_the_repeated_time_once() {
    // 2026-10-25: Berlin falls back from 03:00 CEST to 02:00 CET; 02:30 happens twice.
    let fired = fires("0 30 2 * * *", "2026-10-24T12:00:00Z", 2).await;
    assert_eq!(fired.len(), 2, "{fired:?}");
    assert_eq!(
        fired[1],
        at("2026-10-26T01:30:00Z"),
        "02:30 CET the day after"
    );
    assert!(
        fired[0] == at("2026-10-25T00:30:00Z") || fired[0] == at("2026-10-25T01:30:00Z"),
        "one of the two 02:30s of the change day: {fired:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_hourly_schedule_follows_real_hours_through_both_changes() {
    let spring = fires("0 0 * * * *", "2026-03-28T23:00:00Z", 1).await;
    assert_eq!(spring.len(), 24, "24 real hours, 24 fires");
    let autumn = fires("0 0 * * * *", "2026-10-24T22:00:00Z", 1).await;
    assert_eq!(autumn.len(), 24);
    for fired in [spring, autumn] {
        assert!(
            fired
                .windows(2)
                .all(|w| w[1].saturating_since(w[0]) == Duration::from_secs(3600)),
            "{fired:?}"
        );
    }
}
