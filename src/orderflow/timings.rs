//! [`Timings`]: how long the order flow's durable timers wait.

use std::time::Duration;

use crate::retry::RetryPolicy;

/// How long the durable timers of fraud review, payment and delivery wait.
#[derive(Clone, Debug, PartialEq)]
pub struct Timings {
    /// How long an order held by fraud screening waits for its review
    /// (`fraud.verified`). An order nobody reviewed in time is rejected, with
    /// the milestone `REVIEW_EXPIRED`: a hold never charges by default.
    pub review_timeout: Duration,
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
    /// A product's low-stock alert waits until its stock signals were quiet
    /// this long, so a product that dips under its threshold and back again
    /// raises no alert, and one that stays low raises one.
    pub low_stock_quiet: Duration,
    /// ...and at most this long after the first signal.
    pub low_stock_max_wait: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            review_timeout: Duration::from_secs(48 * 3600),
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
            low_stock_quiet: Duration::from_secs(5),
            low_stock_max_wait: Duration::from_secs(60),
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
