//! `GET /_flowline/api/live`: tells open workbench pages when to redraw,
//! instead of their polling once a second.
//!
//! A server-sent `changed` event goes out when the page connects, then at
//! most every [`AT_MOST_EVERY`] while the engine commits events, and every
//! [`AT_LEAST_EVERY`] regardless (for the executions that emit nothing, and
//! for what other processes did). The page reads the JSON endpoints when it
//! hears one. Nothing is queued per page: a page that reads slowly is told
//! once that something changed, not once per event.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures::stream;

use crate::engine::{Engine, Watch, Watched};

/// The shortest time between two `changed` events while events commit.
pub(super) const AT_MOST_EVERY: Duration = Duration::from_millis(500);

/// The longest time between two `changed` events.
pub(super) const AT_LEAST_EVERY: Duration = Duration::from_secs(5);

pub(super) async fn live(State(engine): State<Engine>) -> impl IntoResponse {
    let first = true;
    let events = stream::unfold((engine.watch(), first), |(mut watch, first)| async move {
        if !first {
            tokio::time::sleep(AT_MOST_EVERY).await;
            let _ =
                tokio::time::timeout(AT_LEAST_EVERY - AT_MOST_EVERY, committed(&mut watch)).await;
        }
        let event = Event::default().event("changed").data("{}");
        Some((Ok::<_, Infallible>(event), (watch, false)))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// Waits for the next committed event (any missed count as one), after
/// draining what came during the pause.
async fn committed(watch: &mut Watch) {
    match watch.recv().await {
        Some(Watched::Event(_) | Watched::Missed(_)) => {}
        // The engine is gone: only the timer is left.
        None => std::future::pending().await,
    }
}
