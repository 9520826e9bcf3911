//! Starting a wait, and cancelling delayed events, from a handler.

use std::sync::Arc;

use super::record::{record_key, timer_key, Pending, Timer};
use super::{WaitFor, MAX_WAIT_KEY_LEN, WAIT_TIMER_TOPIC};
use crate::backend::{Cancel, NewDelivery};
use crate::engine::context::StepContext;
use crate::engine::wait_error::WaitError;
use crate::event::{build_envelope, EmitOptions, Event, Payload, Topic};

impl StepContext {
    /// Starts a wait at the wait step `wait.step` for events correlated by
    /// `wait.key`, in this execution's commit: nothing is pending unless the
    /// execution commits. See [`engine::waits`](crate::engine::waits).
    ///
    /// # Errors
    /// [`WaitError::UnknownStep`] if the flow has no such wait step,
    /// [`WaitError::InvalidKey`] for an empty or too long key,
    /// [`WaitError::AlreadyWaiting`] if a wait for the key is pending,
    /// [`WaitError::Context`] if the context did not serialize, or the
    /// backend failed. With `?` all but the last are permanent.
    pub async fn start_wait(&self, wait: WaitFor) -> Result<(), WaitError> {
        let Some(step) = self.host().wait_step(&wait.step) else {
            return Err(WaitError::UnknownStep(wait.step));
        };
        if wait.key.is_empty() || wait.key.len() > MAX_WAIT_KEY_LEN || wait.key.contains('\0') {
            return Err(WaitError::InvalidKey(wait.key.chars().take(80).collect()));
        }
        let context = match wait.context {
            Some(Ok(payload)) => Some(payload.as_json().to_string()),
            Some(Err(err)) => return Err(WaitError::Context(err.into())),
            None => None,
        };
        let record = record_key(step.as_str(), &wait.key);
        if self.get_raw(&record).await?.is_some() {
            return Err(WaitError::AlreadyWaiting {
                step: wait.step,
                key: wait.key,
            });
        }
        let timer = Timer {
            key: wait.key.clone(),
        };
        let envelope = build_envelope(
            self.now(),
            Topic::new(WAIT_TIMER_TOPIC).expect("the timer topic is a valid name"),
            self.tenant().clone(),
            self.trace_id(),
            self.event_id(),
            Payload::encode(&timer).map_err(|e| WaitError::Context(Box::new(e)))?,
            EmitOptions::new()
                .delay(wait.timeout)
                .priority(self.priority()),
        );
        let pending = Pending {
            timer: envelope.id,
            need: wait.count,
            got: Vec::new(),
            context,
        };
        self.put(&record, &pending)?;
        let due_at = envelope.due_at();
        self.txn().sends.push(NewDelivery {
            step,
            event: Arc::new(envelope),
            group: None,
            due_at,
            key: Some(Arc::from(timer_key(&wait.key))),
        });
        Ok(())
    }

    /// Cancels this tenant's deliveries of `E` emitted with
    /// [`EmitOptions::cancel_key`]`(key)` that still wait, in this
    /// execution's commit: a reminder the answer made moot, say. One already
    /// running, or handed to a split backend's broker, runs on.
    ///
    /// ```
    /// use std::time::Duration;
    /// use flowline::{EmitOptions, Event, StepContext, StepError};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)] struct Reminder { user: String }
    /// # impl Event for Reminder { const TOPIC: &'static str = "user.remind"; }
    ///
    /// fn schedule(ctx: &StepContext, user: &str) -> Result<(), StepError> {
    ///     let options = EmitOptions::new()
    ///         .delay(Duration::from_secs(3600))
    ///         .cancel_key(format!("remind/{user}"));
    ///     ctx.emit_with(&Reminder { user: user.into() }, options)?;
    ///     Ok(())
    /// }
    ///
    /// fn answered(ctx: &StepContext, user: &str) {
    ///     ctx.cancel_emit::<Reminder>(&format!("remind/{user}"));
    /// }
    /// # let _ = (schedule, answered);
    /// ```
    pub fn cancel_emit<E: Event>(&self, key: &str) {
        let steps = self.host().subscribers(E::TOPIC);
        let key: Arc<str> = Arc::from(key);
        let mut txn = self.txn();
        for step in steps {
            txn.cancels.push(Cancel {
                step,
                key: key.clone(),
            });
        }
    }
}
