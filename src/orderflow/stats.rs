//! The dashboard's counters, kept up to date by the steps as orders move, so
//! that reading them is a fixed handful of keys however many orders a store has.
//!
//! Each change is a commutative [`StepContext::add`]: steps of many orders
//! update the same counters at once without conflicting.

use serde::Serialize;

use super::money::Money;
use super::status::OrderStatus;
use crate::engine::{StateError, StepContext};

const ORDERS: &str = "stats/orders";
const CAPTURED: &str = "stats/captured";
const REFUNDED: &str = "stats/refunded";
const ACTIVE_ALERTS: &str = "stats/alerts_active";

fn status_key(status: OrderStatus) -> String {
    format!("stats/status/{}", status.as_str())
}

/// A new order, `pending`.
pub(crate) fn order_created(ctx: &StepContext) -> Result<(), StateError> {
    ctx.add(ORDERS, 1)?;
    ctx.add(&status_key(OrderStatus::Pending), 1)
}

/// An order moved from one status to another.
pub(crate) fn order_moved(
    ctx: &StepContext,
    from: OrderStatus,
    to: OrderStatus,
) -> Result<(), StateError> {
    ctx.add(&status_key(from), -1)?;
    ctx.add(&status_key(to), 1)
}

/// A charge was captured.
pub(crate) fn captured(ctx: &StepContext, amount: Money) -> Result<(), StateError> {
    ctx.add(CAPTURED, amount.minor)
}

/// A captured charge was refunded.
pub(crate) fn refunded(ctx: &StepContext, amount: Money) -> Result<(), StateError> {
    ctx.add(REFUNDED, amount.minor)
}

/// Alerts became active (+) or stopped being active (-).
pub(crate) fn active_alerts(ctx: &StepContext, delta: i64) -> Result<(), StateError> {
    ctx.add(ACTIVE_ALERTS, delta)
}

/// The counters, read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Counters {
    pub(crate) orders: i64,
    pub(crate) captured: i64,
    pub(crate) refunded: i64,
    pub(crate) active_alerts: i64,
    pub(crate) by_status: Vec<(OrderStatus, i64)>,
}

impl Counters {
    pub(crate) fn count(&self, status: OrderStatus) -> i64 {
        self.by_status
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    }
}

/// Reads every counter: 4 keys plus one per status.
pub(crate) async fn read(ctx: &StepContext) -> Result<Counters, StateError> {
    let get = |key: String| async move { Ok::<i64, StateError>(ctx.get(&key).await?.unwrap_or(0)) };
    let mut by_status = Vec::with_capacity(OrderStatus::ALL.len());
    for status in OrderStatus::ALL {
        by_status.push((status, get(status_key(status)).await?));
    }
    Ok(Counters {
        orders: get(ORDERS.into()).await?,
        captured: get(CAPTURED.into()).await?,
        refunded: get(REFUNDED.into()).await?,
        active_alerts: get(ACTIVE_ALERTS.into()).await?,
        by_status,
    })
}
