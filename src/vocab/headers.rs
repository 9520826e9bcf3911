//! Headers the engine reads from an event.

use std::sync::Arc;

/// The header that carries an event's cancel key
/// ([`EmitOptions::cancel_key`](crate::EmitOptions::cancel_key)).
pub const CANCEL_KEY_HEADER: &str = "flowline-cancel-key";

/// The cancel key in an event's `headers`, if it has one.
pub(crate) fn cancel_key(headers: &[(String, String)]) -> Option<Arc<str>> {
    headers
        .iter()
        .find(|(name, _)| name == CANCEL_KEY_HEADER)
        .map(|(_, key)| Arc::from(key.as_str()))
}
