//! Group commit: the batches of completions a process hands in at about the
//! same time commit together, in one transaction.
//!
//! Each [`Store::complete`](crate::backend::Store::complete) call becomes a
//! request on a queue. A few committer tasks on the backend's runtime take
//! turns at it: one takes the oldest request and every request already waiting
//! behind it (up to [`GROUP_LIMIT`] completions), and applies them in one
//! transaction as if they came one after another, which is a valid order since
//! they were in flight together. A transaction then pays its round trips and
//! its commit's flush once for many batches. The queue is never held back to
//! fill a group: a request alone commits at once.
//!
//! If a group's transaction fails, nothing of it applied, and each request of
//! the group is tried again alone, so one request that the database refuses
//! fails only its own caller.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, Mutex};

use super::completions;
use super::error::store_error;
use super::notify::Notifier;
use crate::backend::{Completion, Outcome, StoreError};

/// The most completions one group commits (a single larger request still
/// commits whole).
const GROUP_LIMIT: usize = 4_096;

/// How many transactions of grouped completions run at once.
const COMMITTERS: usize = 2;

type Answer = Result<Vec<Outcome>, StoreError>;

/// One `complete` call waiting for its outcomes.
struct Request {
    batch: Vec<Completion>,
    reply: oneshot::Sender<Answer>,
}

/// The sending end of the queue; the committers stop when it is dropped.
pub(super) struct GroupCommit {
    queue: mpsc::UnboundedSender<Request>,
}

impl GroupCommit {
    /// Starts the committers on `runtime` (the backend's own).
    pub(super) fn start(
        runtime: &Handle,
        pool: PgPool,
        schema: Arc<str>,
        notifier: Arc<Notifier>,
    ) -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        let receiver = Arc::new(Mutex::new(receiver));
        let target = Arc::new(Target {
            pool,
            schema,
            notifier,
        });
        for _ in 0..COMMITTERS {
            runtime.spawn(committer(target.clone(), receiver.clone()));
        }
        GroupCommit { queue }
    }

    /// Queues `batch`; the future answers once its group has committed (or
    /// failed). It must run on the backend's runtime.
    pub(super) fn submit(
        &self,
        batch: Vec<Completion>,
    ) -> impl std::future::Future<Output = Answer> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let queued = self.queue.send(Request { batch, reply });
        async move {
            if queued.is_err() {
                return Err(stopped());
            }
            answer.await.unwrap_or_else(|_| Err(stopped()))
        }
    }
}

fn stopped() -> StoreError {
    StoreError::Backend("the PostgreSQL backend's committers have stopped".into())
}

/// Where the committers commit.
struct Target {
    pool: PgPool,
    schema: Arc<str>,
    notifier: Arc<Notifier>,
}

/// Takes groups off the queue and commits them until the queue closes.
async fn committer(target: Arc<Target>, receiver: Arc<Mutex<mpsc::UnboundedReceiver<Request>>>) {
    loop {
        let group = {
            // Held while waiting, so one committer waits for the next request
            // and the other waits for its turn to.
            let mut queue = receiver.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut size = first.batch.len();
            let mut group = vec![first];
            while size < GROUP_LIMIT {
                match queue.try_recv() {
                    Ok(next) => {
                        size += next.batch.len();
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }
            group
        };
        commit_group(&target, group).await;
    }
}

/// Commits a group in one transaction and answers each request with its own
/// outcomes; if that fails and the group holds more than one request, commits
/// each request alone.
async fn commit_group(target: &Target, group: Vec<Request>) {
    let all: Vec<&Completion> = group.iter().flat_map(|r| &r.batch).collect();
    let answer = commit(target, &all).await;
    drop(all);
    match answer {
        Ok(outcomes) => {
            let mut outcomes = outcomes.into_iter();
            for request in group {
                let own = outcomes.by_ref().take(request.batch.len()).collect();
                let _ = request.reply.send(Ok(own));
            }
        }
        Err(err) if group.len() == 1 => {
            if let Some(request) = group.into_iter().next() {
                let _ = request.reply.send(Err(err));
            }
        }
        Err(err) => {
            tracing::debug!(error = %err, requests = group.len(), "a group commit failed; committing its requests one by one");
            for request in group {
                let own: Vec<&Completion> = request.batch.iter().collect();
                let answer = commit(target, &own).await;
                drop(own);
                let _ = request.reply.send(answer);
            }
        }
    }
}

/// Applies `batch` in one transaction; if it published deliveries, other
/// processes are notified at its commit and this backend's engines after it.
async fn commit(target: &Target, batch: &[&Completion]) -> Answer {
    let mut tx = target.pool.begin().await.map_err(store_error)?;
    let wake = target.notifier.wake_call();
    let applied = completions::complete(&mut tx, &target.schema, batch, wake).await?;
    tx.commit().await.map_err(store_error)?;
    if applied.published {
        target.notifier.wake_local();
    }
    Ok(applied.outcomes)
}
