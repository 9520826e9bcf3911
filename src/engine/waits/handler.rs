//! The wait step's handler: an event or a timer, read against the pending
//! wait, then the author's handler with the [`Wake`].

use std::future::Future;
use std::sync::Arc;

use super::record::{record_key, timer_key, Pending, Timer};
use super::{Correlate, Late, LateEvent, Wake, WAIT_TIMER_TOPIC};
use crate::backend::Cancel;
use crate::engine::context::StepContext;
use crate::engine::step::{BoxFuture, Handler, Step, StepBuilder};
use crate::engine::step_error::StepError;
use crate::event::{Envelope, Event, Payload};

/// The wait step: `inner` with a handler that resolves waits and calls
/// `handler` once per wake.
pub(super) fn finish<E, F, Fut>(
    inner: StepBuilder<E>,
    correlate: Option<Correlate<E>>,
    late: Late,
    handler: F,
) -> Step
where
    E: Event,
    F: Fn(StepContext, Wake<E>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), StepError>> + Send + 'static,
{
    let (name, trigger, emits, config, limits) = inner.into_parts();
    let handler = Arc::new(handler);
    let wait = Arc::new(WaitStep {
        name: name.clone(),
        correlate,
        late,
    });
    let erased = move |ctx: StepContext, envelope: &Envelope| -> BoxFuture<Result<(), StepError>> {
        let (wait, handler) = (wait.clone(), handler.clone());
        let envelope = envelope.clone();
        Box::pin(async move {
            match wait.wake(&ctx, &envelope).await? {
                Some(wake) => handler(ctx, wake).await,
                None => Ok(()),
            }
        })
    };
    let mut step = Step::from_parts(
        name,
        trigger,
        emits,
        config,
        Handler::Event(Arc::new(erased)),
    );
    step.limits = limits;
    step.wait = true;
    step
}

struct WaitStep<E> {
    name: String,
    correlate: Option<Correlate<E>>,
    late: Late,
}

impl<E: Event> WaitStep<E> {
    /// What `envelope` means for the pending wait it names, with the
    /// record's change buffered in `ctx`: a wake for the handler, or
    /// nothing to do.
    async fn wake(
        &self,
        ctx: &StepContext,
        envelope: &Envelope,
    ) -> Result<Option<Wake<E>>, StepError> {
        if envelope.topic.as_str() == WAIT_TIMER_TOPIC {
            let timer: Timer = envelope.payload.decode().map_err(StepError::permanent)?;
            return self.time_out(ctx, envelope, timer.key).await;
        }
        let event = envelope.decode::<E>().map_err(StepError::permanent)?;
        let Some(correlate) = &self.correlate else {
            return self.unmatched(String::new(), event);
        };
        let key = correlate(&event);
        let record = record_key(&self.name, &key);
        let Some(mut pending) = ctx.get::<Pending>(&record).await? else {
            return self.unmatched(key, event);
        };
        pending.got.push(envelope.payload.as_json().to_string());
        if pending.got.len() < pending.need as usize {
            ctx.put(&record, &pending)?;
            return Ok(None);
        }
        ctx.delete(&record)?;
        ctx.txn().cancels.push(Cancel {
            step: ctx.step().clone(),
            key: Arc::from(timer_key(&key)),
        });
        Ok(Some(Wake::Arrived {
            key,
            events: decode_all(&pending.got)?,
            context: context_of(pending.context)?,
        }))
    }

    /// The timer of the wait for `key` fired.
    async fn time_out(
        &self,
        ctx: &StepContext,
        timer: &Envelope,
        key: String,
    ) -> Result<Option<Wake<E>>, StepError> {
        let record = record_key(&self.name, &key);
        let pending = match ctx.get::<Pending>(&record).await? {
            Some(pending) if pending.timer == timer.id => pending,
            // Resolved already, or a later wait's: an uncancelled timer.
            _ => return Ok(None),
        };
        ctx.delete(&record)?;
        Ok(Some(Wake::TimedOut {
            key,
            events: decode_all(&pending.got)?,
            context: context_of(pending.context)?,
        }))
    }

    /// An event no wait is pending for, by the step's rule.
    fn unmatched(&self, key: String, event: E) -> Result<Option<Wake<E>>, StepError> {
        match self.late {
            Late::Ignore => {
                tracing::debug!(step = %self.name, %key, "event for no pending wait ignored");
                Ok(None)
            }
            Late::Deliver => Ok(Some(Wake::Late { key, event })),
            Late::DeadLetter => Err(StepError::permanent(LateEvent {
                step: self.name.clone(),
                key,
            })),
        }
    }
}

fn decode_all<E: Event>(payloads: &[String]) -> Result<Vec<E>, StepError> {
    payloads
        .iter()
        .map(|json| serde_json::from_str::<E>(json).map_err(StepError::permanent))
        .collect()
}

fn context_of(context: Option<String>) -> Result<Option<Payload>, StepError> {
    context
        .map(Payload::from_json)
        .transpose()
        .map_err(StepError::permanent)
}
