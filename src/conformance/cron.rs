//! Cron: exactly once per fire, across engines and across downtime.

use std::time::Duration;

use super::{advance, epoch_clock, settle, start, Log};
use crate::backend::Backend;
use crate::cron::{CronTick, MissedFires};
use crate::engine::Flow;
use crate::engine::StepContext;
use crate::engine::{Step, StepError};
use crate::testing::TEST_EPOCH;
use crate::time::Timestamp;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// A flow with one cron step that logs `(fire_at, now, label)` for every tick.
fn ticking(
    expression: &str,
    missed: MissedFires,
    label: &'static str,
    log: &Log<(Timestamp, Timestamp, &'static str)>,
) -> Flow {
    let log = log.clone();
    Flow::builder()
        .step(
            Step::cron("ticker", expression)
                .missed_fires(missed)
                .handle(move |ctx: StepContext, tick: CronTick| {
                    let log = log.clone();
                    async move {
                        log.push((tick.fire_at, ctx.now(), label));
                        Ok::<_, StepError>(())
                    }
                }),
        )
        .build()
        .expect("valid flow")
}

fn fire_times(log: &Log<(Timestamp, Timestamp, &'static str)>) -> Vec<Timestamp> {
    log.entries().into_iter().map(|(at, _, _)| at).collect()
}

fn epoch_plus(d: Duration) -> Timestamp {
    TEST_EPOCH + d
}

/// **Contract 6, cron exactly once per fire.** Over a simulated day, a schedule
/// firing every 15 minutes fires exactly 96 times, at exactly 00:15, 00:30, …,
/// 24:00, each instant once, and each tick's handler runs at its instant.
pub async fn cron_fires_each_instant_once_over_a_day<B: Backend + Clone>(backend: B) {
    let log = Log::new();
    let h = start(
        ticking("0 */15 * * * *", MissedFires::Skip, "only", &log),
        backend,
        epoch_clock(),
    )
    .await;
    advance(&h, 24 * HOUR + MINUTE).await;

    let expected: Vec<Timestamp> = (1..=96).map(|i| epoch_plus(15 * MINUTE * i)).collect();
    assert_eq!(
        fire_times(&log),
        expected,
        "the day's fires, in order, each once"
    );
    for (fire_at, ran_at, _) in log.entries() {
        assert_eq!(ran_at, fire_at, "the tick for {fire_at} ran at {ran_at}");
    }
    let m = h.engine().metrics().await.expect("metrics");
    assert_eq!(m.cron_fires, 96);
    assert_eq!(m.processed, 96);
    h.shutdown().await;
}

/// **Contract 6, one fire across engines.** Two engines sharing one backend fire
/// each instant once between them: every tick's handler runs once, and the
/// engines' recorded fires add up to the schedule's.
pub async fn cron_fires_once_across_engines<B: Backend + Clone>(backend: B) {
    let log = Log::new();
    let clock = epoch_clock();
    let one = start(
        ticking("0 */15 * * * *", MissedFires::Skip, "one", &log),
        backend.clone(),
        clock,
    )
    .await;
    let two = start(
        ticking("0 */15 * * * *", MissedFires::Skip, "two", &log),
        backend,
        clock,
    )
    .await;
    tokio::time::sleep(2 * HOUR + MINUTE).await;
    settle(&one).await;
    settle(&two).await;

    let mut fires = fire_times(&log);
    fires.sort();
    let expected: Vec<Timestamp> = (1..=8).map(|i| epoch_plus(15 * MINUTE * i)).collect();
    assert_eq!(
        fires, expected,
        "each instant fires once across both engines"
    );
    let recorded = one.engine().metrics().await.expect("metrics").cron_fires
        + two.engine().metrics().await.expect("metrics").cron_fires;
    assert_eq!(
        recorded, 8,
        "the engines recorded {recorded} fires for 8 instants"
    );
    one.shutdown().await;
    two.shutdown().await;
}

/// Runs an hourly schedule on one engine from 00:00 to 02:01 (fires at 01:00 and
/// 02:00), shuts it down, lets the clock reach 07:31 with no engine running, then
/// starts a second engine with `policy` on the same backend and runs it to 08:01.
/// Returns the fire times the second engine handled right at start, and all of them.
async fn after_downtime<B: Backend + Clone>(
    backend: B,
    policy: MissedFires,
) -> (Vec<Timestamp>, Vec<Timestamp>) {
    let clock = epoch_clock();
    let before = Log::new();
    let first = start(
        ticking("0 0 * * * *", MissedFires::Skip, "first", &before),
        backend.clone(),
        clock,
    )
    .await;
    advance(&first, 2 * HOUR + MINUTE).await;
    assert_eq!(
        fire_times(&before),
        vec![epoch_plus(HOUR), epoch_plus(2 * HOUR)],
        "the first engine fires on schedule"
    );
    first.shutdown().await;

    tokio::time::sleep(5 * HOUR + 30 * MINUTE).await;
    let after = Log::new();
    let second = start(
        ticking("0 0 * * * *", policy, "second", &after),
        backend,
        clock,
    )
    .await;
    settle(&second).await;
    let at_start = fire_times(&after);
    advance(&second, 30 * MINUTE).await;
    let all = fire_times(&after);
    second.shutdown().await;
    (at_start, all)
}

/// **Contract 6, missed fires: skip.** After downtime, a schedule with
/// [`MissedFires::Skip`] fires nothing for the missed instants and resumes on
/// schedule.
pub async fn missed_fires_skip<B: Backend + Clone>(backend: B) {
    let (at_start, all) = after_downtime(backend, MissedFires::Skip).await;
    assert_eq!(at_start, vec![], "skip fires nothing for the downtime");
    assert_eq!(all, vec![epoch_plus(8 * HOUR)], "then resumes on schedule");
}

/// **Contract 6, missed fires: fire once.** After downtime, a schedule with
/// [`MissedFires::FireOnce`] fires once at start, as the latest missed instant,
/// then resumes on schedule.
pub async fn missed_fires_fire_once<B: Backend + Clone>(backend: B) {
    let (at_start, all) = after_downtime(backend, MissedFires::FireOnce).await;
    assert_eq!(
        at_start,
        vec![epoch_plus(7 * HOUR)],
        "fire once stands in for 03:00..07:00 with the latest"
    );
    assert_eq!(all, vec![epoch_plus(7 * HOUR), epoch_plus(8 * HOUR)]);
}

/// **Contract 6, missed fires: fire all up to a bound.** After downtime, a
/// schedule with [`MissedFires::FireAll`] `{ max: 3 }` fires the newest three of
/// the five missed instants, oldest first, then resumes on schedule.
pub async fn missed_fires_fire_all_up_to_a_bound<B: Backend + Clone>(backend: B) {
    let (at_start, all) = after_downtime(backend, MissedFires::FireAll { max: 3 }).await;
    let missed: Vec<Timestamp> = (5..=7).map(|h| epoch_plus(h * HOUR)).collect();
    assert_eq!(
        at_start, missed,
        "the newest three missed instants, oldest first"
    );
    let mut expected = missed;
    expected.push(epoch_plus(8 * HOUR));
    assert_eq!(all, expected);
}
