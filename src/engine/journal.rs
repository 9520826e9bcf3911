//! What ran recently, for an operator's page.
//!
//! The journal keeps the last [`EngineConfig::recent_executions`] finished
//! executions in memory (none when it is 0); batches add theirs once, under
//! one lock, when they finish.
//!
//! [`EngineConfig::recent_executions`]: crate::EngineConfig::recent_executions

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::event::{EventId, StepName, TenantId, Topic, TraceId};
use crate::time::Timestamp;

/// How an execution ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionOutcome {
    /// Its effects committed.
    Committed,
    /// It failed and is due again later.
    Retried,
    /// It failed for good: its delivery is a dead letter.
    DeadLettered,
}

/// One finished execution, newest first in [`Engine::recent_executions`].
///
/// Its event's `causation_id` names the event whose handler emitted it, so a
/// list of records read by `trace_id` shows which event caused which.
///
/// [`Engine::recent_executions`]: crate::Engine::recent_executions
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ExecutionRecord {
    /// The step that ran.
    pub step: StepName,
    /// The tenant it ran for.
    pub tenant: TenantId,
    /// The event it handled (`None` for an API call).
    pub event_id: Option<EventId>,
    /// The event's topic (`None` for an API call).
    pub topic: Option<Topic>,
    /// Shared by everything one API call or cron tick caused.
    pub trace_id: TraceId,
    /// The event whose handler emitted the handled event.
    pub causation_id: Option<EventId>,
    /// Which attempt this was, from 1.
    pub attempt: u32,
    /// How it ended.
    pub outcome: ExecutionOutcome,
    /// When its batch committed.
    pub finished_at: Timestamp,
    /// How long the handler ran, in microseconds (`None` if it never ran,
    /// e.g. an undecodable payload).
    pub ran_for_micros: Option<u64>,
}

impl ExecutionRecord {
    pub(crate) fn new(
        step: StepName,
        tenant: TenantId,
        trace_id: TraceId,
        outcome: ExecutionOutcome,
        finished_at: Timestamp,
        ran_for: Option<Duration>,
    ) -> Self {
        ExecutionRecord {
            step,
            tenant,
            event_id: None,
            topic: None,
            trace_id,
            causation_id: None,
            attempt: 1,
            outcome,
            finished_at,
            ran_for_micros: ran_for.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        }
    }
}

/// The last executions, oldest first, at most `capacity`.
#[derive(Debug)]
pub(crate) struct Journal {
    capacity: usize,
    entries: Mutex<VecDeque<ExecutionRecord>>,
}

impl Journal {
    pub(crate) fn new(capacity: usize) -> Self {
        Journal {
            capacity,
            entries: Mutex::new(VecDeque::with_capacity(capacity)),
        }
    }

    /// Whether records are kept at all.
    pub(crate) fn enabled(&self) -> bool {
        self.capacity > 0
    }

    pub(crate) fn extend(&self, records: Vec<ExecutionRecord>) {
        if records.is_empty() || self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let skip = records.len().saturating_sub(self.capacity);
        for record in records.into_iter().skip(skip) {
            if entries.len() == self.capacity {
                entries.pop_front();
            }
            entries.push_back(record);
        }
    }

    /// Up to `limit` records, newest first.
    pub(crate) fn recent(&self, limit: usize) -> Vec<ExecutionRecord> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.iter().rev().take(limit).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{ExecutionOutcome, ExecutionRecord, Journal};
    use crate::event::{StepName, TenantId, TraceId};
    use crate::time::Timestamp;

    fn record(n: i64) -> ExecutionRecord {
        ExecutionRecord::new(
            StepName::new("s").unwrap(),
            TenantId::new("t").unwrap(),
            TraceId::new(),
            ExecutionOutcome::Committed,
            Timestamp::from_millis(n),
            None,
        )
    }

    #[test]
    fn the_journal_keeps_the_newest_up_to_its_capacity() {
        let journal = Journal::new(3);
        journal.extend((0..2).map(record).collect());
        journal.extend((2..7).map(record).collect());
        let at: Vec<i64> = journal
            .recent(10)
            .iter()
            .map(|r| r.finished_at.as_millis())
            .collect();
        assert_eq!(at, vec![6, 5, 4]);
        assert_eq!(journal.recent(1).len(), 1);
        let off = Journal::new(0);
        off.extend(vec![record(1)]);
        assert!(off.recent(10).is_empty() && !off.enabled());
    }
}
