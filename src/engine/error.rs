//! The error of the host-facing engine calls.

use crate::backend::StoreError;
use crate::event::InvalidName;

/// An engine operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The backend failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A name (tenant, topic) was invalid.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// A payload could not be serialized.
    #[error("cannot serialize the payload: {0}")]
    Encode(#[from] serde_json::Error),
    /// A stored value did not deserialize into the requested type.
    #[error("stored value of key {key:?} does not match the requested type: {source}")]
    Decode {
        /// The key.
        key: String,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
    /// No step of the flow subscribes to the topic, so the event would run
    /// nothing (a typo, say, or a step renamed away). Nothing was published.
    /// A topic the flow declares external (`FlowBuilder::external`) is
    /// accepted instead, though no step hears it yet.
    #[error("no step of the flow subscribes to topic {topic:?}; nothing was published")]
    NoSubscriber {
        /// The topic.
        topic: String,
    },
    /// A corrected payload was given as an event of another topic (or
    /// another payload version, [`Event::VERSION`](crate::Event::VERSION))
    /// than the dead letter's.
    #[error("the dead letter's event is {expected:?}, not {given:?}")]
    WrongTopic {
        /// The dead letter's topic.
        expected: String,
        /// The topic of the event given.
        given: String,
    },
    /// The step is one of this flow's: its deliveries are not orphans.
    #[error("step {step:?} is in the flow; only another flow's steps can be moved or purged")]
    StepInFlow {
        /// The step.
        step: String,
    },
    /// No step of the flow has this name.
    #[error("no step of the flow is named {step:?}")]
    UnknownStep {
        /// The name.
        step: String,
    },
    /// The engine is shutting down and accepts no new work.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// A flow-control limit or quota was refused (see
    /// [`Engine::set_limit`](crate::Engine::set_limit)).
    #[error(transparent)]
    Limit(#[from] crate::engine::flow_control::LimitError),
    /// The configuration is invalid.
    #[error("invalid engine configuration: {0}")]
    Config(String),
}
