//! What can go wrong at a backend call ([`Fault`]), how often ([`FaultPlan`]),
//! and the faults one run actually met ([`FaultSchedule`]).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The kind of backend call a fault strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Call {
    /// Reads of state, dead letters, queue depths and cron marks.
    Read,
    /// A claim of deliveries.
    Claim,
    /// A batch of completions.
    Complete,
    /// A publish of deliveries outside a completion.
    Publish,
}

impl Call {
    /// Every kind, in declaration order.
    pub const ALL: [Call; 4] = [Call::Read, Call::Claim, Call::Complete, Call::Publish];

    fn index(self) -> usize {
        self as usize
    }
}

/// One fault, struck at one backend call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The call fails before it reaches the backend: nothing happens.
    Error,
    /// The call is slow: it starts this long (virtual time) after it was made.
    Slow(Duration),
    /// A completion commits, but its answer is lost: the engine is told it
    /// failed.
    LostAck,
    /// A completion is refused for good, as if its handler had failed
    /// permanently: its deliveries go to the dead letters (without the step's
    /// failure hook), to be replayed.
    Permanent,
    /// The process dies at this call: the call commits first if `committed`,
    /// and every later call of this engine fails until the simulation drops
    /// it and starts a new one on the same data.
    Crash {
        /// Whether the call took effect before the process died.
        committed: bool,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Error => f.write_str("error"),
            Fault::Slow(delay) => write!(f, "slow{}ms", delay.as_millis()),
            Fault::LostAck => f.write_str("lost-ack"),
            Fault::Permanent => f.write_str("permanent"),
            Fault::Crash { committed: false } => f.write_str("crash"),
            Fault::Crash { committed: true } => f.write_str("crash-after"),
        }
    }
}

/// A fault or a schedule that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a fault schedule entry: {0:?} (expected CALL:FAULT, such as 12:error, 40:slow250ms, 77:lost-ack, 90:crash-after)")]
pub struct ParseFaultError(pub String);

impl FromStr for Fault {
    type Err = ParseFaultError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fault = match s {
            "error" => Fault::Error,
            "lost-ack" => Fault::LostAck,
            "permanent" => Fault::Permanent,
            "crash" => Fault::Crash { committed: false },
            "crash-after" => Fault::Crash { committed: true },
            _ => {
                let millis = s
                    .strip_prefix("slow")
                    .and_then(|rest| rest.strip_suffix("ms"))
                    .and_then(|n| n.parse::<u64>().ok())
                    .ok_or_else(|| ParseFaultError(s.to_string()))?;
                Fault::Slow(Duration::from_millis(millis))
            }
        };
        Ok(fault)
    }
}

/// How often each fault strikes: the rates a seed draws a run's faults from.
///
/// Rates are per call of the kind named. [`FaultPlan::none`] injects nothing;
/// [`FaultPlan::default`] is a hostile mix that still lets work through.
///
/// ```
/// use std::time::Duration;
/// use flowline::sim::{Call, FaultPlan};
///
/// let plan = FaultPlan::none()
///     .errors(Call::Complete, 0.05)
///     .slow(0.02, Duration::from_secs(90))
///     .lost_acks(0.01)
///     .crashes(0.002, 3);
/// assert!(plan.validate().is_ok());
/// assert!(FaultPlan::none().errors(Call::Claim, 1.5).validate().is_err());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct FaultPlan {
    errors: [f64; 4],
    slow: f64,
    slow_max: Duration,
    lost_acks: f64,
    permanent: f64,
    crashes: f64,
    max_crashes: u32,
}

/// A rate of a [`FaultPlan`] is out of range.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("fault plan: the rate of {what} must be between 0 and 1, got {rate}")]
pub struct FaultPlanError {
    /// The fault the rate is of.
    pub what: String,
    /// The rate given.
    pub rate: f64,
}

impl Default for FaultPlan {
    fn default() -> Self {
        FaultPlan::none()
            .errors(Call::Read, 0.01)
            .errors(Call::Claim, 0.03)
            .errors(Call::Complete, 0.03)
            .errors(Call::Publish, 0.03)
            .slow(0.01, Duration::from_secs(20))
            .lost_acks(0.01)
            .permanent(0.002)
            .crashes(0.001, 4)
    }
}

impl FaultPlan {
    /// A plan that injects no fault.
    pub fn none() -> Self {
        FaultPlan {
            errors: [0.0; 4],
            slow: 0.0,
            slow_max: Duration::ZERO,
            lost_acks: 0.0,
            permanent: 0.0,
            crashes: 0.0,
            max_crashes: 0,
        }
    }

    /// Calls of kind `call` fail at this rate.
    #[must_use]
    pub fn errors(mut self, call: Call, rate: f64) -> Self {
        self.errors[call.index()] = rate;
        self
    }

    /// Calls of every kind are slow at this rate, each by up to `max`
    /// (longer than a lease, and a completion finds its lease taken).
    #[must_use]
    pub fn slow(mut self, rate: f64, max: Duration) -> Self {
        self.slow = rate;
        self.slow_max = max;
        self
    }

    /// Completions lose their acknowledgement at this rate.
    #[must_use]
    pub fn lost_acks(mut self, rate: f64) -> Self {
        self.lost_acks = rate;
        self
    }

    /// Completions of claimed deliveries are made permanent failures at this
    /// rate ([`Fault::Permanent`]).
    #[must_use]
    pub fn permanent(mut self, rate: f64) -> Self {
        self.permanent = rate;
        self
    }

    /// Claims and completions crash the process at this rate, at most `max`
    /// times in a run.
    #[must_use]
    pub fn crashes(mut self, rate: f64, max: u32) -> Self {
        self.crashes = rate;
        self.max_crashes = max;
        self
    }

    /// The most crashes a run may have.
    pub(super) fn max_crashes(&self) -> u32 {
        self.max_crashes
    }

    /// Checks every rate is between 0 and 1.
    ///
    /// # Errors
    /// The first rate out of range.
    pub fn validate(&self) -> Result<(), FaultPlanError> {
        let named = Call::ALL
            .iter()
            .map(|c| (format!("{c:?} errors"), self.errors[c.index()]))
            .chain([
                ("slow calls".to_string(), self.slow),
                ("lost acknowledgements".to_string(), self.lost_acks),
                ("permanent failures".to_string(), self.permanent),
                ("crashes".to_string(), self.crashes),
            ]);
        for (what, rate) in named {
            if !(0.0..=1.0).contains(&rate) {
                return Err(FaultPlanError { what, rate });
            }
        }
        Ok(())
    }

    /// Draws the fault, if any, for a call of kind `call`. `crashes_left`
    /// says whether the run may still crash.
    pub(super) fn draw(
        &self,
        call: Call,
        crashes_left: bool,
        rng: &mut impl rand::Rng,
    ) -> Option<Fault> {
        // Every draw is made whatever the outcome, so that changing one rate
        // does not shift the draws of the others.
        let roll: [f64; 5] = std::array::from_fn(|_| rng.random::<f64>());
        let delay = rng.random_range(0..=self.slow_max.as_millis() as u64);
        let committed = rng.random::<bool>();
        let completes = call == Call::Complete;
        let crashable = matches!(call, Call::Claim | Call::Complete);
        if crashable && crashes_left && roll[0] < self.crashes {
            return Some(Fault::Crash { committed });
        }
        if completes && roll[1] < self.lost_acks {
            return Some(Fault::LostAck);
        }
        if completes && roll[2] < self.permanent {
            return Some(Fault::Permanent);
        }
        if roll[3] < self.errors[call.index()] {
            return Some(Fault::Error);
        }
        if roll[4] < self.slow {
            return Some(Fault::Slow(Duration::from_millis(delay)));
        }
        None
    }
}

/// The faults of one run, by the number of the backend call they struck
/// (counted from 0 over the whole run, across restarts).
///
/// Printed as `12:error,40:slow250ms,77:lost-ack` and parsed back, so that a
/// failing run's schedule can be replayed and shrunk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultSchedule {
    faults: BTreeMap<u64, Fault>,
}

impl FaultSchedule {
    /// An empty schedule.
    pub fn new() -> Self {
        FaultSchedule::default()
    }

    /// Adds a fault at call number `call`.
    pub fn insert(&mut self, call: u64, fault: Fault) {
        self.faults.insert(call, fault);
    }

    /// The fault at call number `call`.
    pub fn get(&self, call: u64) -> Option<Fault> {
        self.faults.get(&call).copied()
    }

    /// How many faults it holds.
    pub fn len(&self) -> usize {
        self.faults.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }

    /// The faults, by call number.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Fault)> + '_ {
        self.faults.iter().map(|(call, fault)| (*call, *fault))
    }

    /// The schedule without the entries `keep` refuses.
    pub(super) fn filtered(&self, mut keep: impl FnMut(usize) -> bool) -> FaultSchedule {
        let faults = self
            .faults
            .iter()
            .enumerate()
            .filter(|(i, _)| keep(*i))
            .map(|(_, (call, fault))| (*call, *fault))
            .collect();
        FaultSchedule { faults }
    }
}

impl fmt::Display for FaultSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (call, fault)) in self.faults.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{call}:{fault}")?;
        }
        Ok(())
    }
}

impl FromStr for FaultSchedule {
    type Err = ParseFaultError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut schedule = FaultSchedule::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (call, fault) = entry
                .split_once(':')
                .ok_or_else(|| ParseFaultError(entry.to_string()))?;
            let call = call
                .parse::<u64>()
                .map_err(|_| ParseFaultError(entry.to_string()))?;
            let fault = fault
                .parse()
                .map_err(|_| ParseFaultError(entry.to_string()))?;
            schedule.insert(call, fault);
        }
        Ok(schedule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_schedule_prints_and_parses_back() {
        let mut schedule = FaultSchedule::new();
        schedule.insert(12, Fault::Error);
        schedule.insert(40, Fault::Slow(Duration::from_millis(250)));
        schedule.insert(77, Fault::LostAck);
        schedule.insert(80, Fault::Permanent);
        schedule.insert(90, Fault::Crash { committed: true });
        schedule.insert(91, Fault::Crash { committed: false });
        let printed = schedule.to_string();
        assert_eq!(
            printed,
            "12:error,40:slow250ms,77:lost-ack,80:permanent,90:crash-after,91:crash"
        );
        assert_eq!(printed.parse::<FaultSchedule>(), Ok(schedule));
        assert_eq!("".parse::<FaultSchedule>(), Ok(FaultSchedule::new()));
    }

    #[test]
    fn a_bad_schedule_is_a_typed_error() {
        for bad in [
            "12",
            "x:error",
            "3:boom",
            "4:slow",
            "5:slowms",
            "6:slow-1ms",
        ] {
            assert!(bad.parse::<FaultSchedule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn no_plan_draws_no_fault_and_certain_errors_always_strike() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for call in Call::ALL {
            assert_eq!(FaultPlan::none().draw(call, true, &mut rng), None);
            let plan = FaultPlan::none().errors(call, 1.0);
            assert_eq!(plan.draw(call, true, &mut rng), Some(Fault::Error));
        }
        let crashing = FaultPlan::none().crashes(1.0, 1);
        assert!(crashing.draw(Call::Read, true, &mut rng).is_none());
        assert!(crashing.draw(Call::Claim, false, &mut rng).is_none());
        assert!(matches!(
            crashing.draw(Call::Claim, true, &mut rng),
            Some(Fault::Crash { .. })
        ));
    }
}
