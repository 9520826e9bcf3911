//! Step 4 of 14: Inventory (the seed's `inventory_update`): reserve before payment, all
//! lines or none; commit on payment; release on decline; take back what a
//! failed or returned order had bought; restock.
//!
//! A product's units move as escrow counters (see [`shelf`](super::shelf)):
//! two orders racing for the last unit cannot both get it, because the store
//! refuses a take that would leave the shelf below zero and the loser runs
//! again and sees the truth (SEED_SPEC §8.2–8.3), while orders far from the
//! last units never conflict. Crossing a low-stock threshold is announced once
//! per crossing, with `inventory.threshold_reached`.

use crate::engine::StepContext;
use crate::engine::{Step, StepError};
use crate::orderflow::events::{
    DeliveryReturned, InventoryFailed, InventoryReserved, InventoryUpdated, OrderCancelled,
    OrderCleared, OrderFailed, PaymentFailed, PaymentProcessed, RestockRequested, ThresholdCleared,
    ThresholdReached,
};
use crate::orderflow::model::StockHold;
use crate::orderflow::status::OrderStatus;

use super::{expect_order, move_order, save_order, shelf};
use crate::inbound;

inbound! {
    /// What moves stock.
    pub(crate) enum InventoryInput {
        Cleared(OrderCleared),
        Paid(PaymentProcessed),
        Declined(PaymentFailed),
        Failed(OrderFailed),
        Returned(DeliveryReturned),
        Cancelled(OrderCancelled),
        Restock(RestockRequested),
    }
}

pub(crate) fn step() -> Step {
    Step::event::<InventoryInput>("inventory_update")
        .emits::<InventoryReserved>()
        .emits::<InventoryFailed>()
        .emits::<InventoryUpdated>()
        .emits::<ThresholdReached>()
        .emits::<ThresholdCleared>()
        .handle(|ctx: StepContext, input: InventoryInput| async move {
            match input {
                InventoryInput::Cleared(e) => reserve(&ctx, &e.order_id).await,
                InventoryInput::Paid(e) => settle(&ctx, &e.order_id, Settle::Commit).await,
                InventoryInput::Declined(e) => settle(&ctx, &e.order_id, Settle::GiveBack).await,
                InventoryInput::Failed(e) => settle(&ctx, &e.order_id, Settle::GiveBack).await,
                InventoryInput::Returned(e) => settle(&ctx, &e.order_id, Settle::GiveBack).await,
                InventoryInput::Cancelled(e) => settle(&ctx, &e.order_id, Settle::GiveBack).await,
                InventoryInput::Restock(e) => restock(&ctx, e).await,
            }
        })
}

async fn reserve(ctx: &StepContext, order_id: &str) -> Result<(), StepError> {
    let mut order = expect_order(ctx, order_id).await?;
    if !matches!(order.status, OrderStatus::Pending | OrderStatus::Flagged) {
        return Ok(()); // settled meanwhile (e.g. rejected)
    }
    let now = ctx.now();
    match shelf::reserve(ctx, &order.lines).await? {
        Ok(()) => {
            move_order(
                ctx,
                &mut order,
                OrderStatus::Reserved,
                "INVENTORY_RESERVED",
                now,
                None,
            )?;
            order.stock = StockHold::Reserved;
            ctx.emit(&InventoryReserved {
                order_id: order.order_id.clone(),
            })?;
        }
        Err(shortage) => {
            let reason = shortage.to_string();
            move_order(
                ctx,
                &mut order,
                OrderStatus::Failed,
                "OUT_OF_STOCK",
                now,
                Some(reason.clone()),
            )?;
            order.failure = Some(reason.clone());
            ctx.emit(&InventoryFailed {
                order_id: order.order_id.clone(),
                reason,
            })?;
        }
    }
    save_order(ctx, &mut order)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// Paid: reserved units are sold.
    Commit,
    /// Unwound: reserved units are released, sold units taken back.
    GiveBack,
}

async fn settle(ctx: &StepContext, order_id: &str, how: Settle) -> Result<(), StepError> {
    let mut order = expect_order(ctx, order_id).await?;
    let next = match (how, order.stock) {
        (Settle::Commit, StockHold::Reserved) => StockHold::Committed,
        (Settle::GiveBack, StockHold::Reserved) => StockHold::Released,
        (Settle::GiveBack, StockHold::Committed) => StockHold::Returned,
        _ => return Ok(()), // nothing held, or settled already
    };
    let milestone = match next {
        StockHold::Committed => {
            shelf::sell(ctx, &order.lines)?;
            "INVENTORY_COMMITTED"
        }
        StockHold::Released => {
            shelf::give_back(ctx, &order.lines).await?;
            "INVENTORY_RELEASED"
        }
        _ => {
            // Sold units are reserved again, then go back like a reservation.
            shelf::unsell(ctx, &order.lines)?;
            shelf::give_back(ctx, &order.lines).await?;
            "INVENTORY_RETURNED"
        }
    };
    order.stock = next;
    order.note(milestone, ctx.now(), None);
    save_order(ctx, &mut order)?;
    if next == StockHold::Committed {
        ctx.emit(&InventoryUpdated {
            order_id: order.order_id,
        })?;
    }
    Ok(())
}

async fn restock(ctx: &StepContext, request: RestockRequested) -> Result<(), StepError> {
    if request.quantity == 0 {
        return Err(StepError::permanent("a restock must add at least 1 unit"));
    }
    shelf::restock(ctx, &request.product_id, request.quantity).await
}
