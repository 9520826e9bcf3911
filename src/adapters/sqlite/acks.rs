//! The last stage of group commit: answering callers once their group is durable.
//!
//! With [`Durability::Full`](super::Durability::Full), SQLite would sync the
//! write-ahead log inside `COMMIT`, and the writer would wait for the disk before
//! it could start the next group. Instead the writer commits without the sync
//! (`synchronous = NORMAL`) and hands the group's answers here ([`SyncOn`]):
//! - while more work waits for the writer, a sync thread syncs the log and only
//!   then answers, and the writer already runs the next group. One sync covers
//!   every group committed before it began, so a slow sync is shared by as many
//!   groups as queue up behind it;
//! - when nothing waits and no sync is under way, the leader releases the writer
//!   and syncs on its own thread: a hand-over would only add a thread wake-up;
//! - on a current-thread runtime the leader always syncs inline: a reply from
//!   another thread would let tokio's paused test clock jump meanwhile.
//!
//! Nothing leaves the process before it is on disk:
//! - every caller (a completion, a publish, a claim) hears back only once the
//!   group that holds its change, and so every group before it, is synced;
//! - a read may find a committed change that is not synced yet (SQLite makes a
//!   commit visible at once, and the state cache records it at once). Such a
//!   read waits for the [`DurableMark`] to pass the group before it returns: a
//!   cache entry carries the group that wrote it, a key read from the file asks
//!   `Unsynced` (`unsynced.rs`) for the last unsynced group that changed it, and
//!   a scan waits for every group whose `COMMIT` has started.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::{oneshot, watch};

use super::ops::Reply;
use crate::backend::StoreError;

/// One caller's answer and where it goes.
pub(super) type Answer = (
    oneshot::Sender<Result<Reply, StoreError>>,
    Result<Reply, StoreError>,
);

/// Syncs the write-ahead log (`File::sync_data` on it, in the backend).
pub(super) type SyncLog = Box<dyn FnMut() -> io::Result<()> + Send>;

/// A group the writer is done with.
#[derive(Debug)]
pub(super) struct Settled {
    /// The group's number, if it ran a transaction (0: it changed nothing, and
    /// its answers may go at once).
    pub(super) seq: u64,
    pub(super) answers: Vec<Answer>,
}

/// Answers groups once durable; see the module docs.
pub(super) struct Acks {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    /// The last group known durable; readers hold its [`DurableMark`].
    durable: watch::Sender<u64>,
    /// `None`: SQLite's own commit is as durable as asked (`Durability::Normal`).
    sync_log: Option<Mutex<SyncLog>>,
    queue: Mutex<Queue>,
    wake: Condvar,
}

#[derive(Default)]
struct Queue {
    groups: Vec<Settled>,
    /// Syncs under way, on the sync thread or on a leader's thread.
    syncing: usize,
    stop: bool,
}

/// Where a group's sync runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SyncOn {
    /// The caller's thread, now: a current-thread runtime, where a reply from
    /// another thread would let tokio's paused clock jump.
    ThisThread,
    /// The sync thread, while the caller's thread goes on with the writer.
    SyncThread,
    /// The caller's thread if no sync is under way or waiting (no thread
    /// hand-off on a quiet system, where it would only add latency), else the
    /// sync thread, which will share one sync among the waiting groups.
    ThisThreadIfIdle,
}

impl std::fmt::Debug for Acks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acks")
            .field("durable", &*self.shared.durable.borrow())
            .field("syncs", &self.shared.sync_log.is_some())
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each holder makes whole pushes and takes: a poisoned lock is still sound.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Acks {
    /// Answers at once: each commit is as durable as it will get. `durable`
    /// advances the [`DurableMark`] it came with.
    pub(super) fn immediate(durable: watch::Sender<u64>) -> Self {
        Acks {
            shared: Arc::new(Shared::new(None, durable)),
            thread: None,
        }
    }

    /// Syncs the log with `sync_log` before answering, on a thread of its own.
    pub(super) fn synced(sync_log: SyncLog, durable: watch::Sender<u64>) -> io::Result<Self> {
        let shared = Arc::new(Shared::new(Some(Mutex::new(sync_log)), durable));
        let thread = std::thread::Builder::new()
            .name("flowline-sqlite-sync".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || shared.run()
            })?;
        Ok(Acks {
            shared,
            thread: Some(thread),
        })
    }

    /// Answers a group's callers once it is durable: at once if it changed
    /// nothing or nothing needs syncing, else after a sync where `on` says.
    pub(super) fn settle(&self, group: Settled, on: SyncOn) {
        let Some(sync_log) = &self.shared.sync_log else {
            self.shared.advance(group.seq);
            answer(group.answers);
            return;
        };
        if group.seq == 0 {
            answer(group.answers);
            return;
        }
        {
            let mut queue = lock(&self.shared.queue);
            let here = match on {
                SyncOn::ThisThread => true,
                SyncOn::SyncThread => false,
                SyncOn::ThisThreadIfIdle => queue.groups.is_empty() && queue.syncing == 0,
            };
            if !here {
                queue.groups.push(group);
                self.shared.wake.notify_one();
                return;
            }
            queue.syncing += 1;
        }
        let synced = (lock(sync_log))();
        lock(&self.shared.queue).syncing -= 1;
        self.shared.finish(vec![group], synced);
    }
}

impl Drop for Acks {
    fn drop(&mut self) {
        lock(&self.shared.queue).stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            // The thread answers what is queued before it stops.
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn new(sync_log: Option<Mutex<SyncLog>>, durable: watch::Sender<u64>) -> Self {
        Shared {
            durable,
            sync_log,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        }
    }

    fn run(&self) {
        let Some(sync_log) = &self.sync_log else {
            return;
        };
        loop {
            let (groups, stop) = {
                let mut queue = lock(&self.queue);
                while queue.groups.is_empty() && !queue.stop {
                    queue = self.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
                }
                if !queue.groups.is_empty() {
                    queue.syncing += 1;
                }
                (std::mem::take(&mut queue.groups), queue.stop)
            };
            if !groups.is_empty() {
                let synced = (lock(sync_log))();
                lock(&self.queue).syncing -= 1;
                self.finish(groups, synced);
            }
            if stop {
                return;
            }
        }
    }

    /// Marks groups durable (or failed) and answers their callers.
    fn finish(&self, groups: Vec<Settled>, synced: io::Result<()>) {
        let last = groups.iter().map(|g| g.seq).max().unwrap_or(0);
        match synced {
            Ok(()) => {
                self.advance(last);
                for group in groups {
                    answer(group.answers);
                }
            }
            Err(err) => {
                // The groups are committed but may not be on disk: callers are
                // told their change failed, and a crash may indeed undo it.
                // Readers are let go; there is nothing better to wait for.
                tracing::error!(error = %err, "syncing the SQLite log failed");
                self.advance(last);
                for group in groups {
                    answer(group.answers.into_iter().map(|(sender, _)| {
                        (
                            sender,
                            Err(StoreError::Backend(
                                format!("the commit could not be synced to disk: {err}").into(),
                            )),
                        )
                    }));
                }
            }
        }
    }

    fn advance(&self, seq: u64) {
        self.durable.send_if_modified(|durable| {
            let newer = seq > *durable;
            if newer {
                *durable = seq;
            }
            newer
        });
    }
}

fn answer(answers: impl IntoIterator<Item = Answer>) {
    for (sender, answer) in answers {
        // The caller may have given up waiting; its answer is simply dropped.
        let _ = sender.send(answer);
    }
}

/// How far commits are durable, for readers.
#[derive(Clone, Debug)]
pub(super) struct DurableMark {
    durable: watch::Receiver<u64>,
    committing: Arc<AtomicU64>,
}

impl DurableMark {
    /// A mark at 0, and the sender that advances it (for [`Acks`]).
    pub(super) fn new() -> (watch::Sender<u64>, DurableMark) {
        let (sender, durable) = watch::channel(0);
        let mark = DurableMark {
            durable,
            committing: Arc::default(),
        };
        (sender, mark)
    }

    /// The last group known durable.
    pub(super) fn current(&self) -> u64 {
        *self.durable.borrow()
    }

    /// The writer's record that group `seq` is about to `COMMIT`: from then on
    /// a read may see it.
    pub(super) fn committing(&self, seq: u64) {
        self.committing.store(seq, Ordering::Release);
    }

    /// Waits until group `seq` is durable.
    pub(super) async fn reached(&self, seq: u64) {
        if *self.durable.borrow() >= seq {
            return;
        }
        let mut durable = self.durable.clone();
        // Err: the backend is gone, and nothing will ever be more durable.
        let _ = durable.wait_for(|d| *d >= seq).await;
    }

    /// Waits until every group a read that has just finished could have seen
    /// is durable.
    pub(super) async fn covers_finished_reads(&self) {
        self.reached(self.committing.load(Ordering::Acquire)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn group(seq: u64) -> (Settled, oneshot::Receiver<Result<Reply, StoreError>>) {
        let (sender, receiver) = oneshot::channel();
        (
            Settled {
                seq,
                answers: vec![(sender, Ok(Reply::Done))],
            },
            receiver,
        )
    }

    fn synced(sync: SyncLog) -> (Acks, DurableMark) {
        let (durable, mark) = DurableMark::new();
        (Acks::synced(sync, durable).expect("thread"), mark)
    }

    /// Hands groups to the sync thread; their answers arrive on the receivers.
    fn hand_over(
        acks: &Acks,
        seqs: impl IntoIterator<Item = u64>,
    ) -> Vec<oneshot::Receiver<Result<Reply, StoreError>>> {
        seqs.into_iter()
            .map(|seq| {
                let (g, answer) = group(seq);
                acks.settle(g, SyncOn::SyncThread);
                answer
            })
            .collect()
    }

    /// A sync that waits for the test's go-ahead, and reports each call.
    fn gated_sync() -> (SyncLog, mpsc::Sender<io::Result<()>>, mpsc::Receiver<()>) {
        let (go, gate) = mpsc::channel::<io::Result<()>>();
        let (called, calls) = mpsc::channel();
        let sync: SyncLog = Box::new(move || {
            let _ = called.send(());
            gate.recv().unwrap_or(Ok(()))
        });
        (sync, go, calls)
    }

    #[test]
    fn callers_hear_back_only_after_the_sync_that_covers_their_group() {
        let (sync, go, calls) = gated_sync();
        let (acks, mark) = synced(sync);
        let (first, mut first_answer) = group(1);
        acks.settle(first, SyncOn::SyncThread);
        calls
            .recv_timeout(Duration::from_secs(5))
            .expect("a sync started");
        assert!(first_answer.try_recv().is_err(), "answered before the sync");
        assert_eq!(mark.current(), 0);

        go.send(Ok(())).expect("go");
        let answer = first_answer.blocking_recv().expect("answered");
        assert!(matches!(answer, Ok(Reply::Done)));
        assert_eq!(mark.current(), 1);
    }

    #[test]
    fn groups_committed_during_a_sync_share_the_next_one() {
        let (sync, go, calls) = gated_sync();
        let (acks, mark) = synced(sync);
        let (first, first_answer) = group(1);
        acks.settle(first, SyncOn::SyncThread);
        calls
            .recv_timeout(Duration::from_secs(5))
            .expect("first sync");
        let waiting = hand_over(&acks, 2..=4);
        go.send(Ok(())).expect("go");
        first_answer
            .blocking_recv()
            .expect("first answered")
            .expect("ok");
        calls
            .recv_timeout(Duration::from_secs(5))
            .expect("second sync");
        go.send(Ok(())).expect("go");
        for answer in waiting {
            answer.blocking_recv().expect("answered").expect("ok");
        }
        assert!(calls.try_recv().is_err(), "one sync for the three groups");
        assert_eq!(mark.current(), 4);
    }

    #[test]
    fn a_failed_sync_fails_its_callers_and_lets_readers_go() {
        let (sync, go, _calls) = gated_sync();
        let (acks, mark) = synced(sync);
        let (g, answer) = group(7);
        acks.settle(g, SyncOn::SyncThread);
        go.send(Err(io::Error::other("disk gone"))).expect("go");
        let err = answer.blocking_recv().expect("answered").unwrap_err();
        assert!(err.to_string().contains("disk gone"), "{err}");
        assert_eq!(mark.current(), 7);
    }

    #[test]
    fn inline_settling_syncs_before_it_returns() {
        let calls = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&calls);
        let (acks, mark) = synced(Box::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }));
        let (g, mut answer) = group(3);
        acks.settle(g, SyncOn::ThisThread);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(matches!(answer.try_recv(), Ok(Ok(Reply::Done))));
        assert_eq!(mark.current(), 3);
    }

    #[test]
    fn a_quiet_system_syncs_on_the_leader_s_thread_and_a_busy_one_hands_over() {
        let synced_on = Arc::new(Mutex::new(Vec::new()));
        let (go, gate) = mpsc::channel::<()>();
        let (called, calls) = mpsc::channel();
        let record = Arc::clone(&synced_on);
        let (acks, mark) = synced(Box::new(move || {
            lock(&record).push(std::thread::current().id());
            let _ = called.send(());
            let _ = gate.recv();
            Ok(())
        }));
        let here = std::thread::current().id();

        // Quiet: the leader's own thread syncs, and the answer is there on return.
        go.send(()).expect("go");
        let (g, mut answer) = group(1);
        acks.settle(g, SyncOn::ThisThreadIfIdle);
        assert!(matches!(answer.try_recv(), Ok(Ok(Reply::Done))));
        assert_eq!(lock(&synced_on).as_slice(), [here]);

        // Busy: the sync thread is mid-sync, so the next group waits for it.
        let (g, _first) = group(2);
        acks.settle(g, SyncOn::SyncThread);
        calls
            .recv_timeout(Duration::from_secs(5))
            .expect("quiet sync");
        calls
            .recv_timeout(Duration::from_secs(5))
            .expect("thread sync");
        let (g, third) = group(3);
        acks.settle(g, SyncOn::ThisThreadIfIdle);
        assert_eq!(lock(&synced_on).len(), 2, "group 3 did not sync here");
        go.send(()).expect("go");
        calls
            .recv_timeout(Duration::from_secs(5))
            .expect("group 3's sync");
        go.send(()).expect("go");
        third.blocking_recv().expect("answered").expect("ok");
        assert!(lock(&synced_on)[1..].iter().all(|id| *id != here));
        assert_eq!(mark.current(), 3);
    }

    #[test]
    fn a_group_that_changed_nothing_is_answered_without_a_sync() {
        let (sync, _go, calls) = gated_sync();
        let (acks, _mark) = synced(sync);
        let (g, mut answer) = group(0);
        acks.settle(g, SyncOn::SyncThread);
        assert!(matches!(answer.try_recv(), Ok(Ok(Reply::Done))));
        assert!(calls.try_recv().is_err());
    }

    #[test]
    fn dropping_answers_what_is_queued() {
        let (acks, _mark) = synced(Box::new(|| Ok(())));
        let answers = hand_over(&acks, 1..=3);
        drop(acks);
        for answer in answers {
            answer.blocking_recv().expect("answered").expect("ok");
        }
    }

    #[tokio::test]
    async fn a_reader_waits_for_the_group_it_saw() {
        let (sync, go, calls) = gated_sync();
        let (acks, mark) = synced(sync);
        mark.committing(5);
        let (g, _answer) = group(5);
        acks.settle(g, SyncOn::SyncThread);
        tokio::task::spawn_blocking(move || calls.recv_timeout(Duration::from_secs(5)))
            .await
            .expect("join")
            .expect("a sync started");
        let waiting = tokio::spawn(async move { mark.covers_finished_reads().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the read went on before the sync");
        go.send(Ok(())).expect("go");
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("let go after the sync")
            .expect("join");
    }
}
