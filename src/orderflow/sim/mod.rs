//! The order system under simulation (features `orderflow` and `test-util`):
//! [`OrderScenario`], a [`Scenario`] whose seed draws three stores' settings,
//! a faulty payment gateway and carrier, and a workload of orders, repeated
//! requests, cancellations, fraud reviews, restocks, waits, clock jumps and
//! replays of dead letters; and the invariants the order system keeps
//! whatever the faults ([`invariants`](self#invariants)).
//!
//! ```
//! use flowline::orderflow::sim::OrderScenario;
//! use flowline::sim::{FaultPlan, Simulation};
//!
//! let simulation = Simulation::new(OrderScenario::new).faults(FaultPlan::default());
//! let report = simulation.run(7, 20)?;
//! assert_eq!(simulation.run(7, 20)?.digest, report.digest, "one seed, one run");
//! # Ok::<(), Box<flowline::sim::SimFailure>>(())
//! ```
//!
//! # Invariants
//!
//! After every action (the order system must keep these at every instant):
//! * every product's counts add up (available + reserved + sold = initial +
//!   restocked) and none is negative;
//! * no store ever has more payments at the gateway at once than its limit
//!   ([`PAYMENTS_IN_FLIGHT`]);
//! * every dead letter is one the world made: a permanent fault's, a step's
//!   whose retries the backend's faults used up, one whose retry time the
//!   clock's jumps used up, a payment's that outlasted its retries while the
//!   gateway kept failing, or (with webhooks) a message the receiver refused
//!   on every attempt.
//!
//! At the end, once the faults have stopped and the flow has settled:
//! * every accepted order exists once, and is terminal or held for review;
//! * nothing is reserved, and what is sold is what delivered orders bought;
//! * the gateway captured at most once per order, never for a rejected one,
//!   once for every delivered or returned one, and kept money exactly for
//!   the delivered ones (refunds never exceed captures);
//! * each store's dashboard (orders, orders by status, revenue) equals a
//!   recount from the orders and the gateway's ledger;
//! * no store placed more orders in any stretch of time than its intake
//!   limit lets through ([`INTAKE_PER_SECOND`], [`INTAKE_BURST`]);
//! * no dead letter is left (each the world made was replayed).

mod client;
mod gateway;
#[cfg(feature = "webhooks")]
mod hooks;
mod in_flight;
mod invariants;
#[cfg(feature = "webhooks")]
mod receiver;
mod workload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

pub use gateway::SimGateway;
#[cfg(feature = "webhooks")]
pub use hooks::WEBHOOKS_IN_FLIGHT;
#[cfg(feature = "webhooks")]
pub use receiver::SimReceiver;

use crate::backend::{DeadLetter, FailureKind};
use crate::engine::Engine;
use crate::event::TenantId;
use crate::orderflow::{
    self, MockCarrier, MockGateway, OrderLimits, Orderflow, Product, SeedCatalogue, SeedProduct,
    StoreConfig, StoreSettings, DEMO_PRICE,
};
use crate::sim::{Boot, Scenario, Sim, SimError, PERMANENT_FAULT, STRUCK};
use crate::time::Clock;

/// The stores of the simulated world.
pub const STORES: [&str; 3] = ["X", "Y", "Z"];

/// Payments one store may have in flight: low, so that the limit binds.
pub const PAYMENTS_IN_FLIGHT: u32 = 2;

/// Orders one store may place a second, and at once: low, so that the
/// workload meets `429`s.
pub const INTAKE_PER_SECOND: u32 = 2;

/// See [`INTAKE_PER_SECOND`].
pub const INTAKE_BURST: u32 = 3;

/// The product of each store that big orders buy: held for review where
/// screening is on.
const BULK: &str = "bulk";

/// What a seed decides of the world before the workload starts.
#[derive(Clone, Debug)]
struct World {
    approval_rate: f64,
    server_error_rate: f64,
    lost_response_rate: f64,
    /// Seconds after the start at which the gateway is down for a while.
    outage: Option<(u64, u64)>,
    carrier_failures: f64,
    /// Stores with fraud screening off.
    unscreened: [bool; 3],
}

impl World {
    fn draw(seed: u64) -> World {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x0077_6f72_6c64);
        World {
            approval_rate: rng.random_range(0.5..=1.0),
            server_error_rate: rng.random_range(0.0..=0.3),
            lost_response_rate: rng.random_range(0.0..=0.2),
            outage: rng
                .random_bool(0.5)
                .then(|| (rng.random_range(0..3_600), rng.random_range(10..=600))),
            carrier_failures: rng.random_range(0.0..=0.4),
            unscreened: [rng.random(), rng.random(), rng.random()],
        }
    }
}

/// An order the system accepted: its request, to send again.
#[derive(Clone, Debug)]
struct Placed {
    lines: Vec<(String, u32)>,
    key: String,
    body: Value,
    /// The first answer's body, which every repeat must get back.
    answer: Value,
    /// When its first and its last try were sent (ms): the intake admitted
    /// the order in between.
    sent: (i64, i64),
}

/// The order system under simulation: see the [module](self).
#[derive(Debug)]
pub struct OrderScenario {
    seed: u64,
    world: World,
    gateway: SimGateway,
    carrier: MockCarrier,
    limits: OrderLimits,
    stores: Vec<TenantId>,
    /// Accepted orders, by (store index, order id).
    orders: BTreeMap<(usize, String), Placed>,
    /// Units each (store index, product id) started with.
    initial: BTreeMap<(usize, String), u32>,
    placed: u64,
    /// The stores' webhooks and their receiver, if the run has them.
    #[cfg(feature = "webhooks")]
    hooks: Option<hooks::Hooks>,
}

impl OrderScenario {
    /// The world of `seed`.
    pub fn new(seed: u64) -> Self {
        let world = World::draw(seed);
        let epoch = crate::testing::TEST_EPOCH;
        let mut mock = MockGateway::builder()
            .seed(seed)
            .approval_rate(world.approval_rate)
            .server_error_rate(world.server_error_rate)
            .lost_response_rate(world.lost_response_rate);
        if let Some((at, length)) = world.outage {
            let from = epoch + Duration::from_secs(at);
            mock = mock.outage(from, from + Duration::from_secs(length));
        }
        // On a clock of its own that starts where the simulation's does: the
        // two advance together with tokio's paused clock.
        let mock = mock
            .build(Clock::starting_at(epoch))
            .expect("the world's rates are drawn between 0 and 1");
        OrderScenario {
            seed,
            gateway: SimGateway::new(mock, Duration::from_secs(3), seed ^ 0x6761_7465_0000),
            carrier: MockCarrier::new(seed).failed_attempt_rate(world.carrier_failures),
            limits: OrderLimits::default()
                .payments_in_flight(Some(PAYMENTS_IN_FLIGHT))
                .intake_rate(INTAKE_PER_SECOND, Duration::from_secs(1), INTAKE_BURST),
            world,
            stores: STORES
                .iter()
                .filter_map(|s| TenantId::new(*s).ok())
                .collect(),
            orders: BTreeMap::new(),
            initial: BTreeMap::new(),
            placed: 0,
            #[cfg(feature = "webhooks")]
            hooks: None,
        }
    }

    /// The same world with webhooks (feature `webhooks`): each store's
    /// endpoint gets its orders' events, through a [`SimReceiver`] that
    /// refuses, loses and delays answers as the seed says. Invariants
    /// besides: every message arrives signed, with one body per
    /// `webhook-id`; no endpoint ever has more than [`WEBHOOKS_IN_FLIGHT`]
    /// attempts at once; every accepted order's `order.created` reaches its
    /// store at least once. (A run with webhooks makes other calls than one
    /// without: the same seed is another run.)
    #[cfg(feature = "webhooks")]
    pub fn with_webhooks(mut self) -> Self {
        self.hooks = Some(hooks::Hooks::new(self.seed));
        self
    }

    /// The gateway the run charges, with its ledger.
    pub fn gateway(&self) -> &SimGateway {
        &self.gateway
    }

    /// Whether the world made this dead letter: a permanent fault, a step
    /// whose retries the backend's faults used up, one whose retry time the
    /// clock's jumps used up (see [`out_of_time_by_jumps`]), or a payment
    /// that outlasted its retries while the gateway kept failing (the order
    /// system dead-letters those on purpose, for an operator to replay once
    /// the gateway is back).
    fn expected(&self, sim: &Sim, dead: &DeadLetter) -> bool {
        dead.last_error == PERMANENT_FAULT
            || dead.last_error.contains(STRUCK)
            || (dead.step.as_str() == "payment_processing"
                && dead.last_error.contains("payment gateway"))
            || out_of_time_by_jumps(sim, dead)
            || self.receiver_made(dead)
    }

    /// Whether the webhook receiver made this dead letter.
    fn receiver_made(&self, _dead: &DeadLetter) -> bool {
        #[cfg(feature = "webhooks")]
        if let Some(hooks) = &self.hooks {
            return hooks.made(_dead);
        }
        false
    }

    /// The product ids of store `store`: four demo products and the bulk one.
    fn products(&self, store: usize) -> Vec<String> {
        let s = STORES[store].to_lowercase();
        let mut ids: Vec<String> = (1..=4).map(|i| format!("prod-{s}-{i:03}")).collect();
        ids.push(format!("prod-{s}-{BULK}"));
        ids
    }
}

#[async_trait(?Send)]
impl Scenario for OrderScenario {
    fn boot(&self) -> Boot {
        let orderflow =
            Orderflow::new(self.gateway.clone(), self.carrier.clone()).limits(self.limits.clone());
        #[cfg(feature = "webhooks")]
        let webhooks = self.hooks.as_ref().map(|h| h.webhooks.clone());
        Arc::new(move || {
            #[cfg(feature = "webhooks")]
            if let Some(webhooks) = &webhooks {
                let steps =
                    Orderflow::webhook_steps(webhooks).map_err(|e| SimError::Other(Box::new(e)))?;
                let flow = orderflow.flow_with(steps)?;
                return Ok(Engine::builder(flow).config(crate::testing::test_config()));
            }
            let flow = orderflow.flow()?;
            Ok(Engine::builder(flow).config(crate::testing::test_config()))
        })
    }

    async fn setup(&mut self, sim: &mut Sim) -> Result<(), SimError> {
        self.gateway.trace_to(sim.trace().clone());
        let configs: Vec<StoreConfig> = self
            .stores
            .iter()
            .zip(self.world.unscreened)
            .map(|(store, off)| StoreConfig {
                store: store.clone(),
                settings: StoreSettings::new(store.as_str()).screening(!off),
            })
            .collect();
        orderflow::bootstrap(sim.engine(), &configs).await?;
        orderflow::seed_demo(sim.engine()).await?;
        #[cfg(feature = "webhooks")]
        if let Some(hooks) = &self.hooks {
            hooks.register(sim, &self.stores).await?;
        }
        for (i, store) in self.stores.iter().enumerate() {
            let bulk = SeedProduct {
                product: Product {
                    id: self.products(i)[4].clone(),
                    name: "Bulk Cable".into(),
                    price: DEMO_PRICE,
                    threshold: 10,
                },
                stock: 400,
            };
            let seed = SeedCatalogue {
                products: vec![bulk],
            };
            sim.engine().emit(store, &seed).await?;
        }
        if !sim.settle(Duration::from_secs(600)).await? {
            return Err(SimError::Stuck("the stores were not set up".into()));
        }
        for i in 0..self.stores.len() {
            for product in self.products(i) {
                let (_, counts) = orderflow::stock_counts(sim.engine(), &self.stores[i], &product)
                    .await
                    .map_err(|e| SimError::Other(Box::new(e)))?
                    .ok_or_else(|| SimError::Stuck(format!("{product} was not seeded")))?;
                self.initial.insert((i, product), counts.available);
            }
        }
        sim.note(format_args!("seed {} world {:?}", self.seed, self.world));
        Ok(())
    }

    async fn act(&mut self, sim: &mut Sim, index: usize) -> Result<(), SimError> {
        self.act_once(sim, index).await
    }

    async fn check_always(&mut self, sim: &mut Sim) -> Result<(), SimError> {
        sim.faults().set_quiet(true);
        let checked = self.check_now(sim).await;
        sim.faults().set_quiet(false);
        checked
    }

    async fn finish(&mut self, sim: &mut Sim) -> Result<(), SimError> {
        self.settle_everything(sim).await?;
        self.check_end(sim).await
    }
}

/// Whether the clock's jumps, not the flow, used up a dead letter's retry
/// time: its step gave up for time with attempts left, and the time that
/// passed between its first attempt and its failure, less the jumps, would
/// have left room for the longest wait before another attempt.
///
/// A jump stands for a process suspended for hours: a retry budget bounded
/// in clock time runs on meanwhile, as it does in production (the engine
/// gives up by the clock, by design). A run with many jumps puts days on the
/// clock in minutes of work, and a delivery that waits in line through a few
/// of them (a store's payments, limited to a few at once) can find its day
/// spent at its next failure.
fn out_of_time_by_jumps(sim: &Sim, dead: &DeadLetter) -> bool {
    if dead.kind != FailureKind::Exhausted {
        return false;
    }
    let flow = sim.engine().flow();
    let Some(step) = flow.steps().iter().find(|s| s.name == dead.step) else {
        return false;
    };
    let policy = step.config.retry;
    let Some(limit) = policy.get_max_elapsed() else {
        return false;
    };
    let elapsed = dead.failed_at.saturating_since(dead.first_attempt_at);
    let jumped = sim.jumped_between(dead.first_attempt_at, dead.failed_at);
    let (_, longest_wait) = policy.delay_bounds(dead.attempts);
    dead.attempts < policy.get_max_attempts()
        && !jumped.is_zero()
        && elapsed.saturating_sub(jumped) + longest_wait <= limit
}
