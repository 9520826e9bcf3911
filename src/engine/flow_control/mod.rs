//! Flow control: rate limits and concurrency keys declared on steps, obeyed
//! by every engine that shares a backend.
//!
//! The gate checks the claimed deliveries of limited steps against their
//! keys' budgets, kept in the store; the guide below says what that means
//! for a step's author.
//!
//! | file | its one job |
//! |---|---|
//! | `limits.rs` | declarations: [`Limit`], [`Quota`], [`LimitKey`], their errors |
//! | `budget.rs` | one key's budget and the decisions on it (GCRA, slots) |
//! | `ledger.rs` | budgets in the store, changed under optimistic isolation |
//! | `gate.rs` | admitting claimed deliveries and API calls, giving slots back |
//! | `status.rs` | what an operator reads and sets at run time |
//! | `verdict.rs` | a delivery's budget keys, and taking a unit of each limit or none |
//! | `throttled.rs` | hold-backs counted per key, bounded |
//!
#![doc = include_str!("../../../docs/FLOW_CONTROL.md")]

mod budget;
mod gate;
mod ledger;
mod limits;
mod status;
mod throttled;
mod verdict;

pub(crate) use gate::{Gate, Refusal};
pub use limits::{
    KeyError, Limit, LimitError, LimitKey, Quota, MAX_CONCURRENCY, MAX_LIMIT_KEY_LEN, MAX_PERIOD,
};
pub use status::KeyStatus;
pub use throttled::{ThrottledKey, KEYS_COUNTED};
