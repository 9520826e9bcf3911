//! Headers the engine reads from an event.

use std::sync::Arc;

/// The header that carries an event's cancel key
/// ([`EmitOptions::cancel_key`](crate::EmitOptions::cancel_key)).
pub const CANCEL_KEY_HEADER: &str = "flowline-cancel-key";

/// The header that carries the version of an event's payload
/// ([`Event::VERSION`](crate::Event::VERSION)), when it is not 1.
pub const VERSION_HEADER: &str = "flowline-version";

/// The payload version in an event's `headers`: 1 when it has none (every
/// event emitted before versions existed), `None` when it is not a number.
pub(crate) fn payload_version(headers: &[(String, String)]) -> Option<u32> {
    match headers.iter().find(|(name, _)| name == VERSION_HEADER) {
        None => Some(1),
        Some((_, v)) => v.parse().ok(),
    }
}

/// The cancel key in an event's `headers`, if it has one.
pub(crate) fn cancel_key(headers: &[(String, String)]) -> Option<Arc<str>> {
    headers
        .iter()
        .find(|(name, _)| name == CANCEL_KEY_HEADER)
        .map(|(_, key)| Arc::from(key.as_str()))
}
