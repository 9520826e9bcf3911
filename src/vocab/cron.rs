//! Cron schedules (parsed by `croner`, read in an IANA time zone) and missed-fire policy.

use std::fmt;

use chrono::TimeZone;
use croner::parser::{CronParser, Seconds};
use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::time::Timestamp;

/// A cron expression could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// The expression does not parse.
    #[error("invalid cron expression {expression:?}: {reason}")]
    Expression {
        /// The expression as given.
        expression: String,
        /// The parser's explanation.
        reason: String,
    },
    /// The time zone is not an IANA zone name.
    #[error("unknown time zone {0:?} (expected an IANA name such as \"Europe/Berlin\")")]
    TimeZone(String),
}

/// A parsed cron schedule in a time zone.
///
/// Six fields, seconds first: `sec min hour day-of-month month day-of-week`.
/// Across a daylight-saving change, a wall time that does not exist (spring
/// forward) fires at the first instant after the gap, and a wall time that occurs
/// twice (fall back) fires once.
///
/// ```
/// use flowline::{Schedule, Timestamp};
/// let schedule = Schedule::parse("0 30 9 * * MON-FRI", "Europe/Berlin").unwrap();
/// let monday_8am_utc = Timestamp::from_millis(1_767_600_000_000); // 2026-01-05 08:00 UTC
/// let next = schedule.next_after(monday_8am_utc).unwrap();
/// assert_eq!(next.to_string(), "2026-01-05T08:30:00.000Z"); // 09:30 in Berlin
/// assert!(Schedule::parse("61 * * * * *", "UTC").is_err());
/// ```
#[derive(Clone)]
pub struct Schedule {
    cron: croner::Cron,
    zone: chrono_tz::Tz,
    expression: String,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedule")
            .field("expression", &self.expression)
            .field("zone", &self.zone.name())
            .finish()
    }
}

impl Schedule {
    /// Parses a six-field expression (seconds first) read in the IANA zone `zone`.
    ///
    /// # Errors
    /// [`CronError`] naming the expression or zone and what is wrong with it.
    pub fn parse(expression: &str, zone: &str) -> Result<Self, CronError> {
        let zone: chrono_tz::Tz = zone
            .parse()
            .map_err(|_| CronError::TimeZone(zone.to_string()))?;
        if expression.split_whitespace().count() != 6 {
            return Err(CronError::Expression {
                expression: expression.to_string(),
                reason: "expected six fields: sec min hour day-of-month month day-of-week"
                    .to_string(),
            });
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .build()
            .parse(expression)
            .map_err(|err| CronError::Expression {
                expression: expression.to_string(),
                reason: err.to_string(),
            })?;
        Ok(Schedule {
            cron,
            zone,
            expression: expression.to_string(),
        })
    }

    /// The expression as given.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The time zone's IANA name.
    pub fn zone(&self) -> &str {
        self.zone.name()
    }

    /// The first fire strictly after `after`, if the schedule ever fires again.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let start = self.zone.timestamp_millis_opt(after.as_millis()).single()?;
        self.cron
            .find_next_occurrence(&start, false)
            .ok()
            .map(|t| Timestamp::from_chrono(&t))
    }

    /// The fires in `(after, until]`, oldest first, at most `limit` of the newest.
    pub fn fires_between(
        &self,
        after: Timestamp,
        until: Timestamp,
        limit: usize,
    ) -> Vec<Timestamp> {
        let mut fires = std::collections::VecDeque::new();
        let mut cursor = after;
        while let Some(next) = self.next_after(cursor) {
            if next > until {
                break;
            }
            if fires.len() == limit {
                fires.pop_front();
            }
            if limit > 0 {
                fires.push_back(next);
            }
            cursor = next;
        }
        fires.into()
    }
}

/// What a cron step does about fires that fell while no engine was running.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MissedFires {
    /// Forget them; fire next on schedule. The default.
    #[default]
    Skip,
    /// Fire once now for all of them (as the latest missed fire).
    FireOnce,
    /// Fire each missed one, oldest first, but at most this many (the newest).
    FireAll {
        /// The most missed fires to replay.
        max: usize,
    },
}

impl MissedFires {
    /// Which missed fires in `(last, now]` to run now.
    pub fn select(&self, schedule: &Schedule, last: Timestamp, now: Timestamp) -> Vec<Timestamp> {
        match self {
            MissedFires::Skip => Vec::new(),
            MissedFires::FireOnce => schedule.fires_between(last, now, 1),
            MissedFires::FireAll { max } => schedule.fires_between(last, now, *max),
        }
    }
}

/// The event a cron step receives: which schedule fired, and for which instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronTick {
    /// The name of the cron step.
    pub schedule: String,
    /// The scheduled fire time (not the time the handler happened to run).
    pub fire_at: Timestamp,
}

impl Event for CronTick {
    const TOPIC: &'static str = "cron.tick";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        Timestamp::from_chrono(&chrono::DateTime::parse_from_rfc3339(s).unwrap())
    }

    #[test]
    fn rejects_bad_expressions_and_zones() {
        assert!(matches!(
            Schedule::parse("* * * *", "UTC"),
            Err(CronError::Expression { .. })
        ));
        assert!(matches!(
            Schedule::parse("0 0 25 * * *", "UTC"),
            Err(CronError::Expression { .. })
        ));
        assert!(matches!(
            Schedule::parse("0 0 * * * *", "Mars/Olympus"),
            Err(CronError::TimeZone(_))
        ));
        assert!(matches!(
            Schedule::parse("", "UTC"),
            Err(CronError::Expression { .. })
        ));
    }

    #[test]
    fn spring_forward_gap_fires_once_after_the_gap() {
        // Berlin, 2026-03-29: 02:00 jumps to 03:00; 02:30 does not exist that day.
        let s = Schedule::parse("0 30 2 * * *", "Europe/Berlin").unwrap();
        let fires = s.fires_between(at("2026-03-28T12:00:00Z"), at("2026-03-30T12:00:00Z"), 10);
        assert_eq!(
            fires,
            vec![at("2026-03-29T01:00:00Z"), at("2026-03-30T00:30:00Z")],
            "03:00 CEST = 01:00 UTC on the gap day, 02:30 CEST = 00:30 UTC the next"
        );
    }

    #[test]
    fn fall_back_overlap_fires_once() {
        // Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
        let s = Schedule::parse("0 30 2 * * *", "Europe/Berlin").unwrap();
        let fires = s.fires_between(at("2026-10-24T12:00:00Z"), at("2026-10-25T12:00:00Z"), 10);
        assert_eq!(fires.len(), 1, "fired {fires:?}");
    }

    #[test]
    fn hourly_schedule_follows_real_hours_across_fall_back() {
        // The fall-back day has 25 real hours, so an hourly schedule fires 25 times.
        let s = Schedule::parse("0 0 * * * *", "Europe/Berlin").unwrap();
        let fires = s.fires_between(at("2026-10-24T22:00:00Z"), at("2026-10-25T23:00:00Z"), 100);
        assert_eq!(fires.len(), 25);
        assert!(fires
            .windows(2)
            .all(|w| w[1].saturating_since(w[0]).as_secs() == 3600));
    }

    #[test]
    fn missed_fire_policies() {
        let s = Schedule::parse("0 * * * * *", "UTC").unwrap();
        let last = at("2026-01-01T00:00:00Z");
        let now = at("2026-01-01T00:10:30Z");
        assert!(MissedFires::Skip.select(&s, last, now).is_empty());
        assert_eq!(
            MissedFires::FireOnce.select(&s, last, now),
            vec![at("2026-01-01T00:10:00Z")]
        );
        let all = MissedFires::FireAll { max: 3 }.select(&s, last, now);
        assert_eq!(
            all,
            vec![
                at("2026-01-01T00:08:00Z"),
                at("2026-01-01T00:09:00Z"),
                at("2026-01-01T00:10:00Z")
            ]
        );
    }
}
