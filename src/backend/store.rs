//! The storage adapter: tenant-scoped, versioned state plus the engine's bookkeeping.

use async_trait::async_trait;

use super::completion::{Completion, Outcome};
use super::dead_letter::{DeadLetter, DeadLetterQuery};
use super::error::StoreError;
use super::state::Versioned;
use crate::event::{Payload, StepName, TenantId};
use crate::time::Timestamp;

/// Tenant-scoped, versioned key/value state and the engine's bookkeeping.
///
/// Object-safe; the engine holds it as `Arc<dyn Backend>`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key of one tenant.
    async fn get(&self, tenant: &TenantId, key: &str) -> Result<Option<Versioned>, StoreError>;

    /// Reads several keys of one tenant, one answer per key in order. The
    /// default asks [`get`](Self::get) for each; a backend behind a network
    /// round trip should answer in one (PostgreSQL does). Flow control reads
    /// the budgets of a claim's keys with it.
    async fn get_many(
        &self,
        tenant: &TenantId,
        keys: &[String],
    ) -> Result<Vec<Option<Versioned>>, StoreError> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(self.get(tenant, key).await?);
        }
        Ok(values)
    }

    /// Reads up to `limit` keys of one tenant that start with `prefix`, in key order.
    async fn scan(
        &self,
        tenant: &TenantId,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError>;

    /// Reads up to `limit` keys of one tenant that start with `prefix` and
    /// sort after `after`, in key order: the next page of a [`scan`](Self::scan)
    /// whose last key was `after`. The default scans the whole prefix and
    /// skips; a backend should seek (the bundled ones do).
    async fn scan_after(
        &self,
        tenant: &TenantId,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        let all = self.scan(tenant, prefix, usize::MAX).await?;
        Ok(all
            .into_iter()
            .filter(|(key, _)| key.as_str() > after)
            .take(limit)
            .collect())
    }

    /// Applies a batch of completions, each one atomically, in order; returns one
    /// outcome per completion. An `Err` means none of the batch applied.
    async fn complete(&self, batch: Vec<Completion>) -> Result<Vec<Outcome>, StoreError>;

    /// Lists dead letters, oldest first.
    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, StoreError>;

    /// Moves dead letters back into the queue as fresh deliveries (attempt count
    /// reset), due at `now`. Returns how many were replayed.
    async fn replay_dead_letters(&self, ids: &[u64], now: Timestamp) -> Result<usize, StoreError>;

    /// Replaces the payload of dead letter `id`'s event, so that a replay
    /// delivers the corrected one; everything else of the event stays.
    /// Returns false if there is no such dead letter.
    async fn amend_dead_letter(&self, id: u64, payload: Payload) -> Result<bool, StoreError>;

    /// Deletes dead letters. Returns how many were deleted.
    async fn purge_dead_letters(&self, ids: &[u64]) -> Result<usize, StoreError>;

    /// The newest recorded fire of a cron schedule.
    async fn last_cron_fire(&self, schedule: &StepName) -> Result<Option<Timestamp>, StoreError>;
}
