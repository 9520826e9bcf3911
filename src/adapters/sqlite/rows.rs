//! Envelopes to and from table columns.
//!
//! An event is stored as plain columns (ids as 16-byte blobs, the payload as the
//! JSON text it already is), so a row reads well in the `sqlite3` shell and nothing
//! is encoded twice.

use std::sync::Arc;

use rusqlite::types::ToSql;
use rusqlite::Row;

use crate::backend::StoreError;
use crate::event::{Envelope, EventId, Payload, Priority, StepName, TenantId, Topic, TraceId};
use crate::time::Timestamp;

/// The envelope's columns, in the order [`read_envelope`] expects them.
pub(super) const EVENT_COLUMNS: &str =
    "event_id, topic, tenant, trace_id, causation_id, group_key, emitted_at, deliver_at, headers, payload, priority";

/// An envelope's columns, ready to bind in [`EVENT_COLUMNS`] order.
pub(super) struct EventParams<'a> {
    event_id: [u8; 16],
    topic: &'a str,
    tenant: &'a str,
    trace_id: [u8; 16],
    causation_id: Option<[u8; 16]>,
    group_key: Option<&'a str>,
    emitted_at: i64,
    deliver_at: Option<i64>,
    headers: Option<String>,
    payload: &'a str,
    priority: i16,
}

impl<'a> EventParams<'a> {
    pub(super) fn new(event: &'a Envelope) -> Result<Self, StoreError> {
        let headers = if event.headers.is_empty() {
            None
        } else {
            Some(
                serde_json::to_string(&event.headers)
                    .map_err(|e| StoreError::Backend(Box::new(e)))?,
            )
        };
        Ok(EventParams {
            event_id: event.id.as_uuid().into_bytes(),
            topic: event.topic.as_str(),
            tenant: event.tenant.as_str(),
            trace_id: event.trace_id.as_uuid().into_bytes(),
            causation_id: event.causation_id.map(|c| c.as_uuid().into_bytes()),
            group_key: event.group_key.as_deref(),
            emitted_at: event.emitted_at.as_millis(),
            deliver_at: event.deliver_at.map(Timestamp::as_millis),
            headers,
            payload: event.payload.as_json(),
            priority: event.priority.as_i16(),
        })
    }

    /// The values in [`EVENT_COLUMNS`] order.
    pub(super) fn values(&self) -> [&dyn ToSql; 11] {
        [
            &self.event_id,
            &self.topic,
            &self.tenant,
            &self.trace_id,
            &self.causation_id,
            &self.group_key,
            &self.emitted_at,
            &self.deliver_at,
            &self.headers,
            &self.payload,
            &self.priority,
        ]
    }
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {detail}"))
}

/// A uuid stored as a 16-byte blob.
fn uuid_at(row: &Row<'_>, index: usize) -> Result<uuid::Uuid, StoreError> {
    let bytes: [u8; 16] = row.get(index).map_err(|e| corrupt("an id column", e))?;
    Ok(uuid::Uuid::from_bytes(bytes))
}

/// Reads the [`EVENT_COLUMNS`] starting at column `at`; a `tenant` the caller
/// already holds saves reading and checking that column again.
pub(super) fn read_envelope(
    row: &Row<'_>,
    at: usize,
    tenant: Option<&TenantId>,
) -> Result<Envelope, StoreError> {
    let text = |i: usize| -> Result<String, StoreError> {
        row.get(at + i).map_err(|e| corrupt("a text column", e))
    };
    let topic = Topic::new(text(1)?).map_err(|e| corrupt("a stored topic", e))?;
    let tenant = match tenant {
        Some(tenant) => tenant.clone(),
        None => TenantId::from_stored(&text(2)?).map_err(|e| corrupt("a stored tenant", e))?,
    };
    let causation: Option<[u8; 16]> = row.get(at + 4).map_err(|e| corrupt("a causation id", e))?;
    let group_key: Option<String> = row.get(at + 5).map_err(|e| corrupt("a group key", e))?;
    let emitted_at: i64 = row.get(at + 6).map_err(|e| corrupt("emitted_at", e))?;
    let deliver_at: Option<i64> = row.get(at + 7).map_err(|e| corrupt("deliver_at", e))?;
    let headers: Option<String> = row.get(at + 8).map_err(|e| corrupt("headers", e))?;
    let priority = priority_from(row.get(at + 10).map_err(|e| corrupt("priority", e))?)?;
    let headers = match headers {
        Some(json) => serde_json::from_str(&json).map_err(|e| corrupt("headers", e))?,
        None => Vec::new(),
    };
    Ok(Envelope {
        id: EventId::from_uuid(uuid_at(row, at)?),
        topic,
        tenant,
        trace_id: TraceId::from_uuid(uuid_at(row, at + 3)?),
        causation_id: causation.map(|b| EventId::from_uuid(uuid::Uuid::from_bytes(b))),
        group_key: group_key.map(Arc::from),
        emitted_at: Timestamp::from_millis(emitted_at),
        deliver_at: deliver_at.map(Timestamp::from_millis),
        headers,
        priority,
        // Written by us from a `Payload`: already JSON. A damaged payload fails the
        // handler's decode and dead-letters, like any undecodable payload.
        payload: Payload::from_stored(text(9)?),
    })
}

/// A priority read back (stored as [`Priority::as_i16`]).
pub(super) fn priority_from(raw: i16) -> Result<Priority, StoreError> {
    Priority::from_i16(raw).ok_or_else(|| corrupt("a stored priority", raw))
}

/// A step name read back.
pub(super) fn step_name(text: String) -> Result<StepName, StoreError> {
    StepName::new(text).map_err(|e| corrupt("a stored step name", e))
}

/// A row id as the `u64` the traits use.
pub(super) fn id_from(raw: i64) -> Result<u64, StoreError> {
    u64::try_from(raw).map_err(|_| corrupt("a row id", raw))
}

/// A `u64` id as SQLite's integer.
pub(super) fn id_to(id: u64) -> i64 {
    // Ids come from the file itself (row ids, below 2^63); a larger one cannot
    // name a row, and -1 matches nothing.
    i64::try_from(id).unwrap_or(-1)
}

/// Maps a SQLite error to the store's error type.
pub(super) fn store_error(err: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(code, _) = &err {
        if matches!(
            code.code,
            rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
        ) {
            return StoreError::Corrupt(err.to_string());
        }
    }
    StoreError::Backend(Box::new(err))
}

#[cfg(test)]
mod tests {
    use super::{id_from, id_to};

    #[test]
    fn ids_round_trip_through_sqlite_integers() {
        assert_eq!(id_from(id_to(42)).unwrap(), 42);
        assert_eq!(id_to(u64::MAX), -1);
        assert!(id_from(-1).is_err());
    }
}
