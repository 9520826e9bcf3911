//! Steps: the units of logic, what triggers them, and their configuration.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::context::StepContext;
use super::failure::{FailureContext, FailureHook, StepFailure};
use super::flow_control::Limit;
use super::step_error::StepError;
use super::windows::error::WindowError;
use crate::api::{ApiRequest, ApiResponse, Method};
use crate::cron::{CronTick, MissedFires};
use crate::event::{Envelope, Event, Inbound, TenantId};
use crate::retry::RetryPolicy;

/// Per-step execution settings.
///
/// | setting | default |
/// |---|---|
/// | retry | [`RetryPolicy::default()`] |
/// | timeout | 30 s per attempt |
/// | concurrency | 256 executions at once |
/// | fifo | off: deliveries run in any order |
/// | lease | timeout + 30 s |
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepConfig {
    /// What happens after a failed attempt.
    pub retry: RetryPolicy,
    /// An attempt that runs longer fails (retryably).
    pub timeout: Duration,
    /// At most this many executions of the step run at once, across tenants.
    pub concurrency: usize,
    /// Deliveries sharing an event group key run one at a time, in emit order.
    pub fifo: bool,
    /// How long a claimed delivery stays claimed; a worker that vanished gives
    /// its deliveries back after this.
    pub lease: Duration,
    /// Each execution runs and commits on its own, never in a batch with
    /// others: for a step whose handler waits on something slow outside
    /// (an HTTP call to a merchant's endpoint), so that a slow call holds up
    /// no other execution's commit.
    pub solo: bool,
}

impl Default for StepConfig {
    fn default() -> Self {
        StepConfig {
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(30),
            concurrency: 256,
            fifo: false,
            lease: Duration::from_secs(60),
            solo: false,
        }
    }
}

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type EventFn = dyn Fn(StepContext, &Envelope) -> BoxFuture<Result<(), StepError>> + Send + Sync;
type ApiFn =
    dyn Fn(StepContext, ApiRequest) -> BoxFuture<Result<ApiResponse, StepError>> + Send + Sync;

/// What triggers a step.
#[derive(Clone, Debug)]
pub enum Trigger {
    /// Deliveries of events on these topics.
    Events(Vec<String>),
    /// A cron schedule.
    Cron {
        /// The cron expression, with a seconds field.
        expression: String,
        /// The IANA time zone the expression is read in.
        time_zone: String,
        /// What to do about fires missed while no engine ran.
        missed: MissedFires,
        /// The tenant the ticks run under.
        tenant: TenantId,
    },
    /// A request to `method path`.
    Api {
        /// The HTTP method.
        method: Method,
        /// The path pattern, e.g. `/orders/{id}`.
        path: String,
    },
}

#[derive(Clone)]
pub(crate) enum Handler {
    Event(Arc<EventFn>),
    Api(Arc<ApiFn>),
}

/// A step definition, ready to be registered in a [`Flow`](crate::Flow).
///
/// Build one with [`Step::event`], [`Step::cron`] or [`Step::api`].
#[derive(Clone)]
pub struct Step {
    pub(crate) name: String,
    pub(crate) trigger: Trigger,
    pub(crate) emits: Vec<String>,
    pub(crate) config: StepConfig,
    pub(crate) limits: Vec<Limit>,
    pub(crate) handler: Handler,
    /// A step registered with this one: a debounced or batching step's
    /// flush, a per-tenant cron's step per tenant.
    pub(crate) companion: Option<Companion>,
    /// What runs when a delivery of the step is given up on.
    pub(crate) on_failure: Option<FailureHook>,
    /// A wait step ([`Step::wait`]): waits can be started at it.
    pub(crate) wait: bool,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("trigger", &self.trigger)
            .field("emits", &self.emits)
            .field("config", &self.config)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Step {
    /// A step from its parts, without limits (for steps the engine builds).
    pub(crate) fn from_parts(
        name: String,
        trigger: Trigger,
        emits: Vec<String>,
        config: StepConfig,
        handler: Handler,
    ) -> Step {
        Step {
            name,
            trigger,
            emits,
            config,
            limits: Vec::new(),
            handler,
            companion: None,
            on_failure: None,
            wait: false,
        }
    }

    /// Runs `hook` whenever a delivery of this step is given up on (its error
    /// was permanent, its retries ran out, or flow control found no key in
    /// its payload), in the same commit as the dead
    /// letter: what the hook emits is stored with the dead letter or not at
    /// all. The hook may emit only topics the step declares with
    /// [`emits`](StepBuilder::emits). If it fails or panics, the delivery
    /// still dead-letters, without its emits, and the hook's error joins the
    /// dead letter's. See [`engine::failure`](crate::engine::failure).
    ///
    /// ```
    /// use flowline::{Event, FailureKind, Step, StepError};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct SignedUp { user: String }
    /// impl Event for SignedUp { const TOPIC: &'static str = "user.signed_up"; }
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct WelcomeFailed { user: String, exhausted: bool }
    /// impl Event for WelcomeFailed { const TOPIC: &'static str = "welcome.failed"; }
    ///
    /// let step = Step::event::<SignedUp>("send_welcome")
    ///     .emits::<WelcomeFailed>()
    ///     .handle(|_ctx, _user: SignedUp| async {
    ///         Err(StepError::retryable("mail provider down"))
    ///     })
    ///     .on_failure(|cx, failure| {
    ///         let user = failure.input::<SignedUp>().map(|u| u.user).unwrap_or_default();
    ///         let exhausted = failure.kind() == FailureKind::Exhausted;
    ///         cx.emit(&WelcomeFailed { user, exhausted })?;
    ///         Ok(())
    ///     });
    /// # let _ = step;
    /// ```
    pub fn on_failure<F>(mut self, hook: F) -> Step
    where
        F: Fn(&FailureContext, &StepFailure) -> Result<(), StepError> + Send + Sync + 'static,
    {
        self.on_failure = Some(Arc::new(hook));
        self
    }

    /// An event step that subscribes to the topic(s) of `I`.
    ///
    /// ```
    /// use flowline::{Event, Step, StepContext, StepError};
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(Serialize, Deserialize)]
    /// struct Ping { n: u32 }
    /// impl Event for Ping { const TOPIC: &'static str = "ping"; }
    /// #[derive(Serialize, Deserialize)]
    /// struct Pong { n: u32 }
    /// impl Event for Pong { const TOPIC: &'static str = "pong"; }
    ///
    /// let step = Step::event::<Ping>("answer")
    ///     .emits::<Pong>()
    ///     .handle(|ctx: StepContext, ping: Ping| async move {
    ///         ctx.emit(&Pong { n: ping.n })?;
    ///         Ok::<_, StepError>(())
    ///     });
    /// ```
    pub fn event<I: Inbound>(name: impl Into<String>) -> StepBuilder<I> {
        StepBuilder::new(
            name.into(),
            Trigger::Events(I::topics().into_iter().map(String::from).collect()),
        )
    }

    /// An event step on topics named at run time (a webhook dispatcher
    /// forwarding what its host configures, say): the handler gets each
    /// delivered [`Envelope`] as it came, undecoded.
    ///
    /// ```
    /// use flowline::{Envelope, Step, StepContext, StepError};
    /// let step = Step::topics("audit", ["order.created", "order.cancelled"])
    ///     .handle(|_ctx: StepContext, event: Envelope| async move {
    ///         tracing::info!(topic = %event.topic, "heard");
    ///         Ok::<_, StepError>(())
    ///     });
    /// assert_eq!(step.name(), "audit");
    /// ```
    pub fn topics<T: Into<String>>(
        name: impl Into<String>,
        topics: impl IntoIterator<Item = T>,
    ) -> StepBuilder<Envelope> {
        StepBuilder::new(
            name.into(),
            Trigger::Events(topics.into_iter().map(Into::into).collect()),
        )
    }

    /// A cron step: fires on `expression` (six fields, seconds first, e.g.
    /// `"0 */5 * * * *"`), read in UTC unless [`StepBuilder::time_zone`] says otherwise.
    pub fn cron(name: impl Into<String>, expression: impl Into<String>) -> StepBuilder<CronTick> {
        StepBuilder::new(
            name.into(),
            Trigger::Cron {
                expression: expression.into(),
                time_zone: "UTC".into(),
                missed: MissedFires::default(),
                tenant: TenantId::system(),
            },
        )
    }

    /// An API step: answers `method path` (path parameters as `{name}`).
    pub fn api(name: impl Into<String>, method: Method, path: impl Into<String>) -> ApiStepBuilder {
        ApiStepBuilder {
            inner: StepBuilder::new(
                name.into(),
                Trigger::Api {
                    method,
                    path: path.into(),
                },
            ),
        }
    }

    /// The step's name as registered.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What triggers the step.
    pub fn trigger(&self) -> &Trigger {
        &self.trigger
    }

    /// The topics the step may emit.
    pub fn emits(&self) -> &[String] {
        &self.emits
    }

    /// The step's execution settings.
    pub fn config(&self) -> &StepConfig {
        &self.config
    }

    /// The step's flow-control limits.
    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }
}

/// Builds an event or cron step; finish with [`StepBuilder::handle`].
#[must_use]
pub struct StepBuilder<I> {
    name: String,
    trigger: Trigger,
    emits: Vec<String>,
    config: StepConfig,
    limits: Vec<Limit>,
    _input: PhantomData<fn() -> I>,
}

impl<I> fmt::Debug for StepBuilder<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepBuilder")
            .field("name", &self.name)
            .field("trigger", &self.trigger)
            .finish_non_exhaustive()
    }
}

impl<I> StepBuilder<I> {
    fn new(name: String, trigger: Trigger) -> Self {
        StepBuilder {
            name,
            trigger,
            emits: Vec::new(),
            config: StepConfig::default(),
            limits: Vec::new(),
            _input: PhantomData,
        }
    }

    /// Declares that the step may emit `E`.
    pub fn emits<E: Event>(mut self) -> Self {
        self.emits.push(E::TOPIC.to_string());
        self
    }

    /// Declares that the step may emit on `topic` (for untyped emits).
    pub fn emits_topic(mut self, topic: impl Into<String>) -> Self {
        self.emits.push(topic.into());
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = policy;
        self
    }

    /// Sets the per-attempt timeout (the lease grows with it).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self.config.lease = self.config.lease.max(timeout + Duration::from_secs(30));
        self
    }

    /// Sets how many executions may run at once (at least 1).
    pub fn concurrency(mut self, limit: usize) -> Self {
        self.config.concurrency = limit.max(1);
        self
    }

    /// Runs deliveries that share a group key one at a time, in emit order.
    pub fn fifo(mut self) -> Self {
        self.config.fifo = true;
        self
    }

    /// Sets how long a claim lasts before another worker may take the delivery.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// Runs each execution on its own, committed alone ([`StepConfig::solo`]):
    /// for handlers that wait on slow calls outside, which would otherwise
    /// hold up the commit of the executions batched with them.
    pub fn solo(mut self) -> Self {
        self.config.solo = true;
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: StepConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds a flow-control limit: a rate or a concurrency cap per key (the
    /// tenant by default), obeyed by every engine sharing the backend. A
    /// delivery out of budget waits in the queue, unrun and with no attempt
    /// counted, until its budget returns. See [`flow_control`](crate::flow_control).
    ///
    /// ```
    /// use std::time::Duration;
    /// use flowline::flow_control::{Limit, LimitKey};
    /// use flowline::{Event, Step, StepContext, StepError};
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(Serialize, Deserialize)]
    /// struct Charge { account: String, cents: u64 }
    /// impl Event for Charge { const TOPIC: &'static str = "charge.requested"; }
    ///
    /// let step = Step::event::<Charge>("charge")
    ///     // The gateway takes 50 calls a second from all of us together...
    ///     .limit(Limit::rate(50, Duration::from_secs(1)).per(LimitKey::global()).named("gateway"))
    ///     // ...and each account may have one charge in flight.
    ///     .limit(Limit::concurrency(1).per(LimitKey::field("account")))
    ///     .handle(|_ctx: StepContext, _charge: Charge| async { Ok::<_, StepError>(()) });
    /// assert_eq!(step.limits().len(), 2);
    /// ```
    pub fn limit(mut self, limit: Limit) -> Self {
        self.limits.push(limit);
        self
    }

    /// The step, with its handler.
    fn finish(self, handler: Handler) -> Step {
        Step {
            limits: self.limits,
            ..Step::from_parts(self.name, self.trigger, self.emits, self.config, handler)
        }
    }

    /// Takes the builder apart (for steps built on it, like windowed ones).
    pub(crate) fn into_parts(self) -> (String, Trigger, Vec<String>, StepConfig, Vec<Limit>) {
        (
            self.name,
            self.trigger,
            self.emits,
            self.config,
            self.limits,
        )
    }
}

impl StepBuilder<CronTick> {
    /// Reads the cron expression in this IANA time zone (e.g. `"Europe/Berlin"`).
    pub fn time_zone(mut self, zone: impl Into<String>) -> Self {
        if let Trigger::Cron { time_zone, .. } = &mut self.trigger {
            *time_zone = zone.into();
        }
        self
    }

    /// What to do about fires missed while no engine was running.
    pub fn missed_fires(mut self, policy: MissedFires) -> Self {
        if let Trigger::Cron { missed, .. } = &mut self.trigger {
            *missed = policy;
        }
        self
    }

    /// Runs the ticks under this tenant instead of [`TenantId::system`].
    pub fn tenant(mut self, id: TenantId) -> Self {
        if let Trigger::Cron { tenant, .. } = &mut self.trigger {
            *tenant = id;
        }
        self
    }
}

impl<I: Inbound> StepBuilder<I> {
    /// Finishes the step with its handler.
    ///
    /// A delivery whose payload does not decode into `I` fails permanently and
    /// dead-letters, with the decode error as its last error.
    pub fn handle<F, Fut>(self, handler: F) -> Step
    where
        F: Fn(StepContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), StepError>> + Send + 'static,
    {
        let erased =
            move |ctx: StepContext, envelope: &Envelope| -> BoxFuture<Result<(), StepError>> {
                match I::decode(envelope) {
                    Ok(input) => Box::pin(handler(ctx, input)),
                    Err(err) => Box::pin(std::future::ready(Err(StepError::permanent(err)))),
                }
            };
        self.finish(Handler::Event(Arc::new(erased)))
    }
}

/// Builds an API step; finish with [`ApiStepBuilder::handle`].
#[must_use]
#[derive(Debug)]
pub struct ApiStepBuilder {
    inner: StepBuilder<ApiRequest>,
}

impl ApiStepBuilder {
    /// Declares that the step may emit `E`.
    pub fn emits<E: Event>(mut self) -> Self {
        self.inner = self.inner.emits::<E>();
        self
    }

    /// Declares that the step may emit on `topic`.
    pub fn emits_topic(mut self, topic: impl Into<String>) -> Self {
        self.inner = self.inner.emits_topic(topic);
        self
    }

    /// Sets the timeout of one call.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.inner = self.inner.timeout(timeout);
        self
    }

    /// Adds a flow-control limit, checked before each call: out of budget,
    /// the call is answered `429` with `Retry-After` and the handler does not
    /// run. Key it by tenant (the default), globally, or by a field of the
    /// request body.
    pub fn limit(mut self, limit: Limit) -> Self {
        self.inner = self.inner.limit(limit);
        self
    }

    /// Finishes the step with its handler.
    ///
    /// On `Ok`, the handler's state writes and emits commit atomically before the
    /// response is returned. On `Err`, nothing commits and the caller gets a 500.
    pub fn handle<F, Fut>(self, handler: F) -> Step
    where
        F: Fn(StepContext, ApiRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ApiResponse, StepError>> + Send + 'static,
    {
        let b = self.inner;
        let erased = move |ctx: StepContext,
                           request: ApiRequest|
              -> BoxFuture<Result<ApiResponse, StepError>> {
            Box::pin(handler(ctx, request))
        };
        b.finish(Handler::Api(Arc::new(erased)))
    }
}

/// What a step carries to the flow besides itself: its companion, and
/// what is wrong with a windowed step's declaration, if anything (a
/// [`FlowError`](crate::FlowError) when the flow is built).
#[derive(Clone)]
pub(crate) struct Companion {
    pub(crate) error: Option<WindowError>,
    pub(crate) step: Box<Step>,
}

impl fmt::Debug for Companion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Companion")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}
