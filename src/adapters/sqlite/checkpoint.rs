//! Checkpoints on a thread of their own, so that the writer does not wait for them.
//!
//! A checkpoint copies the write-ahead log's pages into the database file and
//! syncs both. SQLite runs one automatically at the end of the commit that takes
//! the log past 1,000 pages, on the committing connection: here the one writer,
//! while every caller of the next group waits. Syncing the few MiB a checkpoint
//! writes takes milliseconds to tens of milliseconds on an ordinary disk, and
//! with [`Durability::Normal`](super::Durability::Normal) it is almost all the
//! syncing there is.
//!
//! So the writer's automatic checkpoint is replaced by a hook that, each time
//! the log has grown by [`BACKGROUND_AFTER_FRAMES`] past what was last copied,
//! wakes a thread with a connection of its own to run a `PASSIVE` checkpoint: it copies what is committed, alongside the
//! writer, which goes on appending. The log starts over from its beginning when
//! the writer finds every frame copied; if the writer never pauses long enough
//! for that, the log grows, and past [`WRITER_AFTER_FRAMES`] the writer runs a
//! checkpoint itself, which has only what the thread has not yet copied left to do.

use std::ffi::c_int;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;
use rusqlite::{Connection, MAIN_DB};

/// Log frames (pages) after which the thread checkpoints: SQLite's own
/// automatic threshold.
pub(super) const BACKGROUND_AFTER_FRAMES: c_int = 1_000;

/// Log frames after which the writer checkpoints itself (16 MiB of 4 KiB
/// pages). By then the thread has copied most of them, so the writer's share
/// is small; and once every frame is copied, the log starts over.
pub(super) const WRITER_AFTER_FRAMES: c_int = 4_000;

/// The checkpoint thread; stopped and joined when dropped.
#[derive(Debug)]
pub(super) struct Checkpointer {
    signal: Arc<Signal>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Signal {
    wake: Mutex<Wake>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Wake {
    pending: bool,
    stop: bool,
    /// Frames of the log that the thread's last checkpoint had copied: the
    /// next one waits for another [`BACKGROUND_AFTER_FRAMES`] past them, so
    /// that small commits do not each bring a checkpoint (and its two syncs).
    copied: c_int,
}

impl Signal {
    fn lock(&self) -> MutexGuard<'_, Wake> {
        // Two flags, each set by a single store: a poisoned lock holds sound values.
        self.wake.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Checkpointer {
    /// Starts the thread on `conn`, a read-write connection to the file with
    /// the writer's `synchronous` setting (a checkpoint syncs accordingly).
    pub(super) fn start(conn: Connection) -> std::io::Result<Self> {
        let signal = Arc::new(Signal::default());
        let thread = std::thread::Builder::new()
            .name("flowline-sqlite-checkpoint".into())
            .spawn({
                let signal = Arc::clone(&signal);
                move || run(&conn, &signal)
            })?;
        Ok(Checkpointer {
            signal,
            thread: Some(thread),
        })
    }

    /// The writer's WAL hook: called after each commit with the frames now in
    /// the log.
    pub(super) fn hook(
        &self,
    ) -> impl FnMut(&mut Wal, c_int) -> rusqlite::Result<()> + Send + 'static {
        let signal = Arc::clone(&self.signal);
        move |wal, frames| {
            if frames >= WRITER_AFTER_FRAMES {
                // The commit has happened whatever this returns; an error here
                // would only make the statement report one. A busy checkpoint
                // (the thread is mid-way) is simply tried after the next commit.
                if let Err(err) = wal.checkpoint_v2(CheckpointMode::PASSIVE) {
                    tracing::debug!(error = %err, frames, "the writer's checkpoint did not run");
                }
            } else if frames >= BACKGROUND_AFTER_FRAMES {
                let mut wake = signal.lock();
                if frames < wake.copied {
                    // The log has started over since.
                    wake.copied = 0;
                }
                if frames - wake.copied >= BACKGROUND_AFTER_FRAMES && !wake.pending {
                    wake.pending = true;
                    signal.changed.notify_one();
                }
            }
            Ok(())
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.signal.lock().stop = true;
        self.signal.changed.notify_one();
        if let Some(thread) = self.thread.take() {
            // The thread never panics on purpose; if it did, there is nothing to
            // recover here, and the file is consistent either way.
            let _ = thread.join();
        }
    }
}

fn run(conn: &Connection, signal: &Signal) {
    loop {
        {
            let mut wake = signal.lock();
            while !wake.pending && !wake.stop {
                wake = signal.changed.wait(wake).unwrap_or_else(|p| p.into_inner());
            }
            if wake.stop {
                return;
            }
            wake.pending = false;
        }
        match conn.wal_checkpoint_v2(Some(MAIN_DB), CheckpointMode::PASSIVE) {
            Ok((frames, copied)) => {
                signal.lock().copied = copied;
                tracing::trace!(frames, copied, "background checkpoint");
            }
            // Busy: the writer's own checkpoint is running; the next commit wakes us again.
            Err(err) => tracing::debug!(error = %err, "background checkpoint did not run"),
        }
    }
}
