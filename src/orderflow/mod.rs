//! `flowline::orderflow`: the order lifecycle of a multi-tenant store on the
//! engine (feature `orderflow`).
//!
//! **In progress.** This module holds the parts the 14 order steps are built
//! on, each tested on its own:
//!
//! * [`Money`] and [`Currency`]: integer minor units, never a float;
//! * [`OrderStatus`] and [`DeliveryStatus`]: explicit state machines, where an
//!   illegal move is an [`IllegalTransition`] error instead of a silent overwrite;
//! * [`PaymentGateway`] with [`MockGateway`]: seeded declines, latency, 5xx
//!   answers, lost responses and outage windows, idempotent on its key, with a
//!   ledger;
//! * [`Carrier`] with [`MockCarrier`]: stable labels and delivery attempts that
//!   sometimes fail;
//! * [`demo_catalogue`]: the seed's four products in stores X, Y and Z;
//! * [`Stock`] and [`reserve_all`]: reserve, commit, release and restock that
//!   never go negative, with low-stock [`Crossing`]s;
//! * [`screen`]: the seed's fraud rules, counted per store, as a [`Verdict`];
//! * [`parse_order`] and [`price_order`]: the intake checks, each failure a
//!   [`ValidationError`] naming its field, prices and totals from the catalogue.
//!
//! The steps themselves (intake, fraud, inventory, payment, fulfilment,
//! delivery, tracking, alerts, dashboard, init, seed) are not built yet.

mod carrier;
mod catalogue;
mod dice;
mod fraud;
mod gateway;
mod money;
mod status;
mod stock;
mod validate;

pub use carrier::{Carrier, CarrierError, Label, MockCarrier, Shipment};
pub use catalogue::{demo_catalogue, Product, SeedProduct, SeedStore, DEMO_PRICE};
pub use fraud::{
    screen, Indicator, Screening, Verdict, FAILED_PAYMENTS, FAILED_WINDOW, FLAG_AT,
    HIGH_AMOUNT_MAJOR, HIGH_QUANTITY, RAPID_ORDERS, RAPID_WINDOW,
};
pub use gateway::{
    Charge, ChargeRequest, GatewayError, LedgerEntry, MockGateway, MockGatewayBuilder,
    MockGatewayError, Outage, PaymentGateway, Refund,
};
pub use money::{Currency, Money, MoneyError};
pub use status::{DeliveryStatus, IllegalTransition, OrderStatus};
pub use stock::{reserve_all, Crossing, Stock, StockError};
pub use validate::{
    parse_order, price_order, OrderLine, OrderRequest, PricedOrder, ProductRef, RequestedLine,
    ValidationError, MAX_CUSTOMER_LEN, MAX_LINES, MAX_ORDER_ID_LEN, MAX_QUANTITY,
};
