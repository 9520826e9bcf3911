//! [`Sim`]: the running world a [`Scenario`](super::Scenario) acts on: the
//! current engine, the workload's seeded draws, virtual time, and the crashed
//! process replaced by a new one on the same data.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;

use super::error::SimError;
use super::faulty::FaultyBackend;
use super::injector::Faults;
use super::trace::{fingerprint, Trace};
use crate::backend::Backend;
use crate::engine::{Engine, EngineBuilder};
use crate::time::{Clock, Timestamp};

/// Builds the engine of one process of a run: the flow and whatever else it
/// needs ([`data`](EngineBuilder::data), [`config`](EngineBuilder::config)).
/// Called at the start and again after every crash; the simulation sets the
/// backend, the clock and an emit hook of its own.
pub type Boot = Arc<dyn Fn() -> Result<EngineBuilder, SimError> + Send + Sync>;

/// A backend being opened.
pub(super) type Opening =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Arc<dyn Backend>, SimError>> + Send>>;

/// Opens the run's backend again, on the same data, for each new process.
pub(super) type Reopen = Box<dyn FnMut() -> Opening + Send>;

/// Virtual time passes in slices this long, so that a crash is noticed and
/// the process replaced within one.
const SLICE: Duration = Duration::from_secs(1);

/// Turns given to the runtime after a process is dropped.
const KILL_YIELDS: usize = 8;

/// How many times in a row a new process may fail to start before the run
/// gives up.
const START_ATTEMPTS: u32 = 50;

/// The world of one simulated run.
pub struct Sim {
    pub(super) seed: u64,
    pub(super) size: usize,
    pub(super) rng: StdRng,
    pub(super) trace: Trace,
    pub(super) faults: Faults,
    pub(super) reopen: std::sync::Mutex<Reopen>,
    pub(super) boot: Boot,
    pub(super) lockstep: bool,
    pub(super) clock: Clock,
    pub(super) engine: Option<(Engine, FaultyBackend)>,
    pub(super) restarts: u32,
    /// The clock's jumps so far: when each started, and how far.
    pub(super) jumps: Vec<(Timestamp, Duration)>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.seed)
            .field("size", &self.size)
            .field("restarts", &self.restarts)
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// The run's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// How many actions the run's workload has.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The workload's source of randomness: every choice drawn from it
    /// follows from the seed.
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    /// The engine of the process now running.
    ///
    /// # Panics
    /// Never while a scenario's method runs: a process is always up then
    /// (possibly crashed, until [`recover`](Self::recover) replaces it).
    pub fn engine(&self) -> &Engine {
        &self
            .engine
            .as_ref()
            .expect("a simulation always has a process between its steps")
            .0
    }

    /// The virtual clock's time.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The run's faults (to see what struck, or to hold them off a while).
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The run's trace.
    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// Adds a line to the trace: what the scenario did or saw.
    pub fn note(&self, line: std::fmt::Arguments<'_>) {
        self.trace.note(line);
    }

    /// How many times a crashed process was replaced.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// How far the clock [jumped](Self::jump) from `from` to `to`: the time
    /// that passed with no process running. An invariant bounded in clock
    /// time (a retry budget, a deadline) may subtract it to see how much time
    /// the flow really had.
    pub fn jumped_between(&self, from: Timestamp, to: Timestamp) -> Duration {
        self.jumps
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, length)| *length)
            .sum()
    }

    /// Whether the process now running has crashed.
    pub fn is_down(&self) -> bool {
        self.engine.as_ref().is_some_and(|(_, b)| b.is_down())
    }

    /// Starts the first process.
    pub(super) async fn boot(&mut self) -> Result<(), SimError> {
        let mut failures = 0;
        loop {
            match self.start_process().await {
                Ok(process) => {
                    self.engine = Some(process);
                    return Ok(());
                }
                Err(err) if failures < START_ATTEMPTS => {
                    failures += 1;
                    self.note(format_args!("start failed: {err}"));
                    tokio::time::sleep(SLICE).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    async fn start_process(&mut self) -> Result<(Engine, FaultyBackend), SimError> {
        let opening = {
            let mut reopen = self.reopen.lock().unwrap_or_else(|p| p.into_inner());
            (*reopen)()
        };
        let inner = opening.await?;
        let backend =
            FaultyBackend::new(inner, self.faults.clone(), self.clock).lockstep(self.lockstep);
        let trace = self.trace.clone();
        let clock = self.clock;
        let engine = (self.boot)()?
            .backend_arc(Arc::new(backend.clone()))
            .clock(clock)
            .on_emit(move |e| {
                trace.note(format_args!(
                    "{} emit {} {} {:016x}",
                    e.emitted_at.as_millis(),
                    e.tenant,
                    e.topic,
                    fingerprint(e.payload.as_json().as_bytes())
                ));
            })
            .start()
            .await?;
        Ok((engine, backend))
    }

    /// Replaces a crashed process with a new one on the same data: the old
    /// engine is dropped where it stands (its tasks abort mid-batch, its leases
    /// run out) and a new one starts. True if it did.
    ///
    /// # Errors
    /// A new process failed to start on every try.
    pub async fn recover(&mut self) -> Result<bool, SimError> {
        if !self.is_down() {
            return Ok(false);
        }
        self.kill().await;
        self.boot().await?;
        Ok(true)
    }

    /// Kills the running process at once, as a crash would.
    async fn kill(&mut self) {
        self.restarts += 1;
        self.note(format_args!("{} restart", self.now().as_millis()));
        self.engine = None;
        // Aborted tasks are dropped when the runtime next gets to them: let
        // it, so that nothing of the dead process runs beside the new one.
        for _ in 0..KILL_YIELDS {
            tokio::task::yield_now().await;
        }
    }

    /// Kills the running process and starts a new one, crashed or not.
    ///
    /// # Errors
    /// A new process did not start.
    pub async fn restart(&mut self) -> Result<(), SimError> {
        self.kill().await;
        self.boot().await
    }

    /// Lets `duration` of virtual time pass, replacing a process that crashes
    /// meanwhile.
    ///
    /// # Errors
    /// A new process did not start.
    pub async fn advance(&mut self, duration: Duration) -> Result<(), SimError> {
        let until = tokio::time::Instant::now() + duration;
        loop {
            self.recover().await?;
            let now = tokio::time::Instant::now();
            if now >= until {
                return Ok(());
            }
            tokio::time::sleep((until - now).min(SLICE)).await;
        }
    }

    /// Jumps the clock `duration` ahead at once: every timer due meanwhile
    /// fires late together, as after a suspended machine or a wall-clock step.
    ///
    /// # Errors
    /// A new process did not start.
    pub async fn jump(&mut self, duration: Duration) -> Result<(), SimError> {
        self.note(format_args!(
            "{} jump {}s",
            self.now().as_millis(),
            duration.as_secs()
        ));
        self.jumps.push((self.now(), duration));
        tokio::time::advance(duration).await;
        self.recover().await.map(|_| ())
    }

    /// Waits until the engine is idle (see [`Engine::wait_idle`]), at most
    /// `limit` of virtual time; true if it got there.
    ///
    /// # Errors
    /// A new process did not start.
    pub async fn settle(&mut self, limit: Duration) -> Result<bool, SimError> {
        let until = tokio::time::Instant::now() + limit;
        loop {
            self.recover().await?;
            // One look per slice (a look that must wait is not idle): the
            // engine's own wait would look every few milliseconds.
            let idle = tokio::time::timeout(Duration::ZERO, self.engine().wait_idle()).await;
            if idle.is_ok() && !self.is_down() {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= until {
                return Ok(false);
            }
            tokio::time::sleep(SLICE).await;
        }
    }

    /// Stops the running process gracefully.
    pub(super) async fn shutdown(&mut self) {
        if let Some((engine, _)) = self.engine.take() {
            engine.shutdown(Duration::from_secs(5)).await;
        }
    }
}
