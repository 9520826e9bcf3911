//! Cron fire markers: the instants each schedule fired at, kept for
//! `CRON_FIRE_HORIZON` behind its newest.

use std::collections::{BTreeSet, HashMap};

use crate::backend::{cron_fire_settled, CRON_FIRE_HORIZON};
use crate::event::StepName;
use crate::time::Timestamp;

/// The fire markers of every schedule.
#[derive(Debug, Default)]
pub(super) struct CronMarks {
    /// Fire markers per schedule, kept for `CRON_FIRE_HORIZON` behind the newest.
    pub(super) fires: HashMap<StepName, BTreeSet<Timestamp>>,
}

impl CronMarks {
    /// Whether the instant `at` of `schedule` is settled ([`cron_fire_settled`]).
    pub(super) fn settled(&self, schedule: &StepName, at: Timestamp) -> bool {
        let fires = self.fires.get(schedule);
        let recorded = fires.is_some_and(|f| f.contains(&at));
        let newest = fires.and_then(|f| f.last().copied());
        cron_fire_settled(at, recorded, newest)
    }

    /// Records a fire, and forgets those beyond the horizon behind the newest.
    pub(super) fn record(&mut self, schedule: StepName, at: Timestamp) {
        let fires = self.fires.entry(schedule).or_default();
        fires.insert(at);
        if let Some(&newest) = fires.last() {
            let horizon = newest - CRON_FIRE_HORIZON;
            while fires.first().is_some_and(|&oldest| oldest < horizon) {
                fires.pop_first();
            }
        }
    }

    pub(super) fn last(&self, schedule: &StepName) -> Option<Timestamp> {
        self.fires
            .get(schedule)
            .and_then(|fires| fires.last().copied())
    }
}
