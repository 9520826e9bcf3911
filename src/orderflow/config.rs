//! [`Orderflow`]: the order steps, wired to a gateway and a carrier, with their
//! timings.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::carrier::Carrier;
use super::events::{AppStartup, RestockRequested, SeedCatalogue};
use super::gateway::PaymentGateway;
use super::steps::{self, Deps};
use crate::flow::{Flow, FlowError};
use crate::retry::RetryPolicy;
use crate::step::Step;

/// How long the durable timers of payment and delivery wait.
#[derive(Clone, Debug, PartialEq)]
pub struct Timings {
    /// Backoff between payment attempts the gateway could not answer; when it
    /// is exhausted the order's payment dead-letters (replay tries again).
    pub payment_retry: RetryPolicy,
    /// From label to handing the parcel over (the seed waited 2 s).
    pub ship_after: Duration,
    /// From shipped to in transit.
    pub in_transit_after: Duration,
    /// From in transit to out for delivery (with the two above, the seed's 10 s).
    pub out_for_delivery_after: Duration,
    /// From a failed delivery attempt to the next.
    pub redeliver_after: Duration,
    /// Delivery attempts before the parcel is returned.
    pub delivery_attempts: u32,
    /// Cron expression (with seconds) of the low-stock check.
    pub stock_check: String,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            payment_retry: RetryPolicy::exponential(
                Duration::from_millis(500),
                Duration::from_secs(60),
            )
            .max_attempts(12)
            .unlimited_elapsed(),
            ship_after: Duration::from_secs(2),
            in_transit_after: Duration::from_secs(3),
            out_for_delivery_after: Duration::from_secs(5),
            redeliver_after: Duration::from_secs(5),
            delivery_attempts: 3,
            stock_check: "0 * * * * *".to_string(),
        }
    }
}

impl Timings {
    /// No waiting between delivery stages (for measurements and tests).
    #[must_use]
    pub fn instant_delivery(mut self) -> Self {
        self.ship_after = Duration::ZERO;
        self.in_transit_after = Duration::ZERO;
        self.out_for_delivery_after = Duration::ZERO;
        self.redeliver_after = Duration::ZERO;
        self
    }
}

/// The order lifecycle as steps: build it, then take its [`flow`](Self::flow).
///
/// ```
/// use flowline::orderflow::{MockCarrier, MockGateway, Orderflow};
/// use flowline::Clock;
///
/// let gateway = MockGateway::builder().seed(7).approval_rate(0.9).build(Clock::system())?;
/// let flow = Orderflow::new(gateway, MockCarrier::new(7)).flow()?;
/// assert_eq!(flow.step_names().len(), 20);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Orderflow {
    gateway: Arc<dyn PaymentGateway>,
    carrier: Arc<dyn Carrier>,
    timings: Timings,
}

impl fmt::Debug for Orderflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Orderflow")
            .field("timings", &self.timings)
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
        }
    }

    /// Replaces the timings.
    #[must_use]
    pub fn timings(mut self, timings: Timings) -> Self {
        self.timings = timings;
        self
    }

    /// The steps, for hosts that add them to a flow of their own.
    pub fn steps(&self) -> Vec<Step> {
        let deps = Deps {
            gateway: self.gateway.clone(),
            carrier: self.carrier.clone(),
            timings: Arc::new(self.timings.clone()),
        };
        let mut all = vec![
            steps::order_create_api::step(),
            steps::order_submission_api::step(),
        ];
        all.extend(steps::fraud_guard::steps());
        all.push(steps::inventory_update::step());
        all.push(steps::order_cancel_api::step());
        all.push(steps::payment_processing::step(&deps));
        all.extend(steps::check_inventory::steps(&deps));
        all.push(steps::order_fulfillment::step(&deps));
        all.push(steps::delivery::step(&deps));
        all.push(steps::order_tracking_api::step());
        all.push(steps::alert_listener::step());
        all.extend(steps::alerts_api::steps());
        all.push(steps::dashboard_stats_api::step());
        all.push(steps::db_init::step());
        all.push(steps::seed_database::step());
        all
    }

    /// The whole flow: the steps, and the events a host emits into it
    /// (`app.startup`, `catalogue.seed_requested`, `inventory.restock_requested`).
    ///
    /// # Errors
    /// [`FlowError`] if the stock-check cron expression is invalid.
    pub fn flow(&self) -> Result<Flow, FlowError> {
        Flow::builder()
            .external::<AppStartup>()
            .external::<SeedCatalogue>()
            .external::<RestockRequested>()
            .steps(self.steps())
            .build()
    }
}
