//! The schema: its tables, its version, and migrating it.
//!
//! Every flowline schema has a `flowline_migrations` table recording each
//! migration applied (`version`, `applied_at`). Opening takes a transaction-level
//! advisory lock named after the schema, so concurrent openers migrate one at a
//! time; applies the migrations the schema lacks in that one transaction; and
//! refuses a schema whose recorded version is newer than this build knows
//! ([`PostgresError::SchemaTooNew`]): an older flowline must not write a format
//! it does not know.

use sqlx::{Connection, Executor, PgConnection, Row};

use super::error::PostgresError;
use super::rows::lock_key;

/// Migrations in order: `MIGRATIONS[n]` takes a schema from version `n` to `n + 1`.
/// They run with the flowline schema first on the `search_path`.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    -- Tenant state. Versions come from one sequence for the whole schema, so a
    -- key deleted and written again never repeats a version. Keys compare
    -- byte-wise ("C"), as Rust compares strings, so scans come in Rust's order.
    CREATE SEQUENCE state_versions;
    CREATE TABLE state (
        tenant  TEXT COLLATE "C" NOT NULL,
        key     TEXT COLLATE "C" NOT NULL,
        value   BYTEA  NOT NULL,
        version BIGINT NOT NULL,
        PRIMARY KEY (tenant, key)
    );

    -- Unfinished deliveries: one row per (event, subscribing step), deleted by
    -- the completion that finishes it. `available_at` is when the row can be
    -- claimed next: its due time while it waits, its lease's end while leased.
    -- `id` is the publish order (FIFO groups run in it).
    CREATE TABLE deliveries (
        id               BIGSERIAL PRIMARY KEY,
        step             TEXT COLLATE "C" NOT NULL,
        tenant           TEXT COLLATE "C" NOT NULL,
        delivery_group   TEXT COLLATE "C",
        due_at           BIGINT  NOT NULL,
        available_at     BIGINT  NOT NULL,
        leased           BOOLEAN NOT NULL DEFAULT false,
        token            BIGINT  NOT NULL DEFAULT 0,
        attempt          INTEGER NOT NULL DEFAULT 0,
        first_attempt_at BIGINT,
        last_error       TEXT,
        event            TEXT    NOT NULL
    );
    CREATE INDEX deliveries_by_tenant ON deliveries (step, tenant, available_at, id);
    CREATE INDEX deliveries_by_group ON deliveries (step, tenant, delivery_group, id)
        WHERE delivery_group IS NOT NULL;
    CREATE INDEX deliveries_by_time ON deliveries (available_at);

    -- Per step, the tenant a claim served last: the round robin goes on from
    -- the next one.
    CREATE TABLE claim_cursors (
        step   TEXT COLLATE "C" PRIMARY KEY,
        tenant TEXT COLLATE "C" NOT NULL
    );

    CREATE TABLE dead_letters (
        id               BIGSERIAL PRIMARY KEY,
        step             TEXT COLLATE "C" NOT NULL,
        tenant           TEXT COLLATE "C" NOT NULL,
        delivery_group   TEXT COLLATE "C",
        attempts         INTEGER NOT NULL,
        first_attempt_at BIGINT  NOT NULL,
        failed_at        BIGINT  NOT NULL,
        last_error       TEXT    NOT NULL,
        event            TEXT    NOT NULL
    );

    -- One row per (schedule, instant) fired: the primary key makes a fire
    -- happen once, across every engine sharing the schema.
    CREATE TABLE cron_fires (
        schedule TEXT COLLATE "C" NOT NULL,
        at       BIGINT NOT NULL,
        PRIMARY KEY (schedule, at)
    );
    "#,
    // 2: claims rotate over tenants in each backend's memory (one statement per
    // claim instead of a read and a write of this table around it); a partial
    // index finds leased rows, so an idle check need not scan the queue.
    r#"
    DROP TABLE claim_cursors;
    CREATE INDEX deliveries_leased ON deliveries (available_at) WHERE leased;
    "#,
    // 3: markers of the deliveries a broker carried (a split backend), so that
    // a redelivered copy never applies its effects twice.
    r#"
    CREATE TABLE delivery_markers (
        key TEXT COLLATE "C" PRIMARY KEY,
        at  BIGINT NOT NULL
    );
    CREATE INDEX delivery_markers_by_at ON delivery_markers (at);
    "#,
    // 4: each event's priority (`Priority::as_i16`, 0 for normal); a dead
    // letter keeps it for its replay. Normal rows are found as before, by
    // `deliveries_by_tenant`; the others by a partial index that is empty
    // while no one sets a priority, so a claim that looks there costs a few
    // page reads, and a backlog of one priority never lengthens the scan for
    // another (each priority is read as its own range of due times). It
    // leads with the priority so that "is any row prioritised?" can only be
    // answered from it, however the statistics estimate `priority <> 0`.
    r#"
    ALTER TABLE deliveries ADD COLUMN priority SMALLINT NOT NULL DEFAULT 0;
    ALTER TABLE dead_letters ADD COLUMN priority SMALLINT NOT NULL DEFAULT 0;
    CREATE INDEX deliveries_by_priority ON deliveries (priority, step, tenant, available_at, id)
        WHERE priority <> 0;
    "#,
    // 5: why each dead letter was given up on (`FailureKind::as_str`); rows
    // from before read as unrecorded.
    r#"
    ALTER TABLE dead_letters ADD COLUMN kind TEXT NOT NULL DEFAULT 'unrecorded';
    "#,
    // 6: a delivery's cancel key (`NewDelivery::key`), and the index a
    // cancel finds its rows by; it holds only keyed rows (timers, reminders).
    r#"
    ALTER TABLE deliveries ADD COLUMN cancel_key TEXT;
    CREATE INDEX deliveries_by_cancel_key ON deliveries (tenant, step, cancel_key)
        WHERE cancel_key IS NOT NULL;
    "#,
];

/// The schema version this build writes.
pub(super) const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

/// Creates the schema if needed and brings it to [`CURRENT_VERSION`], in one
/// transaction under an advisory lock. `schema` is a validated identifier.
pub(super) async fn migrate(conn: &mut PgConnection, schema: &str) -> Result<(), PostgresError> {
    let mut tx = conn.begin().await.map_err(PostgresError::Migrate)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock_key(&["flowline-migrate", schema]))
        .execute(&mut *tx)
        .await
        .map_err(PostgresError::Migrate)?;
    // The name was validated as a plain identifier: quoting it is exact.
    let setup = format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\"; \
         SET LOCAL search_path TO \"{schema}\"; \
         CREATE TABLE IF NOT EXISTS flowline_migrations ( \
             version    BIGINT PRIMARY KEY, \
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    );
    tx.execute(setup.as_str())
        .await
        .map_err(PostgresError::Migrate)?;
    let found: i64 = sqlx::query("SELECT COALESCE(max(version), 0) FROM flowline_migrations")
        .fetch_one(&mut *tx)
        .await
        .and_then(|row| row.try_get(0))
        .map_err(PostgresError::Migrate)?;
    if found > CURRENT_VERSION {
        return Err(PostgresError::SchemaTooNew {
            found,
            supported: CURRENT_VERSION,
        });
    }
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let version = n as i64 + 1;
        tracing::info!(schema, to = version, "migrating the flowline schema");
        tx.execute(*sql).await.map_err(PostgresError::Migrate)?;
        sqlx::query("INSERT INTO flowline_migrations (version) VALUES ($1)")
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(PostgresError::Migrate)?;
    }
    tx.commit().await.map_err(PostgresError::Migrate)
}
