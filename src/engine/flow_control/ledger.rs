//! Budgets in the store: read, decided on and written back under optimistic
//! isolation, so that every engine sharing a backend (clones in one process,
//! processes on one SQLite file or PostgreSQL schema, a store beside NATS)
//! sees one budget per key, and a restart finds them as they were.
//!
//! They are state of the [system tenant](crate::TenantId::system), which no
//! outside caller can act as, under keys `flowline/limits/<step>/<limit>/<key>`.

use std::sync::Arc;

use crate::backend::{Action, Backend, Completion, Outcome, ReadCheck, Store, StoreError, Write};
use crate::event::TenantId;
use crate::time::Timestamp;

use super::budget::Budget;

/// Where the budgets live in the system tenant's state.
pub(crate) const PREFIX: &str = "flowline/limits/";

/// How often a decision is taken again after another engine changed one of
/// its budgets first.
const MAX_ROUNDS: usize = 16;

/// The state key of one key's budget under one limit of one step.
pub(crate) fn budget_key(step: &str, limit: &str, key: &str) -> String {
    format!("{PREFIX}{step}/{limit}/{key}")
}

/// Why budgets could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LedgerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the budgets stayed contended for {MAX_ROUNDS} rounds")]
    Contended,
}

/// Reads the budgets under `keys`, lets `decide` change them, and writes back
/// those it changed, all or none, if no other engine changed any meanwhile;
/// else decides again on what the other wrote. Returns what `decide` returned
/// in the round that committed. A budget that `decide` leaves spent (nothing
/// ahead of `now` to remember) is deleted rather than kept.
pub(crate) async fn transact<R>(
    backend: &Arc<dyn Backend>,
    keys: &[String],
    now: Timestamp,
    mut decide: impl FnMut(&mut [Budget]) -> R,
) -> Result<R, LedgerError> {
    let system = TenantId::system();
    for _ in 0..MAX_ROUNDS {
        let stored = backend.get_many(&system, keys).await?;
        let mut budgets: Vec<Budget> = stored
            .iter()
            .zip(keys)
            .map(|(value, key)| decode(key, value.as_ref().map(|v| &v.value[..])))
            .collect();
        let before = budgets.clone();
        let answer = decide(&mut budgets);
        let mut reads = Vec::new();
        let mut writes = Vec::new();
        for (i, budget) in budgets.iter().enumerate() {
            if *budget == before[i] {
                continue;
            }
            let version = stored[i].as_ref().map(|v| v.version);
            let value = if budget.is_spent(now) {
                if version.is_none() {
                    continue;
                }
                None
            } else {
                Some(encode(budget))
            };
            reads.push(ReadCheck {
                key: keys[i].clone(),
                version,
            });
            writes.push(Write {
                key: keys[i].clone(),
                value,
            });
        }
        if writes.is_empty() {
            return Ok(answer);
        }
        let commit = Completion {
            tenant: system.clone(),
            input: None,
            marker: None,
            action: Action::Commit {
                reads,
                writes,
                adds: Vec::new(),
                emits: Vec::new(),
                cancels: Vec::new(),
            },
        };
        match backend.complete(vec![commit]).await?.pop() {
            Some(Outcome::Applied) => return Ok(answer),
            Some(Outcome::Conflict) => continue,
            other => {
                return Err(LedgerError::Store(StoreError::Backend(
                    format!("a budget commit came back {other:?}").into(),
                )))
            }
        }
    }
    Err(LedgerError::Contended)
}

/// Reads the budget under `key`, outside any transaction (for showing it).
pub(crate) async fn read(backend: &dyn Store, key: &str) -> Result<Budget, StoreError> {
    let stored = backend.get(&TenantId::system(), key).await?;
    Ok(decode(key, stored.as_ref().map(|v| &v.value[..])))
}

/// Reads one budget; what does not decode (written by a future version, or
/// damaged) is read as untouched, and said so, rather than blocking the step.
pub(crate) fn decode(key: &str, bytes: Option<&[u8]>) -> Budget {
    let Some(bytes) = bytes else {
        return Budget::default();
    };
    serde_json::from_slice(bytes).unwrap_or_else(|err| {
        tracing::warn!(key, %err, "a flow-control budget does not decode; starting it afresh");
        Budget::default()
    })
}

fn encode(budget: &Budget) -> crate::backend::Value {
    Arc::from(serde_json::to_vec(budget).expect("a budget serializes"))
}
