//! Values to and from columns: events as JSON text, ids, step names, and the
//! keys of advisory locks.

use std::sync::Arc;

use super::error::corrupt;
use crate::backend::StoreError;
use crate::event::{Envelope, StepName};

/// An event as the JSON text stored in an `event` column.
pub(super) fn event_json(event: &Envelope) -> Result<String, StoreError> {
    serde_json::to_string(event).map_err(|e| StoreError::Backend(Box::new(e)))
}

/// An `event` column read back.
pub(super) fn event_from(json: &str) -> Result<Arc<Envelope>, StoreError> {
    serde_json::from_str(json)
        .map(Arc::new)
        .map_err(|e| corrupt("a stored event", e))
}

/// A step name read back.
pub(super) fn step_name(text: &str) -> Result<StepName, StoreError> {
    StepName::new(text).map_err(|e| corrupt("a stored step name", e))
}

/// A `BIGSERIAL` id as the `u64` the traits use.
pub(super) fn id_from(raw: i64) -> Result<u64, StoreError> {
    u64::try_from(raw).map_err(|_| corrupt("a row id", raw))
}

/// A `u64` id as PostgreSQL's `BIGINT`: ids come from the database (below
/// 2^63); a larger one names no row, and -1 matches nothing.
pub(super) fn id_to(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(-1)
}

/// A count or attempt number read back.
pub(super) fn count_from(raw: i64) -> Result<u64, StoreError> {
    u64::try_from(raw).map_err(|_| corrupt("a count", raw))
}

/// An attempt count read back.
pub(super) fn attempt_from(raw: i32) -> Result<u32, StoreError> {
    u32::try_from(raw).map_err(|_| corrupt("an attempt count", raw))
}

/// The key of an advisory lock on `parts` (FNV-1a over the parts, each ended by
/// a zero byte). Different parts may share a key: that only serializes them.
pub(super) fn lock_key(parts: &[&str]) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash as i64
}

/// Text as a `TEXT` column takes it: PostgreSQL refuses the NUL character, so
/// it becomes U+FFFD rather than failing the whole batch.
pub(super) fn text_column(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

#[cfg(test)]
mod tests {
    use super::{id_from, id_to, lock_key};

    #[test]
    fn ids_round_trip_and_lock_keys_separate_parts() {
        assert_eq!(id_from(id_to(42)).unwrap(), 42);
        assert_eq!(id_to(u64::MAX), -1);
        assert!(id_from(-1).is_err());
        assert_ne!(lock_key(&["ab", "c"]), lock_key(&["a", "bc"]));
        assert_eq!(lock_key(&["a", "b"]), lock_key(&["a", "b"]));
    }
}
