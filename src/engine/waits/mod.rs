//! Durable waits: a step that waits for events correlated by a key, with a
//! timeout, and is woken exactly once by the events or the timeout.
//!
//! A *wait step* ([`Step::wait`](crate::Step::wait)) subscribes to one event
//! type and says how to read the correlation key from it (a user id, an order
//! id). Any handler of the flow starts a wait with
//! [`StepContext::start_wait`](crate::StepContext::start_wait): a key, a
//! timeout, how many events to wait for (fan-in) and a context to hand back.
//! The wait step's handler is then called once, with a [`Wake`]:
//!
//! - [`Wake::Arrived`] when the wanted number of correlated events came; the
//!   wait's timer is cancelled in the same commit;
//! - [`Wake::TimedOut`] when the timeout passed first, with the events that
//!   did come;
//! - [`Wake::Late`] for a correlated event no wait is pending for (it came
//!   after the timeout, after the wait was satisfied, or before any wait
//!   started), if the step's [`Late`] rule asks for it.
//!
//! Everything is durable and goes through the backend contract only: the
//! pending wait is a state record of the tenant, the timer a delayed
//! delivery with a cancel key. The event and the timer both read the
//! record, so the first to commit resolves the wait and the other, re-run
//! on its commit conflict, finds it resolved: exactly one wake, on every
//! backend and across restarts. A timer that could not be cancelled (a
//! split backend had already handed it to its broker) finds no pending wait
//! and does nothing.
//!
//! ```
//! use std::time::Duration;
//! use flowline::{Event, Flow, Late, Step, StepContext, StepError, WaitFor, Wake};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct SignedUp { user: String }
//! impl Event for SignedUp { const TOPIC: &'static str = "user.signed_up"; }
//!
//! #[derive(Serialize, Deserialize)]
//! struct EmailVerified { user: String }
//! impl Event for EmailVerified { const TOPIC: &'static str = "email.verified"; }
//!
//! let start = Step::event::<SignedUp>("send_welcome").handle(|ctx: StepContext, s: SignedUp| async move {
//!     ctx.start_wait(WaitFor::new("await_verification", &s.user, Duration::from_secs(600))).await?;
//!     Ok(())
//! });
//! let verify = Step::wait::<EmailVerified>("await_verification")
//!     .correlate(|e: &EmailVerified| e.user.clone())
//!     .late(Late::Ignore)
//!     .handle(|ctx: StepContext, wake: Wake<EmailVerified>| async move {
//!         match wake {
//!             Wake::Arrived { key, .. } => ctx.put(&format!("verified/{key}"), &true)?,
//!             Wake::TimedOut { key, .. } => ctx.put(&format!("reminded/{key}"), &true)?,
//!             Wake::Late { .. } => {}
//!         }
//!         Ok::<_, StepError>(())
//!     });
//! let flow = Flow::builder()
//!     .external::<SignedUp>()
//!     .external::<EmailVerified>()
//!     .step(start)
//!     .step(verify)
//!     .build();
//! assert!(flow.is_ok());
//! ```

mod handler;
mod record;
mod start;

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::step::{Step, StepBuilder};
use crate::event::{Event, Payload};
use crate::retry::RetryPolicy;

/// The topic of a wait's timer deliveries. They go straight to the wait
/// step; no step subscribes to the topic.
pub const WAIT_TIMER_TOPIC: &str = "flowline.wait.timer";

/// The longest correlation key, in bytes.
pub const MAX_WAIT_KEY_LEN: usize = 200;

/// Why a wait step's handler runs.
#[derive(Debug)]
pub enum Wake<E> {
    /// The wanted number of correlated events came, in the order they were
    /// handled; the timer is cancelled.
    Arrived {
        /// The correlation key.
        key: String,
        /// The events.
        events: Vec<E>,
        /// The context the wait was started with.
        context: Option<Payload>,
    },
    /// The timeout passed before enough events came.
    TimedOut {
        /// The correlation key.
        key: String,
        /// The events that did come (fewer than wanted).
        events: Vec<E>,
        /// The context the wait was started with.
        context: Option<Payload>,
    },
    /// A correlated event no wait is pending for, handed over because the
    /// step's rule is [`Late::Deliver`].
    Late {
        /// The correlation key.
        key: String,
        /// The event.
        event: E,
    },
}

/// What a wait step does with a correlated event no wait is pending for: one
/// that came after the timeout or after the wait was satisfied, or before
/// any wait started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Late {
    /// Drop it (the default).
    #[default]
    Ignore,
    /// Hand it to the handler as [`Wake::Late`].
    Deliver,
    /// Dead-letter it (kind `permanent`), for an operator to look at.
    DeadLetter,
}

/// A wait to start: the wait step, the correlation key, the timeout, how many
/// events to wait for and a context to hand back with the wake.
#[derive(Clone, Debug)]
pub struct WaitFor {
    pub(crate) step: String,
    pub(crate) key: String,
    pub(crate) timeout: Duration,
    pub(crate) count: u32,
    pub(crate) context: Option<Result<Payload, String>>,
}

impl WaitFor {
    /// Waits at `step` for one event correlated by `key`, for at most `timeout`.
    pub fn new(step: impl Into<String>, key: impl Into<String>, timeout: Duration) -> Self {
        WaitFor {
            step: step.into(),
            key: key.into(),
            timeout,
            count: 1,
            context: None,
        }
    }

    /// Waits for `n` correlated events (fan-in), at least 1.
    pub fn count(mut self, n: u32) -> Self {
        self.count = n.max(1);
        self
    }

    /// Hands `context` back with the wake (an order's total, say), so the
    /// wake's handler need not read it again.
    pub fn context<T: Serialize + ?Sized>(mut self, context: &T) -> Self {
        self.context = Some(Payload::encode(context).map_err(|e| e.to_string()));
        self
    }
}

/// Reads the correlation key from an event.
pub(crate) type Correlate<E> = Arc<dyn Fn(&E) -> String + Send + Sync>;

/// Builds a wait step; finish with [`WaitBuilder::handle`].
#[must_use]
pub struct WaitBuilder<E: Event> {
    inner: StepBuilder<E>,
    correlate: Option<Correlate<E>>,
    late: Late,
    _event: PhantomData<fn() -> E>,
}

impl<E: Event> std::fmt::Debug for WaitBuilder<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitBuilder")
            .field("inner", &self.inner)
            .field("late", &self.late)
            .finish_non_exhaustive()
    }
}

impl Step {
    /// A wait step: it subscribes to `E`, reads each event's correlation key
    /// with [`correlate`](WaitBuilder::correlate), and its handler runs once
    /// per wait started with
    /// [`StepContext::start_wait`](crate::StepContext::start_wait). See
    /// [`engine::waits`](crate::engine::waits).
    pub fn wait<E: Event>(name: impl Into<String>) -> WaitBuilder<E> {
        WaitBuilder {
            inner: Step::event::<E>(name),
            correlate: None,
            late: Late::Ignore,
            _event: PhantomData,
        }
    }
}

impl<E: Event> WaitBuilder<E> {
    /// How to read the correlation key from an event. Without it, every
    /// event of the step is unmatched (and follows the [`Late`] rule).
    pub fn correlate<F>(mut self, key: F) -> Self
    where
        F: Fn(&E) -> String + Send + Sync + 'static,
    {
        self.correlate = Some(Arc::new(key));
        self
    }

    /// What to do with a correlated event no wait is pending for.
    pub fn late(mut self, rule: Late) -> Self {
        self.late = rule;
        self
    }

    /// Declares that the handler may emit `E2`.
    pub fn emits<E2: Event>(mut self) -> Self {
        self.inner = self.inner.emits::<E2>();
        self
    }

    /// The retry policy of the handler's attempts.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.inner = self.inner.retry(policy);
        self
    }

    /// How long one attempt may run.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.inner = self.inner.timeout(timeout);
        self
    }

    /// Finishes the step with its handler, called once per wake.
    pub fn handle<F, Fut>(self, handler: F) -> Step
    where
        F: Fn(super::StepContext, Wake<E>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), super::StepError>> + Send + 'static,
    {
        handler::finish(self.inner, self.correlate, self.late, handler)
    }
}

/// Why a wait step refused an event: it came when no wait was pending and
/// the step's rule is [`Late::DeadLetter`].
#[derive(Debug, thiserror::Error)]
#[error("late event for key {key:?}: no wait of step {step} is pending")]
pub struct LateEvent {
    /// The wait step.
    pub step: String,
    /// The correlation key.
    pub key: String,
}
