//! The shrinker: a failing run made as small as it will go (fewer actions,
//! fewer faults) while it still fails the same way.

use super::faults::FaultSchedule;
use super::scenario::Scenario;
use super::simulation::{SimFailure, Simulation};

/// A failure after shrinking.
#[derive(Debug)]
#[non_exhaustive]
pub struct Shrunk {
    /// The smallest failing run found: its seed, size and faults reproduce it
    /// with [`Simulation::replay`].
    pub failure: Box<SimFailure>,
    /// Runs the shrinker made.
    pub runs: usize,
    /// Whether the failure replayed from its schedule at all (a run that
    /// does not fail again when replayed cannot be shrunk).
    pub reproduced: bool,
}

impl<S: Scenario + 'static> Simulation<S> {
    /// Shrinks `failure` in at most `budget` runs: first the workload (half
    /// its actions at a time), then the faults (dropping runs of them, then
    /// single ones), keeping each change after which the run still fails the
    /// same way.
    pub fn shrink(&self, failure: &SimFailure, budget: usize) -> Shrunk {
        let attempt = |size: usize, schedule: &FaultSchedule| -> Option<Box<SimFailure>> {
            match self.replay(failure.seed, size, schedule) {
                Err(again) if again.error.same_failure(&failure.error) => Some(again),
                _ => None,
            }
        };
        let Some(mut best) = attempt(failure.size, &failure.struck) else {
            return Shrunk {
                failure: Box::new(SimFailure {
                    seed: failure.seed,
                    size: failure.size,
                    struck: failure.struck.clone(),
                    error: super::error::SimError::Stuck(failure.error.to_string()),
                    tail: failure.tail.clone(),
                }),
                runs: 1,
                reproduced: false,
            };
        };
        let mut made = 1;
        while best.size > 1 && made < budget {
            made += 1;
            match attempt(best.size / 2, &best.struck) {
                Some(smaller) => best = smaller,
                None => break,
            }
        }
        let mut chunk = (best.struck.len() / 2).max(1);
        while !best.struck.is_empty() && made < budget {
            let mut start = 0;
            let mut dropped = false;
            while start < best.struck.len() && made < budget {
                made += 1;
                let candidate = best.struck.filtered(|i| i < start || i >= start + chunk);
                match attempt(best.size, &candidate) {
                    Some(smaller) => {
                        best = smaller;
                        dropped = true;
                    }
                    None => start += chunk,
                }
            }
            if !dropped {
                if chunk == 1 {
                    break;
                }
                chunk /= 2;
            }
        }
        Shrunk {
            failure: best,
            runs: made,
            reproduced: true,
        }
    }
}
