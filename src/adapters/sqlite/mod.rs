//! The SQLite backend: state and queues in one file, durable, no server.
//!
//! This is flowline's embedded default. Everything a step execution changes
//! (state writes, the deliveries it emits, the acknowledgement, retry or dead
//! letter of its input) commits in one SQLite transaction, and many executions
//! share each transaction (group commit), so a commit costs one fsync for a whole
//! batch rather than one per event.
//!
//! ```no_run
//! # async fn demo(flow: flowline::Flow) -> Result<(), Box<dyn std::error::Error>> {
//! use flowline::{Engine, SqliteBackend};
//!
//! let backend = SqliteBackend::open("orders.db")?;
//! let engine = Engine::builder(flow).backend(backend).start().await?;
//! # let _ = engine; Ok(()) }
//! ```
//!
//! # One process per file
//!
//! A file is owned by one process at a time: opening takes an exclusive lock on
//! `<file>.lock` (beside the file a symbolic link points to, so every name of
//! one file takes one lock), and a second opener gets [`SqliteError::InUse`]. Engines in the
//! owning process share it through clones of one [`SqliteBackend`]. Because the
//! owner is alone, the shape of the queue (which deliveries are ready, delayed,
//! leased, held back by a FIFO group) lives in memory and is rebuilt from the file
//! on open; claims cost the same with ten or a million deliveries waiting. When a
//! process dies, the kernel drops its lock, and the next owner finds the deliveries
//! that were leased due again, with the attempt they used counted. For many
//! processes on many machines, use the PostgreSQL backend.
//!
//! # Durability
//!
//! [`Durability::Full`] (the default) syncs the write-ahead log after every group
//! commit, before anyone hears of it: whatever `complete`, `publish` or a claim
//! answered survives a power cut. The sync runs on a thread of its own while the
//! writer already commits the next group, and one sync covers every group
//! committed before it began. Reads wait for it too: a read never returns a
//! change that is not yet on disk. [`Durability::Normal`] syncs only at
//! checkpoints: it survives the process crashing, but a power cut may lose the
//! last transactions. Group commit makes `Full` cheap enough to keep.
//!
//! Checkpoints (copying the log into the database file) run on a thread of
//! their own as well, so the writer rarely waits for the disk.
//!
//! # What the file holds
//!
//! | table | rows |
//! |---|---|
//! | `state` | tenant state: `(tenant, key)` to value and version |
//! | `deliveries` | unfinished deliveries, each with its event; deleted when finished |
//! | `dead_letters` | deliveries given up on, until replayed, purged or past retention |
//! | `cron_fires` | one row per (schedule, instant) fired, for a week behind the newest |
//!
//! Finished work leaves nothing behind: the commit that finishes a delivery
//! deletes its row. Dead letters are kept for [`SqliteOptions::dead_letter_retention`]
//! (30 days by default). The schema version is in `PRAGMA user_version`; opening
//! an older file migrates it.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use crate::backend::{
    ClaimBatch, ClaimRequest, LeaseRef, NewDelivery, QueueDepth, StepWork, Transport,
};
use crate::backend::{
    Completion, DeadLetter, DeadLetterQuery, FailureKind, Outcome, Store, StoreError, Versioned,
};
use crate::event::{Payload, StepName, TenantId};
use crate::time::Timestamp;

mod acks;
mod cache;
mod checkpoint;
mod commit;
mod completions;
mod dead_letters;
mod deliveries;
mod error;
mod index;
mod keymap;
mod open;
mod ops;
mod options;
mod readers;
mod rows;
mod schema;
mod unsynced;
mod writer;

pub use error::SqliteError;
pub use options::{Durability, SqliteOptions};

use cache::Lookup;
use open::Shared;
use ops::{Change, Op, Reply};
use rows::{id_from, read_envelope, step_name, store_error, EVENT_COLUMNS};

/// The SQLite storage and transport backend. Clones share one file and one writer.
#[derive(Clone)]
pub struct SqliteBackend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl SqliteBackend {
    /// Opens (or creates) a database file with the default options.
    ///
    /// # Errors
    /// [`SqliteError`]: not a flowline file, a newer schema, corrupt, read-only,
    /// or in use by another process.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SqliteError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens (or creates) a database file.
    ///
    /// Opening reads every unfinished delivery to rebuild the queue in memory;
    /// with a large backlog call it from `spawn_blocking` rather than a runtime
    /// thread.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, SqliteError> {
        Ok(SqliteBackend {
            shared: Arc::new(Shared::open(path.as_ref(), options)?),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Runs `read` on a read connection, then waits until whatever it may have
    /// seen is durable: a commit is visible before its log is synced (`acks.rs`).
    async fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let found = self.shared.readers.with(read)?;
        self.shared.durable.covers_finished_reads().await;
        Ok(found)
    }

    async fn submit(&self, op: Op) -> Result<Reply, StoreError> {
        self.shared.commit.submit(op).await
    }
}

impl SqliteBackend {
    /// Keys of `tenant` that start with `prefix`, in order, from the first
    /// (or after `after`), at most `limit`.
    async fn scan_from(
        &self,
        tenant: &TenantId,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        let (sql, from) = match after {
            Some(after) if after >= prefix => (
                "SELECT key, value, version FROM state WHERE tenant = ?1 AND key > ?2 ORDER BY key",
                after,
            ),
            _ => (
                "SELECT key, value, version FROM state WHERE tenant = ?1 AND key >= ?2 ORDER BY key",
                prefix,
            ),
        };
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(sql).map_err(store_error)?;
            let mut rows = stmt
                .query(params![tenant.as_str(), from])
                .map_err(store_error)?;
            let mut found = Vec::new();
            while found.len() < limit {
                let Some(row) = rows.next().map_err(store_error)? else {
                    break;
                };
                let key: String = row.get(0).map_err(store_error)?;
                if !key.starts_with(prefix) {
                    break;
                }
                let value: Vec<u8> = row.get(1).map_err(store_error)?;
                let version: i64 = row.get(2).map_err(store_error)?;
                found.push((
                    key,
                    Versioned {
                        value: value.into(),
                        version: version as u64,
                    },
                ));
            }
            Ok(found)
        })
        .await
    }
}

fn dead_letter_from(row: &rusqlite::Row<'_>) -> Result<DeadLetter, StoreError> {
    let get_i64 = |i: usize| -> Result<i64, StoreError> { row.get(i).map_err(store_error) };
    Ok(DeadLetter::new(
        id_from(get_i64(0)?)?,
        step_name(row.get(1).map_err(store_error)?)?,
        Arc::new(read_envelope(row, 8, None)?),
        row.get::<_, Option<String>>(2)
            .map_err(store_error)?
            .map(Arc::from),
        u32::try_from(get_i64(3)?).unwrap_or(u32::MAX),
        Timestamp::from_millis(get_i64(4)?),
        Timestamp::from_millis(get_i64(5)?),
        row.get(6).map_err(store_error)?,
    )
    .with_kind(FailureKind::from_stored(
        &row.get::<_, String>(7).map_err(store_error)?,
    )))
}

fn unexpected(reply: Reply) -> StoreError {
    StoreError::Backend(format!("the SQLite writer answered out of turn: {reply:?}").into())
}

#[async_trait]
impl Store for SqliteBackend {
    async fn get(&self, tenant: &TenantId, key: &str) -> Result<Option<Versioned>, StoreError> {
        let ticket = match self.shared.cache.get(tenant.as_str(), key) {
            Lookup::Hit(found, group) => {
                self.shared.durable.reached(group).await;
                return Ok(found);
            }
            Lookup::Miss(ticket) => ticket,
        };
        let found = self.shared.readers.with(|conn| {
            conn.prepare_cached("SELECT value, version FROM state WHERE tenant = ?1 AND key = ?2")
                .and_then(|mut s| {
                    s.query_row(params![tenant.as_str(), key], |r| {
                        let value: Vec<u8> = r.get(0)?;
                        let version: i64 = r.get(1)?;
                        Ok(Versioned {
                            value: value.into(),
                            version: version as u64,
                        })
                    })
                    .optional()
                })
                .map_err(store_error)
        })?;
        // The read may have seen a commit not synced yet, but only one that
        // changed this key matters; it was announced before its `COMMIT`.
        let writer = self.shared.unsynced.last_writer(tenant.as_str(), key);
        self.shared.durable.reached(writer).await;
        self.shared.cache.fill(ticket, tenant.as_str(), key, &found);
        Ok(found)
    }

    async fn scan(
        &self,
        tenant: &TenantId,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.scan_from(tenant, prefix, None, limit).await
    }

    async fn scan_after(
        &self,
        tenant: &TenantId,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.scan_from(tenant, prefix, Some(after), limit).await
    }

    async fn complete(&self, batch: Vec<Completion>) -> Result<Vec<Outcome>, StoreError> {
        match self.submit(Change::Complete(batch).into()).await? {
            Reply::Outcomes(outcomes) => Ok(outcomes),
            other => Err(unexpected(other)),
        }
    }

    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, StoreError> {
        self.read(|conn| {
            let sql = format!(
                "SELECT id, step, delivery_group, attempts, first_attempt_at, failed_at, last_error, \
                 kind, {EVENT_COLUMNS} FROM dead_letters \
                 WHERE (?1 IS NULL OR step = ?1) AND (?2 IS NULL OR tenant = ?2) \
                 AND (?4 IS NULL OR kind = ?4) AND (?5 IS NULL OR failed_at >= ?5) \
                 AND (?6 IS NULL OR failed_at < ?6) AND (?7 IS NULL OR id > ?7) \
                 ORDER BY id LIMIT ?3"
            );
            let limit = query
                .limit
                .map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
            let mut stmt = conn.prepare_cached(&sql).map_err(store_error)?;
            let mut rows = stmt
                .query(params![
                    query.step.as_ref().map(StepName::as_str),
                    query.tenant.as_ref().map(TenantId::as_str),
                    limit,
                    query.kind.map(FailureKind::as_str),
                    query.since.map(Timestamp::as_millis),
                    query.until.map(Timestamp::as_millis),
                    query.after.map(rows::id_to),
                ])
                .map_err(store_error)?;
            let mut found = Vec::new();
            while let Some(row) = rows.next().map_err(store_error)? {
                found.push(dead_letter_from(row)?);
            }
            Ok(found)
        })
        .await
    }

    async fn replay_dead_letters(&self, ids: &[u64], now: Timestamp) -> Result<usize, StoreError> {
        match self
            .submit(Change::Replay(ids.to_vec(), now).into())
            .await?
        {
            Reply::Count(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    async fn amend_dead_letter(&self, id: u64, payload: Payload) -> Result<bool, StoreError> {
        match self.submit(Change::Amend(id, payload).into()).await? {
            Reply::Count(n) => Ok(n > 0),
            other => Err(unexpected(other)),
        }
    }

    async fn purge_dead_letters(&self, ids: &[u64]) -> Result<usize, StoreError> {
        match self.submit(Change::Purge(ids.to_vec()).into()).await? {
            Reply::Count(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    async fn last_cron_fire(&self, schedule: &StepName) -> Result<Option<Timestamp>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached("SELECT max(at) FROM cron_fires WHERE schedule = ?1")
                .and_then(|mut s| s.query_row([schedule.as_str()], |r| r.get::<_, Option<i64>>(0)))
                .map(|at| at.map(Timestamp::from_millis))
                .map_err(store_error)
        })
        .await
    }
}

#[async_trait]
impl Transport for SqliteBackend {
    async fn publish(&self, deliveries: Vec<NewDelivery>) -> Result<(), StoreError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        self.submit(Change::Publish(deliveries).into())
            .await
            .map(drop)
    }

    async fn claim(&self, request: ClaimRequest) -> Result<ClaimBatch, StoreError> {
        match self.submit(Change::Claim(request).into()).await? {
            Reply::Claimed(batch) => Ok(batch),
            other => Err(unexpected(other)),
        }
    }

    async fn release(&self, leases: &[LeaseRef]) -> Result<(), StoreError> {
        self.submit(Change::Release(leases.to_vec()).into())
            .await
            .map(drop)
    }

    async fn steps_with_work(&self, now: Timestamp) -> Result<Vec<StepWork>, StoreError> {
        match self.submit(Op::Work(now)).await? {
            Reply::Work(work) => Ok(work),
            other => Err(unexpected(other)),
        }
    }

    async fn move_deliveries(
        &self,
        from: &StepName,
        to: Option<&StepName>,
    ) -> Result<u64, StoreError> {
        let change = Change::Move(from.clone(), to.cloned());
        match self.submit(change.into()).await? {
            Reply::Count(n) => Ok(n as u64),
            other => Err(unexpected(other)),
        }
    }

    async fn depth(&self, now: Timestamp) -> Result<QueueDepth, StoreError> {
        match self.submit(Op::Depth(now)).await? {
            Reply::Depth(depth) => Ok(depth),
            other => Err(unexpected(other)),
        }
    }
}
