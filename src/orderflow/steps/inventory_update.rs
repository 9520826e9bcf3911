//! Step 4 of 14: Inventory (the seed's `inventory_update`): reserve before payment, all
//! lines or none; commit on payment; release on decline; take back what a
//! failed or returned order had bought; restock.
//!
//! Each product's stock is one state key, read and written in the same
//! execution, so two orders racing for the last unit cannot both get it: the
//! engine's optimistic check re-runs the loser, which then sees the truth
//! (SEED_SPEC §8.2–8.3). Crossing a low-stock threshold is announced once per
//! crossing, with `inventory.threshold_reached`.

use crate::engine::StepContext;
use crate::engine::{ResultExt, Step, StepError};
use crate::orderflow::events::{
    DeliveryReturned, InventoryFailed, InventoryReserved, InventoryUpdated, OrderCancelled,
    OrderCleared, OrderFailed, PaymentFailed, PaymentProcessed, RestockRequested, ThresholdCleared,
    ThresholdReached,
};
use crate::orderflow::model::{keys, Order, StockHold, StockRecord};
use crate::orderflow::status::OrderStatus;
use crate::orderflow::stock::{reserve_all, Crossing, Stock};

use super::{expect_order, inbound, move_order, save_order};

inbound!(
    /// What moves stock.
    InventoryInput {
        Cleared(OrderCleared),
        Paid(PaymentProcessed),
        Declined(PaymentFailed),
        Failed(OrderFailed),
        Returned(DeliveryReturned),
        Cancelled(OrderCancelled),
        Restock(RestockRequested),
    }
);

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

/// The stock records of an order's lines, in line order.
async fn load_stock(ctx: &StepContext, order: &Order) -> Result<Vec<StockRecord>, StepError> {
    let mut records = Vec::with_capacity(order.lines.len());
    for line in &order.lines {
        let record = ctx
            .get::<StockRecord>(&keys::stock(&line.product_id))
            .await?
            .ok_or_else(|| format!("no stock record for product {:?}", line.product_id))
            .permanent()?;
        records.push(record);
    }
    Ok(records)
}

/// Announces a crossing: the first fall below the threshold of each crossing,
/// and the rise back that ends it.
fn announce(
    ctx: &StepContext,
    record: &mut StockRecord,
    crossing: Crossing,
) -> Result<(), StepError> {
    match crossing {
        Crossing::FellBelow => {
            record.crossings += 1;
            announce_low(ctx, record)?;
        }
        Crossing::RoseAbove => {
            ctx.emit(&ThresholdCleared {
                product_id: record.stock.product.clone(),
                current_stock: record.stock.available,
                crossing: record.crossings,
            })?;
        }
    }
    Ok(())
}

/// Announces the current low-stock crossing of a product and records that it was.
pub(crate) fn announce_low(ctx: &StepContext, record: &mut StockRecord) -> Result<(), StepError> {
    record.announced = record.crossings;
    ctx.emit(&ThresholdReached {
        product_id: record.stock.product.clone(),
        product_name: record.name.clone(),
        current_stock: record.stock.available,
        threshold: record.stock.threshold,
        crossing: record.crossings,
    })?;
    Ok(())
}

fn save_stock(ctx: &StepContext, record: &StockRecord) -> Result<(), StepError> {
    Ok(ctx.put(&keys::stock(&record.stock.product), record)?)
}

async fn reserve(ctx: &StepContext, order_id: &str) -> Result<(), StepError> {
    let mut order = expect_order(ctx, order_id).await?;
    if !matches!(order.status, OrderStatus::Pending | OrderStatus::Flagged) {
        return Ok(()); // settled meanwhile (e.g. rejected)
    }
    let mut records = load_stock(ctx, &order).await?;
    let mut stock: Vec<Stock> = records.iter().map(|r| r.stock.clone()).collect();
    let wanted: Vec<(usize, u32)> = order.lines.iter().map(|l| l.quantity).enumerate().collect();
    let now = ctx.now();
    match reserve_all(&mut stock, &wanted) {
        Ok(crossings) => {
            for (record, counts) in records.iter_mut().zip(stock) {
                record.stock = counts;
            }
            for (index, crossing) in crossings {
                announce(ctx, &mut records[index], crossing)?;
            }
            for record in &records {
                save_stock(ctx, record)?;
            }
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
    if next == StockHold::Committed {
        // Blind: a payment's commit never reads the stock record, so it never
        // conflicts with the reservations of other orders (see `StockRecord`).
        for line in &order.lines {
            ctx.add(&keys::committed(&line.product_id), i64::from(line.quantity))?;
        }
    } else {
        let mut records = load_stock(ctx, &order).await?;
        for (record, line) in records.iter_mut().zip(&order.lines) {
            if next == StockHold::Returned {
                // The sold units come off the committed count and go back
                // through the record's reservation, which still holds them.
                ctx.add(
                    &keys::committed(&line.product_id),
                    -i64::from(line.quantity),
                )?;
            }
            if let Some(crossing) = record.stock.release(line.quantity).permanent()? {
                announce(ctx, record, crossing)?;
            }
            save_stock(ctx, record)?;
        }
    }
    let milestone = match next {
        StockHold::Committed => "INVENTORY_COMMITTED",
        StockHold::Released => "INVENTORY_RELEASED",
        _ => "INVENTORY_RETURNED",
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
    let mut record = ctx
        .get::<StockRecord>(&keys::stock(&request.product_id))
        .await?
        .ok_or_else(|| {
            format!(
                "cannot restock {:?}: not in this store's catalogue",
                request.product_id
            )
        })
        .permanent()?;
    if let Some(crossing) = record.stock.restock(request.quantity).permanent()? {
        announce(ctx, &mut record, crossing)?;
    }
    save_stock(ctx, &record)
}
