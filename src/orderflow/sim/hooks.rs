//! The run's webhooks (feature `webhooks`, [`OrderScenario::with_webhooks`]):
//! an endpoint per store for its orders' events, delivered to a
//! [`SimReceiver`], and what must hold of them.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::Value;

use super::receiver::{Manners, SimReceiver};
use super::OrderScenario;
use crate::backend::DeadLetter;
use crate::event::TenantId;
use crate::orderflow::WEBHOOK_TOPICS;
use crate::sim::{ensure, Sim, SimError};
use crate::time::Clock;
use crate::webhooks::{Destinations, EndpointSpec, WebhookOptions, Webhooks, SENDER};

/// Attempts at one message before the sender gives up (the dead letter is
/// replayed at the end): a receiver failing 32% of attempts, the most a seed
/// draws, makes the sender give up on about one message in 9,000 (0.32^8).
const MAX_ATTEMPTS: u32 = 8;

/// Attempts in flight per endpoint at most.
pub const WEBHOOKS_IN_FLIGHT: u32 = 2;

/// The webhooks of a run, and the receiver they go to.
#[derive(Clone, Debug)]
pub(super) struct Hooks {
    pub(super) webhooks: Webhooks,
    receiver: SimReceiver,
}

impl Hooks {
    pub(super) fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x686f_6f6b_7300);
        let manners = Manners::draw(&mut rng);
        // On a clock of its own that starts where the simulation's does: the
        // two advance together with tokio's paused clock.
        let clock = Clock::starting_at(crate::testing::TEST_EPOCH);
        let receiver = SimReceiver::new(manners, seed ^ 0x7265_6365_6976, clock);
        // Never disabled and never too old within a run: the invariants say
        // every message arrives.
        let month = Duration::from_secs(30 * 24 * 3600);
        let options = WebhookOptions::default()
            .timeout(Duration::from_secs(10))
            .backoff(Duration::from_secs(1), Duration::from_secs(60))
            .give_up_after(MAX_ATTEMPTS, month)
            .disable_after(month)
            .per_endpoint(WEBHOOKS_IN_FLIGHT)
            .destinations(Destinations::public_only());
        let webhooks = Webhooks::new(WEBHOOK_TOPICS)
            .options(options)
            .transport(receiver.clone());
        Hooks { webhooks, receiver }
    }

    /// The endpoint of `store`'s orders.
    fn url(store: &TenantId) -> String {
        format!(
            "https://hooks.{}.example/orders",
            store.as_str().to_lowercase()
        )
    }

    /// Registers each store's endpoint for its orders' events.
    pub(super) async fn register(&self, sim: &Sim, stores: &[TenantId]) -> Result<(), SimError> {
        let endpoints = self.webhooks.endpoints(sim.engine().clone());
        for store in stores {
            let url = Hooks::url(store);
            let mut spec = EndpointSpec::new(url.clone(), ["order.*"]);
            spec.secret = Some(self.receiver.secret_for(&url));
            endpoints
                .register(store, spec)
                .await
                .map_err(|e| SimError::Other(Box::new(e)))?;
        }
        Ok(())
    }

    /// What must hold at every instant: no endpoint over its limit, nothing
    /// a receiver should never get.
    pub(super) fn check_now(&self, stores: &[TenantId]) -> Result<(), SimError> {
        for store in stores {
            let most = self.receiver.most_in_flight(&Hooks::url(store));
            ensure(most <= WEBHOOKS_IN_FLIGHT, || {
                format!("{store}'s endpoint had {most} webhook attempts at once (limit {WEBHOOKS_IN_FLIGHT})")
            })?;
        }
        match self.receiver.first_wrong() {
            Some(wrong) => Err(SimError::violated(format!("webhook receiver: {wrong}"))),
            None => Ok(()),
        }
    }

    /// What must hold at the end: every accepted order's `order.created`
    /// reached its store's endpoint at least once.
    pub(super) fn check_end(&self, scenario: &OrderScenario) -> Result<(), SimError> {
        let mut created: BTreeMap<(String, String), (bool, u32)> = BTreeMap::new();
        for arrival in self.receiver.arrivals().into_values() {
            let body: Value = serde_json::from_str(&arrival.body).unwrap_or_default();
            if body["type"] == "order.created" {
                if let Some(order) = body["data"]["orderId"].as_str() {
                    let seen = created.entry((arrival.url, order.to_string())).or_default();
                    seen.0 |= arrival.taken;
                    seen.1 += arrival.failed;
                }
            }
        }
        for (store, id) in scenario.orders.keys() {
            let url = Hooks::url(&scenario.stores[*store]);
            let taken = created.get(&(url, id.clone())).copied();
            ensure(taken.is_some_and(|(taken, _)| taken), || {
                format!(
                    "order {}/{id}: its order.created webhook {}",
                    scenario.stores[*store],
                    match taken {
                        Some((_, failed)) => format!("came {failed} times and was never taken in"),
                        None => "never reached the endpoint".to_string(),
                    }
                )
            })?;
        }
        Ok(())
    }

    /// Whether the receiver made this dead letter: the sender gave up on a
    /// message the receiver refused, lost or answered late at least
    /// [`MAX_ATTEMPTS`] times.
    pub(super) fn made(&self, dead: &DeadLetter) -> bool {
        if dead.step.as_str() != SENDER {
            return false;
        }
        let payload: Value = serde_json::from_str(dead.event.payload.as_json()).unwrap_or_default();
        let Some(id) = payload["messageId"].as_str() else {
            return false;
        };
        self.receiver.failures(id) >= MAX_ATTEMPTS
    }
}
