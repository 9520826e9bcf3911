//! State read and written outside any step, with the same optimistic checks
//! a step's commit has: the engine's own records in the system tenant (the
//! per-tenant cron registry, API keys) and a capability's records in a
//! tenant (webhook endpoints).

use crate::backend::{Action, Completion, Outcome, ReadCheck, StoreError, Value, Versioned, Write};
use crate::event::TenantId;

use super::error::EngineError;
use super::handle::Engine;

impl Engine {
    /// `tenant`'s record at `key`.
    // Read by API keys (feature `axum`) and webhooks.
    #[cfg_attr(not(any(feature = "axum", feature = "webhooks")), allow(dead_code))]
    pub(crate) async fn state_get(
        &self,
        tenant: &TenantId,
        key: &str,
    ) -> Result<Option<Versioned>, EngineError> {
        Ok(self.shared.backend.get(tenant, key).await?)
    }

    /// `tenant`'s records under `prefix`, in key order.
    pub(crate) async fn state_scan(
        &self,
        tenant: &TenantId,
        prefix: &str,
    ) -> Result<Vec<(String, Versioned)>, EngineError> {
        Ok(self.shared.backend.scan(tenant, prefix, usize::MAX).await?)
    }

    /// Writes `writes` in `tenant` (a `None` value deletes) if every key in
    /// `reads` is still at the version read: `Ok(false)` if one moved.
    pub(crate) async fn state_commit(
        &self,
        tenant: &TenantId,
        reads: Vec<ReadCheck>,
        writes: Vec<(String, Option<Value>)>,
    ) -> Result<bool, EngineError> {
        let action = Action::Commit {
            reads,
            writes: writes
                .into_iter()
                .map(|(key, value)| Write { key, value })
                .collect(),
            adds: Vec::new(),
            emits: Vec::new(),
            cancels: Vec::new(),
        };
        let completion = Completion {
            tenant: tenant.clone(),
            input: None,
            marker: None,
            action,
        };
        match self
            .shared
            .backend
            .complete(vec![completion])
            .await?
            .first()
        {
            Some(Outcome::Applied) => Ok(true),
            Some(Outcome::Conflict) => Ok(false),
            other => Err(EngineError::Store(StoreError::Backend(
                format!("a write of the engine's records came back {other:?}").into(),
            ))),
        }
    }

    /// The system tenant's record at `key`.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) async fn system_get(&self, key: &str) -> Result<Option<Versioned>, EngineError> {
        self.state_get(&TenantId::system(), key).await
    }

    /// The system tenant's records under `prefix`, in key order.
    pub(crate) async fn system_scan(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, Versioned)>, EngineError> {
        self.state_scan(&TenantId::system(), prefix).await
    }

    /// [`Engine::state_commit`] in the system tenant.
    pub(crate) async fn system_commit(
        &self,
        reads: Vec<ReadCheck>,
        writes: Vec<(String, Option<Value>)>,
    ) -> Result<bool, EngineError> {
        self.state_commit(&TenantId::system(), reads, writes).await
    }
}
