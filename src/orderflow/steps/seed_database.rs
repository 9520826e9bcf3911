//! Step 14 of 14: Seed (the seed's `seed_inventory` script, as a step): adds products and
//! their starting stock to a store, insert-only, so running it again never
//! resets stock that orders have moved (SEED_SPEC §1.14).
//!
//! A product seeded below its threshold counts as one crossing not yet
//! announced: the next stock check raises its low-stock alert.

use std::collections::HashSet;

use crate::engine::StepContext;
use crate::engine::{Step, StepError};
use crate::orderflow::events::SeedCatalogue;
use crate::orderflow::model::{keys, StockRecord};

/// The longest product id and name accepted.
pub(crate) const MAX_PRODUCT_FIELD_LEN: usize = 200;

pub(crate) fn step() -> Step {
    Step::event::<SeedCatalogue>("seed_database").handle(|ctx: StepContext, seed: SeedCatalogue| async move {
        let (mut ids, mut names) = (HashSet::new(), HashSet::new());
        for item in &seed.products {
            let p = &item.product;
            let ok = |s: &str| !s.trim().is_empty() && s.len() <= MAX_PRODUCT_FIELD_LEN;
            if !ok(&p.id) || !ok(&p.name) || p.price.minor < 0 {
                return Err(StepError::permanent(format!(
                    "product {:?}: id and name must be 1 to {MAX_PRODUCT_FIELD_LEN} bytes and the price not negative",
                    p.id
                )));
            }
            if !ids.insert(p.id.as_str()) || !names.insert(p.name.to_lowercase()) {
                return Err(StepError::permanent(format!(
                    "product {:?} ({:?}) is listed twice",
                    p.id, p.name
                )));
            }
        }
        let (mut inserted, mut skipped) = (0usize, 0usize);
        for item in seed.products {
            let product = item.product;
            let key = keys::product(&product.id);
            let name_key = keys::product_name(&product.name);
            if ctx.get_raw(&key).await?.is_some()
                || ctx.get::<String>(&name_key).await?.is_some()
            {
                skipped += 1;
                continue;
            }
            ctx.put(&name_key, &product.id)?;
            let record =
                StockRecord::new(&product.id, &product.name, item.stock, product.threshold);
            ctx.put(&keys::stock(&product.id), &record)?;
            ctx.add(&keys::available(&product.id), i64::from(item.stock))?;
            ctx.put(&key, &product)?;
            inserted += 1;
        }
        tracing::info!(store = %ctx.tenant(), inserted, skipped, "catalogue seeded");
        Ok(())
    })
}
