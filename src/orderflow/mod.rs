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
//!   sometimes fail.
//!
//! The steps themselves (intake, fraud, inventory, payment, fulfilment,
//! delivery, tracking, alerts, dashboard, init, seed) are not built yet.

mod carrier;
mod dice;
mod gateway;
mod money;
mod status;

pub use carrier::{Carrier, CarrierError, Label, MockCarrier, Shipment};
pub use gateway::{
    Charge, ChargeRequest, GatewayError, LedgerEntry, MockGateway, MockGatewayBuilder,
    MockGatewayError, Outage, PaymentGateway, Refund,
};
pub use money::{Currency, Money, MoneyError};
pub use status::{DeliveryStatus, IllegalTransition, OrderStatus};
