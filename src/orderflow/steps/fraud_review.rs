//! Step 3 of 14, continued: the review of an order held by fraud screening, as
//! a durable wait (the SRS's "pause and wait for `fraud.verified`", FR-2.0).
//!
//! ```text
//! fraud_guard ─(flag, start_wait)─► fraud_hold ◄── fraud.verified ◄── POST /api/order/{orderId}/review
//!                                       │                          ◄── a host's fraud service
//!                                       ├─ release ─► order.cleared ─► inventory_update
//!                                       ├─ reject  ─► rejected
//!                                       └─ no review within Timings::review_timeout ─► rejected (REVIEW_EXPIRED)
//! ```
//!
//! The guard starts a wait keyed by the order id when it holds an order. The
//! review API checks the order is waiting, takes it off the review queue and
//! emits `fraud.verified`; `fraud_hold` applies the decision when the event
//! wakes the wait, exactly once, and the wait's timer is cancelled with it.
//! A decision that finds no pending wait (the order was cancelled or
//! expired, or was held before holds were waits) is applied only if the
//! order is still held, so a late or repeated decision changes nothing.

use serde_json::json;

use crate::api::{ApiRequest, ApiResponse, Method};
use crate::engine::waits::{Late, WaitFor, Wake};
use crate::engine::StepContext;
use crate::engine::{Step, StepError};
use crate::orderflow::events::{FraudVerified, OrderCleared, ReviewDecision};
use crate::orderflow::http;
use crate::orderflow::model::keys;
use crate::orderflow::status::OrderStatus;

use super::{load_order, move_order, save_order, Deps};

/// The wait step's name.
pub(crate) const HOLD_STEP: &str = "fraud_hold";

/// The longest review note kept, in characters.
const MAX_NOTE: usize = 500;

pub(crate) fn steps() -> Vec<Step> {
    vec![review(), hold()]
}

/// Starts the hold's wait, in the guard's commit that flags the order.
pub(crate) async fn start_hold(
    ctx: &StepContext,
    deps: &Deps,
    order_id: &str,
) -> Result<(), StepError> {
    ctx.start_wait(WaitFor::new(
        HOLD_STEP,
        order_id,
        deps.timings.review_timeout,
    ))
    .await?;
    Ok(())
}

/// `POST /api/order/{orderId}/review` with `{"decision": "release" | "reject", "note"?}`.
///
/// Answers `202` once the decision is on its way: the order's status moves
/// when `fraud_hold` applies it, a moment later.
fn review() -> Step {
    Step::api(
        "fraud_review_api",
        Method::Post,
        "/api/order/{orderId}/review",
    )
    .emits::<FraudVerified>()
    .handle(|ctx: StepContext, request: ApiRequest| async move {
        if let Err(response) = http::settings(&ctx).await? {
            return Ok(response);
        }
        let order_id = request.param("orderId").unwrap_or_default();
        let decision = match request.body.get("decision").and_then(|d| d.as_str()) {
            Some("release") => ReviewDecision::Release,
            Some("reject") => ReviewDecision::Reject,
            _ => {
                return Ok(http::invalid_field(
                    "decision",
                    "must be \"release\" or \"reject\"",
                ))
            }
        };
        let note = request
            .body
            .get("note")
            .and_then(|n| n.as_str())
            .map(|n| n.chars().take(MAX_NOTE).collect::<String>());
        let Some(order) = load_order(&ctx, order_id).await? else {
            return Ok(http::order_not_found(order_id));
        };
        // The queue entry is the hold's "not yet decided": the first review
        // takes it, so a second one (or one racing it) is refused here.
        let queued = ctx
            .get::<serde_json::Value>(&keys::held(order_id))
            .await?
            .is_some();
        if order.status != OrderStatus::Flagged || !queued {
            return Ok(ApiResponse::error(
                409,
                "not_held",
                format!(
                    "order {order_id:?} is {} and not waiting for review",
                    order.status
                ),
            ));
        }
        ctx.delete(&keys::held(order_id))?;
        ctx.emit(&FraudVerified {
            order_id: order.order_id.clone(),
            decision,
            note,
        })?;
        Ok::<_, StepError>(ApiResponse::json(
            202,
            &json!({
                "orderId": order.order_id,
                "status": order.status,
                "decision": decision,
            }),
        ))
    })
}

/// The wait: a decision or the timeout settles the hold.
fn hold() -> Step {
    Step::wait::<FraudVerified>(HOLD_STEP)
        .correlate(|verified: &FraudVerified| verified.order_id.clone())
        .late(Late::Deliver)
        .emits::<OrderCleared>()
        .handle(|ctx: StepContext, wake: Wake<FraudVerified>| async move {
            match wake {
                Wake::Arrived { events, .. } => match events.into_iter().next() {
                    Some(verified) => decide(&ctx, verified).await,
                    None => Ok(()),
                },
                Wake::Late { event, .. } => decide(&ctx, event).await,
                Wake::TimedOut { key, .. } => expire(&ctx, &key).await,
            }
        })
}

/// Applies a decision to an order still held.
async fn decide(ctx: &StepContext, verified: FraudVerified) -> Result<(), StepError> {
    let Some(mut order) = load_order(ctx, &verified.order_id).await? else {
        tracing::warn!(order = %verified.order_id, "fraud.verified for an order this store does not have");
        return Ok(());
    };
    if order.status != OrderStatus::Flagged || order.review.is_some() {
        tracing::info!(order = %order.order_id, status = %order.status, "fraud.verified for an order no longer held; ignored");
        return Ok(());
    }
    let now = ctx.now();
    match verified.decision {
        ReviewDecision::Release => {
            order.review = Some("released".into());
            order.note("REVIEW_RELEASED", now, verified.note);
            ctx.emit(&OrderCleared {
                order_id: order.order_id.clone(),
                screened: true,
                reviewed: true,
            })?;
        }
        ReviewDecision::Reject => {
            order.review = Some("rejected".into());
            move_order(
                ctx,
                &mut order,
                OrderStatus::Rejected,
                "REJECTED",
                now,
                verified.note,
            )?;
        }
    }
    // A host's own `fraud.verified` did not pass the review API.
    ctx.delete(&keys::held(&order.order_id))?;
    save_order(ctx, &mut order)
}

/// Rejects an order nobody reviewed in time.
async fn expire(ctx: &StepContext, order_id: &str) -> Result<(), StepError> {
    let Some(mut order) = load_order(ctx, order_id).await? else {
        return Ok(());
    };
    if order.status != OrderStatus::Flagged || order.review.is_some() {
        return Ok(()); // cancelled meanwhile
    }
    order.review = Some("expired".into());
    move_order(
        ctx,
        &mut order,
        OrderStatus::Rejected,
        "REVIEW_EXPIRED",
        ctx.now(),
        Some("no review before the hold's timeout".into()),
    )?;
    ctx.delete(&keys::held(order_id))?;
    save_order(ctx, &mut order)
}
