//! [`Faults`]: the seeded source that decides, call by call, which fault a
//! [`FaultyBackend`](super::FaultyBackend) strikes, and remembers each one.

use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::faults::{Call, Fault, FaultPlan, FaultSchedule};
use super::trace::Trace;

/// Where the faults come from: a plan's rates drawn from a seed, or a
/// schedule replayed as it is.
enum Source {
    Plan { plan: FaultPlan, rng: Box<StdRng> },
    Script(FaultSchedule),
}

struct State {
    source: Source,
    /// Calls numbered so far.
    calls: u64,
    quiet: bool,
    crashes: u32,
    struck: FaultSchedule,
}

/// The faults of a run, shared by every [`FaultyBackend`](super::FaultyBackend)
/// it starts (the numbering of calls goes on across restarts). Cheap to clone.
///
/// ```
/// use flowline::sim::{Call, FaultPlan, Faults};
///
/// let faults = Faults::from_plan(FaultPlan::none().errors(Call::Claim, 1.0), 7);
/// assert!(faults.struck().is_empty());
/// let replay = Faults::scripted("3:error,9:lost-ack".parse()?);
/// assert_eq!(replay.calls(), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Faults {
    state: Arc<Mutex<State>>,
    trace: Option<Trace>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("Faults")
            .field("calls", &state.calls)
            .field("struck", &state.struck.len())
            .finish_non_exhaustive()
    }
}

impl Faults {
    /// Faults drawn at `plan`'s rates from `seed`.
    pub fn from_plan(plan: FaultPlan, seed: u64) -> Self {
        Self::with_source(Source::Plan {
            plan,
            rng: Box::new(StdRng::seed_from_u64(seed)),
        })
    }

    /// Exactly the faults of `schedule`, at the calls it numbers.
    pub fn scripted(schedule: FaultSchedule) -> Self {
        Self::with_source(Source::Script(schedule))
    }

    fn with_source(source: Source) -> Self {
        Faults {
            state: Arc::new(Mutex::new(State {
                source,
                calls: 0,
                quiet: false,
                crashes: 0,
                struck: FaultSchedule::new(),
            })),
            trace: None,
        }
    }

    /// Notes each fault struck in `trace`.
    pub(super) fn traced(mut self, trace: Trace) -> Self {
        self.trace = Some(trace);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops (or resumes) striking: calls are still numbered, so a schedule
    /// recorded with quiet stretches replays the same.
    pub fn set_quiet(&self, quiet: bool) {
        self.lock().quiet = quiet;
    }

    /// Backend calls numbered so far.
    pub fn calls(&self) -> u64 {
        self.lock().calls
    }

    /// The faults struck so far: replayed with [`Faults::scripted`], they
    /// strike again at the same calls.
    pub fn struck(&self) -> FaultSchedule {
        self.lock().struck.clone()
    }

    /// Crashes struck so far.
    pub fn crashes(&self) -> u32 {
        self.lock().crashes
    }

    /// Numbers a call of kind `call` and decides its fault.
    pub(super) fn decide(&self, call: Call) -> Option<Fault> {
        let mut state = self.lock();
        let number = state.calls;
        state.calls += 1;
        let crashes = state.crashes;
        let State {
            source,
            quiet,
            struck,
            ..
        } = &mut *state;
        let fault = match source {
            Source::Plan { plan, rng } => {
                // Drawn even when quiet, so that quiet stretches do not shift
                // the draws that follow them.
                let crashes_left = crashes < plan.max_crashes();
                plan.draw(call, crashes_left, rng)
            }
            Source::Script(schedule) => schedule.get(number).filter(|f| fits(*f, call)),
        }
        .filter(|_| !*quiet)?;
        struck.insert(number, fault);
        if matches!(fault, Fault::Crash { .. }) {
            state.crashes += 1;
        }
        drop(state);
        if let Some(trace) = &self.trace {
            trace.note(format_args!("fault #{number} {call:?} {fault}"));
        }
        Some(fault)
    }
}

/// Whether a scripted fault can strike a call of this kind (a schedule edited
/// by hand, or shrunk until calls shift, may name one that cannot).
fn fits(fault: Fault, call: Call) -> bool {
    match fault {
        Fault::Error | Fault::Slow(_) => true,
        Fault::LostAck | Fault::Permanent => call == Call::Complete,
        Fault::Crash { .. } => matches!(call, Call::Claim | Call::Complete),
    }
}
