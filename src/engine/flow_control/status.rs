//! What an operator reads and sets at run time: each key's state, and quotas
//! that replace a declared one for one key (a store upgrades its plan).

use serde::Serialize;

use super::budget::Budget;
use super::ledger::{budget_key, decode, read, transact, PREFIX};
use super::limits::{validate_key, Limit, LimitError, Quota};
use super::throttled::ThrottledKey;
use crate::engine::context::{StateError, StepContext};
use crate::engine::error::EngineError;
use crate::engine::handle::Engine;
use crate::event::TenantId;
use crate::time::Timestamp;

/// One key of one limit of one step, as an operator sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct KeyStatus {
    /// The step.
    pub step: String,
    /// The limit's name.
    pub limit: String,
    /// The key (a tenant id, a payload value, or `*` for a global limit).
    pub key: String,
    /// The quota in force: set at run time for this key, or as declared.
    pub quota: Quota,
    /// Whether `quota` was set at run time ([`Engine::set_limit`]).
    pub overridden: bool,
    /// Executions holding one of its concurrency slots.
    pub running: u32,
    /// Deliveries held back and waiting for their turn (counted to the
    /// second: one is counted until the whole second after its turn).
    pub queued: u32,
    /// Until when it is out of budget, if it is now.
    pub throttled_until: Option<Timestamp>,
    /// When its next execution may start (now, if one may).
    pub next_run_at: Timestamp,
}

impl KeyStatus {
    fn of(step: &str, limit: &Limit, key: &str, budget: &Budget, now: Timestamp) -> Self {
        let (quota, overridden) = budget.quota_in_force(limit.quota);

        KeyStatus {
            step: step.to_string(),
            limit: limit.name.clone(),
            key: key.to_string(),
            quota,
            overridden,
            running: budget.running(now),
            queued: budget.queued(now),
            throttled_until: budget.throttled_until(now),
            next_run_at: budget.next_allowed(quota, now),
        }
    }
}

impl StepContext {
    /// Until when this execution's tenant is out of budget under the
    /// per-tenant limit `limit` of step `step`, if it is now: for showing a
    /// tenant that it is throttled (a read outside the execution's
    /// transaction, so no conflict and no retry follows from it).
    ///
    /// # Errors
    /// [`StateError::Store`] if the backend cannot be read.
    pub async fn throttled_until(
        &self,
        step: &str,
        limit: &str,
    ) -> Result<Option<Timestamp>, StateError> {
        let key = budget_key(step, limit, self.tenant().as_str());
        let budget = read(self.backend(), &key).await?;
        Ok(budget.throttled_until(self.now()))
    }
}

impl Engine {
    /// Replaces the quota of one key of a step's limit, for every engine
    /// sharing the backend, without a restart: kept in the store, in force
    /// from the next claim. The key is what the limit counts by (a tenant id
    /// for a per-tenant limit).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use flowline::flow_control::{Limit, Quota};
    /// use flowline::{ApiResponse, Engine, Flow, Method, Step};
    ///
    /// let flow = Flow::builder()
    ///     .step(
    ///         Step::api("intake", Method::Post, "/orders")
    ///             .limit(Limit::rate(10, Duration::from_secs(1)).named("intake"))
    ///             .handle(|_, _| async { Ok(ApiResponse::ok(&"ok")) }),
    ///     )
    ///     .build()?;
    /// let engine = Engine::builder(flow).start().await?;
    /// // Store "big-shop" upgraded its plan: 100 a second, 20 at once.
    /// let plan = Quota::Rate { count: 100, period: Duration::from_secs(1), burst: 20 };
    /// engine.set_limit("intake", "intake", "big-shop", plan).await?;
    /// assert_eq!(engine.limit_status("intake", "intake", "big-shop").await?.quota, plan);
    /// # engine.shutdown(Duration::from_secs(1)).await; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`EngineError::Limit`] for an unknown step or limit, a quota of the
    /// other kind or with bad numbers, or an invalid key; a backend error.
    pub async fn set_limit(
        &self,
        step: &str,
        limit: &str,
        key: &str,
        quota: Quota,
    ) -> Result<(), EngineError> {
        quota.validate()?;
        let declared = self.declared(step, limit)?;
        if declared.quota.kind() != quota.kind() {
            return Err(LimitError::KindMismatch {
                limit: limit.to_string(),
                declared: declared.quota.kind(),
                given: quota.kind(),
            }
            .into());
        }
        self.change_quota(step, limit, key, Some(quota)).await
    }

    /// Puts one key of a step's limit back on its declared quota.
    ///
    /// # Errors
    /// As [`set_limit`](Self::set_limit).
    pub async fn clear_limit(&self, step: &str, limit: &str, key: &str) -> Result<(), EngineError> {
        self.declared(step, limit)?;
        self.change_quota(step, limit, key, None).await
    }

    /// One key's state under a step's limit.
    ///
    /// # Errors
    /// As [`set_limit`](Self::set_limit).
    pub async fn limit_status(
        &self,
        step: &str,
        limit: &str,
        key: &str,
    ) -> Result<KeyStatus, EngineError> {
        let declared = self.declared(step, limit)?;
        let key = validate_key(key.to_string()).map_err(LimitError::from)?;
        let budget = read(&*self.shared.backend, &budget_key(step, limit, &key)).await?;
        Ok(KeyStatus::of(
            step,
            &declared,
            &key,
            &budget,
            self.shared.clock.now(),
        ))
    }

    /// The state of up to `max` keys that have one (a key untouched for a
    /// while has none: it is within its budget), in step, limit and key order.
    ///
    /// # Errors
    /// A backend error.
    pub async fn limit_statuses(&self, max: usize) -> Result<Vec<KeyStatus>, EngineError> {
        let now = self.shared.clock.now();
        let rows = self
            .shared
            .backend
            .scan(&TenantId::system(), PREFIX, max)
            .await?;
        let mut statuses = Vec::with_capacity(rows.len());
        for (stored_key, value) in rows {
            let Some(rest) = stored_key.strip_prefix(PREFIX) else {
                continue;
            };
            let mut parts = rest.splitn(3, '/');
            let (Some(step), Some(limit), Some(key)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            // A limit a deploy removed leaves budgets no step reads.
            let Ok(declared) = self.declared(step, limit) else {
                continue;
            };
            let budget = decode(&stored_key, Some(&value.value[..]));
            statuses.push(KeyStatus::of(step, &declared, key, &budget, now));
        }
        Ok(statuses)
    }

    /// How many deliveries this engine held back, and API calls it refused,
    /// on each key of each limit since it started (other engines count
    /// their own), in step, limit and key order. Read from memory.
    pub fn throttled_keys(&self) -> Vec<ThrottledKey> {
        self.shared.gate.throttled_keys()
    }

    fn declared(&self, step: &str, limit: &str) -> Result<Limit, LimitError> {
        let unknown = || LimitError::UnknownLimit {
            step: step.to_string(),
            limit: limit.to_string(),
        };
        let index = self.shared.flow.step_index(step).ok_or_else(unknown)?;
        self.shared.flow.steps()[index]
            .limits
            .iter()
            .find(|l| l.name == limit)
            .cloned()
            .ok_or_else(unknown)
    }

    async fn change_quota(
        &self,
        step: &str,
        limit: &str,
        key: &str,
        quota: Option<Quota>,
    ) -> Result<(), EngineError> {
        let key = validate_key(key.to_string()).map_err(LimitError::from)?;
        let keys = [budget_key(step, limit, &key)];
        let now = self.shared.clock.now();
        transact(&self.shared.backend, &keys, now, |budgets| {
            budgets[0].quota = quota;
            budgets[0].restart_schedule();
        })
        .await
        .map_err(|err| match err {
            super::ledger::LedgerError::Store(err) => EngineError::Store(err),
            contended => EngineError::Store(crate::backend::StoreError::Backend(
                contended.to_string().into(),
            )),
        })?;
        // Work held back under the old quota waits for its due time; this
        // engine's dispatcher looks again now.
        self.shared.wake.notify_one();
        Ok(())
    }
}
