//! Cron schedulers: one task per cron step, firing each instant exactly once
//! across every engine that shares the backend.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::error::EngineError;
use super::shared::Shared;
use super::step::Trigger;
use crate::backend::{Action, Completion, Marker, Outcome};
use crate::cron::{CronTick, MissedFires};
use crate::event::EmitOptions;
use crate::event::{Event, Payload, TenantId, Topic, TraceId};
use crate::time::Timestamp;

const RETRY_FIRE_INITIAL: Duration = Duration::from_millis(100);
const RETRY_FIRE_MAX: Duration = Duration::from_secs(10);

fn cron_settings(shared: &Shared, index: usize) -> Option<(MissedFires, TenantId)> {
    match &shared.flow.steps()[index].trigger {
        Trigger::Cron { missed, tenant, .. } => Some((*missed, tenant.clone())),
        _ => None,
    }
}

/// Fires what the step's missed-fire policy asks for, for the time no engine ran.
pub(crate) async fn catch_up(shared: &Arc<Shared>, index: usize) -> Result<(), EngineError> {
    let step = &shared.flow.steps()[index];
    let (Some(schedule), Some((missed, _))) = (&step.schedule, cron_settings(shared, index)) else {
        return Ok(());
    };
    let Some(last) = shared.backend.last_cron_fire(&step.name).await? else {
        return Ok(());
    };
    let now = shared.clock.now();
    for at in missed.select(schedule, last, now) {
        tracing::info!(step = %step.name, fire_at = %at, "firing a missed cron instant");
        fire(shared, index, at).await?;
    }
    Ok(())
}

pub(crate) async fn run(shared: Arc<Shared>, index: usize) {
    let step = shared.flow.steps()[index].clone();
    let Some(schedule) = &step.schedule else {
        return;
    };
    let mut cursor = shared.clock.now();
    loop {
        let Some(next) = schedule.next_after(cursor) else {
            tracing::info!(step = %step.name, "cron schedule has no further fires");
            return;
        };
        if !wait_unless_stopped(&shared, shared.clock.sleep_until(next)).await {
            return;
        }
        // A fire that fails to commit (backend down) is tried again until it
        // commits or the engine stops: the instant's marker keeps it once-only.
        let mut backoff = RETRY_FIRE_INITIAL;
        while let Err(err) = fire(&shared, index, next).await {
            tracing::error!(step = %step.name, fire_at = %next, error = %err, retry_in = ?backoff, "cron fire failed; retrying");
            if !wait_unless_stopped(&shared, tokio::time::sleep(backoff)).await {
                return;
            }
            backoff = (backoff * 2).min(RETRY_FIRE_MAX);
        }
        cursor = next;
    }
}

/// Waits for `until`; false if the engine began stopping first.
async fn wait_unless_stopped(
    shared: &Shared,
    until: impl std::future::Future<Output = ()>,
) -> bool {
    // Registered before the flag is read, so a stop in between still wakes us.
    let stop = shared.stop.notified();
    if shared.is_stopping() {
        return false;
    }
    tokio::select! {
        // In order, not at random: a seeded simulation replays the same choices.
        biased;
        _ = until => true,
        _ = stop => false,
    }
}

/// Records the fire and publishes the tick in one completion: the marker makes a
/// second engine's attempt at the same instant a no-op.
async fn fire(shared: &Arc<Shared>, index: usize, at: Timestamp) -> Result<(), EngineError> {
    let step = &shared.flow.steps()[index];
    let Some((_, tenant)) = cron_settings(shared, index) else {
        return Ok(());
    };
    let tick = CronTick {
        schedule: step.name.to_string(),
        fire_at: at,
    };
    let envelope = shared.envelope(
        Topic::new(CronTick::TOPIC)?,
        tenant.clone(),
        TraceId::new(),
        None,
        Payload::encode(&tick)?,
        EmitOptions::default(),
    );
    let tick_event = Arc::new(envelope);
    let delivery = crate::backend::NewDelivery {
        step: step.name.clone(),
        due_at: tick_event.emitted_at,
        group: None,
        event: tick_event.clone(),
        key: None,
    };
    let completion = Completion {
        tenant,
        input: None,
        marker: Some(Marker::CronFire {
            schedule: step.name.clone(),
            at,
        }),
        action: Action::Commit {
            reads: Vec::new(),
            writes: Vec::new(),
            adds: Vec::new(),
            emits: vec![delivery],
            cancels: Vec::new(),
        },
    };
    let outcome = shared.backend.complete(vec![completion]).await?;
    if outcome.first() == Some(&Outcome::Applied) {
        shared.tell_hook(std::slice::from_ref(&tick_event));
        shared.metrics.cron_fires.fetch_add(1, Ordering::Relaxed);
        shared.step_counters[index].record_cron_lag(shared.clock.now().saturating_since(at));
        shared.wake.notify_one();
    } else {
        tracing::debug!(step = %step.name, fire_at = %at, "cron instant already fired by another engine");
    }
    Ok(())
}
