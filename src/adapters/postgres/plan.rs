//! What a batch of completions changes, gathered while it is decided and then
//! applied in a fixed number of statements, each over arrays.

use std::collections::HashMap;

use sqlx::PgConnection;

use super::deliveries::{self, Columns};
use super::error::store_error;
use super::rows::text_column;
use crate::backend::{Cancel, FailureKind, NewDelivery, StoreError, Value};
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
    /// The kind of each dead letter, in the order of `dead_letters`.
    dead_kinds: Vec<&'static str>,
    /// Waiting rows to delete: (tenants, steps, cancel keys).
    cancels: (Vec<String>, Vec<String>, Vec<String>),
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

    /// Deletes `tenant`'s waiting rows that `cancel` names.
    pub(super) fn cancel(&mut self, tenant: &str, cancel: &Cancel) {
        self.cancels.0.push(tenant.to_string());
        self.cancels.1.push(cancel.step.as_str().to_string());
        self.cancels.2.push(text_column(&cancel.key));
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

    /// Moves input row `id` to the dead letters, failed at `at` with `error`
    /// for the reason `kind`.
    pub(super) fn dead_letter(&mut self, id: i64, at: Timestamp, error: &str, kind: FailureKind) {
        self.dead_letters.push(id, at, error);
        self.dead_kinds.push(kind.as_str());
    }

    /// Applies the plan in the open transaction `conn`, in one statement (one
    /// round trip, while the batch holds its locks), and notifies `wake` (the
    /// channel and payload of a `pg_notify`) with it if given.
    pub(super) async fn apply(
        self,
        conn: &mut PgConnection,
        wake: Option<(&str, &str)>,
    ) -> Result<(), StoreError> {
        // A huge fan-out (rare) goes first, in chunks of its own; the rest
        // is still one statement.
        let folded: &[NewDelivery] = if self.emits.len() > deliveries::INSERT_CHUNK {
            deliveries::insert(conn, &self.emits).await?;
            &[]
        } else {
            &self.emits
        };
        let state = self.state_columns();
        let emits = Columns::of(folded)?;
        let mut sql = Folded::default();
        if !state.gone.0.is_empty() {
            let p = sql.params(2);
            sql.part(format!(
                "DELETE FROM state WHERE (tenant, key) IN \
                 (SELECT * FROM UNNEST(${}::text[], ${}::text[]))",
                p[0], p[1]
            ));
        }
        if !state.set.0.is_empty() {
            let p = sql.params(3);
            sql.part(format!("{UPSERT_STATE} FROM UNNEST(${}::text[], ${}::text[], ${}::bytea[]) AS u(t, k, v) {ON_CONFLICT}", p[0], p[1], p[2]));
        }
        if !folded.is_empty() {
            let first = sql.params(deliveries::INSERT_PARAMS)[0];
            sql.part(deliveries::insert_sql(first));
        }
        if !self.cancels.0.is_empty() {
            // Leased rows run on; a row this statement inserts is not seen.
            let p = sql.params(3);
            sql.part(format!(
                "DELETE FROM deliveries WHERE NOT leased AND cancel_key IS NOT NULL \
                 AND (tenant, step, cancel_key) IN \
                 (SELECT * FROM UNNEST(${}::text[], ${}::text[], ${}::text[]))",
                p[0], p[1], p[2]
            ));
        }
        if !self.finished.is_empty() {
            let p = sql.params(1);
            sql.part(format!(
                "DELETE FROM deliveries WHERE id = ANY(${}::bigint[])",
                p[0]
            ));
        }
        if !self.retries.ids.is_empty() {
            let p = sql.params(3);
            sql.part(format!("{RETRY} FROM UNNEST(${}::bigint[], ${}::bigint[], ${}::text[]) AS u(id, at, err) WHERE d.id = u.id", p[0], p[1], p[2]));
        }
        if !self.deferrals.0.is_empty() {
            let p = sql.params(2);
            sql.part(format!(
                "{DEFER} FROM UNNEST(${}::bigint[], ${}::bigint[]) AS u(id, at) WHERE d.id = u.id",
                p[0], p[1]
            ));
        }
        if !self.dead_letters.ids.is_empty() {
            let p = sql.params(4);
            sql.part(format!(
                "SELECT * FROM UNNEST(${}::bigint[], ${}::bigint[], ${}::text[], ${}::text[]) \
                 WITH ORDINALITY AS u(id, at, err, kind, n)",
                p[0], p[1], p[2], p[3]
            ));
            let dead = sql.last_name();
            sql.part(format!(
                "DELETE FROM deliveries d USING {dead} u WHERE d.id = u.id RETURNING d.*"
            ));
            let gone = sql.last_name();
            sql.part(format!(
                "{BURY} FROM {gone} g JOIN {dead} u ON u.id = g.id ORDER BY u.n"
            ));
        }
        let tail = match wake {
            Some(_) => {
                let p = sql.params(2);
                format!("SELECT pg_notify(${}, ${})", p[0], p[1])
            }
            None => "SELECT 1".to_string(),
        };
        let text = sql.finish(&tail);
        let mut query = sqlx::query(&text);
        if !state.gone.0.is_empty() {
            query = query.bind(state.gone.0).bind(state.gone.1);
        }
        if !state.set.0.is_empty() {
            query = query.bind(state.set.0).bind(state.set.1).bind(state.set.2);
        }
        if !folded.is_empty() {
            query = query
                .bind(emits.steps)
                .bind(emits.tenants)
                .bind(emits.groups)
                .bind(emits.due)
                .bind(emits.events)
                .bind(emits.priorities)
                .bind(emits.keys);
        }
        if !self.cancels.0.is_empty() {
            let (tenants, steps, keys) = &self.cancels;
            query = query.bind(tenants).bind(steps).bind(keys);
        }
        if !self.finished.is_empty() {
            query = query.bind(&self.finished);
        }
        if !self.retries.ids.is_empty() {
            let r = &self.retries;
            query = query.bind(&r.ids).bind(&r.at).bind(&r.errors);
        }
        if !self.deferrals.0.is_empty() {
            query = query.bind(&self.deferrals.0).bind(&self.deferrals.1);
        }
        if !self.dead_letters.ids.is_empty() {
            let d = &self.dead_letters;
            query = query
                .bind(&d.ids)
                .bind(&d.at)
                .bind(&d.errors)
                .bind(&self.dead_kinds);
        }
        if let Some((channel, payload)) = wake {
            query = query.bind(channel).bind(payload);
        }
        query.execute(&mut *conn).await.map_err(store_error)?;
        Ok(())
    }

    /// The state changes as columns: keys deleted, and keys set with values.
    fn state_columns(&self) -> StateColumns<'_> {
        let mut columns = StateColumns::default();
        for (tenant, key, value) in &self.state {
            match value {
                Some(value) => {
                    columns.set.0.push(tenant.as_str());
                    columns.set.1.push(key.as_str());
                    columns.set.2.push(&value[..]);
                }
                None => {
                    columns.gone.0.push(tenant.as_str());
                    columns.gone.1.push(key.as_str());
                }
            }
        }
        columns
    }
}

/// Keys deleted (tenants, keys) and keys set (tenants, keys, values).
#[derive(Default)]
struct StateColumns<'a> {
    gone: (Vec<&'a str>, Vec<&'a str>),
    set: (Vec<&'a str>, Vec<&'a str>, Vec<&'a [u8]>),
}

/// Every key set gets a new version from the schema's sequence.
const UPSERT_STATE: &str =
    "INSERT INTO state (tenant, key, value, version) SELECT t, k, v, nextval('state_versions')";
const ON_CONFLICT: &str =
    "ON CONFLICT (tenant, key) DO UPDATE SET value = EXCLUDED.value, version = EXCLUDED.version";
const RETRY: &str = "UPDATE deliveries d SET leased = false, due_at = u.at, available_at = u.at, \
     last_error = u.err";
const DEFER: &str = "UPDATE deliveries d SET leased = false, due_at = u.at, available_at = u.at, \
     attempt = GREATEST(d.attempt - 1, 0), \
     first_attempt_at = CASE WHEN d.attempt > 1 THEN d.first_attempt_at END";
const BURY: &str = "INSERT INTO dead_letters (step, tenant, delivery_group, attempts, \
     first_attempt_at, failed_at, last_error, event, priority, kind) \
     SELECT g.step, g.tenant, g.delivery_group, g.attempt, \
     COALESCE(g.first_attempt_at, u.at), u.at, u.err, g.event, g.priority, u.kind";

/// One statement of data-modifying `WITH` parts: PostgreSQL runs every part
/// exactly once, on one snapshot. The parts of a plan touch disjoint rows
/// (each input row is finished, retried, deferred or buried, never two of
/// them; each key is set or deleted), so their order does not matter.
#[derive(Default)]
struct Folded {
    parts: Vec<String>,
    params: usize,
}

impl Folded {
    /// The numbers of the next `n` parameters.
    fn params(&mut self, n: usize) -> Vec<usize> {
        let first = self.params + 1;
        self.params += n;
        (first..first + n).collect()
    }

    fn part(&mut self, sql: String) {
        self.parts.push(sql);
    }

    /// The name of the last part added.
    fn last_name(&self) -> String {
        format!("p{}", self.parts.len().saturating_sub(1))
    }

    /// The statement, its parts before `tail`.
    fn finish(self, tail: &str) -> String {
        if self.parts.is_empty() {
            return tail.to_string();
        }
        let parts: Vec<String> = self
            .parts
            .iter()
            .enumerate()
            .map(|(i, part)| format!("p{i} AS ({part})"))
            .collect();
        format!("WITH {} {tail}", parts.join(", "))
    }
}
