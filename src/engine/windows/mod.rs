//! Debounce and batching: a step whose handler gets every event of a window
//! in one run, in order.
//!
//! [`StepBuilder::debounce`](crate::StepBuilder::debounce) closes a key's
//! window once no event came for a quiet period (or at a maximum wait);
//! [`StepBuilder::batch`](crate::StepBuilder::batch) closes it when it holds
//! `n` events (or at a maximum wait). Either way [`WindowBuilder::handle`]
//! takes a handler of `Vec<I>`.
//!
//! A windowed step is two steps built on the engine's own guarantees, so it
//! works the same on every backend. The step itself (the collector) adds
//! each event to its key's window, kept as the tenant's state under
//! `flowline/window/<step>/<key>` (a small header, and each event under a key
//! of its own, so adding one costs the same however many the window holds),
//! and schedules a tick (a delayed event on
//! `flowline.window.tick`) for when the window closes; a full window runs the
//! handler there and then. Its companion `<step>.flush` takes the ticks: a
//! tick finds the window closed and runs the handler, or open still (more
//! events came) and schedules the next tick. The handler's writes and emits
//! commit with the window's removal, and each event is added in a commit of
//! its own: so every event runs in exactly one window, exactly once, even
//! across crashes. A failed run is retried with all the window's events (and
//! any that came meanwhile).

mod buffer;
pub(crate) mod error;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::context::StepContext;
use super::flow_control::LimitKey;
use super::step::{BoxFuture, Companion, Handler, Step, StepBuilder, Trigger};
use super::step_error::StepError;
use crate::event::{EmitOptions, Envelope, Event, Inbound};
use buffer::{Spec, Window};
pub use error::{WindowError, DEFAULT_DEBOUNCE_EVENTS, MAX_WINDOW_EVENTS};

/// The tick that looks at a window when it may have closed.
#[derive(Serialize, Deserialize)]
struct Tick {
    step: String,
    key: String,
    tick: u64,
}

impl Event for Tick {
    const TOPIC: &'static str = "flowline.window.tick";
}

/// Builds a debounced or batching step; finish with [`WindowBuilder::handle`].
#[must_use]
#[derive(Debug)]
pub struct WindowBuilder<I> {
    inner: StepBuilder<I>,
    spec: Spec,
    key: LimitKey,
}

impl<I: Inbound> StepBuilder<I> {
    /// Debounces: collects a key's events until none came for `quiet` (or
    /// `max_wait` after the first), then runs the handler once with all of
    /// them, in order. A window closes early with
    /// [`DEFAULT_DEBOUNCE_EVENTS`] events (see [`WindowBuilder::max_events`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use flowline::{Event, Step, StepContext, StepError};
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(Serialize, Deserialize)]
    /// struct LowStock { sku: String, left: u32 }
    /// impl Event for LowStock { const TOPIC: &'static str = "stock.low"; }
    ///
    /// // One alert per quiet minute, at the latest every 10 minutes, however
    /// // many low-stock events came.
    /// let step = Step::event::<LowStock>("alert-low-stock")
    ///     .debounce(Duration::from_secs(60), Duration::from_secs(600))
    ///     .handle(|ctx: StepContext, lows: Vec<LowStock>| async move {
    ///         ctx.put("alerts/last", &lows.len())?;
    ///         Ok::<_, StepError>(())
    ///     });
    /// # let _ = step;
    /// ```
    pub fn debounce(self, quiet: Duration, max_wait: Duration) -> WindowBuilder<I> {
        WindowBuilder {
            inner: self,
            spec: Spec {
                quiet: Some(quiet),
                max_wait,
                max_events: DEFAULT_DEBOUNCE_EVENTS,
            },
            key: LimitKey::tenant(),
        }
    }

    /// Batches: collects a key's events until there are `max_events` (or
    /// `max_wait` after the first), then runs the handler once with all of
    /// them, in order.
    pub fn batch(self, max_events: usize, max_wait: Duration) -> WindowBuilder<I> {
        WindowBuilder {
            inner: self,
            spec: Spec {
                quiet: None,
                max_wait,
                max_events,
            },
            key: LimitKey::tenant(),
        }
    }
}

impl<I: Inbound> WindowBuilder<I> {
    /// Keeps a window per `key` of the tenant (default: one per tenant).
    pub fn per(mut self, key: LimitKey) -> Self {
        self.key = key;
        self
    }

    /// Closes a window once it holds `n` events (1 to [`MAX_WINDOW_EVENTS`]).
    pub fn max_events(mut self, n: usize) -> Self {
        self.spec.max_events = n;
        self
    }

    /// Finishes the step with a handler of every event of a window.
    ///
    /// Registering the step registers its companion `<name>.flush` too.
    pub fn handle<F, Fut>(self, handler: F) -> Step
    where
        F: Fn(StepContext, Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), StepError>> + Send + 'static,
    {
        let (name, trigger, mut emits, config, limits) = self.inner.into_parts();
        emits.push(Tick::TOPIC.to_string());
        let error = validate(&self.spec, !limits.is_empty()).err();
        let collector = Arc::new(Collector {
            step: name.clone(),
            spec: self.spec,
            key: self.key,
            handler: Arc::new(move |ctx, events| Box::pin(handler(ctx, events))),
        });
        let flush = {
            let collector = collector.clone();
            Step::from_parts(
                format!("{name}.flush"),
                Trigger::Events(vec![Tick::TOPIC.to_string()]),
                emits.clone(),
                config,
                Handler::Event(Arc::new(move |ctx, envelope| {
                    let collector = collector.clone();
                    let tick = envelope.decode::<Tick>();
                    Box::pin(async move { collector.on_tick(ctx, tick?).await })
                })),
            )
        };
        let collect = collector.clone();
        let mut step = Step::from_parts(
            name,
            trigger,
            emits,
            config,
            Handler::Event(Arc::new(move |ctx, envelope: &Envelope| {
                let collector = collect.clone();
                let envelope = envelope.clone();
                Box::pin(async move { collector.on_event(ctx, envelope).await })
            })),
        );
        step.companion = Some(Companion {
            error,
            step: Box::new(flush),
        });
        step
    }
}

fn validate(spec: &Spec, has_limits: bool) -> Result<(), WindowError> {
    if has_limits {
        return Err(WindowError::WithLimits);
    }
    if spec.max_wait.is_zero() {
        return Err(WindowError::ZeroMaxWait);
    }
    if let Some(quiet) = spec.quiet {
        if quiet.is_zero() {
            return Err(WindowError::ZeroQuiet);
        }
        if quiet > spec.max_wait {
            return Err(WindowError::QuietLongerThanMaxWait {
                quiet,
                max_wait: spec.max_wait,
            });
        }
    }
    if spec.max_events == 0 || spec.max_events > MAX_WINDOW_EVENTS {
        return Err(WindowError::EventCount(spec.max_events));
    }
    Ok(())
}

type BatchFn<I> = dyn Fn(StepContext, Vec<I>) -> BoxFuture<Result<(), StepError>> + Send + Sync;

/// A windowed step's shared logic: adding events, closing windows.
struct Collector<I> {
    step: String,
    spec: Spec,
    key: LimitKey,
    handler: Arc<BatchFn<I>>,
}

impl<I: Inbound> Collector<I> {
    /// Where a key's window is kept: its header under `<base>`, its events
    /// under `<base>/e/<event id>`. The key goes in with its length, so no
    /// key's events fall under another key's prefix (`a` and `a/e` apart).
    fn window_key(&self, key: &str) -> String {
        format!("flowline/window/{}/{}:{key}", self.step, key.len())
    }

    fn events_prefix(window_key: &str) -> String {
        format!("{window_key}/e/")
    }

    /// Adds an event to its key's window; runs the window if it is full,
    /// else makes sure a tick will look at it when it closes.
    async fn on_event(&self, ctx: StepContext, event: Envelope) -> Result<(), StepError> {
        // Undecodable events dead-letter here, alone, not with a window.
        I::decode(&event).map_err(StepError::permanent)?;
        let key = self
            .key
            .of_event(&event)
            .map_err(StepError::permanent)?
            .into_owned();
        let window_key = self.window_key(&key);
        let now = ctx.now();
        let mut window: Window = ctx.get(&window_key).await?.unwrap_or_default();
        window.add(now);
        ctx.put(
            &format!("{}{}", Self::events_prefix(&window_key), event.id),
            &event,
        )?;
        if window.is_full(&self.spec) {
            return self.run(ctx, &window_key).await;
        }
        if !window.tick_pending(now) {
            self.schedule(&ctx, &key, &mut window)?;
        }
        ctx.put(&window_key, &window)?;
        Ok(())
    }

    /// A tick: runs the window if it has closed, else schedules the next one.
    async fn on_tick(&self, ctx: StepContext, tick: Tick) -> Result<(), StepError> {
        if tick.step != self.step {
            return Ok(());
        }
        let window_key = self.window_key(&tick.key);
        let Some(mut window) = ctx.get::<Window>(&window_key).await? else {
            return Ok(());
        };
        if window.tick != tick.tick {
            // A newer tick looks after this window.
            return Ok(());
        }
        if ctx.now() >= window.closes_at(&self.spec) {
            return self.run(ctx, &window_key).await;
        }
        self.schedule(&ctx, &tick.key, &mut window)?;
        ctx.put(&window_key, &window)?;
        Ok(())
    }

    fn schedule(&self, ctx: &StepContext, key: &str, window: &mut Window) -> Result<(), StepError> {
        let at = window.closes_at(&self.spec);
        window.tick = crate::vocab::chance::next_u64().max(1);
        window.tick_at = at.as_millis();
        let tick = Tick {
            step: self.step.clone(),
            key: key.to_string(),
            tick: window.tick,
        };
        let delay = at.saturating_since(ctx.now());
        ctx.emit_with(&tick, EmitOptions::new().delay(delay))?;
        Ok(())
    }

    /// Runs the handler with the window's events (this execution's own
    /// included); the window goes with its commit. Its header was read, so
    /// an event another execution adds meanwhile makes this commit conflict
    /// and run again with it.
    async fn run(&self, ctx: StepContext, window_key: &str) -> Result<(), StepError> {
        let mut stored: Vec<(String, Envelope)> = ctx
            .scan(&Self::events_prefix(window_key), MAX_WINDOW_EVENTS)
            .await?;
        // In emit order: events emitted together may be added in another
        // order by executions running side by side (event ids are
        // time-ordered, so ties on the millisecond keep their emit order).
        stored.sort_by_key(|(_, e)| (e.emitted_at, e.id));
        crate::engine::trace_link::link_events(
            &tracing::Span::current(),
            stored.iter().map(|(_, e)| e),
        );
        for (key, _) in &stored {
            ctx.delete(key)?;
        }
        ctx.delete(window_key)?;
        let events = stored
            .iter()
            .map(|(_, e)| I::decode(e))
            .collect::<Result<Vec<I>, _>>()
            .map_err(StepError::permanent)?;
        (self.handler)(ctx, events).await
    }
}
