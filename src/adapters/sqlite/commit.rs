//! Group commit: many callers, one writer, one transaction per group.
//!
//! Each caller queues its operation and then tries to become the leader. The
//! leader takes everything queued, runs it as one transaction on the writer
//! (`Writer::run`), and repeats until the queue is empty; whoever finds the writer
//! busy simply waits for its answer, since the leader is bound to see its
//! operation. Under load, operations that arrive during one transaction form the
//! next one. Each group's answers go out through `Acks` (`acks.rs`) once the
//! group is durable, which with `Durability::Full` happens on a sync thread
//! while the leader runs the next group.
//!
//! There is no writer thread: the leader does the work on its own thread. On a
//! multi-thread tokio runtime that happens inside `block_in_place`, so the
//! worker's other tasks move elsewhere meanwhile; on a current-thread runtime it
//! runs inline (a transaction takes microseconds to a few milliseconds), which
//! also keeps tokio's paused test clock exact: the runtime never looks idle while
//! a write is under way.

use std::sync::{Mutex, MutexGuard, TryLockError};

use tokio::sync::oneshot;

use super::acks::{Acks, SyncOn};
use super::ops::{Job, Op, Reply};
use super::writer::Writer;
use crate::backend::StoreError;

#[derive(Debug)]
pub(super) struct GroupCommit {
    queue: Mutex<Vec<Job>>,
    writer: Mutex<Writer>,
    /// Answers each group's callers once it is durable.
    acks: Acks,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in a holder cannot leave the queue half-updated (pushes and takes
    // are single calls), so a poisoned lock is still usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl GroupCommit {
    pub(super) fn new(writer: Writer, acks: Acks) -> Self {
        GroupCommit {
            queue: Mutex::new(Vec::new()),
            writer: Mutex::new(writer),
            acks,
        }
    }

    /// Queues an operation and waits for its answer, leading a group if no one is.
    pub(super) async fn submit(&self, op: Op) -> Result<Reply, StoreError> {
        let (reply, answer) = oneshot::channel();
        lock(&self.queue).push(Job { op, reply });
        self.lead();
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Backend(
                "the SQLite writer dropped the operation".into(),
            ))
        })
    }

    /// Runs queued groups until the queue is empty, unless another caller leads.
    fn lead(&self) {
        loop {
            let mut writer = match self.writer.try_lock() {
                Ok(writer) => writer,
                // The leader takes our job with its next group.
                Err(TryLockError::WouldBlock) => return,
                // `Writer::run` undoes a transaction it could not finish, so the
                // writer of a panicked leader is consistent.
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            };
            let inline = !on_multi_thread_runtime();
            let mut last = None;
            blocking(inline, || loop {
                let jobs = std::mem::take(&mut *lock(&self.queue));
                if jobs.is_empty() {
                    break;
                }
                // More work came while the last group ran: its sync goes to the
                // sync thread, and this thread runs the next group.
                if let Some(settled) = last.take() {
                    self.acks
                        .settle(settled, settle_on(inline, SyncOn::SyncThread));
                }
                let _span = tracing::trace_span!("sqlite.group_commit", ops = jobs.len()).entered();
                last = Some(writer.run(jobs));
            });
            drop(writer);
            // A job queued after our last look, by a caller that found the writer
            // taken, is ours to run: that caller is not going to.
            let more = !lock(&self.queue).is_empty();
            if let Some(settled) = last {
                // Nothing waits for the writer: this thread may as well sync,
                // with the writer free for whoever comes meanwhile.
                let on = if more {
                    SyncOn::SyncThread
                } else {
                    SyncOn::ThisThreadIfIdle
                };
                blocking(inline, || self.acks.settle(settled, settle_on(inline, on)));
            }
            if !more && lock(&self.queue).is_empty() {
                return;
            }
        }
    }
}

/// Where a group's sync runs: on a current-thread runtime always inline (a
/// reply from another thread would let tokio's paused clock jump).
fn settle_on(inline: bool, on: SyncOn) -> SyncOn {
    if inline {
        SyncOn::ThisThread
    } else {
        on
    }
}

/// Runs blocking work without stalling a multi-thread runtime's other tasks.
///
/// `block_in_place` is allowed everywhere a multi-thread runtime's handle is
/// current (its workers, its `block_on`, `Handle::block_on`, blocking threads);
/// elsewhere (a current-thread runtime, no runtime) the caller passes `inline`
/// and the work runs as it is.
/// Inline everywhere measured a little faster on the exec benchmark and no faster
/// on the chain; blocking in place is kept for the sake of the host's other tasks,
/// which would otherwise wait behind a commit's fsync.
fn blocking<R>(inline: bool, work: impl FnOnce() -> R) -> R {
    if inline {
        work()
    } else {
        tokio::task::block_in_place(work)
    }
}

/// Whether the current thread belongs to a multi-thread tokio runtime, where
/// `block_in_place` is allowed and another thread may answer callers.
fn on_multi_thread_runtime() -> bool {
    use tokio::runtime::{Handle, RuntimeFlavor};
    Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread)
}
