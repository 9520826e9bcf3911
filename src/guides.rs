//! Guides for application authors. Their examples are doctests of this
//! crate: `cargo test` runs every one.
//!
//! - [`writing_a_flow`]: events and steps, dependencies, error classes,
//!   fan-out, durable waits, failure hooks, testing on the virtual clock.
//! - [`changing_a_running_flow`]: what survives a deploy, renamed steps,
//!   changed event shapes.
//! - [`operating_dead_letters`]: kinds, queries with a cursor, replays
//!   (corrected or not) and purges.

#[doc = include_str!("../docs/WRITING_A_FLOW.md")]
pub mod writing_a_flow {}

#[doc = include_str!("../docs/CHANGING_A_FLOW.md")]
pub mod changing_a_running_flow {}

#[doc = include_str!("../docs/DEAD_LETTERS.md")]
pub mod operating_dead_letters {}

#[doc = include_str!("../docs/TESTING_UNDER_FAULTS.md")]
pub mod testing_under_faults {}

// The README's Rust blocks compile as doctests too (they need every backend).
#[cfg(all(doctest, feature = "sqlite", feature = "nats", feature = "webhooks"))]
#[doc = include_str!("../README.md")]
mod readme {}
