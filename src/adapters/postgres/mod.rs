//! The PostgreSQL backend: state, queues, dead letters and cron markers in one
//! schema of a PostgreSQL database, shared by every engine connected to it.
//!
//! Built on [sqlx](https://docs.rs/sqlx) (async, pure Rust, with a connection
//! pool), on a runtime of its own ([`AdapterRuntime`]). Each file does one job:
//! `options.rs` (what to open), `error.rs` (what can go wrong opening it),
//! `schema.rs` (tables and versioned migrations), `rows.rs` (values to and from
//! columns), `commits.rs` (group commit), `completions.rs` and `plan.rs`
//! ([`Store::complete`]), `deliveries.rs` (publishing, releasing, depth), `claims.rs` (fair claims with
//! `FOR UPDATE SKIP LOCKED`), `dead_letters.rs` and `notify.rs` (wake-ups
//! across processes with `LISTEN/NOTIFY`). This file opens the pool and
//! implements the traits on them.
//!
//! Every instant comes from the engine's arguments, never from the database's
//! clock. The calls to [`Store::complete`] that arrive together commit in one
//! transaction (`commits.rs`, group commit); each claim is one statement.

mod claims;
mod commits;
mod completions;
mod dead_letters;
mod deliveries;
mod error;
mod notify;
mod options;
mod plan;
mod rows;
mod schema;

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Row};

use crate::backend::{
    Action, ClaimBatch, ClaimRequest, Completion, DeadLetter, DeadLetterQuery, LeaseRef,
    NewDelivery, Outcome, QueueDepth, StepWork, Store, StoreError, Transport, Versioned, WakeUp,
};
use crate::event::{Payload, StepName, TenantId};
use crate::time::Timestamp;

pub use error::PostgresError;
pub use options::{PostgresOptions, DEFAULT_SCHEMA};

use crate::backend::AdapterRuntime;
use error::store_error;

/// The PostgreSQL storage and transport backend.
///
/// Clones share one connection pool; engines in other processes connected to
/// the same schema share its data.
#[derive(Clone)]
pub struct PostgresBackend {
    inner: Arc<Inner>,
}

/// What clones share. Fields drop in order: the committers' queue and the
/// pool before their runtime.
struct Inner {
    commits: commits::GroupCommit,
    notifier: Arc<notify::Notifier>,
    /// For the listening connection, opened when an engine first registers.
    connect: PgConnectOptions,
    pool: PgPool,
    schema: Arc<str>,
    rotation: Arc<claims::Rotation>,
    priorities: Arc<claims::PriorityUse>,
    pruning: Arc<dead_letters::Pruning>,
    runtime: AdapterRuntime,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("schema", &self.inner.schema)
            .finish_non_exhaustive()
    }
}

impl PostgresBackend {
    /// The schema version this build writes (rows of the schema's
    /// `flowline_migrations` table). A schema with a newer version is refused.
    pub const SCHEMA_VERSION: i64 = schema::CURRENT_VERSION;

    /// Connects to the server at `url` and opens the [`DEFAULT_SCHEMA`] schema,
    /// creating or migrating it as needed.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), flowline::PostgresError> {
    /// let backend =
    ///     flowline::PostgresBackend::connect("postgres://postgres@127.0.0.1:5432/app").await?;
    /// # let _ = backend;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// See [`connect_with`](Self::connect_with).
    pub async fn connect(url: &str) -> Result<Self, PostgresError> {
        Self::connect_with(PostgresOptions::new(url)).await
    }

    /// Connects with `options`: creates the schema if it is missing and applies
    /// the migrations it lacks, in one transaction under an advisory lock.
    ///
    /// # Errors
    /// [`PostgresError::InvalidSchemaName`], [`PostgresError::InvalidUrl`],
    /// [`PostgresError::Connect`] (server down, authentication refused),
    /// [`PostgresError::Migrate`], [`PostgresError::SchemaTooNew`] when the
    /// schema was written by a newer flowline, or [`PostgresError::Runtime`].
    pub async fn connect_with(options: PostgresOptions) -> Result<Self, PostgresError> {
        let schema = options.schema_name().to_string();
        options::validate_schema(&schema)?;
        let connect = PgConnectOptions::from_str(options.url())
            .map_err(PostgresError::InvalidUrl)?
            .options([("search_path", schema.as_str())]);
        let runtime =
            AdapterRuntime::start("postgres").map_err(|e| PostgresError::Runtime(e.to_string()))?;
        let size = options.pool_size_value();
        let acquire_timeout = options.acquire_timeout_value();
        let retention = options.dead_letter_retention_value();
        let name = schema.clone();
        let for_listener = connect.clone();
        let pool = runtime
            .run(async move {
                // The first connection is opened directly, so that a server that
                // is down fails at once rather than after the pool's retries.
                let mut conn = PgConnection::connect_with(&connect)
                    .await
                    .map_err(PostgresError::Connect)?;
                schema::migrate(&mut conn, &name).await?;
                if let Err(err) = conn.close().await {
                    tracing::debug!(error = %err, "closing the migration connection");
                }
                Ok::<_, PostgresError>(
                    PgPoolOptions::new()
                        .max_connections(size)
                        .acquire_timeout(acquire_timeout)
                        .connect_lazy_with(connect),
                )
            })
            .await?;
        let schema: Arc<str> = Arc::from(schema);
        let notifier = notify::Notifier::new(&schema);
        let commits = commits::GroupCommit::start(
            runtime.handle(),
            pool.clone(),
            schema.clone(),
            notifier.clone(),
        );
        Ok(PostgresBackend {
            inner: Arc::new(Inner {
                commits,
                notifier,
                connect: for_listener,
                pool,
                schema,
                rotation: Arc::default(),
                priorities: Arc::default(),
                pruning: Arc::new(dead_letters::Pruning::new(retention)),
                runtime,
            }),
        })
    }

    /// The schema this backend keeps its tables in.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// Runs `work` with the pool on the backend's runtime.
    async fn run<T, F, Fut>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(PgPool) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let pool = self.inner.pool.clone();
        self.inner.runtime.run(work(pool)).await
    }
}

#[async_trait]
impl Store for PostgresBackend {
    async fn get(&self, tenant: &TenantId, key: &str) -> Result<Option<Versioned>, StoreError> {
        let (tenant, key) = (tenant.as_str().to_string(), key.to_string());
        self.run(|pool| async move {
            let row =
                sqlx::query("SELECT value, version FROM state WHERE tenant = $1 AND key = $2")
                    .bind(tenant)
                    .bind(key)
                    .fetch_optional(&pool)
                    .await
                    .map_err(store_error)?;
            row.map(|row| versioned(&row, 0)).transpose()
        })
        .await
    }

    async fn get_many(
        &self,
        tenant: &TenantId,
        keys: &[String],
    ) -> Result<Vec<Option<Versioned>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let (tenant, wanted) = (tenant.as_str().to_string(), keys.to_vec());
        let mut found = self
            .run(|pool| async move {
                let rows = sqlx::query(
                    "SELECT key, value, version FROM state WHERE tenant = $1 AND key = ANY($2)",
                )
                .bind(tenant)
                .bind(wanted)
                .fetch_all(&pool)
                .await
                .map_err(store_error)?;
                rows.iter()
                    .map(|row| {
                        Ok((
                            row.try_get::<String, _>(0).map_err(store_error)?,
                            versioned(row, 1)?,
                        ))
                    })
                    .collect::<Result<std::collections::HashMap<_, _>, StoreError>>()
            })
            .await?;
        Ok(keys.iter().map(|key| found.remove(key)).collect())
    }

    async fn scan(
        &self,
        tenant: &TenantId,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.scan_after(tenant, prefix, "", limit).await
    }

    async fn scan_after(
        &self,
        tenant: &TenantId,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        let (tenant, prefix, after) = (
            tenant.as_str().to_string(),
            prefix.to_string(),
            after.to_string(),
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(|pool| async move {
            let rows = sqlx::query(
                "SELECT key, value, version FROM state \
                 WHERE tenant = $1 AND key >= $2 AND key > $4 AND starts_with(key, $2) \
                 ORDER BY key LIMIT $3",
            )
            .bind(tenant)
            .bind(prefix)
            .bind(limit)
            .bind(after)
            .fetch_all(&pool)
            .await
            .map_err(store_error)?;
            rows.iter()
                .map(|row| Ok((row.try_get(0).map_err(store_error)?, versioned(row, 1)?)))
                .collect()
        })
        .await
    }

    async fn complete(&self, batch: Vec<Completion>) -> Result<Vec<Outcome>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // As in `publish`: told before the emits exist and once they do.
        let prioritised = batch.iter().any(
            |c| matches!(&c.action, Action::Commit { emits, .. } if claims::any_prioritised(emits)),
        );
        if prioritised {
            self.inner.priorities.publishing();
        }
        let committed = self.inner.commits.submit(batch);
        let outcomes = self.inner.runtime.run(committed).await;
        if prioritised {
            self.inner.priorities.publishing();
        }
        outcomes
    }

    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, StoreError> {
        let query = query.clone();
        self.run(|pool| async move {
            let mut conn = pool.acquire().await.map_err(store_error)?;
            dead_letters::list(&mut conn, &query).await
        })
        .await
    }

    async fn amend_dead_letter(&self, id: u64, payload: Payload) -> Result<bool, StoreError> {
        self.run(|pool| async move {
            let mut conn = pool.acquire().await.map_err(store_error)?;
            dead_letters::amend(&mut conn, id, payload).await
        })
        .await
    }

    async fn replay_dead_letters(&self, ids: &[u64], now: Timestamp) -> Result<usize, StoreError> {
        let ids = ids.to_vec();
        let notifier = self.inner.notifier.clone();
        self.run(|pool| async move {
            let mut conn = pool.acquire().await.map_err(store_error)?;
            let replayed = dead_letters::replay(&mut conn, &ids, now).await?;
            if replayed > 0 {
                announce(&notifier, &mut conn).await?;
            }
            Ok(replayed)
        })
        .await
    }

    async fn purge_dead_letters(&self, ids: &[u64]) -> Result<usize, StoreError> {
        let ids = ids.to_vec();
        self.run(|pool| async move {
            let mut conn = pool.acquire().await.map_err(store_error)?;
            dead_letters::purge(&mut conn, &ids).await
        })
        .await
    }

    async fn last_cron_fire(&self, schedule: &StepName) -> Result<Option<Timestamp>, StoreError> {
        let schedule = schedule.as_str().to_string();
        self.run(|pool| async move {
            let at: Option<i64> = sqlx::query("SELECT max(at) FROM cron_fires WHERE schedule = $1")
                .bind(schedule)
                .fetch_one(&pool)
                .await
                .and_then(|row| row.try_get(0))
                .map_err(store_error)?;
            Ok(at.map(Timestamp::from_millis))
        })
        .await
    }
}

#[async_trait]
impl Transport for PostgresBackend {
    async fn publish(&self, deliveries: Vec<NewDelivery>) -> Result<(), StoreError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let notifier = self.inner.notifier.clone();
        // Told before the rows exist and again once they are visible, so no
        // claim in between decides that none exists.
        let priorities = self.inner.priorities.clone();
        let prioritised = claims::any_prioritised(&deliveries);
        if prioritised {
            priorities.publishing();
        }
        self.run(|pool| async move {
            let mut tx = pool.begin().await.map_err(store_error)?;
            deliveries::insert(&mut tx, &deliveries).await?;
            notifier.notify(&mut tx).await?;
            tx.commit().await.map_err(store_error)?;
            if prioritised {
                priorities.publishing();
            }
            notifier.wake_local();
            Ok(())
        })
        .await
    }

    async fn claim(&self, request: ClaimRequest) -> Result<ClaimBatch, StoreError> {
        // Not the whole `Inner`: the runtime must not be dropped on itself.
        let rotation = self.inner.rotation.clone();
        let priorities = self.inner.priorities.clone();
        let pruning = self.inner.pruning.clone();
        self.run(|pool| async move {
            let mut conn = pool.acquire().await.map_err(store_error)?;
            pruning.maybe_prune(&mut conn, request.now).await?;
            claims::claim(&mut conn, &rotation, &priorities, &request).await
        })
        .await
    }

    async fn release(&self, leases: &[LeaseRef]) -> Result<(), StoreError> {
        if leases.is_empty() {
            return Ok(());
        }
        let leases = leases.to_vec();
        let notifier = self.inner.notifier.clone();
        self.run(|pool| async move {
            let mut conn = pool.acquire().await.map_err(store_error)?;
            deliveries::release(&mut conn, &leases).await?;
            announce(&notifier, &mut conn).await
        })
        .await
    }

    async fn steps_with_work(&self, now: Timestamp) -> Result<Vec<StepWork>, StoreError> {
        self.run(|pool| async move {
            let mut conn = pool.acquire().await.map_err(store_error)?;
            deliveries::steps_with_work(&mut conn, now).await
        })
        .await
    }

    async fn move_deliveries(
        &self,
        from: &StepName,
        to: Option<&StepName>,
    ) -> Result<u64, StoreError> {
        let (from, to) = (from.clone(), to.cloned());
        let notifier = self.inner.notifier.clone();
        self.run(|pool| async move {
            let mut conn = pool.acquire().await.map_err(store_error)?;
            let moved = deliveries::move_to(&mut conn, &from, to.as_ref()).await?;
            if moved > 0 && to.is_some() {
                announce(&notifier, &mut conn).await?;
            }
            Ok(moved)
        })
        .await
    }

    async fn depth(&self, now: Timestamp) -> Result<QueueDepth, StoreError> {
        self.run(|pool| async move {
            let mut conn = pool.acquire().await.map_err(store_error)?;
            deliveries::depth(&mut conn, now).await
        })
        .await
    }

    fn on_new_work(&self, wake: WakeUp) {
        let inner = &self.inner;
        inner
            .notifier
            .register(wake, inner.runtime.handle(), &inner.connect);
    }

    async fn is_drained(&self, now: Timestamp) -> Result<bool, StoreError> {
        self.run(|pool| async move {
            let mut conn = pool.acquire().await.map_err(store_error)?;
            deliveries::is_drained(&mut conn, now).await
        })
        .await
    }
}

/// Tells other processes and this backend's engines that deliveries became
/// claimable (outside a transaction: the change has committed already).
async fn announce(notifier: &notify::Notifier, conn: &mut PgConnection) -> Result<(), StoreError> {
    notifier.notify(conn).await?;
    notifier.wake_local();
    Ok(())
}

/// A `value, version` pair of columns starting at `at`.
fn versioned(row: &sqlx::postgres::PgRow, at: usize) -> Result<Versioned, StoreError> {
    let value: Vec<u8> = row.try_get(at).map_err(store_error)?;
    let version: i64 = row.try_get(at + 1).map_err(store_error)?;
    Ok(Versioned {
        value: Arc::from(value),
        version: u64::try_from(version).map_err(|_| error::corrupt("a version", version))?,
    })
}
