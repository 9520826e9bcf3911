//! Deterministic simulation: a flow run on a virtual clock, with faults struck
//! at its backend's calls by a seed, across many seeds, each replayable bit for
//! bit (feature `test-util`).
//!
//! * [`Scenario`]: your flow, the workload a seed draws, your invariants.
//! * [`Simulation`]: runs a scenario seed by seed on a [`SimBackend`] with a
//!   [`FaultPlan`]; a failing seed comes back as a [`SimFailure`] holding the
//!   faults that struck, which [`Simulation::replay`] runs again and
//!   [`Simulation::shrink`] makes small.
//! * [`FaultyBackend`]: the fault-injecting adapter, around any backend:
//!   errors at claims, completions, reads and publishes, slow calls, lost
//!   acknowledgements, permanent failures and crashes.
//!
//! The guide [`crate::guides::testing_under_faults`] simulates a flow of its
//! own from start to end; `flowline::orderflow::sim` is the order system's
//! scenario (`examples/simulate.rs` runs it).

mod error;
mod faults;
mod faulty;
mod injector;
mod lockstep;
mod scenario;
mod shrink;
mod simulation;
mod trace;
mod world;

pub use error::{ensure, SimError};
pub use faults::{Call, Fault, FaultPlan, FaultPlanError, FaultSchedule, ParseFaultError};
pub use faulty::{FaultyBackend, PERMANENT_FAULT, STRUCK};
pub use injector::Faults;
pub use scenario::Scenario;
pub use shrink::Shrunk;
pub use simulation::{SimBackend, SimFailure, SimReport, Simulation};
pub use trace::Trace;
pub use world::{Boot, Sim};
