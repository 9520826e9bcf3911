//! Layer 3, the bundled adapters. Each implements the contract in
//! [`backend`](crate::backend) and depends on it and on the vocabulary only.

pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod split;
#[cfg(feature = "sqlite")]
pub mod sqlite;
