//! Failure hooks: what a step does, in the same commit, when one of its
//! deliveries is given up on.
//!
//! A hook is declared with [`Step::on_failure`](crate::Step::on_failure). When
//! a delivery of the step dead-letters (its error was permanent, or its
//! retries ran out), the engine calls the hook before it asks the backend to
//! store the dead letter, and hands the backend what the hook emitted along
//! with it: the dead letter and those events are stored together or not at
//! all, so a flow can mark a user "welcome failed" or start a compensation
//! without a window in which the failure is recorded and its consequence lost.
//!
//! A hook decides; it does no I/O. It runs synchronously, sees the failure
//! ([`StepFailure`]) and can only emit ([`FailureContext`]); steps that
//! subscribe to what it emits do the work, with their own retries.

mod run;

use std::fmt;
use std::sync::Arc;

use crate::engine::context::{EmitError, StepContext};
use crate::engine::step_error::StepError;
use crate::engine::MissingData;
use crate::event::{
    DecodeError, EmitOptions, Envelope, Event, EventId, Inbound, TenantId, TraceId,
};

pub use crate::backend::FailureKind;
pub(crate) use run::{give_up, kind_of};

/// The header that counts how deep in a chain of failure hooks an event was
/// emitted: 1 for an event a hook emitted, 2 for one emitted by the hook of a
/// step that failed on such an event, and so on.
pub const FAILURE_DEPTH_HEADER: &str = "flowline-failure-depth";

/// How deep a chain of failure hooks may go: a step that fails on an event
/// emitted at this depth dead-letters without running its hook, so two steps
/// whose hooks feed each other's failures cannot loop.
pub const MAX_FAILURE_DEPTH: u32 = 3;

/// A step's failure hook, as [`Step::on_failure`](crate::Step::on_failure) keeps it.
pub(crate) type FailureHook =
    Arc<dyn Fn(&FailureContext, &StepFailure) -> Result<(), StepError> + Send + Sync>;

/// A delivery the engine gave up on, as its step's failure hook sees it.
#[derive(Clone, Debug)]
pub struct StepFailure {
    pub(crate) kind: FailureKind,
    pub(crate) error: String,
    pub(crate) attempts: u32,
    pub(crate) event: Arc<Envelope>,
}

impl StepFailure {
    /// Why it was given up on.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The last attempt's error, with its causes.
    pub fn error(&self) -> &str {
        &self.error
    }

    /// How many attempts ran.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The event the step failed on.
    pub fn event(&self) -> &Envelope {
        &self.event
    }

    /// The event decoded as the step's input, or as any other type that
    /// reads it.
    ///
    /// # Errors
    /// [`DecodeError`] if the payload does not fit `I` (always so for a
    /// failure of kind [`FailureKind::Undecodable`] read as the step's input).
    pub fn input<I: Inbound>(&self) -> Result<I, DecodeError> {
        I::decode(&self.event)
    }
}

/// What a failure hook may do: emit events, in the dead letter's commit.
///
/// Its emits are checked as the step's own: a hook may emit only topics the
/// step declares with [`StepBuilder::emits`](crate::StepBuilder::emits). Each
/// carries [`FAILURE_DEPTH_HEADER`].
pub struct FailureContext {
    ctx: StepContext,
    depth: u32,
}

impl FailureContext {
    /// Emits a typed event with the dead letter.
    ///
    /// # Errors
    /// [`EmitError`] as [`StepContext::emit`](crate::StepContext::emit).
    pub fn emit<E: Event>(&self, event: &E) -> Result<EventId, EmitError> {
        self.emit_with(event, EmitOptions::new())
    }

    /// Emits a typed event with the dead letter, with a delay, FIFO group or headers.
    ///
    /// # Errors
    /// [`EmitError`] as [`StepContext::emit_with`](crate::StepContext::emit_with).
    pub fn emit_with<E: Event>(
        &self,
        event: &E,
        options: EmitOptions,
    ) -> Result<EventId, EmitError> {
        let options = options.header(FAILURE_DEPTH_HEADER, self.depth.to_string());
        self.ctx.emit_with(event, options)
    }

    /// The tenant of the failed delivery.
    pub fn tenant(&self) -> &TenantId {
        self.ctx.tenant()
    }

    /// The engine's clock now (a simulation's virtual one in a simulation).
    pub fn now(&self) -> crate::time::Timestamp {
        self.ctx.now()
    }

    /// The trace the failed delivery belongs to; what the hook emits joins it.
    pub fn trace_id(&self) -> TraceId {
        self.ctx.trace_id()
    }

    /// A dependency the host gave the engine, as
    /// [`StepContext::data`](crate::StepContext::data).
    ///
    /// # Errors
    /// [`MissingData`] if the engine was given no `T`.
    pub fn data<T: Send + Sync + 'static>(&self) -> Result<&T, MissingData> {
        self.ctx.data::<T>()
    }
}

impl fmt::Debug for FailureContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailureContext")
            .field("tenant", self.ctx.tenant())
            .field("step", self.ctx.step())
            .field("depth", &self.depth)
            .finish()
    }
}
