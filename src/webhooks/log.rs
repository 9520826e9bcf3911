//! The delivery log: per endpoint, one record per message with its attempts
//! (status, latency, what the endpoint answered) and what happens next.
//!
//! Records sit at `flowline.webhook/log/<endpoint>/<inverted time>-<message>`
//! in the tenant's state, newest first in key order. Only a message's own
//! sender writes its record, without a read check, so writing the log never
//! makes a delivery conflict (and run, and send, again). The dispatcher keeps
//! each endpoint's log to [`LOG_CAP`] messages.

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// Where the webhooks' records live in a tenant's state.
pub(super) const ROOT: &str = "flowline.webhook/";
/// How many messages an endpoint's log keeps (the newest).
pub const LOG_CAP: usize = 1000;
/// How many attempts a message's record keeps (the latest).
pub(super) const ATTEMPTS_KEPT: usize = 20;

/// The prefix of an endpoint's log.
pub(super) fn prefix(endpoint: &str) -> String {
    format!("{ROOT}log/{endpoint}/")
}

/// The key of a message's record: newest first in key order.
pub(super) fn key(endpoint: &str, first_at: Timestamp, message: &str) -> String {
    let inverted = i64::MAX - first_at.as_millis().max(0);
    format!("{}{inverted:019}-{message}", prefix(endpoint))
}

/// Where a message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeliveryState {
    /// Tried, and to be tried again at `nextTryAt`.
    Retrying,
    /// The endpoint answered 2xx.
    Delivered,
    /// Given up: in the dead letters, replayable.
    DeadLettered,
    /// Not sent: the endpoint was disabled or removed before its turn.
    Skipped,
}

/// One attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// 1 for the first.
    pub attempt: u32,
    /// When it started.
    pub at: Timestamp,
    /// The status the endpoint answered, if it answered.
    pub status: Option<u16>,
    /// How long it took, in milliseconds.
    pub latency_ms: u64,
    /// What went wrong (a timeout, a refused connection, a non-2xx).
    pub error: Option<String>,
    /// The start of the answer's body, capped.
    pub body: Option<String>,
}

/// A message's record in its endpoint's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    /// The `webhook-id`: the same on every attempt.
    pub message_id: String,
    /// The endpoint.
    pub endpoint: String,
    /// The event's topic.
    pub topic: String,
    /// The event's id.
    pub event_id: String,
    /// When the message was made (the dispatch).
    pub created_at: Timestamp,
    /// Where it stands.
    pub state: DeliveryState,
    /// When it will be tried next, while retrying.
    pub next_try_at: Option<Timestamp>,
    /// The latest attempts, oldest first.
    pub attempts: Vec<Attempt>,
}

/// Cuts `body` to at most `cap` bytes on a character boundary.
pub(super) fn capped(body: &str, cap: usize) -> String {
    if body.len() <= cap {
        return body.to_string();
    }
    let mut end = cap;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &body[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_messages_sort_first_and_bodies_are_cut_on_characters() {
        let old = key("ep_a", Timestamp::from_millis(1_000), "msg_1");
        let new = key("ep_a", Timestamp::from_millis(2_000), "msg_2");
        assert!(new < old);
        assert!(new.starts_with(&prefix("ep_a")));
        assert_eq!(capped("héllo", 2), "h…");
        assert_eq!(capped("hi", 10), "hi");
    }
}
