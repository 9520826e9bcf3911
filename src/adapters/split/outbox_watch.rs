//! When a relay pass may find work in the outbox, so that claims skip the
//! passes that would not.
//!
//! A pass claims from the store (on SQLite, a turn of its one writer, behind
//! the commit in progress), so a pass on every claim doubled a claim's time
//! while the broker held the work. A pass is due when this process wrote
//! into the outbox since the last pass that emptied it, when the store said
//! a delivery comes due (a delay ends, a relay's lease runs out), or when
//! [`RELAY_AT_LEAST_EVERY`] has passed: that one finds what other processes
//! wrote and left behind.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::backend::ClaimRequest;
use crate::event::StepName;
use crate::time::Timestamp;

/// The longest a claim goes without a relay pass, in engine time.
pub(super) const RELAY_AT_LEAST_EVERY: Duration = Duration::from_millis(100);

/// What the relay knows of the outbox.
#[derive(Debug, Default)]
pub(super) struct OutboxWatch {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Writes into the outbox whose step and due time are not known here
    /// (a FIFO group's next delivery made ready, rows given back, a
    /// replay), counted.
    untimed: u64,
    /// The count of those that the last pass which left nothing behind had
    /// seen: later ones may be waiting.
    relayed_up_to: u64,
    /// Per step, when the earliest delivery written here and not yet
    /// relayed comes due.
    steps: HashMap<StepName, Timestamp>,
    /// Writes with a step and due time, counted: one during a pass keeps its
    /// step's due time.
    timed: u64,
    /// When the store said its next delivery comes due (a delay ends, a
    /// relay's lease runs out), for any step.
    store_next_due: Option<Timestamp>,
    last_pass: Option<Timestamp>,
}

/// A pass about to run: what it had seen when it started.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pass {
    untimed: u64,
    timed: u64,
}

impl OutboxWatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update completes before the guard drops: a poisoned state is whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a write into the outbox whose step and due time are not known.
    pub(super) fn wrote(&self) {
        self.lock().untimed += 1;
    }

    /// Notes deliveries written into the outbox: per step, the earliest due
    /// time.
    pub(super) fn wrote_due(&self, due: impl IntoIterator<Item = (StepName, Timestamp)>) {
        let mut state = self.lock();
        state.timed += 1;
        for (step, at) in due {
            let entry = state.steps.entry(step).or_insert(at);
            *entry = (*entry).min(at);
        }
    }

    /// When the earliest delivery known to wait in the outbox comes due.
    pub(super) fn next_due(&self) -> Option<Timestamp> {
        let state = self.lock();
        state
            .steps
            .values()
            .copied()
            .chain(state.store_next_due)
            .min()
    }

    /// A pass to run at `now` for the steps `request` asks for, or `None` if
    /// it would find nothing.
    pub(super) fn pass_due(&self, request: &ClaimRequest) -> Option<Pass> {
        let now = request.now;
        let state = self.lock();
        let due = state.untimed > state.relayed_up_to
            || state.store_next_due.is_some_and(|at| at <= now)
            || request
                .steps
                .iter()
                .any(|s| s.max > 0 && state.steps.get(&s.step).is_some_and(|at| *at <= now))
            || state
                .last_pass
                .is_none_or(|at| now >= at + RELAY_AT_LEAST_EVERY || now < at);
        due.then_some(Pass {
            untimed: state.untimed,
            timed: state.timed,
        })
    }

    /// Records a pass for `request`'s steps: how many of each it took (a step
    /// that got all it asked for may have more due) and when the store said
    /// its next delivery comes due.
    pub(super) fn passed(
        &self,
        pass: Pass,
        request: &ClaimRequest,
        taken: impl Fn(&StepName) -> usize,
        store_next_due: Option<Timestamp>,
    ) {
        let mut state = self.lock();
        let written_meanwhile = state.timed != pass.timed;
        let mut any_full = false;
        for s in request.steps.iter().filter(|s| s.max > 0) {
            if taken(&s.step) >= s.max {
                any_full = true;
                state.steps.insert(s.step.clone(), request.now);
            } else if !written_meanwhile {
                state.steps.remove(&s.step);
            }
        }
        if !any_full {
            state.relayed_up_to = state.relayed_up_to.max(pass.untimed);
        }
        state.store_next_due = store_next_due;
        state.last_pass = Some(request.now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::StepClaim;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn step(name: &str) -> StepName {
        StepName::new(name).unwrap()
    }

    fn request(now: i64, steps: &[(&str, usize)]) -> ClaimRequest {
        ClaimRequest {
            now: at(now),
            steps: steps
                .iter()
                .map(|(name, max)| StepClaim {
                    step: step(name),
                    max: *max,
                    lease: Duration::from_secs(30),
                })
                .collect(),
            tenant_quantum: 16,
        }
    }

    /// Runs the pass `pass_due` allows for `request`, taking `took` of each
    /// step; false if none was due.
    fn pass(watch: &OutboxWatch, request: &ClaimRequest, took: usize, next: Option<i64>) -> bool {
        match watch.pass_due(request) {
            Some(pass) => {
                watch.passed(pass, request, |_| took, next.map(at));
                true
            }
            None => false,
        }
    }

    #[test]
    fn a_pass_is_due_after_a_write_a_due_time_or_a_while() {
        let watch = OutboxWatch::default();
        assert!(
            pass(&watch, &request(0, &[("a", 10)]), 0, Some(50)),
            "never passed"
        );
        assert!(
            !pass(&watch, &request(10, &[("a", 10)]), 0, None),
            "nothing new"
        );
        watch.wrote_due([(step("a"), at(10))]);
        assert!(
            pass(&watch, &request(10, &[("a", 10)]), 10, Some(50)),
            "a write"
        );
        assert!(
            pass(&watch, &request(11, &[("a", 10)]), 3, Some(50)),
            "it took all it asked for"
        );
        assert!(!pass(&watch, &request(49, &[("a", 10)]), 0, None));
        assert!(
            pass(&watch, &request(50, &[("a", 10)]), 1, None),
            "the store's due time"
        );
        watch.wrote_due([(step("b"), at(10_000))]);
        assert!(
            !pass(&watch, &request(149, &[("b", 10)]), 0, None),
            "not due yet"
        );
        assert!(
            pass(&watch, &request(150, &[("b", 10)]), 0, None),
            "a while"
        );
        watch.wrote();
        assert!(
            pass(&watch, &request(151, &[("b", 10)]), 0, None),
            "an untimed write"
        );
        assert!(!pass(&watch, &request(152, &[("b", 10)]), 0, None));
    }

    #[test]
    fn a_pass_for_one_step_leaves_another_step_s_writes_due() {
        let watch = OutboxWatch::default();
        assert!(pass(&watch, &request(0, &[("a", 10)]), 0, None));
        watch.wrote_due([(step("a"), at(1)), (step("b"), at(1))]);
        assert!(pass(&watch, &request(1, &[("a", 10), ("b", 0)]), 2, None));
        assert!(
            !pass(&watch, &request(2, &[("a", 10)]), 0, None),
            "a's are relayed"
        );
        assert!(
            pass(&watch, &request(2, &[("b", 10)]), 4, None),
            "b had no room, now it has"
        );
        assert_eq!(watch.next_due(), None);
    }

    #[test]
    fn writes_during_a_pass_keep_their_due_times() {
        let watch = OutboxWatch::default();
        let req = request(0, &[("a", 10)]);
        let pass_ = watch.pass_due(&req).expect("due");
        watch.wrote_due([(step("a"), at(0))]);
        watch.passed(pass_, &req, |_| 0, None);
        assert!(
            pass(&watch, &request(1, &[("a", 10)]), 1, None),
            "the write is still due"
        );
    }
}
