//! Step 9 of 14: Order tracking: `GET /api/order/tracking/{orderId}` (the seed's
//! `order_tracking_api`).
//!
//! The order's status, its parcel, and its append-only history with the time
//! each milestone really happened (SEED_SPEC §8.9: no synthetic history). Only
//! the asking store's orders exist for it: another store's order is `404`.

use serde_json::json;

use crate::api::{ApiRequest, ApiResponse, Method};
use crate::engine::StepContext;
use crate::engine::{Step, StepError};
use crate::orderflow::http;

use super::load_order;

pub(crate) fn step() -> Step {
    Step::api(
        "order_tracking_api",
        Method::Get,
        "/api/order/tracking/{orderId}",
    )
    .handle(|ctx: StepContext, request: ApiRequest| async move {
        if let Err(response) = http::settings(&ctx).await? {
            return Ok(response);
        }
        let order_id = request.param("orderId").unwrap_or_default();
        let Some(order) = load_order(&ctx, order_id).await? else {
            return Ok(http::order_not_found(order_id));
        };
        let history = super::history(&ctx, &order).await?;
        Ok::<_, StepError>(ApiResponse::ok(&json!({
            "orderId": order.order_id,
            "status": order.status,
            "total": order.total,
            "trackingNumber": order.tracking_number,
            "carrier": order.carrier,
            "delivery": order.delivery,
            "createdAt": order.created_at,
            "failure": order.failure,
            "history": history,
        })))
    })
}
