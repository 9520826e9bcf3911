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

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::backend::{ClaimBatch, ClaimRequest, LeaseRef, NewDelivery, QueueDepth, Transport};
use crate::backend::{
    Completion, DeadLetter, DeadLetterQuery, Outcome, Store, StoreError, Versioned,
};
use crate::event::{StepName, TenantId};
use crate::time::Timestamp;

mod acks;
mod cache;
mod checkpoint;
mod commit;
mod index;
mod keymap;
mod ops;
mod rows;
mod schema;
mod unsynced;
mod writer;

use acks::{Acks, DurableMark};
use cache::{Lookup, StateCache};
use checkpoint::Checkpointer;
use commit::GroupCommit;
use ops::{Change, Op, Reply};
use rows::{id_from, read_envelope, step_name, store_error, EVENT_COLUMNS};
use unsynced::Unsynced;
use writer::{Retention, Writer};

/// When a commit is synced to disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// Every commit is synced before it is acknowledged or read; survives power
    /// loss. (flowline syncs the log itself, off the writer's path, rather than
    /// through `PRAGMA synchronous = FULL`.)
    #[default]
    Full,
    /// `PRAGMA synchronous = NORMAL`: synced at checkpoints; survives a process
    /// crash, and a power cut may lose the last commits.
    Normal,
}

/// How to open a file. `SqliteOptions::default()` is what [`SqliteBackend::open`] uses.
///
/// ```no_run
/// use std::time::Duration;
/// use flowline::{Durability, SqliteBackend, SqliteOptions};
///
/// let options = SqliteOptions::default()
///     .durability(Durability::Normal)
///     .dead_letter_retention(Some(Duration::from_secs(7 * 24 * 3600)));
/// let backend = SqliteBackend::open_with("orders.db", options)?;
/// # Ok::<(), flowline::SqliteError>(())
/// ```
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    durability: Durability,
    dead_letter_retention: Option<Duration>,
    cache_kib: u32,
    state_cache_kib: u32,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            durability: Durability::Full,
            dead_letter_retention: Some(Duration::from_secs(30 * 24 * 3600)),
            cache_kib: 2_000,
            state_cache_kib: 16 * 1024,
        }
    }
}

impl SqliteOptions {
    /// When commits reach the disk; [`Durability::Full`] by default.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// How long dead letters are kept after they failed, in engine time; `None`
    /// keeps them until purged. 30 days by default.
    pub fn dead_letter_retention(mut self, keep: Option<Duration>) -> Self {
        self.dead_letter_retention = keep;
        self
    }

    /// SQLite's page cache per connection, in KiB; 2,000 (SQLite's own default)
    /// unless set. The operating system caches the file as well, and a larger
    /// cache costs the writer time at every commit: on the exec benchmark (see
    /// docs/PERFORMANCE.md), 64 MiB was about 10% slower than 2,000 KiB, with or
    /// without a backlog of a million deliveries.
    pub fn cache_kib(mut self, kib: u32) -> Self {
        self.cache_kib = kib;
        self
    }

    /// Memory for committed state values kept by the backend itself, in KiB;
    /// 16 MiB unless set, 0 turns it off.
    ///
    /// A read ([`Store::get`]) of a key this process wrote or read lately is
    /// answered from it without touching SQLite. It matters because a WAL read
    /// connection drops its page cache whenever the writer has committed, so
    /// under load a read on a connection re-reads its pages from the operating
    /// system. The cache is exact: the backend's one writer records every
    /// commit in it before anyone hears of the commit. It is kept in two
    /// halves; when the newer one is full, the older one is dropped.
    ///
    /// The writer checks the versions a commit read against the same cache,
    /// so with 0 every optimistic check of a commit queries the file.
    pub fn state_cache_kib(mut self, kib: u32) -> Self {
        self.state_cache_kib = kib;
        self
    }
}

/// Opening a file failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteError {
    /// The file is not a flowline database: another program's SQLite file, or not
    /// SQLite at all. Nothing was written to it.
    #[error("{path}: not a flowline database ({reason}); nothing was changed")]
    NotFlowline {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// The file was written by a newer flowline, with a schema this build does not know.
    #[error("{path}: schema version {found} is newer than this build of flowline supports ({supported}); upgrade flowline")]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// The file's schema version.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The file is damaged.
    #[error("{path}: the database is corrupt: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What SQLite reported.
        detail: String,
    },
    /// The file or its directory cannot be written.
    #[error("{path}: read-only: {detail}")]
    ReadOnly {
        /// The file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// Another process (or another backend in this one) has the file open.
    #[error("{path}: already open elsewhere; a file has one owning process at a time (share one SqliteBackend by cloning it)")]
    InUse {
        /// The file.
        path: PathBuf,
    },
    /// The lock file could not be opened.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// SQLite failed for another reason.
    #[error("{path}: {source}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
}

impl SqliteError {
    fn from_sqlite(path: &Path, source: rusqlite::Error) -> Self {
        let path = path.to_path_buf();
        let code = match &source {
            rusqlite::Error::SqliteFailure(e, _) => Some(e.code),
            _ => None,
        };
        match code {
            Some(rusqlite::ErrorCode::NotADatabase) => SqliteError::NotFlowline {
                path,
                reason: "not a SQLite database".into(),
            },
            Some(rusqlite::ErrorCode::DatabaseCorrupt) => SqliteError::Corrupt {
                path,
                detail: source.to_string(),
            },
            Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen) => {
                SqliteError::ReadOnly {
                    path,
                    detail: source.to_string(),
                }
            }
            _ => SqliteError::Sqlite { path, source },
        }
    }

    fn from_store(path: &Path, error: StoreError) -> Self {
        match error {
            StoreError::Corrupt(detail) => SqliteError::Corrupt {
                path: path.to_path_buf(),
                detail,
            },
            StoreError::Backend(source) => match source.downcast::<rusqlite::Error>() {
                Ok(sqlite) => SqliteError::from_sqlite(path, *sqlite),
                Err(other) => SqliteError::Corrupt {
                    path: path.to_path_buf(),
                    detail: other.to_string(),
                },
            },
        }
    }
}

/// The SQLite storage and transport backend. Clones share one file and one writer.
#[derive(Clone)]
pub struct SqliteBackend {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    commit: GroupCommit,
    readers: Readers,
    /// Committed state values, so most reads skip the read connections.
    cache: Arc<StateCache>,
    /// How far commits are durable: a read returns nothing less durable.
    durable: DurableMark,
    /// The keys of groups not yet synced: which reads must wait, and for what.
    unsynced: Arc<Unsynced>,
    /// Stopped before the lock is let go, so that no connection outlives it.
    _checkpointer: Checkpointer,
    /// Held for the backend's lifetime: the kernel drops it if the process dies.
    _lock: File,
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
        let path = path.as_ref().to_path_buf();
        let lock = take_lock(&path)?;
        let mut conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| SqliteError::from_sqlite(&path, e))?;
        if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
            return Err(SqliteError::ReadOnly {
                path,
                detail: "the file cannot be written".into(),
            });
        }
        let sqlite = |e| SqliteError::from_sqlite(&path, e);
        // Connection settings only: nothing in the file changes yet.
        configure(&conn, &options).map_err(sqlite)?;
        match schema::inspect(&conn).map_err(sqlite)? {
            schema::Found::Foreign { application_id } => {
                return Err(SqliteError::NotFlowline {
                    path,
                    reason: format!(
                        "another program's SQLite database (application id {application_id:#x})"
                    ),
                })
            }
            schema::Found::Flowline(found) if found > schema::CURRENT_VERSION => {
                return Err(SqliteError::NewerSchema {
                    path,
                    found,
                    supported: schema::CURRENT_VERSION,
                })
            }
            schema::Found::Flowline(found) if found == schema::CURRENT_VERSION => {}
            schema::Found::Flowline(found) => schema::migrate(&mut conn, found).map_err(sqlite)?,
            schema::Found::Empty => schema::migrate(&mut conn, 0).map_err(sqlite)?,
        }
        // Only now that the file is known to be ours is anything about it changed.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(sqlite)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(SqliteError::ReadOnly {
                path,
                detail: format!("could not switch to WAL mode (journal mode is {mode})"),
            });
        }
        // `Full` syncs the log after each commit too, but off the writer's path
        // (`acks.rs`); SQLite itself syncs only at checkpoints either way.
        let synchronous = "NORMAL";
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(sqlite)?;
        let checkpointer = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|c| {
            configure(&c, &options)?;
            c.pragma_update(None, "synchronous", synchronous)?;
            Ok(c)
        })
        .map_err(sqlite)?;
        let checkpointer = Checkpointer::start(checkpointer).map_err(|source| SqliteError::Io {
            path: path.clone(),
            source,
        })?;
        // Replaces SQLite's automatic checkpoint on the writer (`checkpoint.rs`).
        conn.wal_hook(Some(checkpointer.hook())).map_err(sqlite)?;
        // After a checkpoint the log is cut back to this size, so one burst of
        // writes does not leave a large -wal file behind for good.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
            .map_err(sqlite)?;
        let retention = Retention {
            dead_letters: options.dead_letter_retention,
        };
        let cache = Arc::new(StateCache::new(
            usize::try_from(options.state_cache_kib)
                .unwrap_or(usize::MAX / 1024)
                .saturating_mul(1024),
        ));
        // Where SQLite keeps the log: next to the file as SQLite resolved its
        // path (through symbolic links, say), which need not be `path`.
        let log_path = match conn.path() {
            Some(main) if !main.is_empty() => PathBuf::from(format!("{main}-wal")),
            _ => {
                let mut log = path.as_os_str().to_owned();
                log.push("-wal");
                PathBuf::from(log)
            }
        };
        let (advance_durable, durable) = DurableMark::new();
        let unsynced = Arc::new(Unsynced::default());
        let writer = Writer::load(
            conn,
            retention,
            Arc::clone(&cache),
            (options.durability == Durability::Full).then(|| Arc::clone(&unsynced)),
            durable.clone(),
        )
        .map_err(|e| SqliteError::from_store(&path, e))?;
        // The writer has run a transaction in WAL mode, so the log exists now.
        let acks = match options.durability {
            Durability::Full => File::options()
                .read(true)
                .write(true)
                .open(&log_path)
                .and_then(|log| Acks::synced(Box::new(move || log.sync_data()), advance_durable)),
            Durability::Normal => Ok(Acks::immediate(advance_durable)),
        }
        .map_err(|source| SqliteError::Io {
            path: path.clone(),
            source,
        })?;
        tracing::debug!(path = %path.display(), ?options, "opened the SQLite backend");
        Ok(SqliteBackend {
            shared: Arc::new(Shared {
                readers: Readers {
                    path: path.clone(),
                    options,
                    idle: Mutex::new(Vec::new()),
                },
                cache,
                durable,
                unsynced,
                path,
                commit: GroupCommit::new(writer, acks),
                _checkpointer: checkpointer,
                _lock: lock,
            }),
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

/// Settings every connection gets.
fn configure(conn: &Connection, options: &SqliteOptions) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "cache_size", -i64::from(options.cache_kib))?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// The file a path names, through symbolic links (as SQLite follows them), so
/// that every way of naming one file takes one lock. The file need not exist
/// yet, nor the target of a link to it.
fn resolved(path: &Path) -> PathBuf {
    let mut path = path.to_path_buf();
    // The kernel's own bound on links followed in one lookup.
    for _ in 0..40 {
        match std::fs::read_link(&path) {
            // A relative target is relative to the link's directory; `join`
            // with an absolute one gives the target itself.
            Ok(target) => {
                path = path
                    .parent()
                    .map_or(target.clone(), |dir| dir.join(&target))
            }
            Err(_) => break, // not a link
        }
    }
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            std::fs::canonicalize(dir).map_or(path.clone(), |dir| dir.join(name))
        }
        _ => path,
    }
}

/// Takes the exclusive lock that makes this process the file's one owner.
fn take_lock(path: &Path) -> Result<File, SqliteError> {
    let mut lock_path = resolved(path).into_os_string();
    lock_path.push(".lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                SqliteError::ReadOnly {
                    path: path.to_path_buf(),
                    detail: format!(
                        "cannot create {}: {source}",
                        Path::new(&lock_path).display()
                    ),
                }
            }
            _ => SqliteError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(SqliteError::InUse {
            path: path.to_path_buf(),
        }),
        Err(TryLockError::Error(source)) => Err(SqliteError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Read connections: WAL lets them read while the writer writes.
struct Readers {
    path: PathBuf,
    options: SqliteOptions,
    idle: Mutex<Vec<Connection>>,
}

/// Idle read connections kept for reuse.
const IDLE_READERS: usize = 8;

impl Readers {
    fn with<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(store_error)?;
                configure(&conn, &self.options).map_err(store_error)?;
                conn
            }
        };
        let result = read(&conn);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        result
    }
}

fn dead_letter_from(row: &rusqlite::Row<'_>) -> Result<DeadLetter, StoreError> {
    let get_i64 = |i: usize| -> Result<i64, StoreError> { row.get(i).map_err(store_error) };
    Ok(DeadLetter::new(
        id_from(get_i64(0)?)?,
        step_name(row.get(1).map_err(store_error)?)?,
        Arc::new(read_envelope(row, 7, None)?),
        row.get::<_, Option<String>>(2)
            .map_err(store_error)?
            .map(Arc::from),
        u32::try_from(get_i64(3)?).unwrap_or(u32::MAX),
        Timestamp::from_millis(get_i64(4)?),
        Timestamp::from_millis(get_i64(5)?),
        row.get(6).map_err(store_error)?,
    ))
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
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT key, value, version FROM state WHERE tenant = ?1 AND key >= ?2 ORDER BY key",
                )
                .map_err(store_error)?;
            let mut rows = stmt
                .query(params![tenant.as_str(), prefix])
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

    async fn complete(&self, batch: Vec<Completion>) -> Result<Vec<Outcome>, StoreError> {
        match self.submit(Change::Complete(batch).into()).await? {
            Reply::Outcomes(outcomes) => Ok(outcomes),
            other => Err(unexpected(other)),
        }
    }

    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, StoreError> {
        self.read(|conn| {
            let sql = format!(
                "SELECT id, step, delivery_group, attempts, first_attempt_at, failed_at, last_error, {EVENT_COLUMNS} \
                 FROM dead_letters WHERE (?1 IS NULL OR step = ?1) AND (?2 IS NULL OR tenant = ?2) \
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
                    limit
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

    async fn depth(&self, now: Timestamp) -> Result<QueueDepth, StoreError> {
        match self.submit(Op::Depth(now)).await? {
            Reply::Depth(depth) => Ok(depth),
            other => Err(unexpected(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rows::{id_from, id_to};

    #[test]
    fn ids_round_trip_through_sqlite_integers() {
        assert_eq!(id_from(id_to(42)).unwrap(), 42);
        assert_eq!(id_to(u64::MAX), -1);
        assert!(id_from(-1).is_err());
    }
}
