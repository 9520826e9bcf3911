//! A pending wait as the tenant's state keeps it, and the names of its key
//! and its timer.

use serde::{Deserialize, Serialize};

use crate::event::EventId;

/// The state key prefix of pending waits.
const RECORD_PREFIX: &str = "flowline.wait/";

/// A pending wait.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Pending {
    /// The timer's event id: a timer of an earlier wait with the same key
    /// (one that could not be cancelled) is not this wait's.
    pub(super) timer: EventId,
    /// How many events to wait for.
    pub(super) need: u32,
    /// The payloads of the events that came, as JSON text.
    pub(super) got: Vec<String>,
    /// The context to hand back, as JSON text.
    pub(super) context: Option<String>,
}

/// The state key of the wait of `step` for `key`.
pub(super) fn record_key(step: &str, key: &str) -> String {
    format!("{RECORD_PREFIX}{step}/{key}")
}

/// The cancel key of the timer of the wait for `key`.
pub(super) fn timer_key(key: &str) -> String {
    format!("wait/{key}")
}

/// What a timer delivery carries.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Timer {
    /// The correlation key.
    pub(super) key: String,
}
