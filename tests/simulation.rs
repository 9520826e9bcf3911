//! The simulation harness: one seed is one run, bit for bit; a flow with an
//! effect outside its commits is caught, its failure replays from the faults
//! that struck and shrinks to a few; the order system's regression seeds
//! (the failures the simulation found, each fixed) pass.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flowline::orderflow::sim::OrderScenario;
use flowline::prelude::*;
use flowline::sim::{
    ensure, Boot, Call, FaultPlan, FaultSchedule, Scenario, Sim, SimBackend, SimError, Simulation,
};
use flowline::testing::test_config;
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct SignedUp {
    user: u64,
}
impl Event for SignedUp {
    const TOPIC: &'static str = "user.signed_up";
}

/// Welcomes each user who signs up. The careless version sends its mail
/// (counts it) outside the commit, so a run that is repeated (a lost
/// acknowledgement, a crash) sends it twice.
struct Welcome {
    careless: bool,
    sent: Arc<AtomicU64>,
    signed_up: u64,
}

impl Welcome {
    fn new(careless: bool) -> Self {
        Welcome {
            careless,
            sent: Arc::new(AtomicU64::new(0)),
            signed_up: 0,
        }
    }
}

fn tenant() -> TenantId {
    TenantId::new("app").unwrap()
}

#[async_trait(?Send)]
impl Scenario for Welcome {
    fn boot(&self) -> Boot {
        let (careless, sent) = (self.careless, self.sent.clone());
        Arc::new(move || {
            let sent = sent.clone();
            let flow = Flow::builder()
                .external::<SignedUp>()
                .step(Step::event::<SignedUp>("welcome").handle(
                    move |ctx: StepContext, signup: SignedUp| {
                        let sent = sent.clone();
                        async move {
                            let key = format!("welcomed/{}", signup.user);
                            if careless {
                                sent.fetch_add(1, Ordering::SeqCst);
                            } else if ctx.get::<bool>(&key).await?.is_none() {
                                ctx.put("sent", &(ctx.get::<u64>("sent").await?.unwrap_or(0) + 1))?;
                            }
                            ctx.put(&key, &true)?;
                            Ok::<_, StepError>(())
                        }
                    },
                ))
                .build()?;
            Ok(Engine::builder(flow).config(test_config()))
        })
    }

    async fn act(&mut self, sim: &mut Sim, index: usize) -> Result<(), SimError> {
        let signup = SignedUp { user: index as u64 };
        let key = format!("signup-{index}");
        loop {
            match sim.engine().emit_once(&tenant(), &signup, &key).await {
                Ok(_) => break,
                Err(_) => sim.advance(Duration::from_millis(500)).await?,
            }
        }
        self.signed_up += 1;
        let pause = sim.rng().random_range(0..3_000);
        sim.advance(Duration::from_millis(pause)).await
    }

    async fn finish(&mut self, sim: &mut Sim) -> Result<(), SimError> {
        sim.advance(Duration::from_secs(600)).await?;
        let sent = if self.careless {
            self.sent.load(Ordering::SeqCst)
        } else {
            sim.engine()
                .state::<u64>(&tenant(), "sent")
                .await?
                .unwrap_or(0)
        };
        ensure(sent == self.signed_up, || {
            format!("{sent} welcome mails for {} signups", self.signed_up)
        })
    }
}

fn hostile() -> FaultPlan {
    FaultPlan::none()
        .errors(Call::Complete, 0.05)
        .lost_acks(0.05)
        .crashes(0.01, 3)
}

#[test]
fn one_seed_runs_the_same_every_time_on_memory_and_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    for backend in [SimBackend::memory(), SimBackend::sqlite_in(dir.path())] {
        let simulation = Simulation::new(|_| Welcome::new(false))
            .backend(backend)
            .faults(hostile())
            .keep_trace(true);
        let (first, trace) = simulation.run_traced(11, 40, None).unwrap();
        let (again, trace_again) = simulation.run_traced(11, 40, None).unwrap();
        assert!(!first.struck.is_empty(), "faults struck");
        assert_eq!(
            trace.lines(),
            trace_again.lines(),
            "on {}",
            simulation.backend_name()
        );
        assert_eq!(first, again);
        let replayed = simulation.replay(11, 40, &first.struck).unwrap();
        assert_eq!(
            replayed.digest, first.digest,
            "the schedule replays the run"
        );
        let other = simulation.run(12, 40).unwrap();
        assert_ne!(other.digest, first.digest, "another seed, another run");
    }
}

#[test]
fn an_effect_outside_the_commit_is_caught_replayed_and_shrunk() {
    let simulation = Simulation::new(|_| Welcome::new(true)).faults(hostile());
    let failure = (0..20)
        .find_map(|seed| simulation.run(seed, 60).err())
        .expect("some seed sends a welcome twice");
    assert!(matches!(failure.error, SimError::Violated(_)), "{failure}");
    let again = simulation
        .replay(failure.seed, failure.size, &failure.struck)
        .expect_err("the failure replays from its faults");
    assert_eq!(again.error.to_string(), failure.error.to_string());
    let shrunk = simulation.shrink(&failure, 100);
    assert!(shrunk.reproduced);
    assert!(
        shrunk.failure.struck.len() <= 2 && shrunk.failure.size <= failure.size,
        "shrunk to {} faults and {} signups, from {} and {}",
        shrunk.failure.struck.len(),
        shrunk.failure.size,
        failure.struck.len(),
        failure.size
    );
    let careful = Simulation::new(|_| Welcome::new(false)).faults(hostile());
    careful
        .replay(
            shrunk.failure.seed,
            shrunk.failure.size,
            &shrunk.failure.struck,
        )
        .expect("the careful flow passes where the careless one failed");
}

#[test]
fn a_schedule_that_does_not_parse_is_a_typed_error() {
    let bad = "12:error,40:explode".parse::<FaultSchedule>().unwrap_err();
    assert!(bad.to_string().contains("40:explode"), "{bad}");
    let plan = FaultPlan::none().lost_acks(2.0);
    let refused = Simulation::new(|_| Welcome::new(false))
        .faults(plan)
        .run(1, 1)
        .unwrap_err();
    assert!(
        refused.error.to_string().contains("between 0 and 1"),
        "{}",
        refused.error
    );
}

/// Seeds the simulation failed on before the fixes of the flow-control gate
/// (slots that lapsed while their executions ran were taken again after a
/// clock jump; a hold across a jump taught a key a mean hold of hours),
/// each kept as a regression case.
#[test]
fn the_order_system_keeps_its_invariants_on_its_regression_seeds() {
    let simulation = Simulation::new(OrderScenario::new);
    for (seed, orders) in REGRESSION_SEEDS {
        if let Err(failure) = simulation.run(seed, orders) {
            panic!("{failure}");
        }
    }
}

/// (seed, orders) pairs that once failed. The seeds hold for the scenario's
/// draws as they are; a change to those needs them found again with
/// `examples/simulate.rs`.
///
/// - 23 and 42: with the engine's slot renewal taken out (`Budget::renew`
///   not called), a store has 3 or 4 payments at the gateway at once, limit 2.
/// - 1000056: before a slot's hold was capped at its lease, holds across
///   clock jumps taught store X's payment key a mean hold of hours; its
///   waiters came back far apart, order o-61's payment waited 18 hours and
///   ran out of its retry budget. (1000179 and 1000423 of the long run
///   failed the same way.)
/// - 1000117: a payment of store Y waits in its store's line while the
///   clock jumps again and again; its three attempts span 27 hours of clock,
///   most of it jumps, and its third failure finds its 24-hour retry budget
///   spent. The engine gives up by the clock
///   by design; the dead letter is the jumps' doing, and the scenario now
///   tells it apart (`Sim::jumped_between`) rather than calling it
///   unexplained. (1000004 and 1000024 of the long run were the same.)
/// - 1002866: when one commit of a batch's re-runs (executions that met a
///   conflict) failed, the batch dropped the re-runs still waiting their
///   round; each lost an attempt to its lease without running, and order
///   o-297's screening, conflicting on its customer's history batch after
///   batch, dead-lettered after 8 such attempts. (Seven more seeds of the
///   long run of 10,000 failed the same way.)
const REGRESSION_SEEDS: [(u64, usize); 5] = [
    (23, 500),
    (42, 500),
    (1_000_056, 1000),
    (1_000_117, 1000),
    (1_002_866, 1000),
];

/// Seeds the simulation with webhooks failed on, kept as regression cases.
///
/// - 28: deliveries held back by an endpoint's concurrency limit went back
///   to their leases when the commit deferring them failed, and each such
///   lease counted an attempt; a message waiting in line through a few of
///   those dead-lettered with its five attempts unspent on the receiver.
///   (79, 164, 171 and 183 of the first 200 seeds failed the same way; 85
///   failed as 1002866 above did.)
/// - 197: a run of slow reads timed one message's executions out five times
///   in a minute, with the sender allowed 5 s beyond its POST's timeout and
///   5 engine attempts; the message dead-lettered though the receiver never
///   refused it.
#[cfg(feature = "webhooks")]
#[test]
fn the_order_system_with_webhooks_keeps_its_invariants_on_its_regression_seeds() {
    let simulation = Simulation::new(|seed| OrderScenario::new(seed).with_webhooks());
    for (seed, orders) in [(28, 500), (197, 500)] {
        if let Err(failure) = simulation.run(seed, orders) {
            panic!("{failure}");
        }
    }
}
