//! Step 6 of 14: Stock check (the seed's `check_inventory` cron): every minute by default,
//! over every registered store, with no list written into the code.
//!
//! The cron runs once per instant as the system tenant, reads the store
//! registry `db_init` keeps, and addresses one `inventory.check_requested` to
//! each store. In the store, `check_inventory_store` announces each product
//! that is low and whose crossing was not announced yet: one
//! `inventory.threshold_reached` per crossing, never one per minute
//! (SEED_SPEC §1.5). Stock seeded below its threshold is announced this way.

use crate::cron::CronTick;
use crate::engine::StepContext;
use crate::engine::{Step, StepError};
use crate::event::EmitOptions;
use crate::event::TenantId;
use crate::orderflow::events::{StockCheckRequested, ThresholdReached};
use crate::orderflow::model::{keys, StockRecord};
use crate::orderflow::store::StoreConfig;
use crate::MissedFires;

use super::shelf::{self, announce_low, Read};
use super::Deps;

/// The most stores, and products per store, one check looks at.
pub(crate) const MAX_SCAN: usize = 100_000;

pub(crate) fn steps(deps: &Deps) -> Vec<Step> {
    vec![cron(deps), per_store()]
}

fn cron(deps: &Deps) -> Step {
    Step::cron("check_inventory", deps.timings.stock_check.clone())
        .emits::<StockCheckRequested>()
        // One check covers everything missed: no need to run the missed ones.
        .missed_fires(MissedFires::FireOnce)
        .handle(|ctx: StepContext, tick: CronTick| async move {
            for (_, config) in ctx.scan::<StoreConfig>(keys::STORES, MAX_SCAN).await? {
                ctx.emit_with(
                    &StockCheckRequested { at: tick.fire_at },
                    EmitOptions::new().tenant(config.store),
                )?;
            }
            Ok::<_, StepError>(())
        })
}

fn per_store() -> Step {
    Step::event::<StockCheckRequested>("check_inventory_store")
        .emits::<ThresholdReached>()
        .handle(|ctx: StepContext, _check: StockCheckRequested| async move {
            if ctx.tenant() == &TenantId::system() {
                return Ok(());
            }
            for (key, mut record) in ctx.scan::<StockRecord>(keys::STOCK, MAX_SCAN).await? {
                if record.announced >= record.crossings {
                    continue;
                }
                // Checked: a give-back may end the crossing meanwhile.
                let on_shelf = shelf::shelf(&ctx, &record.product, Read::Checked).await?;
                if on_shelf >= i64::from(record.threshold) {
                    continue;
                }
                announce_low(&ctx, &mut record, on_shelf)?;
                ctx.put(&key, &record)?;
            }
            Ok::<_, StepError>(())
        })
}
