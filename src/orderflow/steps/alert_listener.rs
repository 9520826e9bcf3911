//! Step 10 of 14: Alert listener (the seed's `alert_listener`, which never raised one):
//! turns events into alerts, one per de-duplication key.
//!
//! | event | alert | key |
//! |---|---|---|
//! | `order.created` | info | `order_created:{order}` |
//! | `order.flagged` | warning | `order_flagged:{order}` |
//! | `inventory.threshold_reached` | warning | `low_stock:{product}:{crossing}` |
//! | `inventory.failed` | error | `inventory_failed:{order}` |
//! | `payment.retrying` | warning | `payment_retrying:{order}` |
//! | `payment.failed` | error | `payment_failed:{order}` |
//! | `order.stalled` | error | `order_stalled:{order}` |
//!
//! `payment.recovered` or `payment.failed` resolve the retrying alert. The
//! alert keeps its store: every event carries its tenant (SEED_SPEC §8.8).
//!
//! Low stock is debounced per product (`low_stock_alerts`): its signals wait
//! until they were quiet for [`Timings::low_stock_quiet`](crate::orderflow::Timings)
//! (at most `low_stock_max_wait`), then a crossing still open raises its
//! alert, `inventory.threshold_cleared` resolves an earlier crossing's, and a
//! crossing that opened and closed within the window raises nothing: a
//! product that flaps around its threshold does not repeat alerts.

use std::collections::HashSet;

use crate::engine::flow_control::LimitKey;
use crate::engine::StepContext;
use crate::engine::{Step, StepError};
use crate::orderflow::events::{
    InventoryFailed, OrderCreated, OrderFlagged, OrderStalled, PaymentFailed, PaymentRecovered,
    PaymentRetrying, ThresholdCleared, ThresholdReached,
};
use crate::orderflow::model::{keys, Alert, AlertLevel, AlertState};
use crate::orderflow::stats;
use crate::time::Timestamp;

use super::Deps;
use crate::inbound;

inbound! {
    /// Everything that raises or resolves an alert.
    pub(crate) enum AlertInput {
        Created(OrderCreated),
        Flagged(OrderFlagged),
        OutOfStock(InventoryFailed),
        Retrying(PaymentRetrying),
        Recovered(PaymentRecovered),
        Declined(PaymentFailed),
        Stalled(OrderStalled),
    }
}

pub(crate) fn step() -> Step {
    Step::event::<AlertInput>("alert_listener").handle(
        |ctx: StepContext, input: AlertInput| async move {
            let now = ctx.now();
            let alert = |id: String, level, title: &str, message: String| Alert {
                id,
                level,
                title: title.to_string(),
                message,
                order_id: None,
                product_id: None,
                timestamp: now,
                state: AlertState::Open,
                resolved_at: None,
            };
            // An alert about an order has the id `{kind}:{order}`.
            let about = |kind: &str, order_id: String, level, title: &str, message: String| {
                let mut a = alert(format!("{kind}:{order_id}"), level, title, message);
                a.order_id = Some(order_id);
                a
            };
            const RETRYING: &str = "payment_retrying";
            let retrying_id = |order_id: &str| format!("{RETRYING}:{order_id}");
            let store = ctx.tenant().clone();
            let raised = match input {
                AlertInput::Created(e) => {
                    let message = format!("Order {} has been placed in store {store}.", e.order_id);
                    about(
                        "order_created",
                        e.order_id,
                        AlertLevel::Info,
                        "New Order Created",
                        message,
                    )
                }
                AlertInput::Flagged(e) => {
                    let message = format!(
                        "Order {} was held by fraud screening: {}.",
                        e.order_id, e.reason
                    );
                    let title = "Order Held for Review";
                    about(
                        "order_flagged",
                        e.order_id,
                        AlertLevel::Warning,
                        title,
                        message,
                    )
                }
                AlertInput::OutOfStock(e) => {
                    let message =
                        format!("Order {} could not be reserved: {}.", e.order_id, e.reason);
                    about(
                        "inventory_failed",
                        e.order_id,
                        AlertLevel::Error,
                        "Out of Stock",
                        message,
                    )
                }
                AlertInput::Retrying(e) => {
                    let message = format!(
                        "Payment for order {} failed on attempt {} ({}); retrying at {}.",
                        e.order_id, e.attempt, e.error, e.next_attempt_at
                    );
                    about(
                        RETRYING,
                        e.order_id,
                        AlertLevel::Warning,
                        "Payment Retrying",
                        message,
                    )
                }
                AlertInput::Recovered(e) => {
                    return resolve_on_event(&ctx, &retrying_id(&e.order_id), now).await;
                }
                AlertInput::Declined(e) => {
                    // Only a payment that was retried has a retrying alert.
                    if e.retries > 0 {
                        resolve_on_event(&ctx, &retrying_id(&e.order_id), now).await?;
                    }
                    let message = format!("Payment for order {} failed: {}.", e.order_id, e.reason);
                    about(
                        "payment_failed",
                        e.order_id,
                        AlertLevel::Error,
                        "Payment Failed",
                        message,
                    )
                }
                AlertInput::Stalled(e) => {
                    let message = format!(
                        "Order {} is stalled: {} gave up after {} attempt(s) ({}: {}). \
                         The failed delivery is in the dead letters; replay it once the cause is mended.",
                        e.order_id, e.step, e.attempts, e.kind, e.error
                    );
                    about(
                        "order_stalled",
                        e.order_id,
                        AlertLevel::Error,
                        "Order Stalled",
                        message,
                    )
                }
            };
            raise(&ctx, raised).await
        },
    )
}

inbound! {
    /// A product's stock crossing its low-stock threshold, either way.
    pub(crate) enum StockSignal {
        Low(ThresholdReached),
        Back(ThresholdCleared),
    }
}

/// Low-stock alerts, debounced per product: see the module docs.
pub(crate) fn low_stock_step(deps: &Deps) -> Step {
    Step::event::<StockSignal>("low_stock_alerts")
        .debounce(
            deps.timings.low_stock_quiet,
            deps.timings.low_stock_max_wait,
        )
        .per(LimitKey::field("productId"))
        .handle(|ctx: StepContext, signals: Vec<StockSignal>| async move {
            let now = ctx.now();
            let mut reached = HashSet::new();
            let mut cleared = HashSet::new();
            for signal in &signals {
                match signal {
                    StockSignal::Low(e) => reached.insert(e.crossing),
                    StockSignal::Back(e) => cleared.insert(e.crossing),
                };
            }
            let store = ctx.tenant().clone();
            for signal in signals {
                match signal {
                    // Opened and closed within the window: nothing to say.
                    StockSignal::Low(e) if cleared.contains(&e.crossing) => {}
                    StockSignal::Back(e) if reached.contains(&e.crossing) => {}
                    StockSignal::Low(e) => {
                        let message = format!(
                            "{} is below threshold ({} remaining, threshold: {}) in store {store}",
                            e.product_name, e.current_stock, e.threshold
                        );
                        let alert = Alert {
                            id: low_stock_id(&e.product_id, e.crossing),
                            level: AlertLevel::Warning,
                            title: "Low Inventory Alert".to_string(),
                            message,
                            order_id: None,
                            product_id: Some(e.product_id),
                            timestamp: now,
                            state: AlertState::Open,
                            resolved_at: None,
                        };
                        raise(&ctx, alert).await?;
                    }
                    StockSignal::Back(e) => {
                        let id = low_stock_id(&e.product_id, e.crossing);
                        resolve_on_event(&ctx, &id, now).await?;
                    }
                }
            }
            Ok::<_, StepError>(())
        })
}

fn low_stock_id(product_id: &str, crossing: u32) -> String {
    format!("low_stock:{product_id}:{crossing}")
}

/// Stores a new alert, unless one with its key exists (then nothing happens).
///
/// The event that resolves an alert can be handled before the one that raises
/// it (they are separate deliveries); it leaves a mark, and the alert is then
/// stored already resolved.
pub(crate) async fn raise(ctx: &StepContext, mut alert: Alert) -> Result<(), StepError> {
    let pointer = keys::alert(&alert.id);
    match ctx.get::<String>(&pointer).await? {
        Some(listed) if listed != RESOLVED_EARLY => return Ok(()),
        Some(_) => {
            alert.state = AlertState::Resolved;
            alert.resolved_at = Some(alert.timestamp);
        }
        None => stats::active_alerts(ctx, 1)?,
    }
    let listed = keys::newest_first(keys::ALERTS_BY_TIME, alert.timestamp, &alert.id);
    ctx.put(&pointer, &listed)?;
    ctx.put(&listed, &alert)?;
    Ok(())
}

/// The mark an alert resolved before it was raised leaves under its id.
const RESOLVED_EARLY: &str = "";

/// Resolves an alert because an event says its cause is over; an alert not
/// raised yet is remembered as resolved (its own event may come later).
async fn resolve_on_event(ctx: &StepContext, id: &str, at: Timestamp) -> Result<(), StepError> {
    change(
        ctx,
        id,
        AlertState::Resolved,
        at,
        IfMissing::RememberResolve,
    )
    .await
    .map(drop)
}

/// What [`change`] does about an alert that was never raised.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfMissing {
    /// Nothing (a caller of the API named an unknown alert).
    Nothing,
    /// Remember a resolve, so that the alert is raised resolved if its event
    /// arrives late (events may be delivered out of order).
    RememberResolve,
}

/// Moves an alert on: open → acknowledged → resolved (or open → resolved).
/// Returns the alert as it is now, or `None` if there is no such alert.
/// Going back, or resolving twice, changes nothing.
pub(crate) async fn change(
    ctx: &StepContext,
    id: &str,
    to: AlertState,
    at: Timestamp,
    if_missing: IfMissing,
) -> Result<Option<Alert>, StepError> {
    let pointer = keys::alert(id);
    let listed = match ctx.get::<String>(&pointer).await? {
        Some(listed) if listed != RESOLVED_EARLY => listed,
        Some(_) => return Ok(None),
        None => {
            if to == AlertState::Resolved && if_missing == IfMissing::RememberResolve {
                ctx.put(&pointer, &RESOLVED_EARLY)?;
            }
            return Ok(None);
        }
    };
    let Some(mut alert) = ctx.get::<Alert>(&listed).await? else {
        return Ok(None);
    };
    let forward = matches!(
        (alert.state, to),
        (
            AlertState::Open,
            AlertState::Acknowledged | AlertState::Resolved
        ) | (AlertState::Acknowledged, AlertState::Resolved)
    );
    if !forward {
        return Ok(Some(alert));
    }
    if alert.state == AlertState::Open {
        stats::active_alerts(ctx, -1)?;
    }
    alert.state = to;
    if to == AlertState::Resolved {
        alert.resolved_at = Some(at);
    }
    ctx.put(&listed, &alert)?;
    Ok(Some(alert))
}
