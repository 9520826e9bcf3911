//! Cancellation: `POST /api/order/{orderId}/cancel` with `{"reason"?}` (part of
//! step 4's "release on cancel"; the seed had no way to cancel).
//!
//! * Before anything is held (`pending`, or `flagged` and waiting for review),
//!   the order is cancelled at once.
//! * After payment (`paid`, `fulfilled`), it is cancelled and `order.cancelled`
//!   refunds the charge and gives the stock back (released if still reserved,
//!   taken back if sold).
//! * While the charge is in flight (`reserved`) the answer is `409
//!   payment_in_progress`: the gateway may be capturing that very moment, and
//!   cancelling then could leave money taken with no one to refund it. Ask again
//!   once the order is paid or failed.
//! * Once the parcel has left, or the order is over, it is `409 not_cancellable`.

use serde_json::json;

use crate::api::{ApiRequest, ApiResponse, Method};
use crate::engine::StepContext;
use crate::engine::{Step, StepError};
use crate::orderflow::events::{DeliveryAdvance, OrderCancelled};
use crate::orderflow::http;
use crate::orderflow::model::keys;
use crate::orderflow::status::OrderStatus;

use super::{load_order, move_order, save_order};

pub(crate) fn step() -> Step {
    Step::api(
        "order_cancel_api",
        Method::Post,
        "/api/order/{orderId}/cancel",
    )
    .emits::<OrderCancelled>()
    .handle(|ctx: StepContext, request: ApiRequest| async move {
        if let Err(response) = http::settings(&ctx).await? {
            return Ok(response);
        }
        let order_id = request.param("orderId").unwrap_or_default();
        let reason: String = request
            .body
            .get("reason")
            .and_then(|r| r.as_str())
            .unwrap_or("cancelled by request")
            .chars()
            .take(500)
            .collect();
        let Some(mut order) = load_order(&ctx, order_id).await? else {
            return Ok(http::order_not_found(order_id));
        };
        match order.status {
            OrderStatus::Reserved => {
                return Ok(ApiResponse::error(
                    409,
                    "payment_in_progress",
                    format!(
                        "order {order_id:?} is being charged; cancel it once it is paid or failed"
                    ),
                ))
            }
            status if !status.can_become(OrderStatus::Cancelled) => {
                return Ok(ApiResponse::error(
                    409,
                    "not_cancellable",
                    format!("order {order_id:?} is {status} and can no longer be cancelled"),
                ))
            }
            _ => {}
        }
        let from = move_order(
            &ctx,
            &mut order,
            OrderStatus::Cancelled,
            "CANCELLED",
            ctx.now(),
            Some(reason.clone()),
        )?;
        if from == OrderStatus::Flagged {
            ctx.delete(&keys::held(order_id))?;
        }
        if from == OrderStatus::Fulfilled {
            // The parcel's first move may be waiting: it never leaves now.
            ctx.cancel_emit::<DeliveryAdvance>(&keys::parcel(order_id));
        }
        if matches!(from, OrderStatus::Paid | OrderStatus::Fulfilled) {
            ctx.emit(&OrderCancelled {
                order_id: order.order_id.clone(),
                reason,
            })?;
        }
        save_order(&ctx, &mut order)?;
        Ok::<_, StepError>(ApiResponse::ok(&json!({
            "orderId": order.order_id,
            "status": order.status,
        })))
    })
}
