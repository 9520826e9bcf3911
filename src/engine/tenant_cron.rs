//! Per-tenant cron: a schedule fired once per registered tenant, each fire
//! run under that tenant.
//!
//! The host registers its tenants with [`Engine::register_tenant`] (a key of
//! the system tenant's state, kept by the backend: every engine sharing it
//! sees the same registry). A cron step declared
//! [`per_tenant`](StepBuilder::per_tenant) is two steps: the cron step,
//! which fires once per instant as any cron step (exactly once across
//! engines) and emits one tick per registered tenant, in one commit; and its
//! companion `<name>.tenant`, which runs the handler under each tenant with
//! the step's retry policy, so one tenant's failure is retried and
//! dead-lettered alone.

use std::future::Future;
use std::sync::Arc;

use super::context::StepContext;
use super::error::EngineError;
use super::handle::Engine;
use super::step::{Companion, Handler, Step, StepBuilder, StepConfig, Trigger};
use super::step_error::StepError;
use crate::cron::CronTick;
use crate::event::{EmitOptions, Payload, TenantId};

/// The system tenant's state keys of the registered tenants.
pub const TENANT_REGISTRY_PREFIX: &str = "flowline.tenants/";

/// The most tenants one fire of a per-tenant schedule reaches; beyond it, a
/// fire logs an error and reaches the first this many (in id order).
pub const MAX_TENANTS_PER_FIRE: usize = 100_000;

/// A cron step that fires once per registered tenant; finish with
/// [`handle`](Self::handle).
#[must_use]
#[derive(Debug)]
pub struct PerTenantCron {
    inner: StepBuilder<CronTick>,
}

impl StepBuilder<CronTick> {
    /// Fires the schedule once per tenant registered with
    /// [`Engine::register_tenant`], the handler running under each tenant
    /// (a digest per store, say). Set the step's options (retry, timeout,
    /// emits) before this: they apply to each tenant's run. See
    /// [`engine::tenant_cron`](crate::engine::tenant_cron).
    ///
    /// ```
    /// use flowline::{CronTick, Step, StepContext};
    ///
    /// let digest = Step::cron("daily_digest", "0 0 8 * * *")
    ///     .per_tenant()
    ///     .handle(|ctx: StepContext, tick: CronTick| async move {
    ///         ctx.put(&format!("digests/{}", tick.fire_at.as_millis()), &true)?;
    ///         Ok(())
    ///     });
    /// assert_eq!(digest.name(), "daily_digest");
    /// ```
    pub fn per_tenant(self) -> PerTenantCron {
        PerTenantCron { inner: self }
    }
}

impl PerTenantCron {
    /// Finishes the step with the handler each tenant's fire runs.
    ///
    /// Registering the step registers its companion `<name>.tenant` too.
    pub fn handle<F, Fut>(self, handler: F) -> Step
    where
        F: Fn(StepContext, CronTick) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), StepError>> + Send + 'static,
    {
        let (name, mut trigger, emits, config, limits) = self.inner.into_parts();
        // The fan-out addresses every tenant: only the system tenant may.
        if let Trigger::Cron { tenant, .. } = &mut trigger {
            *tenant = TenantId::system();
        }
        let topic = format!("flowline.cron.{name}");
        let handler = Arc::new(handler);
        let each = Step::from_parts(
            format!("{name}.tenant"),
            Trigger::Events(vec![topic.clone()]),
            emits,
            config,
            Handler::Event(Arc::new(move |ctx, envelope| {
                let handler = handler.clone();
                let tick = envelope.payload.decode::<CronTick>();
                Box::pin(async move { handler(ctx, tick.map_err(StepError::permanent)?).await })
            })),
        );
        let fan_topic = topic.clone();
        let mut step = Step::from_parts(
            name,
            trigger,
            vec![topic],
            StepConfig::default(),
            Handler::Event(Arc::new(move |ctx, envelope| {
                let topic = fan_topic.clone();
                let tick = envelope.payload.clone();
                Box::pin(async move { fan_out(&ctx, &topic, tick).await })
            })),
        );
        step.limits = limits;
        step.companion = Some(Companion {
            error: None,
            step: Box::new(each),
        });
        step
    }
}

/// One tick on `topic` to every registered tenant, in this fire's commit.
async fn fan_out(ctx: &StepContext, topic: &str, tick: Payload) -> Result<(), StepError> {
    let tenants: Vec<(String, bool)> = ctx
        .scan(TENANT_REGISTRY_PREFIX, MAX_TENANTS_PER_FIRE + 1)
        .await?;
    if tenants.len() > MAX_TENANTS_PER_FIRE {
        tracing::error!(step = %ctx.step(), max = MAX_TENANTS_PER_FIRE, "more tenants registered than one fire reaches");
    }
    for (key, _) in tenants.iter().take(MAX_TENANTS_PER_FIRE) {
        let id = &key[TENANT_REGISTRY_PREFIX.len()..];
        let Ok(tenant) = TenantId::new(id) else {
            tracing::warn!(%id, "registered tenant id is invalid; skipped");
            continue;
        };
        ctx.emit_json(topic, tick.clone(), EmitOptions::new().tenant(tenant))?;
    }
    Ok(())
}

impl Engine {
    /// Registers `tenant` for the per-tenant cron steps
    /// ([`StepBuilder::per_tenant`]): from their next fire on, they run for it
    /// too. Registering twice is harmless.
    ///
    /// # Errors
    /// The backend failed.
    pub async fn register_tenant(&self, tenant: &TenantId) -> Result<(), EngineError> {
        self.registry_write(tenant, Some(Arc::from(&b"true"[..])))
            .await
    }

    /// Takes `tenant` out of the per-tenant cron steps' registry.
    ///
    /// # Errors
    /// The backend failed.
    pub async fn unregister_tenant(&self, tenant: &TenantId) -> Result<(), EngineError> {
        self.registry_write(tenant, None).await
    }

    /// The registered tenants, in id order.
    ///
    /// # Errors
    /// The backend failed.
    pub async fn registered_tenants(&self) -> Result<Vec<TenantId>, EngineError> {
        let found = self.system_scan(TENANT_REGISTRY_PREFIX).await?;
        Ok(found
            .iter()
            .filter_map(|(key, _)| TenantId::new(&key[TENANT_REGISTRY_PREFIX.len()..]).ok())
            .collect())
    }

    async fn registry_write(
        &self,
        tenant: &TenantId,
        value: Option<crate::backend::Value>,
    ) -> Result<(), EngineError> {
        // Unconditional (no reads), so it cannot conflict.
        let key = format!("{TENANT_REGISTRY_PREFIX}{tenant}");
        self.system_commit(Vec::new(), vec![(key, value)]).await?;
        Ok(())
    }
}
