//! `flowline::orderflow`: the order lifecycle of a multi-tenant store as steps
//! on the engine (feature `orderflow`).
//!
//! The seed order system (SEED_SPEC.md) rebuilt as it was meant to work, with
//! its weaknesses fixed: every store is a tenant; an order is validated and
//! priced from the store's catalogue, screened for fraud, its stock reserved
//! all or nothing, charged once through an idempotent [`PaymentGateway`] with
//! durable retries, fulfilled, and delivered through a durable state machine.
//! Alerts and dashboard counters follow along.
//!
//! ```text
//! POST /api/order ─► order.created ─► fraud_guard ─┬─► order.cleared ─► inventory_update ─► inventory.reserved
//!                                                  └─► order.flagged, wait ─► fraud_hold ◄─ fraud.verified (review API)
//!                                                         fraud_hold ─┬─► release: order.cleared
//!                                                                     └─► reject, or no review in time: rejected
//! inventory.reserved ─► payment_processing ─┬─► payment.processed ─► inventory_update ─► inventory.updated
//!          (retry_due, delayed) ◄───────────┤                        ─► order_fulfillment ─► order.completed ─► delivery
//!                                           └─► payment.failed ─► inventory_update (release)
//! ```
//!
//! | # | step | trigger |
//! |---|---|---|
//! | 1 | `order_create_api` | `POST /api/order` |
//! | 2 | `order_submission_api` | `POST /api/order/submit` (the seed's payload and answers) |
//! | 3 | `fraud_guard`, `fraud_hold`, `fraud_review_api`, `fraud_review_queue_api` | `order.created`, `payment.failed`; a durable wait on `fraud.verified` (timeout [`Timings::review_timeout`]); `POST /api/order/{orderId}/review`; `GET /api/order/held` |
//! | 4 | `inventory_update`, `order_cancel_api` | `order.cleared`, `payment.processed`, `payment.failed`, `order.failed`, `order.cancelled`, `delivery.returned`, `inventory.restock_requested`; `POST /api/order/{orderId}/cancel` |
//! | 5 | `payment_processing` | `inventory.reserved`, `payment.retry_due`, `order.failed`, `order.cancelled`, `delivery.returned` |
//! | 6 | `check_inventory`, `check_inventory_store` | cron (every minute), `inventory.check_requested` |
//! | 7 | `order_fulfillment` | `inventory.updated` |
//! | 8 | `delivery` | `order.completed`, `delivery.advance` |
//! | 9 | `order_tracking_api` | `GET /api/order/tracking/{orderId}` |
//! | 10 | `alert_listener` | order, inventory and payment events |
//! | 11 | `alerts_api`, `alert_acknowledge_api`, `alert_resolve_api` | `GET /api/alerts`, `POST /api/alerts/{id}/acknowledge`, `…/resolve` |
//! | 12 | `dashboard_stats_api` | `GET /api/dashboard/stats` |
//! | 13 | `db_init` | `app.startup`, `store.init` |
//! | 14 | `seed_database`, `catalogue_api` | `catalogue.seed_requested`; `GET /api/catalogue` (products with the units free to order) |
//!
//! API steps are framework-neutral: the host resolves the store from the
//! `X-Store-ID` header ([`store_from_headers`]) and passes an
//! [`ApiRequest`](crate::ApiRequest) to [`Engine::call`]. Errors are JSON
//! `{"code", "message"}`: an unknown store is 400, an invalid body 422 naming
//! the field, an Idempotency-Key reused with another body 409, an order or
//! alert this store does not have 404. Every answer's keys are camelCase.
//!
//! Over HTTP (feature `axum`), beside [`api_router`](crate::http::api_router):
//! `live_router` serves live updates as server-sent events (an order's
//! status and history, a store's alerts), `storefront_router` the store
//! front page at `/`, and `openapi_router` the API's OpenAPI 3.1 document
//! ([`OPENAPI`]) at `/openapi.json`. `examples/orderflow_server.rs` serves
//! them all.
//!
//! ```
//! use flowline::orderflow::{self, MockCarrier, MockGateway, Orderflow};
//! use flowline::{ApiRequest, Clock, Engine, MemoryBackend, Method, TenantId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let gateway = MockGateway::builder().build(Clock::system())?;
//! let flow = Orderflow::new(gateway.clone(), MockCarrier::new(1))
//!     .timings(orderflow::Timings::default().instant_delivery())
//!     .flow()?;
//! let engine = Engine::builder(flow).backend(MemoryBackend::new()).start().await?;
//! orderflow::bootstrap(&engine, &orderflow::demo_stores()).await?;
//! orderflow::seed_demo(&engine).await?;
//! engine.wait_idle().await;
//!
//! let store = TenantId::new("X")?;
//! let order = serde_json::json!({
//!     "orderId": "o-1",
//!     "customerName": "Ada",
//!     "items": [{ "productId": "prod-x-001", "quantity": 2 }],
//! });
//! let created = engine.call(ApiRequest::new(Method::Post, "/api/order", store.clone()).json(order)).await;
//! assert_eq!(created.status, 201);
//! engine.wait_idle().await;
//!
//! let tracking = engine
//!     .call(ApiRequest::new(Method::Get, "/api/order/tracking/o-1", store))
//!     .await;
//! assert_eq!(tracking.body["status"], "delivered");
//! assert_eq!(gateway.ledger().len(), 1, "charged once");
//! # engine.shutdown(std::time::Duration::from_secs(1)).await;
//! # Ok(())
//! # }
//! ```
//!
//! The parts the steps are built on are public too, each tested on its own:
//! [`Money`], the [`OrderStatus`] and [`DeliveryStatus`] state machines, the
//! [`MockGateway`] and [`MockCarrier`], [`Stock`] and [`reserve_all`],
//! [`screen`] for the fraud rules, and [`parse_order`] with [`price_order`].

#[cfg(feature = "axum")]
mod api_keys;
mod carrier;
mod catalogue;
mod config;
mod dice;
mod events;
mod fraud;
mod gateway;
#[cfg(feature = "http-gateway")]
mod gateway_http;
#[cfg(feature = "axum")]
mod gateway_server;
mod http;
mod limits;
#[cfg(feature = "axum")]
mod live;
mod model;
mod money;
mod openapi;
#[cfg(feature = "test-util")]
pub mod sim;
mod stats;
mod status;
mod steps;
mod stock;
mod store;
#[cfg(feature = "axum")]
mod storefront;
mod timings;
mod validate;

use crate::engine::{Engine, EngineError};
use crate::event::TenantId;

#[cfg(feature = "axum")]
pub use api_keys::{auth_options, read_scope, write_scope};
pub use carrier::{Carrier, CarrierError, Label, MockCarrier, Shipment};
pub use catalogue::{demo_catalogue, Product, SeedProduct, SeedStore, DEMO_PRICE};
pub use config::Orderflow;
pub use events::{
    AppStartup, DeliveryAdvance, DeliveryDelivered, DeliveryReturned, DeliveryShipped,
    FraudVerified, InventoryFailed, InventoryReserved, InventoryUpdated, OrderCancelled,
    OrderCleared, OrderCompleted, OrderCreated, OrderFailed, OrderFlagged, OrderStalled,
    PaymentFailed, PaymentProcessed, PaymentRecovered, PaymentRetryDue, PaymentRetrying,
    RestockRequested, ReviewDecision, SeedCatalogue, StockCheckRequested, StoreInit,
    ThresholdCleared, ThresholdReached, WEBHOOK_TOPICS,
};
pub use fraud::{
    screen, Indicator, Screening, Verdict, FAILED_PAYMENTS, FAILED_WINDOW, FLAG_AT,
    HIGH_AMOUNT_MAJOR, HIGH_QUANTITY, RAPID_ORDERS, RAPID_WINDOW,
};
pub use gateway::{
    Charge, ChargeRequest, GatewayError, LedgerEntry, MockGateway, MockGatewayBuilder,
    MockGatewayError, Outage, PaymentGateway, Refund,
};
#[cfg(feature = "http-gateway")]
pub use gateway_http::{HttpGateway, HttpGatewayError};
#[cfg(feature = "axum")]
pub use gateway_server::gateway_router;
pub use http::{store_from_headers, STORE_HEADER};
pub use limits::{
    clear_intake_rate, set_intake_rate, OrderLimits, GATEWAY_LIMIT, INTAKE_LIMIT, INTAKE_STEPS,
    PAYMENTS_LIMIT,
};
#[cfg(feature = "axum")]
pub use live::{live_router, MAX_STREAMS, MAX_STREAMS_PER_CLIENT, RESYNC};
pub use model::{
    Alert, AlertLevel, AlertState, Milestone, Order, PaymentRecord, StockHold, StockRecord,
};
pub use money::{Currency, Money, MoneyError};
#[cfg(feature = "axum")]
pub use openapi::openapi_router;
pub use openapi::OPENAPI;
pub use status::{DeliveryStatus, IllegalTransition, OrderStatus};
pub use steps::order_create_api::MAX_IDEMPOTENCY_KEY_LEN;
pub use stock::{reserve_all, Crossing, Stock, StockError};
pub use store::{demo_stores, FulfilmentSteps, StoreConfig, StoreSettings};
#[cfg(feature = "axum")]
pub use storefront::storefront_router;
pub use timings::Timings;
pub use validate::{
    parse_order, price_order, OrderLine, OrderRequest, PricedOrder, ProductRef, RequestedLine,
    ValidationError, MAX_CUSTOMER_LEN, MAX_LINES, MAX_ORDER_ID_LEN, MAX_QUANTITY,
};

/// Registers `stores` and bootstraps each (settings written, stock check on),
/// through `db_init`. Safe to call at every start.
///
/// # Errors
/// The engine refused the event (shutting down, or the backend failed).
pub async fn bootstrap(engine: &Engine, stores: &[StoreConfig]) -> Result<(), EngineError> {
    let startup = AppStartup {
        stores: stores.to_vec(),
    };
    engine.emit(&TenantId::system(), &startup).await.map(drop)
}

/// Seeds the demo catalogue ([`demo_catalogue`]) into stores X, Y and Z,
/// insert-only: a second call changes nothing.
///
/// # Errors
/// The engine refused an event.
pub async fn seed_demo(engine: &Engine) -> Result<(), EngineError> {
    for store in demo_catalogue() {
        let seed = SeedCatalogue {
            products: store.products,
        };
        engine.emit(&store.store, &seed).await?;
    }
    Ok(())
}

/// Adds `quantity` units of a product to a store's stock.
///
/// # Errors
/// The engine refused the event.
pub async fn restock(
    engine: &Engine,
    store: &TenantId,
    product_id: &str,
    quantity: u32,
) -> Result<(), EngineError> {
    let request = RestockRequested {
        product_id: product_id.to_string(),
        quantity,
    };
    engine.emit(store, &request).await.map(drop)
}

/// Why [`stock_counts`] could not answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StockReadError {
    /// The engine could not read the state.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The stored counts do not add up.
    #[error(transparent)]
    Inconsistent(#[from] StockError),
}

/// A product's stock in a store: its record and its counts, read from the
/// counters beside the record (see [`StockRecord`]); `None` if the store does
/// not stock it.
///
/// ```
/// # use flowline::orderflow::{self, MockCarrier, MockGateway, Orderflow};
/// # use flowline::{Clock, Engine, MemoryBackend, TenantId};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let gateway = MockGateway::builder().build(Clock::system())?;
/// # let flow = Orderflow::new(gateway, MockCarrier::new(1)).flow()?;
/// # let engine = Engine::builder(flow).backend(MemoryBackend::new()).start().await?;
/// orderflow::seed_demo(&engine).await?;
/// engine.wait_idle().await;
/// let x = TenantId::new("X")?;
/// let (_, watch) = orderflow::stock_counts(&engine, &x, "prod-x-001").await?.expect("seeded");
/// assert_eq!((watch.available, watch.reserved, watch.sold), (50, 0, 0));
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// The backend failed, or the stored counts do not add up (which the inventory
/// step never leaves behind).
pub async fn stock_counts(
    engine: &Engine,
    store: &TenantId,
    product_id: &str,
) -> Result<Option<(StockRecord, Stock)>, StockReadError> {
    let record_key = model::keys::stock(product_id);
    let available_key = model::keys::available(product_id);
    let sold_key = model::keys::sold(product_id);
    // Three reads, not one snapshot: orders move the counters in between. The
    // reads repeat until two rounds agree, so the counts come from one moment.
    // (Bounded: under endless orders the last round is judged as it is.)
    let read = || async {
        let sold: Option<i64> = engine.state(store, &sold_key).await?;
        let available: Option<i64> = engine.state(store, &available_key).await?;
        let record = engine.state::<StockRecord>(store, &record_key).await?;
        Ok::<_, EngineError>((record, available.unwrap_or(0), sold.unwrap_or(0)))
    };
    let mut seen = read().await?;
    let mut attempts = 1;
    loop {
        let again = read().await?;
        if again == seen || attempts == STOCK_READ_ATTEMPTS {
            let (Some(record), available, sold) = again else {
                return Ok(None);
            };
            let counts = record.counts(available, sold)?;
            return Ok(Some((record, counts)));
        }
        seen = again;
        attempts += 1;
    }
}

/// Rounds of reads [`stock_counts`] tries before it judges the last one.
const STOCK_READ_ATTEMPTS: u32 = 64;
