//! Step 8 of 14: Delivery (the seed's `delivery`, which was never triggered): a state
//! machine driven by durable delayed events, never in-process timers
//! (SEED_SPEC §8.7).
//!
//! ```text
//! order.completed ─► label_created ─► shipped ─► in_transit ─► out_for_delivery ─► delivered
//!                                                                  │      ▲
//!                                                                  ▼      │ (next attempt)
//!                                                            attempt_failed ─► returned
//! ```
//!
//! Each move is a `delivery.advance` the step emits to itself with a delay, so
//! a restart in the middle resumes where the parcel was; cancelling the order
//! before the parcel has left cancels its waiting first move. An advance the state machine does not
//! allow is an error (dead-lettered), never an overwrite. When the engine
//! gives up on a delivery, the failure hook announces `order.stalled`.

use crate::engine::StepContext;
use crate::engine::{ResultExt, Step, StepError};
use crate::event::EmitOptions;
use crate::orderflow::carrier::Shipment;
use crate::orderflow::events::{
    DeliveryAdvance, DeliveryDelivered, DeliveryReturned, DeliveryShipped, OrderCompleted,
    OrderStalled,
};
use crate::orderflow::model::{keys, Order};
use crate::orderflow::status::{DeliveryStatus, OrderStatus};

use super::{announce_stall, classify, expect_order, move_order, save_order, Deps};
use crate::inbound;

inbound! {
    /// A fulfilled order to ship, or the next move of a parcel.
    pub(crate) enum DeliveryInput {
        Completed(OrderCompleted),
        Advance(DeliveryAdvance),
    }
}

pub(crate) fn step(deps: &Deps) -> Step {
    let deps = deps.clone();
    Step::event::<DeliveryInput>("delivery")
        .emits::<DeliveryAdvance>()
        .emits::<DeliveryShipped>()
        .emits::<DeliveryDelivered>()
        .emits::<DeliveryReturned>()
        .emits::<OrderStalled>()
        .handle(move |ctx: StepContext, input: DeliveryInput| {
            let deps = deps.clone();
            async move {
                match input {
                    DeliveryInput::Completed(e) => start(&ctx, &deps, &e.order_id).await,
                    DeliveryInput::Advance(e) => advance(&ctx, &deps, &e.order_id, e.to).await,
                }
            }
        })
        .on_failure(announce_stall("delivery", |input| match input {
            DeliveryInput::Completed(e) => e.order_id,
            DeliveryInput::Advance(e) => e.order_id,
        }))
}

/// Schedules the parcel's next move.
fn next(
    ctx: &StepContext,
    order: &Order,
    to: DeliveryStatus,
    after: std::time::Duration,
) -> Result<(), StepError> {
    let options = match (after.is_zero(), to) {
        (true, _) => EmitOptions::new(),
        // Only the parcel's first move can be cancelled: an order is
        // cancellable until the parcel has left, not after.
        (false, DeliveryStatus::Shipped) => EmitOptions::new()
            .delay(after)
            .cancel_key(keys::parcel(&order.order_id)),
        (false, _) => EmitOptions::new().delay(after),
    };
    ctx.emit_with(
        &DeliveryAdvance {
            order_id: order.order_id.clone(),
            to,
        },
        options,
    )?;
    Ok(())
}

/// Moves the parcel, as the delivery state machine allows.
fn move_parcel(order: &mut Order, to: DeliveryStatus) -> Result<(), StepError> {
    let from = order
        .delivery
        .ok_or_else(|| {
            format!(
                "order {:?} has no parcel to move to {}",
                order.order_id,
                to.as_str()
            )
        })
        .permanent()?;
    order.delivery = Some(from.transition(to).permanent()?);
    Ok(())
}

async fn start(ctx: &StepContext, deps: &Deps, order_id: &str) -> Result<(), StepError> {
    let mut order = expect_order(ctx, order_id).await?;
    if order.status != OrderStatus::Fulfilled || order.delivery.is_some() {
        return Ok(()); // started already
    }
    let now = ctx.now();
    if order.tracking_number.is_none() {
        let shipment = Shipment {
            store: ctx.tenant().clone(),
            order_id: order.order_id.clone(),
        };
        // The store books the carrier here when fulfilment did not. A refusal
        // now cannot fail a fulfilled order: it dead-letters for a person.
        let label = deps
            .carrier
            .create_label(&shipment)
            .await
            .map_err(classify)?;
        order.tracking_number = Some(label.tracking_number);
        order.carrier = Some(label.carrier);
    }
    order.delivery = Some(DeliveryStatus::LabelCreated);
    order.note("LABEL_CREATED", now, order.tracking_number.clone());
    next(
        ctx,
        &order,
        DeliveryStatus::Shipped,
        deps.timings.ship_after,
    )?;
    save_order(ctx, &mut order)
}

async fn advance(
    ctx: &StepContext,
    deps: &Deps,
    order_id: &str,
    to: DeliveryStatus,
) -> Result<(), StepError> {
    let mut order = expect_order(ctx, order_id).await?;
    if order.status == OrderStatus::Cancelled {
        return Ok(()); // cancelled before the parcel left: it never will
    }
    let now = ctx.now();
    let timings = &deps.timings;
    move_parcel(&mut order, to)?;
    match to {
        DeliveryStatus::Shipped => {
            let tracking = order.tracking_number.clone();
            move_order(
                ctx,
                &mut order,
                OrderStatus::Shipped,
                "SHIPPED",
                now,
                tracking,
            )?;
            ctx.emit(&DeliveryShipped {
                order_id: order.order_id.clone(),
                tracking_number: order.tracking_number.clone().unwrap_or_default(),
                carrier: order.carrier.clone().unwrap_or_default(),
            })?;
            next(
                ctx,
                &order,
                DeliveryStatus::InTransit,
                timings.in_transit_after,
            )?;
        }
        DeliveryStatus::InTransit => {
            order.note("IN_TRANSIT", now, None);
            next(
                ctx,
                &order,
                DeliveryStatus::OutForDelivery,
                timings.out_for_delivery_after,
            )?;
        }
        DeliveryStatus::OutForDelivery => {
            order.delivery_attempts += 1;
            let attempt = order.delivery_attempts;
            order.note("OUT_FOR_DELIVERY", now, Some(format!("attempt {attempt}")));
            let tracking = order.tracking_number.clone().unwrap_or_default();
            let delivered = deps
                .carrier
                .attempt_delivery(&tracking, attempt)
                .await
                .map_err(classify)?;
            if delivered {
                move_parcel(&mut order, DeliveryStatus::Delivered)?;
                move_order(
                    ctx,
                    &mut order,
                    OrderStatus::Delivered,
                    "DELIVERED",
                    now,
                    None,
                )?;
                ctx.emit(&DeliveryDelivered {
                    order_id: order.order_id.clone(),
                    attempts: attempt,
                })?;
            } else {
                move_parcel(&mut order, DeliveryStatus::AttemptFailed)?;
                order.note(
                    "DELIVERY_ATTEMPT_FAILED",
                    now,
                    Some(format!("attempt {attempt}")),
                );
                if attempt < timings.delivery_attempts {
                    next(
                        ctx,
                        &order,
                        DeliveryStatus::OutForDelivery,
                        timings.redeliver_after,
                    )?;
                } else {
                    move_parcel(&mut order, DeliveryStatus::Returned)?;
                    move_order(
                        ctx,
                        &mut order,
                        OrderStatus::Returned,
                        "RETURNED",
                        now,
                        None,
                    )?;
                    ctx.emit(&DeliveryReturned {
                        order_id: order.order_id.clone(),
                        attempts: attempt,
                    })?;
                }
            }
        }
        // Delivered, a failed attempt and a return follow from an attempt
        // above, never from a timer.
        _ => {
            return Err(StepError::permanent(format!(
                "delivery.advance to {} is not a scheduled move",
                to.as_str()
            )))
        }
    }
    save_order(ctx, &mut order)
}
