//! What a batch of completions changes, gathered while it is decided and then
//! applied in a fixed number of statements, each over arrays.

use std::collections::HashMap;

use sqlx::PgConnection;

use super::deliveries;
use super::error::store_error;
use crate::backend::{NewDelivery, StoreError, Value};
use crate::time::Timestamp;

/// The changes of the completions of one batch that applied.
#[derive(Default)]
pub(super) struct Plan {
    /// Deliveries to publish, in emit order.
    pub(super) emits: Vec<NewDelivery>,
    /// Input rows finished: deleted.
    pub(super) finished: Vec<i64>,
    /// Each changed (tenant, key) once, in the order of its first change,
    /// with the value it ends as (`None`: deleted).
    state: Vec<(String, String, Option<Value>)>,
    state_index: HashMap<(String, String), usize>,
    retries: Failures,
    /// Input rows deferred by flow control, and when they are due again.
    deferrals: (Vec<i64>, Vec<i64>),
    dead_letters: Failures,
    /// A broker's retry inserted a delivery (outside the plan): the commit
    /// announces new work as it does for emits.
    pub(super) requeued: bool,
}

/// Input rows that failed, with when and why.
#[derive(Default)]
struct Failures {
    ids: Vec<i64>,
    at: Vec<i64>,
    errors: Vec<String>,
}

impl Failures {
    fn push(&mut self, id: i64, at: Timestamp, error: &str) {
        self.ids.push(id);
        self.at.push(at.as_millis());
        self.errors.push(text_column(error));
    }
}

/// Text as a `TEXT` column takes it: PostgreSQL refuses the NUL character, so
/// it becomes U+FFFD rather than failing the whole batch.
pub(super) fn text_column(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

impl Plan {
    /// Sets `key` of `tenant` to `value` (`None` deletes it); a later change
    /// of the same key replaces this one.
    pub(super) fn state(&mut self, tenant: &str, key: String, value: Option<Value>) {
        let slot = (tenant.to_string(), key);
        match self.state_index.get(&slot) {
            Some(&i) => self.state[i].2 = value,
            None => {
                self.state_index.insert(slot.clone(), self.state.len());
                self.state.push((slot.0, slot.1, value));
            }
        }
    }

    /// Puts input row `id` back, due at `at`, with `error` as its last error.
    pub(super) fn retry(&mut self, id: i64, at: Timestamp, error: &str) {
        self.retries.push(id, at, error);
    }

    /// Puts input row `id` back, due at `at`, its claim not counted.
    pub(super) fn defer(&mut self, id: i64, at: Timestamp) {
        self.deferrals.0.push(id);
        self.deferrals.1.push(at.as_millis());
    }

    /// Moves input row `id` to the dead letters, failed at `at` with `error`.
    pub(super) fn dead_letter(&mut self, id: i64, at: Timestamp, error: &str) {
        self.dead_letters.push(id, at, error);
    }

    /// Applies the plan in the open transaction `conn`.
    pub(super) async fn apply(self, conn: &mut PgConnection) -> Result<(), StoreError> {
        self.apply_state(conn).await?;
        deliveries::insert(conn, &self.emits).await?;
        if !self.finished.is_empty() {
            sqlx::query("DELETE FROM deliveries WHERE id = ANY($1)")
                .bind(&self.finished)
                .execute(&mut *conn)
                .await
                .map_err(store_error)?;
        }
        if !self.retries.ids.is_empty() {
            sqlx::query(
                "UPDATE deliveries d SET leased = false, due_at = u.at, available_at = u.at, \
                 last_error = u.err \
                 FROM UNNEST($1::bigint[], $2::bigint[], $3::text[]) AS u(id, at, err) \
                 WHERE d.id = u.id",
            )
            .bind(&self.retries.ids)
            .bind(&self.retries.at)
            .bind(&self.retries.errors)
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
        }
        if !self.deferrals.0.is_empty() {
            sqlx::query(
                "UPDATE deliveries d SET leased = false, due_at = u.at, available_at = u.at, \
                 attempt = GREATEST(d.attempt - 1, 0), \
                 first_attempt_at = CASE WHEN d.attempt > 1 THEN d.first_attempt_at END \
                 FROM UNNEST($1::bigint[], $2::bigint[]) AS u(id, at) WHERE d.id = u.id",
            )
            .bind(&self.deferrals.0)
            .bind(&self.deferrals.1)
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
        }
        if !self.dead_letters.ids.is_empty() {
            // Dead letters get their ids in the order the batch failed them.
            sqlx::query(
                "WITH u AS (SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[]) \
                     WITH ORDINALITY AS u(id, at, err, n)), \
                 gone AS (DELETE FROM deliveries d USING u WHERE d.id = u.id RETURNING d.*) \
                 INSERT INTO dead_letters (step, tenant, delivery_group, attempts, \
                     first_attempt_at, failed_at, last_error, event, priority) \
                 SELECT g.step, g.tenant, g.delivery_group, g.attempt, \
                     COALESCE(g.first_attempt_at, u.at), u.at, u.err, g.event, g.priority \
                 FROM gone g JOIN u ON u.id = g.id ORDER BY u.n",
            )
            .bind(&self.dead_letters.ids)
            .bind(&self.dead_letters.at)
            .bind(&self.dead_letters.errors)
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
        }
        Ok(())
    }

    /// One delete for the keys deleted, one upsert for the keys set; every key
    /// set gets a new version from the schema's sequence.
    async fn apply_state(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
        let (mut gone_tenants, mut gone_keys) = (Vec::new(), Vec::new());
        let (mut set_tenants, mut set_keys, mut set_values) = (Vec::new(), Vec::new(), Vec::new());
        for (tenant, key, value) in &self.state {
            match value {
                Some(value) => {
                    set_tenants.push(tenant.as_str());
                    set_keys.push(key.as_str());
                    set_values.push(&value[..]);
                }
                None => {
                    gone_tenants.push(tenant.as_str());
                    gone_keys.push(key.as_str());
                }
            }
        }
        if !gone_keys.is_empty() {
            sqlx::query(
                "DELETE FROM state \
                 WHERE (tenant, key) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))",
            )
            .bind(gone_tenants)
            .bind(gone_keys)
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
        }
        if !set_keys.is_empty() {
            sqlx::query(
                "INSERT INTO state (tenant, key, value, version) \
                 SELECT t, k, v, nextval('state_versions') \
                 FROM UNNEST($1::text[], $2::text[], $3::bytea[]) AS u(t, k, v) \
                 ON CONFLICT (tenant, key) DO UPDATE \
                 SET value = EXCLUDED.value, version = EXCLUDED.version",
            )
            .bind(set_tenants)
            .bind(set_keys)
            .bind(set_values)
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
        }
        Ok(())
    }
}
