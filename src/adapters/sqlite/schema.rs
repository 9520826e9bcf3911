//! The file's schema: what is ours, which version, and how to migrate.
//!
//! A flowline file carries [`APPLICATION_ID`] in its header (`PRAGMA
//! application_id`) and its schema version in `PRAGMA user_version`. Opening
//! checks both before touching anything: another program's database is refused,
//! a newer schema is refused (an older flowline must not write a format it does
//! not know), and an older one is migrated in one transaction.

use rusqlite::Connection;

/// "flow" in ASCII: marks a SQLite file as flowline's.
pub(super) const APPLICATION_ID: i32 = 0x666c_6f77;

/// Migrations in order: `MIGRATIONS[n]` takes a file from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    -- Tenant state. Versions come from one counter for the whole file, so a key
    -- deleted and written again never repeats a version.
    CREATE TABLE state (
        tenant  TEXT    NOT NULL,
        key     TEXT    NOT NULL,
        value   BLOB    NOT NULL,
        version INTEGER NOT NULL,
        PRIMARY KEY (tenant, key)
    ) WITHOUT ROWID;

    -- Unfinished deliveries: one row per (event, subscribing step). A row is deleted
    -- by the commit that finishes it, so the table holds the backlog, not history.
    -- Where each row stands in the queue (ready, delayed, leased) is kept in memory
    -- by the process that owns the file and rebuilt from here when it opens.
    CREATE TABLE deliveries (
        id               INTEGER PRIMARY KEY,
        step             TEXT    NOT NULL,
        tenant           TEXT    NOT NULL,
        delivery_group   TEXT,
        due_at           INTEGER NOT NULL,
        attempt          INTEGER NOT NULL DEFAULT 0,
        first_attempt_at INTEGER,
        last_error       TEXT,
        event_id         BLOB    NOT NULL,
        topic            TEXT    NOT NULL,
        trace_id         BLOB    NOT NULL,
        causation_id     BLOB,
        group_key        TEXT,
        emitted_at       INTEGER NOT NULL,
        deliver_at       INTEGER,
        headers          TEXT,
        payload          TEXT    NOT NULL
    );

    CREATE TABLE dead_letters (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        step             TEXT    NOT NULL,
        tenant           TEXT    NOT NULL,
        delivery_group   TEXT,
        attempts         INTEGER NOT NULL,
        first_attempt_at INTEGER NOT NULL,
        failed_at        INTEGER NOT NULL,
        last_error       TEXT    NOT NULL,
        event_id         BLOB    NOT NULL,
        topic            TEXT    NOT NULL,
        trace_id         BLOB    NOT NULL,
        causation_id     BLOB,
        group_key        TEXT,
        emitted_at       INTEGER NOT NULL,
        deliver_at       INTEGER,
        headers          TEXT,
        payload          TEXT    NOT NULL
    );
    -- Retention prunes by age.
    CREATE INDEX dead_letters_by_failed_at ON dead_letters (failed_at);

    -- Deliveries claimed and not yet settled, with when they were claimed. A
    -- process that dies leaves its rows here, and the next owner counts each as
    -- an attempt used: a delivery that kills its worker every time still
    -- dead-letters. (A narrow table: cheaper to insert and delete than to rewrite
    -- a delivery row on every claim.)
    CREATE TABLE leases (
        id         INTEGER PRIMARY KEY,
        claimed_at INTEGER NOT NULL
    );

    -- One row per (schedule, instant) fired: the primary key is what makes a fire
    -- happen once.
    CREATE TABLE cron_fires (
        schedule TEXT    NOT NULL,
        at       INTEGER NOT NULL,
        PRIMARY KEY (schedule, at)
    ) WITHOUT ROWID;
    "#,
    // 2: markers of the deliveries a broker carried (a split backend), so that
    // a redelivered copy never applies its effects twice.
    r#"
    CREATE TABLE delivery_markers (
        key TEXT    NOT NULL PRIMARY KEY,
        at  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX delivery_markers_by_at ON delivery_markers (at);
    "#,
    // 3: each event's priority (`Priority::as_i16`, 0 for normal): claims
    // take a tenant's higher priorities first, and a dead letter keeps it.
    r#"
    ALTER TABLE deliveries ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE dead_letters ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
    "#,
    // 4: why each dead letter was given up on (`FailureKind::as_str`); rows
    // from before read as unrecorded.
    r#"
    ALTER TABLE dead_letters ADD COLUMN kind TEXT NOT NULL DEFAULT 'unrecorded';
    "#,
    // 5: a delivery's cancel key (`NewDelivery::key`), and the index a
    // cancel finds its rows by; it holds only keyed rows (timers, reminders).
    r#"
    ALTER TABLE deliveries ADD COLUMN cancel_key TEXT;
    CREATE INDEX deliveries_by_cancel_key ON deliveries (tenant, step, cancel_key)
        WHERE cancel_key IS NOT NULL;
    "#,
];

/// The schema version this build writes.
pub(super) const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

/// What the header of an opened file says.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// No tables at all: a new file.
    Empty,
    /// A flowline file at this schema version.
    Flowline(i64),
    /// Some other program's database.
    Foreign { application_id: i32 },
}

/// Reads the header. Fails with SQLite's "not a database" on a file that is not
/// SQLite at all.
pub(super) fn inspect(conn: &Connection) -> rusqlite::Result<Found> {
    let application_id: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
    Ok(match application_id {
        APPLICATION_ID => Found::Flowline(version),
        0 if tables == 0 && version == 0 => Found::Empty,
        other => Found::Foreign {
            application_id: other,
        },
    })
}

/// Brings a file from `from` to [`CURRENT_VERSION`] in one transaction.
pub(super) fn migrate(conn: &mut Connection, from: i64) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let start = usize::try_from(from).unwrap_or(0);
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(start) {
        tracing::info!(to = n + 1, "migrating the flowline schema");
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    tx.pragma_update(None, "user_version", CURRENT_VERSION)?;
    tx.commit()
}
