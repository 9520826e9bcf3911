//! One key's budget as it is stored, and the decisions taken on it: a rate's
//! schedule (GCRA), the executions holding a concurrency slot, and a quota set
//! at run time. Pure: no I/O, no clock of its own.

use serde::{Deserialize, Serialize};

use super::limits::Quota;
use crate::time::Timestamp;

/// How long a slot is assumed to be held before any was given back, in ms.
const DEFAULT_HOLD_MS: i64 = 100;

/// How many times the mean hold one hold counts for at most.
const OUTLIER: i64 = 4;

/// How far ahead a held-back execution is told to come back at the most, in
/// ms: one further back in the line asks again then. A quota raised at run
/// time so reaches a long backlog within this, and a waiter's turn is never
/// more than this stale.
pub(crate) const HORIZON_MS: i64 = 30_000;

const NANOS_PER_MILLI: i64 = 1_000_000;

/// Whether a held-back caller waits in the line of held-back deliveries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// A delivery, deferred to its turn.
    InLine,
    /// An API call, told when to try again.
    Elsewhere,
}

/// One key's budget (JSON in the store; absent means untouched).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Budget {
    /// GCRA's theoretical arrival time, in ns since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tat: Option<i64>,
    /// The slots held, per engine: one entry per engine, however many
    /// executions it runs, so a budget stays small.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) held: Vec<Slots>,
    /// The mean time a slot was held, in ms (an exponential average).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hold_ms: Option<i64>,
    /// When the next held-back execution is told to come back, in ns: the
    /// end of the line of those waiting for a turn, so they come back one per
    /// turn rather than all at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next_free: Option<i64>,
    /// A quota set at run time for this key, replacing the declared one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) quota: Option<Quota>,
    /// Until when, in ms, the key was last found out of budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    throttled_until: Option<i64>,
    /// The deliveries held back and not yet back, by the whole second (in
    /// ms) by which they are told to come back: at most one entry per second
    /// of [`HORIZON_MS`], so it stays small however long the line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    line: Vec<(i64, u32)>,
    /// The oldest delivery held back by the slots, while it is away: how old
    /// (ms, see [`Holder::age`]) and when it comes back (ms). It is told to
    /// come back first, not at the end of the line, so that younger work
    /// cannot push it back again and again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    eldest: Option<(i64, i64)>,
}

/// Who takes a slot: an engine (its random id), until when at the latest it
/// may hold it, in ms (the end of the lease of the delivery it runs), and how
/// old the work asking is, in ms (when it was first due: its place in line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Holder {
    pub(crate) engine: u64,
    pub(crate) until: i64,
    pub(crate) age: i64,
}

/// The slots one engine holds: its id, how many, and until when at the
/// latest (the latest lease end of its executions, in ms). An engine that
/// vanished gives its slots back when that time passes, as it gives back its
/// deliveries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Slots(pub(crate) u64, pub(crate) u32, pub(crate) i64);

impl Budget {
    /// Slots held by engines whose hold has not run out at `now`.
    pub(crate) fn running(&self, now: Timestamp) -> u32 {
        self.held
            .iter()
            .filter(|s| s.2 > now.as_millis())
            .map(|s| s.1)
            .sum()
    }

    /// The quota in force under a limit declared with `declared`: the one
    /// set at run time for this key if it is of the same kind (a deploy may
    /// have changed the kind), else the declared one; and whether it was set.
    pub(crate) fn quota_in_force(&self, declared: Quota) -> (Quota, bool) {
        match self.quota.filter(|q| q.kind() == declared.kind()) {
            Some(set) => (set, true),
            None => (declared, false),
        }
    }

    /// Takes one unit of `quota` at `now` for `holder` (concurrency only), or
    /// says when to ask again: a held-back delivery's turn in the line of
    /// those waiting (see [`HORIZON_MS`]).
    pub(crate) fn take(
        &mut self,
        quota: Quota,
        holder: Option<Holder>,
        now: Timestamp,
    ) -> Result<(), Timestamp> {
        self.take_as(quota, holder, now, Waiting::InLine)
    }

    /// [`take`](Self::take) for a caller who does not wait in the line (an
    /// API call answered `429`): says when the budget allows one, however far
    /// ahead, and hands out no turn.
    pub(crate) fn take_or_say_when(
        &mut self,
        quota: Quota,
        holder: Option<Holder>,
        now: Timestamp,
    ) -> Result<(), Timestamp> {
        self.take_as(quota, holder, now, Waiting::Elsewhere)
    }

    fn take_as(
        &mut self,
        quota: Quota,
        holder: Option<Holder>,
        now: Timestamp,
        waiting: Waiting,
    ) -> Result<(), Timestamp> {
        let result = match quota {
            Quota::Rate {
                count,
                period,
                burst,
            } => self.take_rate(count, period, burst, now, waiting),
            Quota::Concurrency { max } => match holder {
                Some(holder) => self.take_slot(max, holder, now, waiting),
                None => Ok(()),
            },
        };
        if let Err(at) = result {
            self.throttled_until = Some(at.as_millis().max(self.throttled_until.unwrap_or(0)));
            if waiting == Waiting::InLine {
                self.count_in_line(at, now);
            }
        }
        result
    }

    /// GCRA: executions are spaced `period / count` apart (the emission
    /// interval `t`), and one may start while the schedule runs at most
    /// `burst * t` ahead of now.
    fn take_rate(
        &mut self,
        count: u32,
        period: std::time::Duration,
        burst: u32,
        now: Timestamp,
        waiting: Waiting,
    ) -> Result<(), Timestamp> {
        let now_ns = now.as_millis().saturating_mul(NANOS_PER_MILLI);
        let period_ns = i64::try_from(period.as_nanos()).unwrap_or(i64::MAX);
        let t = (period_ns / i64::from(count.max(1))).max(1);
        let tolerance = t.saturating_mul(i64::from(burst.max(1)));
        let tat = self.tat.unwrap_or(now_ns).max(now_ns);
        let next = tat.saturating_add(t);
        if next - now_ns > tolerance {
            return Err(self.queue_up(next - tolerance, t, now_ns, waiting));
        }
        self.tat = Some(next);
        Ok(())
    }

    /// Puts a held-back execution at the end of the line: it comes back at its
    /// turn, no earlier than `allowed_ns`, each turn `spacing_ns` after the
    /// one before; a turn beyond the horizon is not taken, and the execution
    /// asks again at the horizon.
    fn queue_up(
        &mut self,
        allowed_ns: i64,
        spacing_ns: i64,
        now_ns: i64,
        waiting: Waiting,
    ) -> Timestamp {
        let turn = allowed_ns.max(self.next_free.unwrap_or(i64::MIN));
        let horizon = now_ns + HORIZON_MS * NANOS_PER_MILLI;
        let at_ns = if waiting == Waiting::Elsewhere {
            allowed_ns
        } else if turn > horizon {
            horizon
        } else {
            self.next_free = Some(turn.saturating_add(spacing_ns));
            turn
        };
        // Rounded up: a millisecond early would be refused again.
        let at_ms = (at_ns + NANOS_PER_MILLI - 1) / NANOS_PER_MILLI;
        Timestamp::from_millis(at_ms.max(now_ns / NANOS_PER_MILLI + 1))
    }

    /// Counts a delivery held back until `at` among those waiting.
    fn count_in_line(&mut self, at: Timestamp, now: Timestamp) {
        let now_ms = now.as_millis();
        self.line.retain(|(back_by, _)| *back_by > now_ms);
        // Rounded up to the second: counted until then at the latest.
        let back_by = (at.as_millis() + 999).div_euclid(1000) * 1000;
        match self.line.binary_search_by_key(&back_by, |(t, _)| *t) {
            Ok(i) => self.line[i].1 = self.line[i].1.saturating_add(1),
            Err(i) => self.line.insert(i, (back_by, 1)),
        }
    }

    /// How many deliveries were held back and are not due back yet (to the
    /// second): the key's queue.
    pub(crate) fn queued(&self, now: Timestamp) -> u32 {
        let now_ms = now.as_millis();
        self.line
            .iter()
            .filter(|(back_by, _)| *back_by > now_ms)
            .map(|(_, n)| *n)
            .fold(0, u32::saturating_add)
    }

    /// Forgets the schedule and the line, for a quota set at run time: the
    /// new quota starts afresh rather than behind the old one's schedule.
    pub(crate) fn restart_schedule(&mut self) {
        self.tat = None;
        self.next_free = None;
        self.throttled_until = None;
    }

    fn take_slot(
        &mut self,
        max: u32,
        holder: Holder,
        now: Timestamp,
        waiting: Waiting,
    ) -> Result<(), Timestamp> {
        let now_ms = now.as_millis();
        self.held.retain(|s| s.2 > now_ms && s.1 > 0);
        let running: u32 = self.held.iter().map(|s| s.1).sum();
        if running < max {
            if self.eldest.is_some_and(|(age, _)| age >= holder.age) {
                self.eldest = None;
            }
            match self.held.iter_mut().find(|s| s.0 == holder.engine) {
                Some(slots) => {
                    slots.1 += 1;
                    slots.2 = slots.2.max(holder.until);
                }
                None => self.held.push(Slots(holder.engine, 1, holder.until)),
            }
            return Ok(());
        }
        // Full. Slots free about once per mean hold shared among them, so
        // waiters come back one by one at that spacing (and by the time the
        // first engine's hold runs out at the latest): they ask about as
        // often as slots free, however many wait.
        let hold = self.hold_ms.unwrap_or(DEFAULT_HOLD_MS).max(1);
        let spacing = (hold / i64::from(max)).max(1);
        let run_out = self.held.iter().map(|s| s.2).min().unwrap_or(now_ms);
        let allowed = (now_ms + spacing).min(run_out).max(now_ms + 1);
        // A waiter not back within a horizon of its turn is gone (replayed,
        // cancelled, its engine stopped): it is the oldest no longer.
        let eldest = self
            .eldest
            .filter(|(_, back)| back.saturating_add(HORIZON_MS) >= now_ms);
        if waiting == Waiting::InLine && eldest.is_none_or(|(age, _)| holder.age <= age) {
            // The oldest waiter comes back first, when a slot should free,
            // rather than at the end of the line again and again while
            // younger work keeps coming.
            self.eldest = Some((holder.age, allowed));
            let behind = (allowed + spacing).saturating_mul(NANOS_PER_MILLI);
            self.next_free = Some(self.next_free.map_or(behind, |next| next.max(behind)));
            return Err(Timestamp::from_millis(allowed));
        }
        self.eldest = eldest;
        Err(self.queue_up(
            allowed * NANOS_PER_MILLI,
            spacing * NANOS_PER_MILLI,
            now_ms * NANOS_PER_MILLI,
            waiting,
        ))
    }

    /// Records that `engine` holds at least `count` slots until `until` (ms):
    /// what it still runs, whether or not its hold had run out meanwhile.
    pub(crate) fn renew(&mut self, engine: u64, count: u32, until: i64) {
        match self.held.iter_mut().find(|s| s.0 == engine) {
            Some(slots) => {
                slots.1 = slots.1.max(count);
                slots.2 = slots.2.max(until);
            }
            None if count > 0 => self.held.push(Slots(engine, count, until)),
            None => {}
        }
    }

    /// Gives back `count` slots of `engine`, each held `held_ms` (on
    /// average), as far as it holds them; true if it held any.
    pub(crate) fn give_back(&mut self, engine: u64, count: u32, held_ms: i64) -> bool {
        let Some(at) = self.held.iter().position(|s| s.0 == engine && s.1 > 0) else {
            return false;
        };
        self.held[at].1 = self.held[at].1.saturating_sub(count);
        if self.held[at].1 == 0 {
            self.held.swap_remove(at);
        }
        // One long hold (an execution that met a clock jump, a timeout) moves
        // the mean at most to a few times what it was: waiters are spaced by
        // it, and an outlier would keep slots idle while the mean recovered.
        // A lasting change still shows within a few holds.
        let sample = held_ms.max(0);
        self.hold_ms = Some(match self.hold_ms {
            Some(mean) => {
                let sample = sample.min(mean.max(DEFAULT_HOLD_MS).saturating_mul(OUTLIER));
                (mean * 4 + sample) / 5
            }
            None => sample,
        });
        true
    }

    /// Whether the key was out of budget at `now`, and until when.
    pub(crate) fn throttled_until(&self, now: Timestamp) -> Option<Timestamp> {
        self.throttled_until
            .filter(|until| *until > now.as_millis())
            .map(Timestamp::from_millis)
    }

    /// When the rate allows the next execution (now, if it does now).
    pub(crate) fn next_allowed(&self, quota: Quota, now: Timestamp) -> Timestamp {
        let mut probe = self.clone();
        match probe.take_or_say_when(
            quota,
            Some(Holder {
                engine: u64::MAX,
                until: i64::MAX,
                age: now.as_millis(),
            }),
            now,
        ) {
            Ok(()) => now,
            Err(at) => at,
        }
    }

    /// Nothing worth keeping: no schedule ahead of `now`, no holder, no quota.
    pub(crate) fn is_spent(&self, now: Timestamp) -> bool {
        let now_ns = now.as_millis().saturating_mul(NANOS_PER_MILLI);
        self.tat.is_none_or(|tat| tat <= now_ns)
            && self.running(now) == 0
            && self.quota.is_none()
            && self.throttled_until(now).is_none()
            && self.queued(now) == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn a_rate_spaces_executions_and_says_when_the_next_may_start() {
        let mut budget = Budget::default();
        let quota = Quota::rate(10, Duration::from_secs(1));
        assert_eq!(budget.take(quota, None, at(1_000)), Ok(()));
        assert_eq!(budget.take(quota, None, at(1_000)), Err(at(1_100)));
        // The 1.1 s turn is taken; the next one waiting gets the one after.
        assert_eq!(budget.take(quota, None, at(1_099)), Err(at(1_200)));
        assert_eq!(budget.take(quota, None, at(1_100)), Ok(()));
        assert_eq!(budget.throttled_until(at(1_050)), Some(at(1_200)));
    }

    #[test]
    fn held_back_executions_come_back_one_per_turn_within_the_horizon() {
        let mut budget = Budget::default();
        let quota = Quota::rate(10, Duration::from_secs(1));
        assert_eq!(budget.take(quota, None, at(0)), Ok(()));
        let turns: Vec<Timestamp> = (0..3)
            .map(|_| budget.take(quota, None, at(0)).unwrap_err())
            .collect();
        assert_eq!(turns, vec![at(100), at(200), at(300)]);
        // A line longer than the horizon: the rest ask again at the horizon.
        let slow = Quota::rate(1, Duration::from_secs(3600));
        let mut budget = Budget::default();
        assert_eq!(budget.take(slow, None, at(0)), Ok(()));
        assert_eq!(budget.take(slow, None, at(0)), Err(at(HORIZON_MS)));
        assert_eq!(budget.take(slow, None, at(0)), Err(at(HORIZON_MS)));
        budget.restart_schedule();
        assert_eq!(
            budget.take(Quota::rate(10, Duration::from_secs(1)), None, at(1)),
            Ok(())
        );
    }

    #[test]
    fn a_caller_who_does_not_wait_in_line_is_told_the_real_time() {
        let slow = Quota::rate(1, Duration::from_secs(3600));
        let mut budget = Budget::default();
        assert_eq!(budget.take_or_say_when(slow, None, at(0)), Ok(()));
        assert_eq!(
            budget.take_or_say_when(slow, None, at(0)),
            Err(at(3_600_000))
        );
        // No turn was handed out: a delivery still gets the first one.
        assert_eq!(budget.take(slow, None, at(0)), Err(at(HORIZON_MS)));
        assert_eq!(budget.next_allowed(slow, at(10)), at(3_600_000));
    }

    #[test]
    fn a_burst_is_used_up_front_then_refilled_at_the_rate() {
        let mut budget = Budget::default();
        let quota = Quota::Rate {
            count: 2,
            period: Duration::from_secs(1),
            burst: 3,
        };
        for _ in 0..3 {
            assert_eq!(budget.take(quota, None, at(0)), Ok(()));
        }
        assert_eq!(budget.take(quota, None, at(0)), Err(at(500)));
        assert_eq!(budget.take(quota, None, at(500)), Ok(()));
        // The line's next turn was handed out already (at 500 ms).
        assert_eq!(budget.take(quota, None, at(500)), Err(at(1_000)));
    }

    #[test]
    fn the_queue_counts_deliveries_held_back_until_their_turn() {
        let mut budget = Budget::default();
        let quota = Quota::Rate {
            count: 1,
            period: Duration::from_secs(1),
            burst: 1,
        };
        assert_eq!(budget.take(quota, None, at(0)), Ok(()));
        let turns: Vec<Timestamp> = (0..3)
            .map(|_| budget.take(quota, None, at(0)).unwrap_err())
            .collect();
        assert_eq!(turns, [at(1_000), at(2_000), at(3_000)]);
        assert_eq!(budget.queued(at(0)), 3);
        // An API call told to come back is not in the line.
        assert!(budget.take_or_say_when(quota, None, at(0)).is_err());
        assert_eq!(budget.queued(at(0)), 3);
        // Each leaves the count once its turn has come.
        assert_eq!(budget.queued(at(1_000)), 2);
        assert_eq!(budget.queued(at(3_000)), 0);
        assert!(!budget.is_spent(at(2_500)), "a budget with a queue is kept");
    }

    fn engine(engine: u64, until: i64) -> Option<Holder> {
        aged(engine, until, 0)
    }

    /// A holder asking for work first due at `age` ms.
    fn aged(engine: u64, until: i64, age: i64) -> Option<Holder> {
        Some(Holder { engine, until, age })
    }

    #[test]
    fn slots_are_held_until_given_back_or_their_hold_runs_out() {
        let mut budget = Budget::default();
        let quota = Quota::concurrency(2);
        assert_eq!(budget.take(quota, engine(1, 60_000), at(0)), Ok(()));
        assert_eq!(budget.take(quota, engine(2, 60_000), at(0)), Ok(()));
        let wait = budget.take(quota, engine(1, 60_000), at(0)).unwrap_err();
        assert!(wait > at(0) && wait <= at(60_000), "{wait}");
        assert!(budget.give_back(1, 1, 40));
        assert!(!budget.give_back(1, 1, 40), "a slot is given back once");
        assert_eq!(budget.take(quota, engine(3, 60_000), at(40)), Ok(()));
        assert_eq!(budget.running(at(41)), 2);
        // The engines vanished: their slots free when their holds run out.
        assert_eq!(budget.running(at(60_001)), 0);
        assert_eq!(budget.take(quota, engine(4, 120_000), at(60_001)), Ok(()));
        assert_eq!(budget.take(quota, engine(4, 120_000), at(60_001)), Ok(()));
        assert_eq!(budget.held.len(), 1, "one entry per engine");
    }

    #[test]
    fn waiters_for_a_slot_come_back_spread_out() {
        let mut budget = Budget::default();
        let quota = Quota::concurrency(1);
        assert_eq!(budget.take(quota, engine(1, 60_000), at(0)), Ok(()));
        let first = budget.take(quota, aged(2, 60_000, 10), at(0)).unwrap_err();
        let second = budget.take(quota, aged(2, 60_000, 20), at(0)).unwrap_err();
        assert!(second > first, "{first} then {second}");
    }

    #[test]
    fn the_oldest_waiter_comes_back_first_however_often_it_is_refused() {
        let mut budget = Budget::default();
        let quota = Quota::concurrency(1);
        assert_eq!(budget.take(quota, aged(1, 60_000, 0), at(0)), Ok(()));
        let old = budget.take(quota, aged(1, 60_000, 10), at(5)).unwrap_err();
        let young = budget.take(quota, aged(2, 60_000, 20), at(6)).unwrap_err();
        assert!(
            old < young,
            "the older comes back first: {old} then {young}"
        );
        // Refused again at its turn (the slot is still busy): it still
        // comes back before the younger one, not at the end of the line.
        let again = budget.take(quota, aged(1, 60_000, 10), old).unwrap_err();
        let younger = budget.take(quota, aged(2, 60_000, 30), old).unwrap_err();
        assert!(again < younger, "{again} then {younger}");
        assert!(budget.give_back(1, 1, again.as_millis()));
        assert_eq!(budget.take(quota, aged(1, 60_000, 10), again), Ok(()));
        assert_eq!(budget.eldest, None, "taken: the line moves on");
    }

    #[test]
    fn one_long_hold_moves_the_mean_hold_at_most_to_a_few_times_it() {
        let mut budget = Budget::default();
        let quota = Quota::concurrency(1);
        assert_eq!(budget.take(quota, engine(1, 60_000), at(0)), Ok(()));
        assert!(budget.give_back(1, 1, 100));
        assert_eq!(budget.hold_ms, Some(100));
        assert_eq!(budget.take(quota, engine(1, 60_000), at(200)), Ok(()));
        // Held across a 3-hour clock jump: counts as 4 x 100 ms.
        assert!(budget.give_back(1, 1, 3 * 3600 * 1000));
        assert_eq!(budget.hold_ms, Some((100 * 4 + 400) / 5));
    }

    #[test]
    fn a_waiter_that_never_comes_back_is_the_oldest_only_for_a_while() {
        let mut budget = Budget::default();
        let quota = Quota::concurrency(1);
        assert_eq!(budget.take(quota, aged(1, 60_000, 0), at(0)), Ok(()));
        let back = budget.take(quota, aged(1, 60_000, 10), at(5)).unwrap_err();
        let gone = back + Duration::from_millis(HORIZON_MS as u64 + 1);
        let turn = budget.take(quota, aged(2, 60_000, 20), gone).unwrap_err();
        assert_eq!(budget.eldest, Some((20, turn.as_millis())));
    }

    proptest! {
        /// However requests arrive, no window of length `w` admits more than
        /// `burst + count * w / period` (plus one for the window's edges).
        #[test]
        fn no_window_exceeds_the_rate(
            count in 1u32..50,
            period_ms in 1u64..5_000,
            burst in 1u32..10,
            gaps in proptest::collection::vec(0i64..200, 1..300),
        ) {
            let quota = Quota::Rate { count, period: Duration::from_millis(period_ms), burst };
            let mut budget = Budget::default();
            let mut now = 0i64;
            let mut admitted = Vec::new();
            for gap in gaps {
                now += gap;
                if budget.take(quota, None, at(now)).is_ok() {
                    admitted.push(now);
                }
            }
            let window = period_ms as i64;
            for (i, start) in admitted.iter().enumerate() {
                let inside = admitted[i..].iter().take_while(|t| **t < start + window).count();
                let bound = burst as usize + count as usize + 1;
                prop_assert!(inside <= bound, "{} in a window of {} ms, bound {}", inside, window, bound);
            }
        }

        /// Slots in flight never exceed the maximum, whatever order engines
        /// take and give them back in.
        #[test]
        fn slots_never_exceed_the_maximum(
            max in 1u32..5,
            ops in proptest::collection::vec((any::<bool>(), 0u64..4), 1..200),
        ) {
            let quota = Quota::concurrency(max);
            let mut budget = Budget::default();
            let mut holding: std::collections::HashMap<u64, u32> = Default::default();
            for (i, (take, id)) in ops.into_iter().enumerate() {
                let now = at(i as i64);
                if take {
                    if budget.take(quota, engine(id, i64::MAX), now).is_ok() {
                        *holding.entry(id).or_default() += 1;
                    }
                } else if budget.give_back(id, 1, 0) {
                    *holding.get_mut(&id).expect("gave back a slot it held") -= 1;
                }
                prop_assert!(budget.running(now) <= max);
                prop_assert_eq!(budget.running(now), holding.values().sum::<u32>());
            }
        }
    }
}
