//! Flow control: rate limits and concurrency keys declared on steps, obeyed
//! by every engine that shares a backend.
//!
//! A step declares [`Limit`]s, each a [`Quota`] per key of a [`LimitKey`]
//! (the tenant by default). When the dispatcher has claimed deliveries, the
//! gate here checks the claimed deliveries of limited steps against their
//! keys' budgets, kept in the store (see `ledger.rs`): what fits runs; what
//! does not goes back to the queue unrun, due when its budget returns
//! ([`Action::Defer`](crate::backend::Action::Defer): no attempt counted, no busy loop); a delivery whose key
//! cannot be computed dead-letters with the reason. Concurrency slots are
//! given back when their execution's batch has committed, or at the latest
//! when its lease ends. An API step's limits are checked before it runs: out
//! of budget, the caller gets `429` with `Retry-After`.
//!
//! Steps without limits never reach the gate: a flow that declares none pays
//! nothing for it.
//!
//! | file | its one job |
//! |---|---|
//! | `limits.rs` | declarations: [`Limit`], [`Quota`], [`LimitKey`], their errors |
//! | `budget.rs` | one key's budget and the decisions on it (GCRA, slots) |
//! | `ledger.rs` | budgets in the store, changed under optimistic isolation |
//! | `gate.rs` | admitting claimed deliveries and API calls, giving slots back |
//! | `status.rs` | what an operator reads and sets at run time |

mod budget;
mod gate;
mod ledger;
mod limits;
mod status;

pub(crate) use gate::{Gate, Refusal};
pub use limits::{
    KeyError, Limit, LimitError, LimitKey, Quota, MAX_CONCURRENCY, MAX_LIMIT_KEY_LEN, MAX_PERIOD,
};
pub use status::KeyStatus;
