//! Step 13 of 14: Init (the seed's `db_init`, which nothing ever triggered): bootstrap
//! every store when the host starts.
//!
//! The host emits `app.startup` to the system tenant with its stores
//! ([`bootstrap`](crate::orderflow::bootstrap)). The step records each store
//! in the registry the stock-check cron walks, and addresses `store.init` to
//! each store, where the same step writes the store's settings. Running it
//! again with the same stores changes nothing; with changed settings it
//! applies them.

use crate::engine::StepContext;
use crate::engine::{Step, StepError};
use crate::event::EmitOptions;
use crate::event::TenantId;
use crate::inbound;
use crate::orderflow::events::{AppStartup, StoreInit};
use crate::orderflow::model::keys;
use crate::orderflow::store::{StoreConfig, StoreSettings};

inbound! {
    /// The host's startup (system tenant), and one store's bootstrap.
    pub(crate) enum InitInput {
        Startup(AppStartup),
        Store(StoreInit),
    }
}

pub(crate) fn step() -> Step {
    Step::event::<InitInput>("db_init")
        .emits::<StoreInit>()
        .handle(|ctx: StepContext, input: InitInput| async move {
            match input {
                InitInput::Startup(startup) => {
                    if ctx.tenant() != &TenantId::system() {
                        return Err(StepError::permanent(format!(
                            "app.startup must be emitted to the system tenant, not {}",
                            ctx.tenant()
                        )));
                    }
                    for config in startup.stores {
                        let key = keys::store(config.store.as_str());
                        if ctx.get::<StoreConfig>(&key).await?.as_ref() != Some(&config) {
                            ctx.put(&key, &config)?;
                        }
                        let to = EmitOptions::new().tenant(config.store.clone());
                        ctx.emit_with(&StoreInit { config }, to)?;
                    }
                }
                InitInput::Store(init) => {
                    if ctx.tenant() != &init.config.store {
                        return Err(StepError::permanent(format!(
                            "store.init for {} delivered to {}",
                            init.config.store,
                            ctx.tenant()
                        )));
                    }
                    let current = ctx.get::<StoreSettings>(keys::SETTINGS).await?;
                    if current.as_ref() != Some(&init.config.settings) {
                        ctx.put(keys::SETTINGS, &init.config.settings)?;
                        tracing::info!(store = %init.config.store, "store settings written");
                    }
                }
            }
            Ok(())
        })
}
