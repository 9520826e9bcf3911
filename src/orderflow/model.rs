//! What the order steps keep in each store's state, and under which keys.
//!
//! Every key is in the store's own tenant: no key names another store, and an
//! order id is unique only within its store.

use serde::{Deserialize, Serialize};

use super::fraud::Indicator;
use super::money::Money;
use super::status::{DeliveryStatus, IllegalTransition, OrderStatus};
use super::stock::{Stock, StockError};
use super::validate::OrderLine;
use crate::time::Timestamp;

/// State keys.
pub(crate) mod keys {
    /// The store's [`StoreSettings`](crate::orderflow::StoreSettings).
    pub(crate) const SETTINGS: &str = "settings";
    /// Prefix of the system tenant's store registry.
    pub(crate) const STORES: &str = "stores/";
    /// Prefix of products.
    pub(crate) const PRODUCTS: &str = "product/";
    /// Prefix of stock records.
    pub(crate) const STOCK: &str = "stock/";
    /// Prefix of the alert list, newest first.
    pub(crate) const ALERTS_BY_TIME: &str = "alerts/by-time/";
    /// Prefix of the recent-orders list, newest first.
    pub(crate) const RECENT_ORDERS: &str = "orders/by-time/";

    pub(crate) fn store(id: &str) -> String {
        format!("{STORES}{id}")
    }
    pub(crate) fn product(id: &str) -> String {
        format!("{PRODUCTS}{id}")
    }
    /// Product names are matched without regard to case.
    pub(crate) fn product_name(name: &str) -> String {
        format!("product-name/{}", name.to_lowercase())
    }
    pub(crate) fn stock(id: &str) -> String {
        format!("{STOCK}{id}")
    }
    /// Units of a product on the shelf, free to reserve: an escrow counter
    /// (see `StockRecord`).
    pub(crate) fn available(id: &str) -> String {
        format!("available/{id}")
    }
    /// Units of a product paid for: a counter (see `StockRecord`).
    pub(crate) fn sold(id: &str) -> String {
        format!("sold/{id}")
    }
    pub(crate) fn order(id: &str) -> String {
        format!("order/{id}")
    }
    /// Prefix of an order's history rows, in order.
    pub(crate) fn milestones(order_id: &str) -> String {
        format!("order/{order_id}/m/")
    }
    pub(crate) fn milestone(order_id: &str, seq: u32) -> String {
        format!("order/{order_id}/m/{seq:05}")
    }
    pub(crate) fn payment(order_id: &str) -> String {
        format!("payment/{order_id}")
    }
    /// The cancel key of an order's pending payment retry timer.
    pub(crate) fn payment_retry(order_id: &str) -> String {
        format!("payment-retry/{order_id}")
    }
    /// The cancel key of an order's parcel's next scheduled move.
    pub(crate) fn parcel(order_id: &str) -> String {
        format!("parcel/{order_id}")
    }
    pub(crate) fn idempotency(key: &str) -> String {
        format!("idempotency/{key}")
    }
    /// A customer's recent orders and failed payments. Names are at most 200
    /// characters, which can be more bytes than a key holds; long ones go by hash.
    pub(crate) fn customer(name: &str) -> String {
        if name.len() <= 256 {
            format!("customer/{name}")
        } else {
            let hash = super::super::dice::hash(0, &[name.as_bytes()]);
            format!("customer/#{hash:016x}")
        }
    }
    /// Orders held for review, by order id: the review queue.
    pub(crate) const HELD: &str = "held/";
    pub(crate) fn held(order_id: &str) -> String {
        format!("{HELD}{order_id}")
    }
    pub(crate) fn alert(id: &str) -> String {
        format!("alert/{id}")
    }
    /// Newest first: the time is inverted so that key order is newest first.
    pub(crate) fn newest_first(prefix: &str, at: crate::time::Timestamp, id: &str) -> String {
        let inverted = i64::MAX - at.as_millis().max(0);
        format!("{prefix}{inverted:019}/{id}")
    }
}

/// A milestone in an order's history, with the time it happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Milestone {
    /// What happened, e.g. `ORDER_CREATED`, `PAYMENT_RECEIVED`, `SHIPPED`.
    pub status: String,
    /// When.
    pub timestamp: Timestamp,
    /// Details, e.g. a decline reason or a tracking number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Where an order's stock stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StockHold {
    /// Nothing reserved (yet, or the reservation failed).
    #[default]
    None,
    /// Reserved, waiting for payment.
    Reserved,
    /// Sold: committed after payment.
    Committed,
    /// The reservation was released (payment declined).
    Released,
    /// Sold units came back to stock (fulfilment failed, or the parcel returned).
    Returned,
}

/// An order, as the steps keep it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    /// Unique within the store.
    pub order_id: String,
    /// Who placed it.
    pub customer: String,
    /// What, priced from the catalogue.
    pub lines: Vec<OrderLine>,
    /// The total we computed.
    pub total: Money,
    /// Where it is in the lifecycle.
    pub status: OrderStatus,
    /// When it was accepted; never changes.
    pub created_at: Timestamp,
    /// How many rows its history holds. The history is append-only rows beside
    /// the order, one per step that noted milestones (the tracking API lists
    /// them), so a step adds one small row instead of rewriting a growing record.
    #[serde(default)]
    pub milestones: u32,
    /// Milestones noted by the running step and not yet saved.
    #[serde(skip)]
    pub(crate) noted: Vec<Milestone>,
    /// Where its stock stands.
    pub stock: StockHold,
    /// Fraud indicators that matched, if screened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indicators: Vec<Indicator>,
    /// The review's decision on a held order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<String>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// The invoice number, when the store issues them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice: Option<String>,
    /// The carrier's tracking number, once booked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
    /// The carrier, once booked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<String>,
    /// Where the parcel is, once fulfilment handed it to delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryStatus>,
    /// Delivery attempts made.
    #[serde(default)]
    pub delivery_attempts: u32,
}

impl Order {
    /// Adds a milestone to the history.
    pub(crate) fn note(&mut self, status: &str, at: Timestamp, note: Option<String>) {
        self.noted.push(Milestone {
            status: status.to_string(),
            timestamp: at,
            note,
        });
    }

    /// Moves to `next` (the state machine decides) and records the milestone.
    pub(crate) fn move_to(
        &mut self,
        next: OrderStatus,
        milestone: &str,
        at: Timestamp,
        note: Option<String>,
    ) -> Result<OrderStatus, IllegalTransition> {
        let from = self.status;
        self.status = from.transition(next)?;
        self.note(milestone, at, note);
        Ok(from)
    }
}

/// A product's stock as stored, with its low-stock announcements.
///
/// The moving counts are not in the record: units on the shelf and units sold
/// are two counters beside it (escrow keys), so that reservations, payments
/// and releases of one product by many orders at once add to them without
/// rewriting, and so without conflicting on, one hot record. Units reserved
/// are what the other counts leave: [`StockRecord::counts`] derives them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StockRecord {
    /// The product's id.
    pub product: String,
    /// The product's name, for alerts.
    pub name: String,
    /// Units it started with.
    pub initial: u32,
    /// Units added since.
    pub restocked: u32,
    /// Below this many available, the product is low on stock.
    pub threshold: u32,
    /// How many times it fell below its threshold.
    pub crossings: u32,
    /// The last crossing announced with `inventory.threshold_reached`.
    pub announced: u32,
}

impl StockRecord {
    /// The record of a product that starts with `initial` units; one that
    /// starts below its threshold has crossed it once.
    pub fn new(
        product: impl Into<String>,
        name: impl Into<String>,
        initial: u32,
        threshold: u32,
    ) -> Self {
        StockRecord {
            product: product.into(),
            name: name.into(),
            initial,
            restocked: 0,
            threshold,
            crossings: u32::from(initial < threshold),
            announced: 0,
        }
    }

    /// The product's counts, given the two counters beside the record: the
    /// units `available` on the shelf and the units `sold`.
    ///
    /// ```
    /// use flowline::orderflow::StockRecord;
    /// let watch = StockRecord::new("prod-x-001", "Smart Watch", 50, 15);
    /// let counts = watch.counts(40, 6)?;
    /// assert_eq!((counts.available, counts.reserved, counts.sold), (40, 4, 6));
    /// assert!(watch.counts(40, 11).is_err(), "more than it ever had");
    /// # Ok::<(), flowline::orderflow::StockError>(())
    /// ```
    ///
    /// # Errors
    /// [`StockError::Unbalanced`] if the counters do not fit the record: a
    /// negative counter, or more units on the shelf and sold than the product
    /// ever had. No sequence of the inventory step's operations leaves that.
    pub fn counts(&self, available: i64, sold: i64) -> Result<Stock, StockError> {
        let had = i64::from(self.initial) + i64::from(self.restocked);
        let unbalanced = || StockError::Unbalanced {
            product: self.product.clone(),
            had,
            available,
            sold,
        };
        let reserved = had
            .checked_sub(available)
            .and_then(|left| left.checked_sub(sold))
            .ok_or_else(unbalanced)?;
        let count = |n: i64| u32::try_from(n).map_err(|_| unbalanced());
        Ok(Stock {
            product: self.product.clone(),
            available: count(available)?,
            reserved: count(reserved)?,
            sold: count(sold)?,
            initial: self.initial,
            restocked: self.restocked,
            threshold: self.threshold,
        })
    }
}

/// Where an order's payment stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRecord {
    /// The key the gateway sees on every attempt for this order.
    pub idempotency_key: String,
    /// Failed attempts that were retried.
    pub retries: u32,
    /// The captured charge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    /// What was captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured: Option<Money>,
    /// Why it was declined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declined: Option<String>,
    /// What was refunded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refunded: Option<Money>,
}

/// How loud an alert is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertLevel {
    /// Something happened.
    Info,
    /// Look at it soon.
    Warning,
    /// Something failed.
    Error,
}

impl AlertLevel {
    /// As shown and filtered: `info`, `warning` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertLevel::Info => "info",
            AlertLevel::Warning => "warning",
            AlertLevel::Error => "error",
        }
    }
}

/// Where an alert is in its life: raised, then acknowledged and/or resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// Nobody has looked at it; counts as active.
    Open,
    /// Someone has seen it; the condition may still hold.
    Acknowledged,
    /// The condition is over.
    Resolved,
}

impl AlertState {
    /// As shown and filtered: `open`, `acknowledged` or `resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Open => "open",
            AlertState::Acknowledged => "acknowledged",
            AlertState::Resolved => "resolved",
        }
    }
}

/// An alert raised from an event, unique per de-duplication key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// The de-duplication key, which is also the id: `payment_failed:o-17`,
    /// `low_stock:prod-y-003:2` (the second time it fell below).
    pub id: String,
    /// How loud.
    #[serde(rename = "type")]
    pub level: AlertLevel,
    /// Short title.
    pub title: String,
    /// The message.
    pub message: String,
    /// The order it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// The product it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<String>,
    /// When it was raised.
    pub timestamp: Timestamp,
    /// Where it is in its life.
    pub state: AlertState,
    /// When it was resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<Timestamp>,
}

/// A stored answer to an intake request, replayed for the same Idempotency-Key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredResponse {
    /// A fingerprint of the request body it answered.
    pub(crate) fingerprint: u64,
    /// The HTTP status.
    pub(crate) status: u16,
    /// The body.
    pub(crate) body: serde_json::Value,
}
