//! The fraud rules (SEED_SPEC §1.3), as a pure decision over an order and the
//! store's recent history. The seed's numbers are kept; its two rules that could
//! never fire (failed payments) get the history they need, and every count is
//! per store rather than across all stores (§8.6).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::money::Money;
use crate::time::Timestamp;

/// Above this amount (in major units of the order's currency) an order is large.
pub const HIGH_AMOUNT_MAJOR: i64 = 10_000;
/// More units than this in one order is unusual.
pub const HIGH_QUANTITY: u64 = 100;
/// This many orders by one customer within [`RAPID_WINDOW`] is rapid.
pub const RAPID_ORDERS: usize = 5;
/// The window for [`RAPID_ORDERS`].
pub const RAPID_WINDOW: Duration = Duration::from_secs(3600);
/// This many failed payments by one customer within [`FAILED_WINDOW`] is suspicious.
pub const FAILED_PAYMENTS: usize = 3;
/// The window for [`FAILED_PAYMENTS`].
pub const FAILED_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// This many indicators flag an order.
pub const FLAG_AT: usize = 2;

/// One reason to doubt an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Indicator {
    /// The amount is above [`HIGH_AMOUNT_MAJOR`].
    HighAmount,
    /// More than [`HIGH_QUANTITY`] units.
    HighQuantity,
    /// [`RAPID_ORDERS`] or more orders by the customer within an hour, this one included.
    RapidOrders,
    /// [`FAILED_PAYMENTS`] or more failed payments by the customer within a day.
    FailedPayments,
}

impl Indicator {
    /// The seed's wording.
    pub fn label(self) -> &'static str {
        match self {
            Indicator::HighAmount => "High order amount",
            Indicator::HighQuantity => "Unusually high quantity",
            Indicator::RapidOrders => "Rapid successive orders",
            Indicator::FailedPayments => "Multiple failed payments",
        }
    }
}

/// What the fraud rules look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Screening<'a> {
    /// The order's total.
    pub amount: Money,
    /// Units across all lines.
    pub quantity: u64,
    /// When it was placed.
    pub at: Timestamp,
    /// When the same customer placed orders in this store (this one included).
    pub recent_orders: &'a [Timestamp],
    /// When the same customer's payments failed in this store.
    pub recent_failures: &'a [Timestamp],
}

/// The outcome of screening.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// What matched.
    pub indicators: Vec<Indicator>,
}

impl Verdict {
    /// At least [`FLAG_AT`] indicators: hold the order for review.
    pub fn flagged(&self) -> bool {
        self.indicators.len() >= FLAG_AT
    }

    /// The indicators' labels, joined as the seed's `order.flagged` reason was.
    pub fn reason(&self) -> String {
        self.indicators
            .iter()
            .map(|i| i.label())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn within(times: &[Timestamp], now: Timestamp, window: Duration) -> usize {
    let since = now - window;
    times.iter().filter(|t| **t > since && **t <= now).count()
}

/// Applies the rules.
///
/// ```
/// use flowline::orderflow::{screen, Currency, Money, Screening};
/// use flowline::Timestamp;
/// let now = Timestamp::from_millis(1_767_225_600_000);
/// let verdict = screen(&Screening {
///     amount: Money::new(1_009_800, Currency::USD), // 10,098.00: 102 units at 99.00
///     quantity: 102,
///     at: now,
///     recent_orders: &[now],
///     recent_failures: &[],
/// });
/// assert!(verdict.flagged());
/// assert_eq!(verdict.reason(), "High order amount, Unusually high quantity");
/// ```
pub fn screen(s: &Screening<'_>) -> Verdict {
    let mut indicators = Vec::new();
    let scale = 10i64.pow(s.amount.currency.exponent());
    // Strictly above the threshold, as the seed compared.
    if s.amount.minor > HIGH_AMOUNT_MAJOR.saturating_mul(scale) {
        indicators.push(Indicator::HighAmount);
    }
    if s.quantity > HIGH_QUANTITY {
        indicators.push(Indicator::HighQuantity);
    }
    if within(s.recent_orders, s.at, RAPID_WINDOW) >= RAPID_ORDERS {
        indicators.push(Indicator::RapidOrders);
    }
    if within(s.recent_failures, s.at, FAILED_WINDOW) >= FAILED_PAYMENTS {
        indicators.push(Indicator::FailedPayments);
    }
    Verdict { indicators }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orderflow::money::Currency;

    const NOW: Timestamp = Timestamp::from_millis(1_767_225_600_000);

    fn minutes_ago(m: u64) -> Timestamp {
        NOW - Duration::from_secs(60 * m)
    }

    fn screening<'a>(
        minor: i64,
        quantity: u64,
        orders: &'a [Timestamp],
        failures: &'a [Timestamp],
    ) -> Screening<'a> {
        Screening {
            amount: Money::new(minor, Currency::USD),
            quantity,
            at: NOW,
            recent_orders: orders,
            recent_failures: failures,
        }
    }

    #[test]
    fn one_indicator_clears_two_flag() {
        let high_amount = screen(&screening(1_000_001, 1, &[NOW], &[]));
        assert_eq!(high_amount.indicators, [Indicator::HighAmount]);
        assert!(!high_amount.flagged());
        let exactly_10k = screen(&screening(1_000_000, 100, &[NOW], &[]));
        assert!(exactly_10k.indicators.is_empty(), "thresholds are strict");
        let both = screen(&screening(1_000_001, 101, &[NOW], &[]));
        assert!(both.flagged());
    }

    #[test]
    fn history_counts_only_within_its_window() {
        let five_in_an_hour = [
            NOW,
            minutes_ago(10),
            minutes_ago(20),
            minutes_ago(30),
            minutes_ago(59),
        ];
        let four_in_an_hour = [
            NOW,
            minutes_ago(10),
            minutes_ago(20),
            minutes_ago(61),
            minutes_ago(90),
        ];
        let three_failures = [minutes_ago(5), minutes_ago(600), minutes_ago(23 * 60)];
        let stale_failures = [minutes_ago(5), minutes_ago(600), minutes_ago(25 * 60)];
        let rapid = screen(&screening(100, 1, &five_in_an_hour, &three_failures));
        assert_eq!(
            rapid.indicators,
            [Indicator::RapidOrders, Indicator::FailedPayments]
        );
        assert!(rapid.flagged());
        let calm = screen(&screening(100, 1, &four_in_an_hour, &stale_failures));
        assert!(calm.indicators.is_empty(), "{:?}", calm.indicators);
    }

    #[test]
    fn the_amount_rule_reads_major_units_of_the_currency() {
        let yen = Currency::new("JPY").unwrap();
        let verdict = screen(&Screening {
            amount: Money::new(10_001, yen),
            ..screening(0, 1, &[], &[])
        });
        assert_eq!(verdict.indicators, [Indicator::HighAmount]);
    }
}
