//! Per-store settings: what each tenant switched on.

use serde::{Deserialize, Serialize};

use super::money::Currency;
use crate::event::TenantId;

/// The fulfilment sub-steps a store can switch on or off (SRS FR-2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FulfilmentSteps {
    /// Book the parcel with the carrier during fulfilment (otherwise delivery
    /// books it when it starts).
    pub reserve_carrier: bool,
    /// Record a hand-off to the warehouse.
    pub notify_warehouse: bool,
    /// Issue an invoice number.
    pub invoice: bool,
}

impl Default for FulfilmentSteps {
    fn default() -> Self {
        FulfilmentSteps {
            reserve_carrier: true,
            notify_warehouse: true,
            invoice: true,
        }
    }
}

/// One store's settings.
///
/// ```
/// use flowline::orderflow::StoreSettings;
/// let settings = StoreSettings::new("Nexus Shop").screening(false);
/// assert!(!settings.fraud_screening);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreSettings {
    /// The store's display name.
    pub name: String,
    /// The currency its catalogue is priced in.
    pub currency: Currency,
    /// Screen orders for fraud and hold suspicious ones for review before
    /// payment (the SRS's conditional wait). Off: every order is cleared at once.
    pub fraud_screening: bool,
    /// Fulfilment sub-steps.
    pub fulfilment: FulfilmentSteps,
}

impl StoreSettings {
    /// Settings with screening on, every fulfilment step on, priced in USD.
    pub fn new(name: impl Into<String>) -> Self {
        StoreSettings {
            name: name.into(),
            currency: Currency::USD,
            fraud_screening: true,
            fulfilment: FulfilmentSteps::default(),
        }
    }

    /// Switches fraud screening on or off.
    #[must_use]
    pub fn screening(mut self, on: bool) -> Self {
        self.fraud_screening = on;
        self
    }

    /// Sets the fulfilment sub-steps.
    #[must_use]
    pub fn fulfilment(mut self, steps: FulfilmentSteps) -> Self {
        self.fulfilment = steps;
        self
    }
}

/// A store and its settings, as the host registers it at startup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreConfig {
    /// The store, which is the tenant.
    pub store: TenantId,
    /// Its settings.
    pub settings: StoreSettings,
}

/// The seed's three stores, with their front-end brand names (SEED_SPEC §3).
///
/// ```
/// let stores = flowline::orderflow::demo_stores();
/// assert_eq!(stores[1].settings.name, "Nexus Shop");
/// ```
pub fn demo_stores() -> Vec<StoreConfig> {
    [
        ("X", "Motia Prime"),
        ("Y", "Nexus Shop"),
        ("Z", "Aura Luxe"),
    ]
    .into_iter()
    .filter_map(|(id, name)| {
        Some(StoreConfig {
            store: TenantId::new(id).ok()?,
            settings: StoreSettings::new(name),
        })
    })
    .collect()
}
