//! Step 7 of 14: Fulfilment (the seed's `order_fulfillment`): pick, pack, and the
//! sub-steps each store switches on (SRS FR-2.1): book the carrier, notify the
//! warehouse, issue an invoice. Emits `order.completed`, or `order.failed` when
//! the carrier refuses the parcel, which refunds the charge and takes the
//! units back.

use crate::engine::StepContext;
use crate::engine::{Step, StepError};
use crate::orderflow::carrier::{CarrierError, Shipment};
use crate::orderflow::events::{InventoryUpdated, OrderCompleted, OrderFailed, OrderStalled};
use crate::orderflow::model::keys;
use crate::orderflow::status::OrderStatus;
use crate::orderflow::store::{FulfilmentSteps, StoreSettings};

use super::{announce_stall, classify, expect_order, move_order, save_order, Deps};

pub(crate) fn step(deps: &Deps) -> Step {
    let deps = deps.clone();
    Step::event::<InventoryUpdated>("order_fulfillment")
        .emits::<OrderCompleted>()
        .emits::<OrderFailed>()
        .emits::<OrderStalled>()
        .handle(move |ctx: StepContext, updated: InventoryUpdated| {
            let deps = deps.clone();
            async move {
                let mut order = expect_order(&ctx, &updated.order_id).await?;
                if order.status != OrderStatus::Paid {
                    return Ok(()); // fulfilled or unwound already
                }
                let steps = ctx
                    .get::<StoreSettings>(keys::SETTINGS)
                    .await?
                    .map_or_else(FulfilmentSteps::default, |s| s.fulfilment);
                let now = ctx.now();
                order.note("PICKED", now, None);
                order.note("PACKED", now, None);
                if steps.reserve_carrier && order.tracking_number.is_none() {
                    let shipment = Shipment {
                        store: ctx.tenant().clone(),
                        order_id: order.order_id.clone(),
                    };
                    match deps.carrier.create_label(&shipment).await {
                        Ok(label) => {
                            order.note(
                                "CARRIER_RESERVED",
                                now,
                                Some(label.tracking_number.clone()),
                            );
                            order.tracking_number = Some(label.tracking_number);
                            order.carrier = Some(label.carrier);
                        }
                        Err(CarrierError::Refused { reason }) => {
                            let reason = format!("carrier refused the parcel: {reason}");
                            move_order(
                                &ctx,
                                &mut order,
                                OrderStatus::Failed,
                                "FULFILMENT_FAILED",
                                now,
                                Some(reason.clone()),
                            )?;
                            order.failure = Some(reason.clone());
                            save_order(&ctx, &mut order)?;
                            ctx.emit(&OrderFailed {
                                order_id: order.order_id,
                                reason,
                            })?;
                            return Ok(());
                        }
                        Err(err) => return Err(classify(err)),
                    }
                }
                if steps.notify_warehouse {
                    order.note("WAREHOUSE_NOTIFIED", now, None);
                }
                if steps.invoice {
                    let invoice = format!("INV-{}-{}", ctx.tenant(), order.order_id);
                    order.note("INVOICED", now, Some(invoice.clone()));
                    order.invoice = Some(invoice);
                }
                move_order(
                    &ctx,
                    &mut order,
                    OrderStatus::Fulfilled,
                    "FULFILLED",
                    now,
                    None,
                )?;
                save_order(&ctx, &mut order)?;
                ctx.emit(&OrderCompleted {
                    order_id: order.order_id,
                })?;
                Ok::<_, StepError>(())
            }
        })
        .on_failure(announce_stall(
            "order_fulfillment",
            |updated: InventoryUpdated| updated.order_id,
        ))
}
