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

#[path = "names.rs"]
mod names;

/// A new stream name: `<prefix><seconds since 1970>_<random hex>`.
pub(crate) fn fresh_stream(prefix: &str) -> String {
    names::fresh_name(prefix)
}

/// Deletes the streams earlier runs left behind (those more than an hour
/// old), once per test binary.
fn delete_old_streams(prefix: &'static str) {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    names::once_on_own_runtime(&DONE, async move {
        let Ok(client) = async_nats::connect(url()).await else {
            return; // connecting the transport reports the absence
        };
        let js = async_nats::jetstream::new(client);
        let streams: Vec<String> = js
            .stream_names()
            .filter_map(|n| async move { n.ok() })
            .collect()
            .await;
        for name in streams {
            if names::older_than_an_hour(&name, prefix) == Some(true) {
                let _ = js.delete_stream(&name).await;
            }
        }
    });
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
