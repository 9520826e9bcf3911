//! What can be wrong with a flow: errors that stop it being built, and
//! warnings about a graph that is probably a mistake.

use std::fmt;

use super::flow_control::LimitError;
use super::windows::error::WindowError;
use crate::api::Method;
use crate::cron::CronError;
use crate::event::InvalidName;

/// A flow could not be built. Each variant names the step and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    /// Two steps share a name.
    #[error("two steps are named {0:?}; step names must be unique")]
    DuplicateStep(String),
    /// A step name is invalid.
    #[error("step {step:?}: {source}")]
    InvalidStepName {
        /// The name as given.
        step: String,
        /// What is wrong with it.
        source: InvalidName,
    },
    /// A topic a step subscribes to or emits is invalid.
    #[error("step {step:?}: {source}")]
    InvalidTopic {
        /// The step.
        step: String,
        /// What is wrong with the topic.
        source: InvalidName,
    },
    /// A cron step's schedule does not parse.
    #[error("cron step {step:?}: {source}")]
    InvalidCron {
        /// The step.
        step: String,
        /// What is wrong with the schedule.
        source: CronError,
    },
    /// An API step's path pattern is invalid.
    #[error("API step {step:?}: path {path:?} {reason}")]
    InvalidPath {
        /// The step.
        step: String,
        /// The pattern.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two API steps answer the same method and path.
    #[error("API steps {first:?} and {second:?} both answer {method} {path}")]
    DuplicateRoute {
        /// The first step.
        first: String,
        /// The second step.
        second: String,
        /// The method.
        method: Method,
        /// The path pattern.
        path: String,
    },
    /// An event step subscribes to nothing.
    #[error("step {0:?} subscribes to no topic")]
    NoSubscription(String),
    /// A debounced or batching step's window is invalid.
    #[error("step {step:?}: {source}")]
    InvalidWindow {
        /// The step.
        step: String,
        /// What is wrong with its window.
        source: WindowError,
    },
    /// A step's flow-control limit is invalid.
    #[error("step {step:?}, limit {limit:?}: {source}")]
    InvalidLimit {
        /// The step.
        step: String,
        /// The limit's name.
        limit: String,
        /// What is wrong with it.
        source: LimitError,
    },
    /// Warnings were promoted to errors by [`FlowBuilder::deny_warnings`](crate::FlowBuilder::deny_warnings).
    #[error("the flow has warnings: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Warnings(Vec<FlowWarning>),
}

/// Something in the graph that is probably a mistake, but need not be.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlowWarning {
    /// A step emits a topic that no step subscribes to: those events go nowhere.
    EmittedButUnconsumed {
        /// The emitting step.
        step: String,
        /// The topic.
        topic: String,
    },
    /// A step subscribes to a topic no step emits (it can still come from
    /// [`Engine::emit`](crate::Engine::emit); declare it with
    /// [`FlowBuilder::external`](crate::FlowBuilder::external) to silence this).
    ConsumedButNeverEmitted {
        /// The subscribing step.
        step: String,
        /// The topic.
        topic: String,
    },
}

impl fmt::Display for FlowWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlowWarning::EmittedButUnconsumed { step, topic } => {
                write!(f, "step {step:?} emits {topic:?}, which no step subscribes to")
            }
            FlowWarning::ConsumedButNeverEmitted { step, topic } => write!(
                f,
                "step {step:?} subscribes to {topic:?}, which no step emits and is not declared external"
            ),
        }
    }
}
