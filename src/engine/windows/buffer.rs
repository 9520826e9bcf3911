//! One key's open window as it is stored: how many events it holds, and
//! when it closes (the events are stored beside it, one key each). Pure: no
//! I/O, no clock of its own.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// When a window closes and its events run together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Spec {
    /// Debounce: close once no event came for this long.
    pub(crate) quiet: Option<Duration>,
    /// Close this long after the window's first event at the latest.
    pub(crate) max_wait: Duration,
    /// Close as soon as it holds this many events.
    pub(crate) max_events: usize,
}

/// A window's count and times (JSON in the tenant's state). Every event
/// added reads and rewrites it, so concurrent additions are isolated by it;
/// the events themselves are written once each, beside it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Window {
    /// When its first event arrived, in ms.
    pub(crate) first: i64,
    /// When its latest event arrived, in ms.
    pub(crate) last: i64,
    /// The pending tick that will look at it: only that one may close it
    /// (ticks cannot be cancelled, so older ones find another id and stop).
    pub(crate) tick: u64,
    /// When that tick is due, in ms.
    pub(crate) tick_at: i64,
    /// How many events it holds.
    pub(crate) count: usize,
}

impl Window {
    /// Adds an event that arrived at `now`.
    pub(crate) fn add(&mut self, now: Timestamp) {
        if self.count == 0 {
            self.first = now.as_millis();
        }
        self.last = now.as_millis();
        self.count += 1;
    }

    /// When the window closes, unless it fills first.
    pub(crate) fn closes_at(&self, spec: &Spec) -> Timestamp {
        let by_wait = self.first.saturating_add(millis(spec.max_wait));
        let at = match spec.quiet {
            Some(quiet) => self.last.saturating_add(millis(quiet)).min(by_wait),
            None => by_wait,
        };
        Timestamp::from_millis(at)
    }

    /// Whether it holds as many events as it may.
    pub(crate) fn is_full(&self, spec: &Spec) -> bool {
        self.count >= spec.max_events
    }

    /// Whether a tick is pending and not yet overdue at `now`. A tick that
    /// is overdue may be retrying or dead-lettered: a new one takes over.
    pub(crate) fn tick_pending(&self, now: Timestamp) -> bool {
        self.tick != 0 && self.tick_at >= now.as_millis()
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(quiet: Option<u64>, max_wait: u64, max_events: usize) -> Spec {
        Spec {
            quiet: quiet.map(Duration::from_millis),
            max_wait: Duration::from_millis(max_wait),
            max_events,
        }
    }

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn window(arrivals: &[i64]) -> Window {
        let mut w = Window::default();
        for t in arrivals {
            w.add(at(*t));
        }
        w
    }

    #[test]
    fn a_debounce_closes_after_the_quiet_period_or_the_maximum_wait() {
        let debounce = spec(Some(100), 1_000, 1_000);
        assert_eq!(window(&[0]).closes_at(&debounce), at(100));
        assert_eq!(window(&[0, 50, 120]).closes_at(&debounce), at(220));
        // Events keep coming every 50 ms: the maximum wait closes it.
        let busy: Vec<i64> = (0..40).map(|i| i * 50).collect();
        assert_eq!(window(&busy).closes_at(&debounce), at(1_000));
    }

    #[test]
    fn a_batch_closes_when_full_or_after_the_maximum_wait() {
        let batch = spec(None, 500, 3);
        let w = window(&[10, 20]);
        assert_eq!(w.closes_at(&batch), at(510));
        assert!(!w.is_full(&batch));
        assert!(window(&[10, 20, 30]).is_full(&batch));
    }

    #[test]
    fn an_overdue_tick_is_no_longer_pending() {
        let mut w = window(&[0]);
        assert!(!w.tick_pending(at(0)));
        w.tick = 7;
        w.tick_at = 100;
        assert!(w.tick_pending(at(100)));
        assert!(!w.tick_pending(at(101)));
    }
}
