//! Names of what the tests make on a shared server (PostgreSQL schemas,
//! JetStream streams): `<prefix><seconds since 1970>_<random hex>`, so that a
//! later run can tell which are old enough to clean up.

#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A new name: `<prefix><seconds since 1970>_<random hex>`.
pub(crate) fn fresh_name(prefix: &str) -> String {
    format!("{prefix}{}_{:016x}", now_secs(), rand::random::<u64>())
}

/// Whether `name` was made with `prefix` more than an hour ago; `None` if it
/// does not carry a time after the prefix.
pub(crate) fn older_than_an_hour(name: &str, prefix: &str) -> Option<bool> {
    let secs = name
        .strip_prefix(prefix)?
        .split('_')
        .next()?
        .parse::<u64>()
        .ok()?;
    Some(secs < now_secs().saturating_sub(3600))
}

/// Runs `cleanup` once per test binary (the first call; `done` marks it), on
/// a thread and runtime of its own with real time: a test's runtime may have
/// a paused clock, which would fire the clients' timeouts at once.
pub(crate) fn once_on_own_runtime<F>(done: &AtomicBool, cleanup: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    if done.swap(true, Ordering::SeqCst) {
        return;
    }
    let thread = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for cleaning up earlier runs")
            .block_on(cleanup);
    });
    let _ = thread.join();
}
