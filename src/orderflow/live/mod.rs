//! Live updates over server-sent events (features `orderflow` and `axum`):
//! an order's status and history, and a store's alerts, pushed as they
//! change instead of polled.
//!
//! | route | events |
//! |---|---|
//! | `GET /api/order/{orderId}/events` | `order`: `{"orderId", "status", "history"}` with the milestones not sent yet; its id is the number of milestones sent so far |
//! | `GET /api/alerts/stream` | `snapshot` first (`{"alerts"}`, the newest 50), then `alert` for each alert raised or changed; an id is `{timestamp}/{alertId}` of the newest alert raised |
//!
//! The store comes from `X-Store-ID`, or from `?store=` because a browser's
//! `EventSource` cannot send headers. A reconnecting `EventSource` sends
//! `Last-Event-ID`, and the stream goes on after it: the milestones after the
//! count it names, the alerts raised after the one it names (with no
//! snapshot). A malformed `Last-Event-ID` is `400 invalid_last_event_id`.
//!
//! Nothing is buffered per connection: a stream reads what it sends from the
//! store when the engine commits an event about it ([`Engine::watch`]), and
//! every [`RESYNC`] in case another process did, and the next message waits
//! until the client took the last one. Streams of the same store and view
//! woken by the same commit share one read: a thousand clients of a store's
//! alerts cost one read of the store per wake, not a thousand. A client may hold at most
//! [`MAX_STREAMS_PER_CLIENT`] streams (by its address, when the server
//! records it with `into_make_service_with_connect_info`), the server at most
//! [`MAX_STREAMS`]; beyond, `429 too_many_streams`. A closed socket ends its
//! stream and frees its place.
//!
//! With API keys on ([`HttpOptions::api_keys`]), a stream needs a key of its
//! store with the read scope, in `Authorization` as on the API routes (a
//! browser reads the stream with `fetch`, since `EventSource` sends no
//! headers): `401` without a live key, `403` for another store's.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::stream::{self, Stream};
use serde_json::{json, Value};

mod reads;

use reads::{SharedReads, Slot};
use tokio::time::Instant;

use crate::api::ApiResponse;
use crate::engine::{Engine, Watch, Watched};
use crate::event::TenantId;
use crate::http::{check_store_key, from_api_response, AuthOptions, HttpOptions, BEARER};

/// How often a stream re-reads the store when no event woke it: changes
/// another process committed show within this.
pub const RESYNC: Duration = Duration::from_secs(2);

/// The most streams one client address may hold at once.
pub const MAX_STREAMS_PER_CLIENT: usize = 16;

/// The most streams the server holds at once.
pub const MAX_STREAMS: usize = 10_000;

/// Alerts a snapshot holds, newest first.
const SNAPSHOT_ALERTS: usize = 50;

/// The live routes as an axum [`Router`], with the CORS settings of `options`
/// (its tenant header is not used: the store is `X-Store-ID` or `?store=`).
/// Merge it beside [`api_router`](crate::http::api_router).
///
/// ```no_run
/// # async fn serve(engine: flowline::Engine) -> std::io::Result<()> {
/// use flowline::http::{api_router, HttpOptions};
/// use flowline::orderflow::{live_router, STORE_HEADER};
/// let options = HttpOptions::new().tenant_header(STORE_HEADER);
/// let app = live_router(engine.clone(), &options).merge(api_router(engine, options));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
/// axum::serve(listener, app).await
/// # }
/// ```
pub fn live_router(engine: Engine, options: &HttpOptions) -> Router {
    let state = Live {
        engine,
        places: Arc::new(Places::default()),
        reads: Arc::new(SharedReads::default()),
        auth: options.auth().cloned(),
    };
    let router = Router::new()
        .route("/api/order/{orderId}/events", get(order_events))
        .route("/api/alerts/stream", get(alert_events))
        .with_state(state);
    match options.cors_settings().layer(options.tenant_header_name()) {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

#[derive(Clone)]
struct Live {
    engine: Engine,
    places: Arc<Places>,
    reads: Arc<SharedReads>,
    /// The API keys, when the API routes require them (read scope here).
    auth: Option<AuthOptions>,
}

/// Streams held, in all and per client address.
#[derive(Default)]
struct Places {
    held: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// A stream's place; given back when the stream is dropped (the client left).
struct Place {
    places: Arc<Places>,
    client: Option<IpAddr>,
}

impl Places {
    fn take(self: &Arc<Self>, client: Option<IpAddr>) -> Option<Place> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.0 >= MAX_STREAMS {
            return None;
        }
        if let Some(ip) = client {
            let mine = held.1.entry(ip).or_insert(0);
            if *mine >= MAX_STREAMS_PER_CLIENT {
                return None;
            }
            *mine += 1;
        }
        held.0 += 1;
        Some(Place {
            places: self.clone(),
            client,
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut held = self.places.held.lock().unwrap_or_else(|e| e.into_inner());
        held.0 -= 1;
        if let Some(ip) = self.client {
            if let Some(mine) = held.1.get_mut(&ip) {
                *mine -= 1;
                if *mine == 0 {
                    held.1.remove(&ip);
                }
            }
        }
    }
}

fn error(status: u16, code: &str, message: impl Into<String>) -> Response {
    from_api_response(ApiResponse::error(status, code, message))
}

/// The store: `X-Store-ID`, else `?store=`.
fn store_of(headers: &HeaderMap, query: Option<&str>) -> Result<TenantId, ApiResponse> {
    let from_query = query.and_then(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(name, _)| *name == "store")
            .map(|(_, value)| value.to_string())
    });
    let value = headers
        .get(super::STORE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(from_query)
        .ok_or_else(|| {
            ApiResponse::error(
                400,
                "missing_store",
                "the X-Store-ID header or the store query parameter is required",
            )
        })?;
    TenantId::new(value.trim())
        .map_err(|e| ApiResponse::error(400, "invalid_store", format!("store: {e}")))
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<String>, ApiResponse> {
    match headers.get("last-event-id") {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .filter(|v| v.len() <= 512)
            .map(|v| Some(v.trim().to_string()))
            .ok_or_else(|| {
                ApiResponse::error(
                    400,
                    "invalid_last_event_id",
                    "Last-Event-ID is not readable",
                )
            }),
    }
}

fn client_of(request: &Request) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
}

/// How long a stream lets more events come before it reads, once one woke
/// it: the steps that follow an event (the alert listener, say) commit in
/// that time, and a burst of events costs one read, not one each.
const COALESCE: Duration = Duration::from_millis(100);

/// Waits until the engine commits an event of the store whose payload has
/// `hint` (then [`COALESCE`] more), the watcher missed some, or [`RESYNC`]
/// passed; the moment it was woken, which a read must start after to show
/// what woke it.
async fn woken(watch: &mut Watch, store: &TenantId, hint: &str) -> Instant {
    let wait = async {
        loop {
            match watch.recv().await {
                Some(Watched::Event(event)) => {
                    if &event.tenant == store && event.payload.as_json().contains(hint) {
                        return true;
                    }
                }
                Some(Watched::Missed(_)) => return true,
                // The engine is gone: only the timer is left.
                None => std::future::pending::<()>().await,
            }
        }
    };
    let woke = tokio::time::timeout(RESYNC, wait).await;
    let at = Instant::now();
    if let Ok(true) = woke {
        tokio::time::sleep(COALESCE).await;
    }
    at
}

/// What opening a stream checked and read: the store, where the client
/// resumes (its `Last-Event-ID` as `parse` reads it), the first read of
/// `path` and the slot it came from, and the stream's place.
struct Opened<T> {
    store: TenantId,
    resume: Option<T>,
    slot: Arc<Slot>,
    first: Arc<ApiResponse>,
    place: Place,
}

/// Checks a stream's request, reads `path` once, and takes a place; the
/// answer to send instead when any of it fails.
async fn open<T>(
    live: &Live,
    request: Request,
    path: &str,
    parse: impl Fn(&str) -> Option<T>,
    rule: &str,
) -> Result<Opened<T>, Response> {
    // Only the parts: a request's body is not `Sync`, and this awaits.
    let client = client_of(&request);
    let (parts, _) = request.into_parts();
    let headers = &parts.headers;
    let store = store_of(headers, parts.uri.query()).map_err(from_api_response)?;
    if let Some(auth) = &live.auth {
        check_store_key(auth, headers, &parts.method, Ok(store.clone()))
            .await
            .map_err(|denied| denied.into_response(BEARER))?;
    }
    let resume = match last_event_id(headers).map_err(from_api_response)? {
        None => None,
        Some(id) => Some(parse(&id).ok_or_else(|| error(400, "invalid_last_event_id", rule))?),
    };
    let slot = live.reads.slot(&live.engine, &store, path);
    let first = slot.read_since(Instant::now()).await;
    if first.status != 200 {
        return Err(from_api_response((*first).clone()));
    }
    let place = live
        .places
        .take(client)
        .ok_or_else(|| error(429, "too_many_streams", "too many live streams; close one"))?;
    Ok(Opened {
        store,
        resume,
        slot,
        first,
        place,
    })
}

fn sse(events: impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static) -> Response {
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn order_events(
    State(live): State<Live>,
    Path(order_id): Path<String>,
    request: Request,
) -> Response {
    let path = format!("/api/order/tracking/{order_id}");
    let rule = "Last-Event-ID of an order's stream is the number of milestones seen";
    let opened = match open(&live, request, &path, |id| id.parse::<usize>().ok(), rule).await {
        Ok(opened) => opened,
        Err(refused) => return refused,
    };
    let hint = serde_json::to_string(&json!({ "orderId": order_id }))
        .map(|s| s.trim_start_matches('{').trim_end_matches('}').to_string())
        .unwrap_or_default();
    let stream = OrderStream {
        watch: live.engine.watch(),
        slot: opened.slot,
        store: opened.store,
        hint,
        sent: opened.resume.unwrap_or(0),
        status: None,
        next: Some(opened.first),
        _place: opened.place,
    };
    sse(stream::unfold(stream, |mut s| async move {
        let event = s.next_event().await;
        Some((Ok(event), s))
    }))
}

struct OrderStream {
    slot: Arc<Slot>,
    watch: Watch,
    store: TenantId,
    /// `"orderId":"…"`, as the order's events carry it.
    hint: String,
    sent: usize,
    status: Option<Value>,
    /// A read not yet looked at.
    next: Option<Arc<ApiResponse>>,
    _place: Place,
}

impl OrderStream {
    async fn next_event(&mut self) -> SseEvent {
        loop {
            let answer = match self.next.take() {
                Some(answer) => answer,
                None => {
                    let since = woken(&mut self.watch, &self.store, &self.hint).await;
                    self.slot.read_since(since).await
                }
            };
            if answer.status != 200 {
                continue;
            }
            let history = answer.body["history"]
                .as_array()
                .map_or(&[][..], Vec::as_slice);
            let status = &answer.body["status"];
            if history.len() <= self.sent && self.status.as_ref() == Some(status) {
                continue;
            }
            // Only the milestones not sent yet are copied out of the shared read.
            let new = history.get(self.sent..).unwrap_or_default().to_vec();
            self.sent = self.sent.max(history.len());
            self.status = Some(status.clone());
            let data = json!({
                "orderId": answer.body["orderId"],
                "status": status,
                "history": new,
            });
            return SseEvent::default()
                .event("order")
                .id(self.sent.to_string())
                .data(data.to_string());
        }
    }
}

/// An alert's place in the order alerts were raised: its time, then its id.
fn cursor_of(alert: &Value) -> Option<(i64, String)> {
    Some((
        alert["timestamp"].as_i64()?,
        alert["id"].as_str()?.to_string(),
    ))
}

fn parse_cursor(id: &str) -> Option<(i64, String)> {
    let (at, alert) = id.split_once('/')?;
    Some((at.parse().ok()?, alert.to_string()))
}

async fn alert_events(State(live): State<Live>, request: Request) -> Response {
    let path = format!("/api/alerts?limit={SNAPSHOT_ALERTS}");
    let rule = "Last-Event-ID of the alerts stream is {timestamp}/{alertId}";
    let Opened {
        store,
        resume,
        slot,
        first,
        place,
    } = match open(&live, request, &path, parse_cursor, rule).await {
        Ok(opened) => opened,
        Err(refused) => return refused,
    };
    let mut stream = AlertStream {
        watch: live.engine.watch(),
        slot,
        store,
        cursor: resume.clone().unwrap_or((i64::MIN, String::new())),
        seen: HashMap::new(),
        ready: VecDeque::new(),
        next: None,
        _place: place,
    };
    let alerts = first.body["alerts"].as_array().cloned().unwrap_or_default();
    if resume.is_none() {
        stream.remember(&alerts);
        let snapshot = json!({ "alerts": alerts });
        let mut event = SseEvent::default()
            .event("snapshot")
            .data(snapshot.to_string());
        if let Some(newest) = alerts.iter().filter_map(cursor_of).max() {
            event = event.id(format!("{}/{}", newest.0, newest.1));
            stream.cursor = newest;
        }
        stream.ready.push_back(event);
    } else {
        stream.next = Some(first);
    }
    sse(stream::unfold(stream, |mut s| async move {
        let event = s.next_event().await;
        Some((Ok(event), s))
    }))
}

struct AlertStream {
    slot: Arc<Slot>,
    watch: Watch,
    store: TenantId,
    /// The newest alert raised that this client has.
    cursor: (i64, String),
    /// Each alert's state as last sent (of the newest listed).
    seen: HashMap<String, Value>,
    ready: VecDeque<SseEvent>,
    next: Option<Arc<ApiResponse>>,
    _place: Place,
}

impl AlertStream {
    fn remember(&mut self, alerts: &[Value]) {
        self.seen = alerts
            .iter()
            .filter_map(|a| Some((a["id"].as_str()?.to_string(), a["state"].clone())))
            .collect();
    }

    async fn next_event(&mut self) -> SseEvent {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return event;
            }
            let answer = match self.next.take() {
                Some(answer) => answer,
                None => {
                    // Any event of the store may raise or move an alert.
                    let since = woken(&mut self.watch, &self.store, "").await;
                    self.slot.read_since(since).await
                }
            };
            if answer.status != 200 {
                continue;
            }
            let alerts = answer.body["alerts"]
                .as_array()
                .map_or(&[][..], Vec::as_slice);
            // Oldest first, so a client shows them in the order they came.
            for alert in alerts.iter().rev() {
                let (Some(id), Some(cursor)) = (alert["id"].as_str(), cursor_of(alert)) else {
                    continue;
                };
                let raised = cursor > self.cursor;
                let moved = self
                    .seen
                    .get(id)
                    .is_some_and(|state| *state != alert["state"]);
                if !raised && !moved {
                    continue;
                }
                if raised {
                    self.cursor = cursor;
                }
                self.ready.push_back(
                    SseEvent::default()
                        .event("alert")
                        .id(format!("{}/{}", self.cursor.0, self.cursor.1))
                        .data(alert.to_string()),
                );
            }
            self.remember(alerts);
        }
    }
}
