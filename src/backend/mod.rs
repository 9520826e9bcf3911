//! The adapter contract: what a storage and a transport adapter must do, and the
//! types they exchange with the engine.
//!
//! A backend implements [`Store`] (tenant-scoped, versioned state plus the engine's
//! bookkeeping) and [`Transport`] (durable delivery of events to subscribing steps);
//! a type that implements both is a [`Backend`] and can be given to
//! [`EngineBuilder::backend`](crate::EngineBuilder::backend). A transport in
//! another system than the store implements [`Broker`] instead, and a
//! [`SplitBackend`](crate::SplitBackend) pairs it with a store
//! ([`EngineBuilder::store`](crate::EngineBuilder::store) and
//! [`transport`](crate::EngineBuilder::transport)).
//!
//! [`Store::complete`] is the heart of the contract: each [`Completion`] it is given
//! applies all at once or not at all, and that includes the transport side
//! (publishing the emitted deliveries, acknowledging, rescheduling or dead-lettering
//! the input delivery). Backends whose state and queues live in one database
//! (memory, SQLite, PostgreSQL) do it in one transaction.
//!
//! This module imports nothing of the engine: an adapter written outside this crate
//! needs only these types. The guide below (`docs/ADAPTERS.md` in the repository)
//! covers each method's guarantees and running the conformance suite against your
//! own adapter.
//!
#![doc = include_str!("../../docs/ADAPTERS.md")]

mod broker;
mod completion;
mod dead_letter;
mod delivery;
mod error;
pub(crate) mod lane;
pub(crate) mod place;
mod runtime;
mod state;
mod store;
mod transport;

pub use broker::{Broker, Outgoing, Received, ReceivedBatch};
pub use completion::{
    cron_fire_settled, Action, Completion, Marker, Outcome, CRON_FIRE_HORIZON,
    DELIVERY_MARKER_RETENTION,
};
pub use dead_letter::{DeadLetter, DeadLetterQuery, FailureKind};
pub use delivery::{
    Cancel, ClaimBatch, ClaimRequest, Claimed, LeaseRef, NewDelivery, QueueDepth, StepClaim,
    StepWork,
};
pub use error::StoreError;
pub use runtime::{AdapterRuntime, RuntimeStopped};
pub use state::{counter_bytes, sum_adds, Add, AddError, ReadCheck, Value, Versioned, Write};
pub use store::Store;
pub use transport::{Transport, WakeUp};

/// A storage adapter and a transport adapter in one: state, bookkeeping and queues
/// that commit together. Implemented for every type that implements both.
pub trait Backend: Store + Transport {}
impl<T: Store + Transport> Backend for T {}
