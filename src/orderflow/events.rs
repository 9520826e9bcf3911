//! The events the order steps exchange. Topic names are the seed's where it had
//! one (SEED_SPEC §2.1); the rest are new and say what happened.

use serde::{Deserialize, Serialize};

use super::catalogue::SeedProduct;
use super::fraud::Indicator;
use super::money::Money;
use super::status::DeliveryStatus;
use super::store::StoreConfig;
use super::validate::OrderLine;
use crate::event::Event;
use crate::time::Timestamp;

macro_rules! topic {
    ($ty:ident, $topic:literal) => {
        impl Event for $ty {
            const TOPIC: &'static str = $topic;
        }
    };
}

/// An order was accepted `pending` by an intake API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreated {
    /// The order.
    pub order_id: String,
    /// Who placed it.
    pub customer: String,
    /// What, priced from the catalogue.
    pub lines: Vec<OrderLine>,
    /// The total we computed.
    pub total: Money,
    /// When it was accepted.
    pub created_at: Timestamp,
}
/// The topics a store's webhooks may ask for (SR-3.1's `webhook.dispatcher`):
/// every `order.*` event, and the payment and delivery events a merchant's
/// systems follow. Timers and the engine's own traffic are not sent.
pub const WEBHOOK_TOPICS: [&str; 14] = [
    "order.created",
    "order.flagged",
    "order.cleared",
    "order.completed",
    "order.failed",
    "order.cancelled",
    "order.stalled",
    "payment.processed",
    "payment.recovered",
    "payment.failed",
    "payment.retrying",
    "delivery.shipped",
    "delivery.delivered",
    "delivery.returned",
];

topic!(OrderCreated, "order.created");

/// Fraud screening held the order for review.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderFlagged {
    /// The order.
    pub order_id: String,
    /// The indicators' labels, joined.
    pub reason: String,
    /// What matched.
    pub indicators: Vec<Indicator>,
}
topic!(OrderFlagged, "order.flagged");

/// The order may go on to stock and payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCleared {
    /// The order.
    pub order_id: String,
    /// False when the store has screening switched off.
    pub screened: bool,
    /// True when a review released a held order.
    pub reviewed: bool,
}
topic!(OrderCleared, "order.cleared");

/// A review's decision on an order held by fraud screening (the SRS's
/// `fraud.verified`, FR-2.0). The review API emits it; a host's own fraud
/// service may emit it too. The `fraud_hold` step waits for it, and applies
/// the first one per hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FraudVerified {
    /// The held order.
    pub order_id: String,
    /// Release it to stock and payment, or reject it.
    pub decision: ReviewDecision,
    /// The reviewer's note, at most 500 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}
topic!(FraudVerified, "fraud.verified");

/// What a review decides for a held order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewDecision {
    /// The order goes on to stock and payment.
    Release,
    /// The order ends `rejected`, never charged.
    Reject,
}

/// Every line's stock is reserved; the order waits for payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryReserved {
    /// The order.
    pub order_id: String,
}
topic!(InventoryReserved, "inventory.reserved");

/// The order could not be reserved (out of stock); it failed without a charge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryFailed {
    /// The order.
    pub order_id: String,
    /// Why, e.g. `prod-x-004: 3 wanted, 2 available`.
    pub reason: String,
}
topic!(InventoryFailed, "inventory.failed");

/// A paid order's stock is committed (sold); fulfilment may start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryUpdated {
    /// The order.
    pub order_id: String,
}
topic!(InventoryUpdated, "inventory.updated");

/// A product fell below its low-stock threshold. Announced once per crossing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThresholdReached {
    /// The product.
    pub product_id: String,
    /// Its name.
    pub product_name: String,
    /// Units available now.
    pub current_stock: u32,
    /// The threshold.
    pub threshold: u32,
    /// Which crossing this is (1 for the first time it fell below), so the
    /// alert of one crossing is raised once.
    pub crossing: u32,
}
topic!(ThresholdReached, "inventory.threshold_reached");

/// A low product rose back to its threshold or above (a restock or a release).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThresholdCleared {
    /// The product.
    pub product_id: String,
    /// Units available now.
    pub current_stock: u32,
    /// The crossing that ended.
    pub crossing: u32,
}
topic!(ThresholdCleared, "inventory.threshold_cleared");

/// Asks the inventory step to add stock (from the host: a delivery arrived).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestockRequested {
    /// The product.
    pub product_id: String,
    /// Units to add (at least 1).
    pub quantity: u32,
}
topic!(RestockRequested, "inventory.restock_requested");

/// The stock-check cron asks one store to look for unannounced low stock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StockCheckRequested {
    /// The cron instant.
    pub at: Timestamp,
}
topic!(StockCheckRequested, "inventory.check_requested");

/// The charge was captured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentProcessed {
    /// The order.
    pub order_id: String,
    /// The gateway's id for the charge.
    pub transaction_id: String,
    /// How much.
    pub amount: Money,
    /// Attempts the gateway could not answer before this one.
    pub retries: u32,
}
topic!(PaymentProcessed, "payment.processed");

/// A charge went through after the gateway had failed to answer: the order's
/// retrying alert is over. Emitted only then, so that a charge at the first try
/// costs no alert work.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRecovered {
    /// The order.
    pub order_id: String,
    /// Attempts the gateway could not answer before the one that went through.
    pub retries: u32,
}
topic!(PaymentRecovered, "payment.recovered");

/// The charge was declined: final for this order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentFailed {
    /// The order.
    pub order_id: String,
    /// Who placed it (the fraud rules count failures per customer).
    pub customer: String,
    /// How much was asked.
    pub amount: Money,
    /// Why.
    pub reason: String,
    /// Attempts the gateway could not answer before this one.
    pub retries: u32,
}
topic!(PaymentFailed, "payment.failed");

/// The gateway could not answer (timeout, 5xx, outage); the charge is tried
/// again later with the same idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRetrying {
    /// The order.
    pub order_id: String,
    /// The attempt that failed, from 1.
    pub attempt: u32,
    /// When the next attempt is due.
    pub next_attempt_at: Timestamp,
    /// What went wrong.
    pub error: String,
}
topic!(PaymentRetrying, "payment.retrying");

/// A durable timer: the payment step's next attempt for an order is due.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRetryDue {
    /// The order.
    pub order_id: String,
}
topic!(PaymentRetryDue, "payment.retry_due");

/// Fulfilment is done: picked, packed, and (per store) carrier booked,
/// warehouse notified, invoice made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCompleted {
    /// The order.
    pub order_id: String,
}
topic!(OrderCompleted, "order.completed");

/// A paid order could not be fulfilled: its charge is refunded and its stock
/// returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderFailed {
    /// The order.
    pub order_id: String,
    /// Why.
    pub reason: String,
}
topic!(OrderFailed, "order.failed");

/// The order was cancelled after it was paid: its charge is refunded and its
/// stock released or taken back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCancelled {
    /// The order.
    pub order_id: String,
    /// Why, as the caller gave it.
    pub reason: String,
}
topic!(OrderCancelled, "order.cancelled");

/// A step gave up on an order: its retries ran out, or it failed in a way no
/// retry mends. The order stays where it was and the failed delivery is
/// dead-lettered, replayable; this event (emitted by the step's failure hook,
/// in the dead letter's commit) raises an alert so that a person looks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderStalled {
    /// The order.
    pub order_id: String,
    /// The step that gave up.
    pub step: String,
    /// Why it gave up, as the dead letter says: `permanent`, `exhausted`, ...
    pub kind: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's error.
    pub error: String,
}
topic!(OrderStalled, "order.stalled");

/// A durable timer of the delivery state machine: move the parcel on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryAdvance {
    /// The order.
    pub order_id: String,
    /// Where the parcel goes next.
    pub to: DeliveryStatus,
}
topic!(DeliveryAdvance, "delivery.advance");

/// The parcel left with the carrier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryShipped {
    /// The order.
    pub order_id: String,
    /// The carrier's tracking number.
    pub tracking_number: String,
    /// The carrier.
    pub carrier: String,
}
topic!(DeliveryShipped, "delivery.shipped");

/// The parcel was delivered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryDelivered {
    /// The order.
    pub order_id: String,
    /// Delivery attempts it took.
    pub attempts: u32,
}
topic!(DeliveryDelivered, "delivery.delivered");

/// The parcel went back to the store after its last failed attempt; the charge
/// is refunded and the units return to stock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryReturned {
    /// The order.
    pub order_id: String,
    /// Delivery attempts made.
    pub attempts: u32,
}
topic!(DeliveryReturned, "delivery.returned");

/// The host started: register these stores and bootstrap each (system tenant).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppStartup {
    /// The stores and their settings.
    pub stores: Vec<StoreConfig>,
}
topic!(AppStartup, "app.startup");

/// Bootstrap one store (addressed to the store's tenant by `db_init`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreInit {
    /// The store's configuration.
    pub config: StoreConfig,
}
topic!(StoreInit, "store.init");

/// Adds products to a store's catalogue, insert-only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedCatalogue {
    /// The products and the stock each starts with.
    pub products: Vec<SeedProduct>,
}
topic!(SeedCatalogue, "catalogue.seed_requested");
