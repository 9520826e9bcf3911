//! [`Orderflow`]: the order steps, wired to a gateway and a carrier, with their
//! [`Timings`].

use std::fmt;
use std::sync::Arc;

use super::carrier::Carrier;
use super::events::{AppStartup, RestockRequested, SeedCatalogue};
use super::gateway::PaymentGateway;
use super::limits::OrderLimits;
use super::steps::{self, Deps};
use super::timings::Timings;
use crate::engine::Step;
use crate::engine::{Flow, FlowError};

/// The order lifecycle as steps: build it, then take its [`flow`](Self::flow).
///
/// ```
/// use flowline::orderflow::{MockCarrier, MockGateway, Orderflow};
/// use flowline::Clock;
///
/// let gateway = MockGateway::builder().seed(7).approval_rate(0.9).build(Clock::system())?;
/// let flow = Orderflow::new(gateway, MockCarrier::new(7)).flow()?;
/// assert_eq!(flow.step_names().len(), 24);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Orderflow {
    gateway: Arc<dyn PaymentGateway>,
    carrier: Arc<dyn Carrier>,
    timings: Timings,
    limits: OrderLimits,
}

impl fmt::Debug for Orderflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Orderflow")
            .field("timings", &self.timings)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Orderflow {
    /// The order steps, charging through `gateway` and shipping through `carrier`.
    pub fn new(gateway: impl PaymentGateway, carrier: impl Carrier) -> Self {
        Orderflow {
            gateway: Arc::new(gateway),
            carrier: Arc::new(carrier),
            timings: Timings::default(),
            limits: OrderLimits::default(),
        }
    }

    /// Replaces the timings.
    #[must_use]
    pub fn timings(mut self, timings: Timings) -> Self {
        self.timings = timings;
        self
    }

    /// Replaces the flow-control limits ([`OrderLimits`]).
    #[must_use]
    pub fn limits(mut self, limits: OrderLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The steps, for hosts that add them to a flow of their own.
    pub fn steps(&self) -> Vec<Step> {
        let deps = Deps {
            gateway: self.gateway.clone(),
            carrier: self.carrier.clone(),
            timings: Arc::new(self.timings.clone()),
            limits: Arc::new(self.limits.clone()),
        };
        let mut all = vec![
            steps::order_create_api::step(&deps),
            steps::order_submission_api::step(&deps),
        ];
        all.extend(steps::fraud_guard::steps(&deps));
        all.extend(steps::fraud_review::steps());
        all.push(steps::inventory_update::step());
        all.push(steps::order_cancel_api::step());
        all.push(steps::payment_processing::step(&deps));
        all.extend(steps::check_inventory::steps(&deps));
        all.push(steps::order_fulfillment::step(&deps));
        all.push(steps::delivery::step(&deps));
        all.push(steps::order_tracking_api::step());
        all.push(steps::alert_listener::step());
        all.push(steps::alert_listener::low_stock_step(&deps));
        all.extend(steps::alerts_api::steps());
        all.push(steps::dashboard_stats_api::step());
        all.push(steps::db_init::step());
        all.push(steps::seed_database::step());
        all.push(steps::catalogue_api::step());
        all
    }

    /// The whole flow with `extra` steps of the host's (webhooks, say).
    ///
    /// # Errors
    /// [`FlowError`] if the stock-check cron expression is invalid or a
    /// step's name is taken.
    pub fn flow_with(&self, extra: impl IntoIterator<Item = Step>) -> Result<Flow, FlowError> {
        Flow::builder()
            .external::<AppStartup>()
            .external::<SeedCatalogue>()
            .external::<RestockRequested>()
            .steps(self.steps())
            .steps(extra)
            .build()
    }

    /// The steps of orderflow's webhooks (SR-3.1's `webhook.dispatcher`):
    /// `webhooks`' own, and one raising the store's alert when an endpoint
    /// is disabled. Make `webhooks` with [`WEBHOOK_TOPICS`](super::WEBHOOK_TOPICS).
    ///
    /// # Errors
    /// The webhooks' HTTP client could not be built.
    #[cfg(feature = "webhooks")]
    pub fn webhook_steps(
        webhooks: &crate::webhooks::Webhooks,
    ) -> Result<Vec<Step>, crate::webhooks::WebhookSetupError> {
        let mut steps = webhooks.steps()?;
        steps.push(steps::webhook_alerts::step());
        Ok(steps)
    }

    /// The whole flow: the steps, and the events a host emits into it
    /// (`app.startup`, `catalogue.seed_requested`, `inventory.restock_requested`).
    ///
    /// # Errors
    /// [`FlowError`] if the stock-check cron expression is invalid.
    pub fn flow(&self) -> Result<Flow, FlowError> {
        self.flow_with(Vec::new())
    }
}
