//! The 14 order steps, one module each, and what they share.

use std::sync::Arc;

use crate::engine::StepContext;
use crate::engine::{FailureContext, ResultExt, StepError, StepFailure};
use crate::event::Inbound;
use crate::time::Timestamp;

use super::carrier::Carrier;
use super::events::OrderStalled;
use super::gateway::PaymentGateway;
use super::limits::OrderLimits;
use super::model::{keys, Milestone, Order};
use super::stats;
use super::status::OrderStatus;
use super::timings::Timings;
use super::validate::MAX_ORDER_ID_LEN;

pub(crate) mod alert_listener;
pub(crate) mod alerts_api;
pub(crate) mod catalogue_api;
pub(crate) mod check_inventory;
pub(crate) mod dashboard_stats_api;
pub(crate) mod db_init;
pub(crate) mod delivery;
pub(crate) mod fraud_guard;
pub(crate) mod fraud_review;
pub(crate) mod inventory_update;
pub(crate) mod order_cancel_api;
pub(crate) mod order_create_api;
pub(crate) mod order_fulfillment;
pub(crate) mod order_submission_api;
pub(crate) mod order_tracking_api;
pub(crate) mod payment_processing;
pub(crate) mod seed_database;
mod shelf;
#[cfg(feature = "webhooks")]
pub(crate) mod webhook_alerts;

/// What the steps are wired to.
#[derive(Clone)]
pub(crate) struct Deps {
    pub(crate) gateway: Arc<dyn PaymentGateway>,
    pub(crate) carrier: Arc<dyn Carrier>,
    pub(crate) timings: Arc<Timings>,
    pub(crate) limits: Arc<OrderLimits>,
}

/// Moves an order on, keeping the dashboard's counts per status with it.
/// Returns the status it left.
pub(crate) fn move_order(
    ctx: &StepContext,
    order: &mut Order,
    to: OrderStatus,
    milestone: &str,
    at: Timestamp,
    note: Option<String>,
) -> Result<OrderStatus, StepError> {
    let from = order.move_to(to, milestone, at, note)?;
    stats::order_moved(ctx, from, to)?;
    Ok(from)
}

/// An outside service's failure, which knows whether it is worth another try.
pub(crate) trait ServiceError: std::error::Error + Send + Sync + 'static {
    /// Worth trying again later.
    fn is_retryable(&self) -> bool;
}

impl ServiceError for crate::orderflow::GatewayError {
    fn is_retryable(&self) -> bool {
        crate::orderflow::GatewayError::is_retryable(self)
    }
}

impl ServiceError for crate::orderflow::CarrierError {
    fn is_retryable(&self) -> bool {
        crate::orderflow::CarrierError::is_retryable(self)
    }
}

/// A failure of an outside service as the engine should treat it: retried
/// with the step's policy if the service says so, dead-lettered at once if not.
pub(crate) fn classify(err: impl ServiceError) -> StepError {
    if err.is_retryable() {
        StepError::retryable(err)
    } else {
        StepError::permanent(err)
    }
}

/// A failure hook for a step that works on orders: when the engine gives up
/// on a delivery, `order.stalled` goes out with the dead letter, naming the
/// order (`order_of` reads it from the step's input), and the alert listener
/// raises an alert. The order stays where it was; replaying the dead letter
/// once the cause is mended takes it on. An input that does not decode names
/// no order: its dead letter speaks for itself.
pub(crate) fn announce_stall<I: Inbound>(
    step: &'static str,
    order_of: fn(I) -> String,
) -> impl Fn(&FailureContext, &StepFailure) -> Result<(), StepError> + Send + Sync + 'static {
    move |cx, failure| {
        let Ok(input) = failure.input::<I>() else {
            return Ok(());
        };
        cx.emit(&OrderStalled {
            order_id: order_of(input),
            step: step.to_string(),
            kind: failure.kind().as_str().to_string(),
            attempts: failure.attempts(),
            error: failure.error().chars().take(500).collect(),
        })?;
        Ok(())
    }
}

/// The order, if this store has it. An id longer than intake accepts names
/// no order (and might make a key longer than the state allows).
pub(crate) async fn load_order(
    ctx: &StepContext,
    order_id: &str,
) -> Result<Option<Order>, StepError> {
    if order_id.len() > MAX_ORDER_ID_LEN {
        return Ok(None);
    }
    Ok(ctx.get::<Order>(&keys::order(order_id)).await?)
}

/// The order an event is about. Its absence is a bug upstream, not a passing
/// failure: the delivery dead-letters at once, visible and replayable.
pub(crate) async fn expect_order(ctx: &StepContext, order_id: &str) -> Result<Order, StepError> {
    load_order(ctx, order_id)
        .await?
        .ok_or_else(|| {
            format!(
                "order {order_id:?} does not exist in store {}",
                ctx.tenant()
            )
        })
        .permanent()
}

/// Writes the order back, and the milestones the running step noted as one
/// new append-only row beside it.
pub(crate) fn save_order(ctx: &StepContext, order: &mut Order) -> Result<(), StepError> {
    if !order.noted.is_empty() {
        let noted = std::mem::take(&mut order.noted);
        ctx.put(&keys::milestone(&order.order_id, order.milestones), &noted)?;
        order.milestones += 1;
    }
    Ok(ctx.put(&keys::order(&order.order_id), order)?)
}

/// An order's history, oldest first.
pub(crate) async fn history(ctx: &StepContext, order: &Order) -> Result<Vec<Milestone>, StepError> {
    let rows = ctx
        .scan::<Vec<Milestone>>(
            &keys::milestones(&order.order_id),
            order.milestones as usize,
        )
        .await?;
    Ok(rows.into_iter().flat_map(|(_, m)| m).collect())
}
