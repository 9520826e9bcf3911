//! Split backends for tests: a store beside a NATS JetStream stream of its own
//! (`<prefix><seconds since 1970>_<random hex>`, the same as its subject
//! prefix). Streams with the same prefix more than an hour old are deleted,
//! once per test binary.
//!
//! Needs a server with JetStream: `nats://127.0.0.1:4222` unless
//! `FLOWLINE_NATS_URL` says otherwise.

#![allow(dead_code)]

use futures::StreamExt;

/// The server the tests use.
pub(crate) fn url() -> String {
    std::env::var("FLOWLINE_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_string())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A new stream name: `<prefix><seconds since 1970>_<random hex>`.
pub(crate) fn fresh_stream(prefix: &str) -> String {
    format!("{prefix}{}_{:016x}", now_secs(), rand::random::<u64>())
}

/// Deletes the streams earlier runs left behind, on a thread and runtime of
/// its own with real time (a test's runtime may have a paused clock).
fn delete_old_streams(prefix: &'static str) {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if DONE.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let cleanup = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for deleting old streams")
            .block_on(async {
                let Ok(client) = async_nats::connect(url()).await else {
                    return; // connecting the transport reports the absence
                };
                let js = async_nats::jetstream::new(client);
                let cutoff = now_secs().saturating_sub(3600);
                let names: Vec<String> = js
                    .stream_names()
                    .filter_map(|n| async move { n.ok() })
                    .collect()
                    .await;
                for name in names {
                    let secs = name
                        .strip_prefix(prefix)
                        .and_then(|rest| rest.split('_').next())
                        .and_then(|secs| secs.parse::<u64>().ok());
                    if secs.is_some_and(|secs| secs < cutoff) {
                        let _ = js.delete_stream(&name).await;
                    }
                }
            });
    });
    let _ = cleanup.join();
}

/// A transport on a new stream of its own, named with `prefix`.
pub(crate) async fn fresh_transport(prefix: &'static str) -> flowline::NatsTransport {
    delete_old_streams(prefix);
    let stream = fresh_stream(prefix);
    let options = flowline::NatsOptions::new(url())
        .stream(stream.clone())
        .subject_prefix(stream);
    flowline::NatsTransport::connect_with(options)
        .await
        .unwrap_or_else(|err| {
            panic!(
                "NATS with JetStream at {} (FLOWLINE_NATS_URL): {err}",
                url()
            )
        })
}
