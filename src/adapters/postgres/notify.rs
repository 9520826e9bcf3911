//! Wake-ups across processes with `LISTEN/NOTIFY`.
//!
//! A transaction that makes deliveries claimable now (a publish, a commit
//! that emits, a release, a replay) also runs `pg_notify` on the schema's
//! channel, with this backend's origin id as the payload; PostgreSQL delivers
//! it when the transaction commits. Each backend that an engine registered
//! with listens on the channel on a connection of its own, and wakes its
//! engines on any notification from another origin. Its own commits wake its
//! engines directly, without the round trip.
//!
//! Nothing depends on a notification arriving: engines also claim every
//! `poll_interval`, so a notification lost while the listening connection was
//! down costs latency only. After reconnecting the listener wakes every
//! engine once, for whatever it may have missed.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::PgConnection;
use tokio::runtime::Handle;

use super::error::store_error;
use super::rows::lock_key;
use crate::backend::{StoreError, WakeUp};

/// The longest wait between attempts to reconnect the listener.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The channel of `schema`: `flowline_<schema>` when that fits PostgreSQL's
/// 63-byte identifiers, else `flowline_` and a hash of the name.
pub(super) fn channel(schema: &str) -> String {
    let readable = format!("flowline_{schema}");
    if readable.len() <= 63 {
        readable
    } else {
        format!("flowline_{:016x}", lock_key(&[schema]))
    }
}

/// One backend's side of the wake-ups: who to wake, and its origin id.
pub(super) struct Notifier {
    channel: String,
    origin: String,
    wakes: Mutex<Wakes>,
}

#[derive(Default)]
struct Wakes {
    registered: Vec<WakeUp>,
    /// Whether the listening task has been started (on the first registration:
    /// a backend no engine runs on needs no listening connection).
    listening: bool,
}

impl Notifier {
    pub(super) fn new(schema: &str) -> Arc<Self> {
        Arc::new(Notifier {
            channel: channel(schema),
            origin: format!("{:016x}", rand::random::<u64>()),
            wakes: Mutex::default(),
        })
    }

    /// Adds `wake`; starts the listener on `runtime` if it is the first.
    pub(super) fn register(
        self: &Arc<Self>,
        wake: WakeUp,
        runtime: &Handle,
        connect: &PgConnectOptions,
    ) {
        let start = {
            let mut wakes = self.lock();
            wakes.registered.push(wake);
            !std::mem::replace(&mut wakes.listening, true)
        };
        if start {
            runtime.spawn(listen(Arc::downgrade(self), connect.clone()));
        }
    }

    /// Wakes every engine registered here, forgetting those that are gone.
    pub(super) fn wake_local(&self) {
        // Under the lock: a wake-up only sets its engine's flag, and never
        // comes back here.
        self.lock().registered.retain(|wake| wake());
    }

    /// The channel and payload of this backend's `pg_notify`, for a statement
    /// that notifies as part of its work.
    pub(super) fn wake_call(&self) -> (&str, &str) {
        (&self.channel, &self.origin)
    }

    /// Notifies the other processes on the schema when the open transaction
    /// `conn` commits.
    pub(super) async fn notify(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.channel)
            .bind(&self.origin)
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Wakes> {
        self.wakes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Listens until the backend is gone, reconnecting with capped exponential
/// backoff.
async fn listen(notifier: Weak<Notifier>, connect: PgConnectOptions) {
    // A pool of one of its own, so that listening takes no connection from
    // the backend's pool.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(connect);
    let mut backoff = Duration::from_millis(100);
    let mut reconnecting = false;
    loop {
        let Some(channel) = notifier.upgrade().map(|n| n.channel.clone()) else {
            return;
        };
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => match listener.listen(&channel).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    if !serve(&notifier, &mut listener, reconnecting).await {
                        return;
                    }
                }
                Err(err) => tracing::warn!(error = %err, %channel, "LISTEN failed"),
            },
            Err(err) => tracing::warn!(error = %err, "cannot open the LISTEN connection"),
        }
        reconnecting = true;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Wakes engines on notifications until the connection fails (true: try
/// again) or the backend is gone (false).
async fn serve(notifier: &Weak<Notifier>, listener: &mut PgListener, reconnected: bool) -> bool {
    // Anything published while no one listened is found by this wake-up. (The
    // first time, the engines have just started, and claim anyway.)
    match notifier.upgrade() {
        Some(n) if reconnected => n.wake_local(),
        Some(_) => {}
        None => return false,
    }
    loop {
        let received = listener.try_recv().await;
        let Some(n) = notifier.upgrade() else {
            return false;
        };
        match received {
            Ok(Some(note)) if note.payload() == n.origin => {}
            // `None`: the connection was lost and is back (notifications may
            // have been missed meanwhile).
            Ok(_) => n.wake_local(),
            Err(err) => {
                tracing::warn!(error = %err, "the LISTEN connection failed; reconnecting");
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::channel;

    #[test]
    fn channels_fit_postgres_identifiers() {
        assert_eq!(channel("orders"), "flowline_orders");
        let long = "a".repeat(63);
        assert!(channel(&long).len() <= 63);
        assert_ne!(channel(&long), channel(&"b".repeat(63)));
    }
}
