//! A product's units as escrow counters: reservations, sales, give-backs and
//! restocks of one product by many orders at once, without one hot record.
//!
//! Units on the shelf (`available/{p}`) and units sold (`sold/{p}`) are
//! counters; reserved units are what they leave of the product's total (see
//! [`StockRecord`]). A move that cannot cross the low-stock threshold is
//! *blind*: it reads nothing that another order writes, and a floor on its add
//! makes the store refuse it, at commit, if the shelf moved meanwhile so far
//! that it would cross. The refusal is a conflict, and the handler runs again
//! and decides afresh. Only a move near the threshold reads the shelf with a
//! read check, so that each crossing is seen, and announced, by exactly one
//! execution. Far from the threshold, any number of orders reserve the same
//! product with no conflict at all.

use crate::engine::{ResultExt, StepContext, StepError};
use crate::orderflow::events::{ThresholdCleared, ThresholdReached};
use crate::orderflow::model::{keys, StockRecord};
use crate::orderflow::stock::StockError;
use crate::orderflow::validate::OrderLine;

/// Reserves every line of an order, or none.
///
/// # Errors
/// The outer error is the step's (the backend failed, a product has no stock
/// record); the inner one names the first line short of units, and then
/// nothing has moved.
pub(crate) async fn reserve(
    ctx: &StepContext,
    lines: &[OrderLine],
) -> Result<Result<(), StockError>, StepError> {
    // Decide every line before moving any, so a shortage moves nothing.
    let mut moves = Vec::with_capacity(lines.len());
    for line in lines {
        let record = peek_record(ctx, &line.product_id).await?;
        let quantity = i64::from(line.quantity);
        let threshold = i64::from(record.threshold);
        let seen = shelf(ctx, &line.product_id, Read::Peek).await?;
        if seen - quantity >= threshold {
            moves.push(Reserve::Blind { record, quantity });
            continue;
        }
        // Near or below the threshold, or short: the checked value decides.
        let on_shelf = shelf(ctx, &line.product_id, Read::Checked).await?;
        if on_shelf < quantity {
            return Ok(Err(StockError::Insufficient {
                product: line.product_id.clone(),
                wanted: line.quantity,
                available: units(on_shelf),
            }));
        }
        let crosses = on_shelf >= threshold && on_shelf - quantity < threshold;
        moves.push(Reserve::Checked {
            record,
            quantity,
            left: on_shelf - quantity,
            crosses,
        });
    }
    for reservation in moves {
        match reservation {
            Reserve::Blind { record, quantity } => {
                // Applies only while the shelf stays at the threshold or above:
                // then this reservation crosses nothing.
                let threshold = i64::from(record.threshold);
                ctx.add_at_least(&keys::available(&record.product), -quantity, threshold)?;
            }
            Reserve::Checked {
                record,
                quantity,
                left,
                crosses,
            } => {
                ctx.add(&keys::available(&record.product), -quantity)?;
                if crosses {
                    let mut record = checked_record(ctx, &record.product).await?;
                    record.crossings += 1;
                    announce_low(ctx, &mut record, left)?;
                    save(ctx, &record)?;
                }
            }
        }
    }
    Ok(Ok(()))
}

/// How one line of a reservation moves.
enum Reserve {
    /// Far above the threshold: a bounded take, with no read check.
    Blind { record: StockRecord, quantity: i64 },
    /// Near the threshold: a take decided on a checked read of the shelf.
    Checked {
        record: StockRecord,
        quantity: i64,
        left: i64,
        crosses: bool,
    },
}

/// A paid order's reserved units are sold. Blind: reserved units are derived,
/// so only the sold counter moves.
pub(crate) fn sell(ctx: &StepContext, lines: &[OrderLine]) -> Result<(), StepError> {
    for line in lines {
        ctx.add(&keys::sold(&line.product_id), i64::from(line.quantity))?;
    }
    Ok(())
}

/// A sold order's units are reserved again (it failed or came back after
/// payment), to be given back with [`give_back`].
pub(crate) fn unsell(ctx: &StepContext, lines: &[OrderLine]) -> Result<(), StepError> {
    for line in lines {
        ctx.add(&keys::sold(&line.product_id), -i64::from(line.quantity))?;
    }
    Ok(())
}

/// Reserved units of an order go back on the shelf; a return to the threshold
/// or above ends the product's low-stock crossing.
pub(crate) async fn give_back(ctx: &StepContext, lines: &[OrderLine]) -> Result<(), StepError> {
    for line in lines {
        let record = peek_record(ctx, &line.product_id).await?;
        put_back(ctx, &record, i64::from(line.quantity)).await?;
    }
    Ok(())
}

/// New units of a product arrive.
pub(crate) async fn restock(
    ctx: &StepContext,
    product: &str,
    quantity: u32,
) -> Result<(), StepError> {
    let mut record = ctx
        .get::<StockRecord>(&keys::stock(product))
        .await?
        .ok_or_else(|| format!("cannot restock {product:?}: not in this store's catalogue"))
        .permanent()?;
    let total = u64::from(record.initial) + u64::from(record.restocked) + u64::from(quantity);
    if total > u64::from(u32::MAX) {
        return Err(StockError::Overflow {
            product: product.to_string(),
        })
        .permanent();
    }
    record.restocked += quantity;
    save(ctx, &record)?;
    put_back(ctx, &record, i64::from(quantity)).await
}

/// Adds `quantity` units to the shelf, and announces the end of a crossing if
/// the shelf comes back to the threshold.
async fn put_back(ctx: &StepContext, record: &StockRecord, quantity: i64) -> Result<(), StepError> {
    let key = keys::available(&record.product);
    let threshold = i64::from(record.threshold);
    if shelf(ctx, &record.product, Read::Peek).await? >= threshold {
        // Applies only if the shelf held the threshold already: then nothing ends.
        ctx.add_at_least(&key, quantity, threshold + quantity)?;
        return Ok(());
    }
    let on_shelf = shelf(ctx, &record.product, Read::Checked).await?;
    ctx.add(&key, quantity)?;
    if on_shelf < threshold && on_shelf + quantity >= threshold {
        ctx.emit(&ThresholdCleared {
            product_id: record.product.clone(),
            current_stock: units(on_shelf + quantity),
            crossing: record.crossings,
        })?;
    }
    Ok(())
}

/// Announces the current low-stock crossing of a product, with `on_shelf`
/// units left, and records that it was.
pub(crate) fn announce_low(
    ctx: &StepContext,
    record: &mut StockRecord,
    on_shelf: i64,
) -> Result<(), StepError> {
    record.announced = record.crossings;
    ctx.emit(&ThresholdReached {
        product_id: record.product.clone(),
        product_name: record.name.clone(),
        current_stock: units(on_shelf),
        threshold: record.threshold,
        crossing: record.crossings,
    })?;
    Ok(())
}

/// Units on a product's shelf, read with a read check or without one.
pub(crate) async fn shelf(ctx: &StepContext, product: &str, read: Read) -> Result<i64, StepError> {
    let key = keys::available(product);
    let units = match read {
        Read::Peek => ctx.peek::<i64>(&key).await?,
        Read::Checked => ctx.get::<i64>(&key).await?,
    };
    Ok(units.unwrap_or(0))
}

/// Whether a read is checked at commit.
#[derive(Clone, Copy)]
pub(crate) enum Read {
    /// Unchecked: a hint that a floor or a later checked read confirms.
    Peek,
    /// Checked: the commit conflicts if the value changed meanwhile.
    Checked,
}

/// The units of the shelf's counter as an event reports them.
fn units(count: i64) -> u32 {
    u32::try_from(count.max(0)).unwrap_or(u32::MAX)
}

/// The record, unchecked: for what does not change once seeded (the
/// product's name and threshold).
async fn peek_record(ctx: &StepContext, product: &str) -> Result<StockRecord, StepError> {
    missing(
        product,
        ctx.peek::<StockRecord>(&keys::stock(product)).await?,
    )
}

/// The record, checked at commit: for a change to it.
async fn checked_record(ctx: &StepContext, product: &str) -> Result<StockRecord, StepError> {
    missing(
        product,
        ctx.get::<StockRecord>(&keys::stock(product)).await?,
    )
}

fn missing(product: &str, record: Option<StockRecord>) -> Result<StockRecord, StepError> {
    record
        .ok_or_else(|| format!("no stock record for product {product:?}"))
        .permanent()
}

fn save(ctx: &StepContext, record: &StockRecord) -> Result<(), StepError> {
    Ok(ctx.put(&keys::stock(&record.product), record)?)
}
