//! The shapes measured by both `examples/throughput.rs` and
//! `benches/throughput.rs`: the event types, the flows (one-hop, three-step chain,
//! exec, retry, and the parked step a backlog waits in), the emitters, the SQLite
//! files they run on, and the raw tokio mpsc pipelines of the one-hop and chain
//! shapes (the physical baseline).
//!
//! Included from both with `#[path = "..."] mod shapes;`. It is not an example of its
//! own: cargo only discovers `examples/*.rs` and `examples/*/main.rs`.
//!
//! - one-hop: emit -> a no-op handler.
//! - chain: emit -> A emits B emits C, no-op work (three executions per chain).
//! - exec: emit -> a step that writes one state key (one per event) and emits one
//!   event, to the `parked` step delayed by a day (so it stays a pending delivery
//!   row and never runs while measured).
//! - retry: emit -> a step whose first two attempts fail (retryable, retried after
//!   a fixed delay) and whose third succeeds without work.
//! - parked: a step with concurrency 1 whose handler never returns: once it holds
//!   its one delivery, the rest of its deliveries stay pending while other steps
//!   are measured (a backlog).
//! - raw mpsc: one task per step joined by unbounded channels, the producer a task
//!   on the runtime like the engine's emitter.
//! - raw SQLite: the SQL statements the SQLite backend runs for the exec shape, on
//!   one bare rusqlite connection (see [`raw_sqlite_exec`]).

// Included by the example and the bench; each uses a part.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use flowline::prelude::*;
use flowline::{EngineError, FlowBuilder, FlowError};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
pub(crate) struct Ping {
    pub(crate) n: u64,
}
impl Event for Ping {
    const TOPIC: &'static str = "ping";
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
pub(crate) struct Hop1 {
    pub(crate) n: u64,
}
impl Event for Hop1 {
    const TOPIC: &'static str = "hop1";
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
pub(crate) struct Parked {
    pub(crate) n: u64,
}
impl Event for Parked {
    const TOPIC: &'static str = "parked";
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
pub(crate) struct Hop2 {
    pub(crate) n: u64,
}
impl Event for Hop2 {
    const TOPIC: &'static str = "hop2";
}

/// One hop: external `Ping` -> step `sink`, a no-op handler.
pub(crate) fn one_hop_flow() -> Result<Flow, FlowError> {
    one_hop().build()
}

/// [`one_hop_flow`], not yet built.
pub(crate) fn one_hop() -> FlowBuilder {
    Flow::builder().external::<Ping>().step(
        Step::event::<Ping>("sink")
            .handle(|_ctx: StepContext, _e: Ping| async { Ok::<_, StepError>(()) }),
    )
}

/// Three steps: external `Ping` -> `a` emits `Hop1` -> `b` emits `Hop2` -> `c`,
/// a no-op handler.
pub(crate) fn chain_flow() -> Result<Flow, FlowError> {
    chain().build()
}

/// How long the exec step's emits to `parked` are delayed: far beyond any run.
pub(crate) const PARK_FOR: Duration = Duration::from_secs(24 * 3600);

/// External `Ping` -> step `exec`: one state write (key `exec/<n>`, a new key per
/// event) and one emit, a `Parked` event delayed by [`PARK_FOR`]: a pending
/// delivery row of the `parked` step that nothing runs while measured, so each
/// event is one execution.
pub(crate) fn exec() -> FlowBuilder {
    exec_with(Vec::new())
}

/// [`exec`], its step under flow-control `limits`.
pub(crate) fn exec_with(limits: Vec<flowline::flow_control::Limit>) -> FlowBuilder {
    let mut step = Step::event::<Ping>("exec").emits::<Parked>();
    for limit in limits {
        step = step.limit(limit);
    }
    with_parked(Flow::builder().external::<Ping>()).step(step.handle(
        |ctx: StepContext, e: Ping| async move {
            ctx.put(&format!("exec/{:012}", e.n), &e.n)?;
            ctx.emit_with(&Parked { n: e.n }, EmitOptions::new().delay(PARK_FOR))?;
            Ok::<_, StepError>(())
        },
    ))
}

/// How many attempts of each event the retry flow's step fails before it succeeds.
pub(crate) const RETRY_FAILURES: u32 = 2;

/// External `Ping` -> step `flaky`: attempts 1 and 2 fail with a retryable error,
/// retried after `delay` (`RetryPolicy::fixed`); attempt 3 succeeds, with no work.
pub(crate) fn retry(delay: Duration) -> FlowBuilder {
    Flow::builder().external::<Ping>().step(
        Step::event::<Ping>("flaky")
            .retry(RetryPolicy::fixed(delay).max_attempts(RETRY_FAILURES + 1))
            .handle(|ctx: StepContext, _e: Ping| async move {
                if ctx.attempt() <= RETRY_FAILURES {
                    return Err(StepError::retryable("injected failure"));
                }
                Ok(())
            }),
    )
}

/// Adds the `parked` step (and `Parked` as an external topic, for a backlog
/// emitted with `Engine::emit_batch`), unless the flow has it already.
///
/// `parked` runs one delivery at a time (concurrency 1) and its handler never
/// returns (timeout a day): once it has claimed one delivery, the others stay
/// pending and unclaimed. Shut the engine down with a short deadline.
pub(crate) fn with_parked(flow: FlowBuilder) -> FlowBuilder {
    flow.external::<Parked>().step(
        Step::event::<Parked>("parked")
            .concurrency(1)
            .timeout(PARK_FOR)
            .handle(|_ctx: StepContext, _e: Parked| async {
                std::future::pending::<()>().await;
                Ok::<_, StepError>(())
            }),
    )
}

/// [`chain_flow`], not yet built.
pub(crate) fn chain() -> FlowBuilder {
    Flow::builder()
        .external::<Ping>()
        .step(Step::event::<Ping>("a").emits::<Hop1>().handle(
            |ctx: StepContext, e: Ping| async move {
                ctx.emit(&Hop1 { n: e.n })?;
                Ok::<_, StepError>(())
            },
        ))
        .step(Step::event::<Hop1>("b").emits::<Hop2>().handle(
            |ctx: StepContext, e: Hop1| async move {
                ctx.emit(&Hop2 { n: e.n })?;
                Ok::<_, StepError>(())
            },
        ))
        .step(
            Step::event::<Hop2>("c")
                .handle(|_ctx: StepContext, _e: Hop2| async { Ok::<_, StepError>(()) }),
        )
}

/// Emits pings `0..events` with `Engine::emit`, one at a time.
pub(crate) async fn emit_one_by_one(
    engine: &Engine,
    tenant: &TenantId,
    events: u64,
) -> Result<(), EngineError> {
    for n in 0..events {
        engine.emit(tenant, &Ping { n }).await?;
    }
    Ok(())
}

/// Emits pings `0..events` with `Engine::emit_batch`, `batch` at a time.
pub(crate) async fn emit_batches(
    engine: &Engine,
    tenant: &TenantId,
    events: u64,
    batch: usize,
) -> Result<(), EngineError> {
    emit_range(engine, tenant, 0..events, batch, |n| Ping { n }).await
}

/// Emits one event per `n` in `range` with `Engine::emit_batch`, `batch` at a time.
pub(crate) async fn emit_range<E: Event>(
    engine: &Engine,
    tenant: &TenantId,
    range: std::ops::Range<u64>,
    batch: usize,
    event: impl Fn(u64) -> E,
) -> Result<(), EngineError> {
    let batch = batch.max(1) as u64;
    let mut n = range.start;
    while n < range.end {
        let k = (range.end - n).min(batch);
        let chunk: Vec<E> = (n..n + k).map(&event).collect();
        engine.emit_batch(tenant, &chunk).await?;
        n += k;
    }
    Ok(())
}

/// A new SQLite database file, removed (with its `-wal`, `-shm` and `.lock`
/// files) when dropped, unless kept.
#[cfg(feature = "sqlite")]
pub(crate) struct DbFile {
    pub(crate) path: std::path::PathBuf,
    pub(crate) keep: bool,
}

#[cfg(feature = "sqlite")]
impl DbFile {
    /// `path`, which must not exist yet (nor its `-wal`, `-shm` or `.lock` file):
    /// every run gets a new database. Removed when dropped unless `keep`.
    pub(crate) fn new(path: std::path::PathBuf, keep: bool) -> Result<Self, String> {
        let mut file = DbFile { path, keep: true };
        if let Some(old) = file.files().iter().find(|f| f.exists()) {
            return Err(format!(
                "{} exists; every run needs a new database",
                old.display()
            ));
        }
        file.keep = keep;
        Ok(file)
    }

    /// A new name under `std::env::temp_dir()`.
    pub(crate) fn temp_path(label: &str) -> std::path::PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        std::env::temp_dir().join(format!(
            "flowline-{label}-{}-{nanos}-{}.db",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// The database file and the files SQLite and flowline keep beside it.
    pub(crate) fn files(&self) -> [std::path::PathBuf; 4] {
        let with = |suffix: &str| {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            std::path::PathBuf::from(p)
        };
        [self.path.clone(), with("-wal"), with("-shm"), with(".lock")]
    }

    /// Bytes in the database file and in its write-ahead log.
    pub(crate) fn sizes(&self) -> (u64, u64) {
        let [db, wal, ..] = self.files();
        let len = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
        (len(&db), len(&wal))
    }
}

#[cfg(feature = "sqlite")]
impl Drop for DbFile {
    fn drop(&mut self) {
        if !self.keep {
            for file in self.files() {
                let _ = std::fs::remove_file(file);
            }
        }
    }
}

/// The raw SQLite baseline of the `exec` shape: the statements the SQLite backend
/// runs for it (texts copied from `src/adapters/sqlite/deliveries.rs` and
/// `completions.rs`), replayed on one rusqlite connection with the backend's
/// pragmas (`cache_kib` is `SqliteOptions::cache_kib`, 2,000 by default), on a
/// file the backend created (so the schema is the backend's). Per group of `group` events, three
/// transactions, each operation in a savepoint as the backend's writer does:
/// publish (`INSERT` each input), claim (`SELECT` the row, record the claim in
/// `leases`), complete (`UPSERT` a new state key, `INSERT` the emitted delivery,
/// delayed, `DELETE` the input and its `leases` record). No engine, no in-memory
/// queue index, no tasks: the floor of the SQL alone.
///
/// Returns the wall time of the whole loop.
#[cfg(feature = "sqlite")]
pub(crate) fn raw_sqlite_exec(
    file: &DbFile,
    durability: flowline::Durability,
    cache_kib: u32,
    events: u64,
    group: u64,
) -> Result<Duration, Box<dyn std::error::Error + Send + Sync>> {
    use rusqlite::{params, Connection};

    const COLUMNS: &str = "event_id, topic, tenant, trace_id, causation_id, group_key, \
        emitted_at, deliver_at, headers, payload";
    // The backend creates the schema and switches the file to WAL, then lets go.
    drop(flowline::SqliteBackend::open_with(
        &file.path,
        flowline::SqliteOptions::default().durability(durability),
    )?);
    let conn = Connection::open(&file.path)?;
    let synchronous = match durability {
        flowline::Durability::Normal => "NORMAL",
        _ => "FULL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "cache_size", -i64::from(cache_kib))?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    let exec = |sql: &str| -> rusqlite::Result<()> {
        conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    };
    let insert = format!(
        "INSERT INTO deliveries (id, step, delivery_group, due_at, {COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
    );
    let select = format!("SELECT last_error, {COLUMNS} FROM deliveries WHERE id = ?1");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let park_until = now + PARK_FOR.as_millis() as i64;
    let id_bytes = |n: u64, salt: u8| {
        let mut b = [salt; 16];
        b[..8].copy_from_slice(&n.to_be_bytes());
        b
    };
    let insert_row = |id: i64, step: &str, topic: &str, due: i64, n: u64| -> rusqlite::Result<()> {
        conn.prepare_cached(&insert)?.execute(params![
            id,
            step,
            None::<String>,
            due,
            id_bytes(n, 1),
            topic,
            "bench",
            id_bytes(n, 2),
            None::<[u8; 16]>,
            None::<String>,
            now,
            (due > now).then_some(due),
            None::<String>,
            format!("{{\"n\":{n}}}"),
        ])?;
        Ok(())
    };
    let read_row = |row: &rusqlite::Row<'_>| -> rusqlite::Result<()> {
        // What the claim reads: the last error and the event's columns.
        let _: Option<String> = row.get(0)?;
        let _: [u8; 16] = row.get(1)?;
        let _: String = row.get(2)?;
        let _: [u8; 16] = row.get(4)?;
        let _: String = row.get(10)?;
        Ok(())
    };
    let started = Instant::now();
    let mut next_id: i64 = 0;
    let mut version: i64 = 0;
    let mut done = 0u64;
    while done < events {
        let k = (events - done).min(group);
        let first_id = next_id + 1;
        // Publish the inputs.
        exec("BEGIN IMMEDIATE")?;
        exec("SAVEPOINT op")?;
        for n in done..done + k {
            next_id += 1;
            insert_row(next_id, "exec", "ping", now, n)?;
        }
        exec("RELEASE op")?;
        exec("COMMIT")?;
        // Claim them.
        exec("BEGIN IMMEDIATE")?;
        exec("SAVEPOINT op")?;
        for id in first_id..first_id + k as i64 {
            {
                let mut stmt = conn.prepare_cached(&select)?;
                let mut rows = stmt.query(params![id])?;
                read_row(rows.next()?.ok_or("no row")?)?;
            }
            conn.prepare_cached("INSERT OR REPLACE INTO leases (id, claimed_at) VALUES (?1, ?2)")?
                .execute(params![id, now])?;
        }
        exec("RELEASE op")?;
        exec("COMMIT")?;
        // Complete them: a new state key, the emit, the input finished.
        exec("BEGIN IMMEDIATE")?;
        exec("SAVEPOINT op")?;
        for (n, id) in (done..done + k).zip(first_id..) {
            version += 1;
            conn.prepare_cached(
                "INSERT INTO state (tenant, key, value, version) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (tenant, key) DO UPDATE SET value = excluded.value, version = excluded.version",
            )?
            .execute(params!["bench", format!("exec/{n:012}"), n.to_string().into_bytes(), version])?;
            next_id += 1;
            insert_row(next_id, "parked", "parked", park_until, n)?;
            conn.prepare_cached("DELETE FROM deliveries WHERE id = ?1")?
                .execute([id])?;
            conn.prepare_cached("DELETE FROM leases WHERE id = ?1")?
                .execute([id])?;
        }
        exec("RELEASE op")?;
        exec("COMMIT")?;
        done += k;
    }
    Ok(started.elapsed())
}

/// The raw PostgreSQL baseline of the `one-hop` shape: the statements the
/// PostgreSQL backend's work comes down to for it, replayed on one bare sqlx
/// connection, on a new schema the backend created (so the tables and indexes
/// are the backend's). Per group of `group` events: publish (a transaction:
/// one `INSERT` of the group over arrays, and `pg_notify`), claim (one
/// statement: lease the group's oldest due rows `FOR UPDATE SKIP LOCKED`,
/// returning their events), complete (a transaction: lock the leased rows,
/// `DELETE` them). The claim is the plain form, without the backend's
/// round robin over tenants, priorities and FIFO groups. No engine, no tasks,
/// no handler: the floor of the SQL alone.
///
/// Returns the wall time of the whole loop.
#[cfg(feature = "postgres")]
pub(crate) async fn raw_postgres_one_hop(
    url: &str,
    schema: &str,
    events: u64,
    group: u64,
) -> Result<Duration, Box<dyn std::error::Error>> {
    use sqlx::{Connection, Row};

    let options = flowline::PostgresOptions::new(url).schema(schema);
    drop(flowline::PostgresBackend::connect_with(options).await?);
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query(&format!("SET search_path TO \"{schema}\""))
        .execute(&mut conn)
        .await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let lease_until = now + 60_000;
    let started = Instant::now();
    let mut done = 0u64;
    while done < events {
        let k = (events - done).min(group);
        let n = usize::try_from(k)?;
        let events: Vec<String> = (done..done + k)
            .map(|i| {
                format!(
                    "{{\"id\":\"0193a0f0-0000-7000-8000-{i:012x}\",\"topic\":\"ping\",\"tenant\":\"bench\",\
                     \"trace_id\":\"0193a0f0-0000-7000-9000-{i:012x}\",\"emitted_at\":{now},\"payload\":{{\"n\":{i}}}}}"
                )
            })
            .collect();
        let mut tx = conn.begin().await?;
        sqlx::query(
            "INSERT INTO deliveries (step, tenant, delivery_group, due_at, available_at, event, priority) \
             SELECT s, t, g, d, d, e, p \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::smallint[]) \
                 WITH ORDINALITY AS u(s, t, g, d, e, p, n) ORDER BY n",
        )
        .bind(vec!["hop"; n])
        .bind(vec!["bench"; n])
        .bind(vec![None::<String>; n])
        .bind(vec![now; n])
        .bind(events)
        .bind(vec![0i16; n])
        .execute(&mut *tx)
        .await?;
        sqlx::query("SELECT pg_notify('flowline_raw', 'raw')")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let claimed = sqlx::query(
            "WITH picked AS (SELECT id FROM deliveries \
               WHERE step = 'hop' AND tenant = 'bench' AND available_at <= $1 \
               ORDER BY available_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE deliveries d SET leased = true, token = d.token + 1, attempt = d.attempt + 1, \
               first_attempt_at = COALESCE(d.first_attempt_at, $1), available_at = $3 \
             FROM picked p WHERE d.id = p.id RETURNING d.id, d.token, d.event",
        )
        .bind(now)
        .bind(i64::try_from(k)?)
        .bind(lease_until)
        .fetch_all(&mut conn)
        .await?;
        let mut ids = Vec::with_capacity(n);
        let mut tokens = Vec::with_capacity(n);
        for row in &claimed {
            ids.push(row.try_get::<i64, _>(0)?);
            tokens.push(row.try_get::<i64, _>(1)?);
            let _event: &str = row.try_get(2)?;
        }
        if ids.len() != n {
            return Err(format!("claimed {} of {n} rows", ids.len()).into());
        }
        let mut tx = conn.begin().await?;
        sqlx::query(
            "SELECT d.id FROM deliveries d JOIN UNNEST($1::bigint[], $2::bigint[]) AS u(id, token) \
               ON d.id = u.id AND d.token = u.token \
             WHERE d.leased ORDER BY d.id FOR UPDATE OF d",
        )
        .bind(&ids)
        .bind(&tokens)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM deliveries WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        done += k;
    }
    Ok(started.elapsed())
}

/// Raw mpsc, one hop: returns the wall time from the first send until the sink has
/// received `events` values.
pub(crate) async fn mpsc_one_hop(events: u64) -> Duration {
    let started = Instant::now();
    let (tx, rx) = mpsc::unbounded_channel::<Ping>();
    let sink = spawn_sink(rx, events);
    spawn_producer(tx, events);
    sink.await.expect("sink");
    started.elapsed()
}

/// Raw mpsc, three steps: returns the wall time from the first send until the last
/// task has received `events` values.
pub(crate) async fn mpsc_chain(events: u64) -> Duration {
    let started = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel::<Ping>();
    let (tx1, mut rx1) = mpsc::unbounded_channel::<Hop1>();
    let (tx2, rx2) = mpsc::unbounded_channel::<Hop2>();
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            let _ = tx1.send(Hop1 { n: e.n });
        }
    });
    tokio::spawn(async move {
        while let Some(e) = rx1.recv().await {
            let _ = tx2.send(Hop2 { n: e.n });
        }
    });
    let sink = spawn_sink(rx2, events);
    spawn_producer(tx, events);
    sink.await.expect("sink");
    started.elapsed()
}

/// The last task of a raw pipeline: receives `events` values, then stops.
fn spawn_sink<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
    events: u64,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen = 0u64;
        while let Some(e) = rx.recv().await {
            std::hint::black_box(e);
            seen += 1;
            if seen == events {
                break;
            }
        }
    })
}

/// The producer of a raw pipeline: sends pings `0..events` from a task on the runtime.
fn spawn_producer(tx: mpsc::UnboundedSender<Ping>, events: u64) {
    tokio::spawn(async move {
        for n in 0..events {
            tx.send(Ping { n }).expect("send");
        }
    });
}
