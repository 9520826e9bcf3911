//! [`Simulation`]: runs a [`Scenario`] seed by seed, each on its own
//! current-thread runtime with a paused clock, and reports what a failing
//! seed needs to be run again.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use rand::SeedableRng;

use super::error::SimError;
use super::faults::{FaultPlan, FaultSchedule};
use super::injector::Faults;
use super::scenario::Scenario;
use super::trace::Trace;
use super::world::{Opening, Reopen, Sim};
use crate::backend::Backend;
use crate::time::Clock;
use crate::vocab::chance;

/// Where a run keeps its data: opened fresh for each seed, and again on the
/// same data for each process after a crash.
#[derive(Clone)]
pub struct SimBackend {
    name: String,
    open: Arc<dyn Fn(u64) -> Result<Reopen, SimError> + Send + Sync>,
    /// Removes a passing seed's data (on the run's runtime, at its end).
    cleanup: Option<Arc<dyn Fn(u64) -> Cleaning + Send + Sync>>,
    lockstep: bool,
}

impl fmt::Debug for SimBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimBackend")
            .field("name", &self.name)
            .field("lockstep", &self.lockstep)
            .finish_non_exhaustive()
    }
}

impl SimBackend {
    /// A new [`MemoryBackend`](crate::MemoryBackend) per seed; a new process
    /// sees what the crashed one committed.
    pub fn memory() -> Self {
        SimBackend::custom("memory", |_seed| {
            let memory = crate::MemoryBackend::new();
            Ok(move || Ok(Arc::new(memory.clone()) as Arc<dyn Backend>))
        })
    }

    /// A new SQLite file per seed in `dir` (removed when the seed passes,
    /// kept when it fails), with [`Durability::Normal`](crate::Durability)
    /// (a crash here is the process's, not the machine's); each new process
    /// opens the file again. Not in lockstep: on the simulation's
    /// current-thread runtime the SQLite backend commits on the caller's own
    /// turn, so runs are deterministic without it.
    #[cfg(feature = "sqlite")]
    pub fn sqlite_in(dir: impl Into<std::path::PathBuf>) -> Self {
        let dir: std::path::PathBuf = dir.into();
        let file = |dir: &std::path::Path, seed: u64| dir.join(format!("sim-{seed}.db"));
        let kept = dir.clone();
        let mut backend = SimBackend::custom("sqlite", move |seed| {
            let path = file(&dir, seed);
            remove_sqlite(&path);
            Ok(move || {
                // The simulation's crashes are the process's, not the
                // machine's: what `Normal` durability survives, without a
                // sync per commit.
                let options = crate::SqliteOptions::default().durability(crate::Durability::Normal);
                let opened = crate::SqliteBackend::open_with(&path, options)
                    .map_err(|e| SimError::Other(Box::new(e)))?;
                Ok(Arc::new(opened) as Arc<dyn Backend>)
            })
        });
        backend.cleanup = Some(Arc::new(move |seed| {
            remove_sqlite(&file(&kept, seed));
            Box::pin(async {})
        }));
        backend
    }

    /// A PostgreSQL schema per seed (`flowline_sim_<process>_<seed>`, dropped
    /// when the seed passes, kept when it fails) on the server at `url`; each
    /// new process connects again. Runs are not deterministic: the queries
    /// wait on the network while the paused clock may move on to the next
    /// timer, which makes a slow database of a fast one (leases run out,
    /// retries come early); the invariants must hold all the same.
    #[cfg(feature = "postgres")]
    pub fn postgres(url: impl Into<String>) -> Self {
        let url: String = url.into();
        let schema = |seed: u64| format!("flowline_sim_{}_{seed}", std::process::id());
        let dropping = url.clone();
        let open = Arc::new(move |seed| {
            let options = crate::PostgresOptions::new(url.clone()).schema(schema(seed));
            let (url, name) = (url.clone(), schema(seed));
            let mut first = true;
            Ok(Box::new(move || {
                let (options, url, name, fresh) =
                    (options.clone(), url.clone(), name.clone(), first);
                first = false;
                Box::pin(async move {
                    if fresh {
                        drop_schema(&url, &name).await?;
                    }
                    let backend = crate::PostgresBackend::connect_with(options)
                        .await
                        .map_err(|e| SimError::Other(Box::new(e)))?;
                    Ok(Arc::new(backend) as Arc<dyn Backend>)
                }) as Opening
            }) as Reopen)
        });
        let cleanup = Arc::new(move |seed| {
            let (url, name) = (dropping.clone(), schema(seed));
            Box::pin(async move {
                if let Err(err) = drop_schema(&url, &name).await {
                    tracing::warn!(%err, schema = %name, "could not drop a passing seed's schema");
                }
            }) as Cleaning
        });
        SimBackend {
            name: "postgres".to_string(),
            open,
            cleanup: Some(cleanup),
            lockstep: false,
        }
    }

    /// Any backend: `open(seed)` makes the run's data and returns what opens
    /// it for each process. Its calls are not in lockstep: a backend that
    /// answers from other threads makes runs that may differ in their
    /// interleaving (see [`FaultyBackend::lockstep`](super::FaultyBackend::lockstep)).
    pub fn custom<R>(
        name: &str,
        open: impl Fn(u64) -> Result<R, SimError> + Send + Sync + 'static,
    ) -> Self
    where
        R: FnMut() -> Result<Arc<dyn Backend>, SimError> + Send + 'static,
    {
        SimBackend {
            name: name.to_string(),
            open: Arc::new(move |seed| {
                let mut reopen = open(seed)?;
                Ok(Box::new(move || {
                    let opened = reopen();
                    Box::pin(async move { opened }) as Opening
                }) as Reopen)
            }),
            cleanup: None,
            lockstep: false,
        }
    }

    /// Runs the backend's calls in lockstep, or not.
    #[must_use]
    pub fn lockstep(mut self, lockstep: bool) -> Self {
        self.lockstep = lockstep;
        self
    }

    /// The backend's name, as reports print it.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A seed's data being removed.
type Cleaning = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

#[cfg(feature = "sqlite")]
fn remove_sqlite(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

/// Drops a seed's schema, if it exists.
#[cfg(feature = "postgres")]
async fn drop_schema(url: &str, schema: &str) -> Result<(), SimError> {
    let other = |e: sqlx::Error| SimError::Other(Box::new(e));
    let pool = sqlx::PgPool::connect(url).await.map_err(other)?;
    // The name is ours: letters, digits and underscores only.
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&pool)
        .await
        .map_err(other)?;
    pool.close().await;
    Ok(())
}

/// What a passing run did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// The workload's actions.
    pub size: usize,
    /// The trace's digest: the same for every run of this seed.
    pub digest: u64,
    /// Lines the trace holds.
    pub lines: u64,
    /// Backend calls made.
    pub calls: u64,
    /// The faults struck.
    pub struck: FaultSchedule,
    /// Processes replaced after a crash.
    pub restarts: u32,
}

/// A failing run, with what it takes to run it again.
#[derive(Debug)]
#[non_exhaustive]
pub struct SimFailure {
    /// The seed.
    pub seed: u64,
    /// The workload's actions.
    pub size: usize,
    /// The faults struck before it failed: replayed with
    /// [`Simulation::replay`], they strike again at the same calls.
    pub struck: FaultSchedule,
    /// How it failed.
    pub error: SimError,
    /// The trace's last lines (every line, with
    /// [`keep_trace`](Simulation::keep_trace)).
    pub tail: Vec<String>,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {} (size {}) failed: {}",
            self.seed, self.size, self.error
        )?;
        writeln!(f, "faults struck: {}", self.struck)?;
        writeln!(f, "last lines of the trace:")?;
        for line in &self.tail {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// Runs a [`Scenario`] under faults, one seed at a time.
///
/// Each run gets its own current-thread runtime on a paused clock, its own
/// data, and its own seeded randomness (the workload's, the faults' and the
/// engine's own jitter and ids): with the memory backend, or SQLite in
/// lockstep, one seed runs the same every time, bit for bit, and its
/// [`SimReport::digest`] says so.
///
/// See the guide, [`crate::guides::testing_under_faults`], for a whole
/// example.
pub struct Simulation<S> {
    make: Arc<dyn Fn(u64) -> S + Send + Sync>,
    backend: SimBackend,
    plan: FaultPlan,
    keep_all: bool,
}

impl<S> fmt::Debug for Simulation<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulation")
            .field("backend", &self.backend)
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

impl<S: Scenario + 'static> Simulation<S> {
    /// Simulates the scenarios `make` builds from each seed, on the memory
    /// backend with [`FaultPlan::default`].
    pub fn new(make: impl Fn(u64) -> S + Send + Sync + 'static) -> Self {
        Simulation {
            make: Arc::new(make),
            backend: SimBackend::memory(),
            plan: FaultPlan::default(),
            keep_all: false,
        }
    }

    /// Runs on `backend`.
    #[must_use]
    pub fn backend(mut self, backend: SimBackend) -> Self {
        self.backend = backend;
        self
    }

    /// Draws faults at `plan`'s rates.
    #[must_use]
    pub fn faults(mut self, plan: FaultPlan) -> Self {
        self.plan = plan;
        self
    }

    /// Keeps every line of each run's trace (to compare runs line by line).
    #[must_use]
    pub fn keep_trace(mut self, keep: bool) -> Self {
        self.keep_all = keep;
        self
    }

    /// The backend runs are on.
    pub fn backend_name(&self) -> &str {
        self.backend.name()
    }

    /// Runs `seed` with a workload of `size` actions and faults drawn from
    /// the plan.
    ///
    /// # Errors
    /// The run failed: the failure says how, and which faults struck.
    pub fn run(&self, seed: u64, size: usize) -> Result<SimReport, Box<SimFailure>> {
        self.run_traced(seed, size, None).map(|(report, _)| report)
    }

    /// Runs `seed` with exactly the faults of `schedule` (a failure's
    /// [`struck`](SimFailure::struck), or a shrunk schedule).
    ///
    /// # Errors
    /// The run failed.
    pub fn replay(
        &self,
        seed: u64,
        size: usize,
        schedule: &FaultSchedule,
    ) -> Result<SimReport, Box<SimFailure>> {
        self.run_traced(seed, size, Some(schedule))
            .map(|(report, _)| report)
    }

    /// As [`run`](Self::run) (or [`replay`](Self::replay), with a schedule),
    /// also returning the trace.
    ///
    /// # Errors
    /// The run failed.
    pub fn run_traced(
        &self,
        seed: u64,
        size: usize,
        schedule: Option<&FaultSchedule>,
    ) -> Result<(SimReport, Trace), Box<SimFailure>> {
        let trace = if self.keep_all {
            Trace::keeping_all()
        } else {
            Trace::new()
        };
        let faults = match schedule {
            Some(schedule) => Faults::scripted(schedule.clone()),
            None => Faults::from_plan(self.plan.clone(), seed ^ FAULT_STREAM),
        }
        .traced(trace.clone());
        let fail = |error: SimError| {
            Box::new(SimFailure {
                seed,
                size,
                struck: faults.struck(),
                error,
                tail: trace.lines().unwrap_or_else(|| trace.tail()),
            })
        };
        self.plan
            .validate()
            .map_err(|e| fail(SimError::Other(Box::new(e))))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .map_err(|e| fail(SimError::Other(Box::new(e))))?;
        // Seeded before anything of the run exists: the engine's jitter and
        // every id it makes then follow from the seed too.
        let _seeded = chance::seed_thread(seed ^ ENGINE_STREAM);
        let run = self.play(seed, size, faults.clone(), trace.clone());
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(run)))
            .unwrap_or_else(|panic| Err(SimError::Panicked(panic_message(&panic))));
        drop(runtime);
        if let (Ok(_), Some(cleanup)) = (&outcome, &self.backend.cleanup) {
            // On a runtime of its own whose clock runs: a paused clock would
            // move on while the cleanup waits for a server.
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(cleanup(seed)),
                Err(err) => {
                    tracing::warn!(%err, seed, "no runtime to clean up a passing seed's data")
                }
            }
        }
        outcome.map(|report| (report, trace.clone())).map_err(fail)
    }

    async fn play(
        &self,
        seed: u64,
        size: usize,
        faults: Faults,
        trace: Trace,
    ) -> Result<SimReport, SimError> {
        let mut scenario = (self.make)(seed);
        let mut sim = Sim {
            seed,
            size,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            trace,
            faults: faults.clone(),
            reopen: std::sync::Mutex::new((self.backend.open)(seed)?),
            boot: scenario.boot(),
            lockstep: self.backend.lockstep,
            clock: Clock::starting_at(crate::testing::TEST_EPOCH),
            engine: None,
            restarts: 0,
            jumps: Vec::new(),
        };
        faults.set_quiet(true);
        sim.boot().await?;
        scenario.setup(&mut sim).await?;
        faults.set_quiet(false);
        for index in 0..size {
            scenario.act(&mut sim, index).await?;
            sim.recover().await?;
            scenario.check_always(&mut sim).await?;
        }
        faults.set_quiet(true);
        sim.recover().await?;
        scenario.finish(&mut sim).await?;
        sim.shutdown().await;
        Ok(SimReport {
            seed,
            size,
            digest: sim.trace.digest(),
            lines: sim.trace.len(),
            calls: faults.calls(),
            struck: faults.struck(),
            restarts: sim.restarts,
        })
    }
}

/// Mixed into the seed of the fault draws, so that they are not the
/// workload's draws again.
const FAULT_STREAM: u64 = 0x6661_756c_7473_0001;
/// Mixed into the seed of the engine's own draws.
const ENGINE_STREAM: u64 = 0x656e_6769_6e65_0002;

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_string()
    }
}
