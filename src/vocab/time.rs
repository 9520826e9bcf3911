//! Wall-clock timestamps and the engine's clock.
//!
//! The engine never reads the system clock directly: it asks its [`Clock`], which
//! maps tokio's monotonic [`tokio::time::Instant`] onto wall time. Under tokio's
//! paused test clock, time therefore moves only when the test says so, and every
//! timestamp the engine writes (due times, cron fires, dead-letter times) follows.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC.
///
/// ```
/// use flowline::Timestamp;
/// let t = Timestamp::from_millis(1_000);
/// assert_eq!(t + std::time::Duration::from_secs(1), Timestamp::from_millis(2_000));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// A timestamp from milliseconds since the Unix epoch.
    pub const fn from_millis(millis: i64) -> Self {
        Timestamp(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// The current system time. Engines use their [`Clock`] instead.
    pub fn system_now() -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Timestamp(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
    }

    /// The time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }

    /// As a `chrono` UTC date-time.
    pub fn to_utc(self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_millis(self.0).unwrap_or_default()
    }

    /// From a `chrono` date-time in any zone.
    pub fn from_chrono<Tz: chrono::TimeZone>(t: &chrono::DateTime<Tz>) -> Self {
        Timestamp(t.timestamp_millis())
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl std::ops::Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, rhs: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(millis(rhs)))
    }
}

impl std::ops::Sub<Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, rhs: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(millis(rhs)))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            self.to_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        )
    }
}

/// The engine's source of time: wall time that advances with tokio's clock.
///
/// [`Clock::system`] starts at the current system time. [`Clock::starting_at`]
/// starts at a chosen instant, which, together with `#[tokio::test(start_paused = true)]`,
/// gives tests a virtual clock that moves only with `tokio::time::advance` or
/// tokio's auto-advance.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    wall_base: Timestamp,
    instant_base: tokio::time::Instant,
}

impl Clock {
    /// A clock that reads the system time now and follows tokio's clock from here.
    pub fn system() -> Self {
        Self::starting_at(Timestamp::system_now())
    }

    /// A clock whose current time is `start`, advancing with tokio's clock.
    pub fn starting_at(start: Timestamp) -> Self {
        Clock {
            wall_base: start,
            instant_base: tokio::time::Instant::now(),
        }
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        self.wall_base + self.instant_base.elapsed()
    }

    /// The tokio instant at which the wall clock reads `at`.
    pub fn instant_at(&self, at: Timestamp) -> tokio::time::Instant {
        let offset = at.saturating_since(self.wall_base);
        self.instant_base + offset
    }

    /// Sleeps until the clock reads `at` (returns at once if it already has).
    pub async fn sleep_until(&self, at: Timestamp) {
        tokio::time::sleep_until(self.instant_at(at)).await;
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}
