//! Live updates over server-sent events, over a real socket: an order's
//! stream follows it to delivered and resumes after the milestones a client
//! saw; the alerts stream starts with a snapshot and pushes new alerts; bad
//! input gets a JSON answer; a client holding too many streams is refused,
//! and a closed socket frees its place.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use flowline::http::{api_router, HttpOptions};
use flowline::orderflow::{live_router, MAX_STREAMS_PER_CLIENT, STORE_HEADER};
use flowline::{ApiRequest, Engine, Method, TenantId};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

#[path = "support/orderflow_demo.rs"]
mod demo;

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

struct Served {
    base: String,
    engine: Engine,
    http: Http,
}

async fn serve() -> Served {
    let engine = demo::instant_demo_engine().await;
    let options = HttpOptions::new().tenant_header(STORE_HEADER);
    let app = live_router(engine.clone(), &options).merge(api_router(engine.clone(), options));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    Served {
        base,
        engine,
        http: Client::builder(TokioExecutor::new()).build_http(),
    }
}

/// One server-sent event.
#[derive(Debug, Default, Clone)]
struct Sse {
    event: String,
    id: Option<String>,
    data: Value,
}

/// An open stream, read event by event.
struct Stream {
    body: Body,
    buffer: String,
}

impl Stream {
    async fn next(&mut self) -> Sse {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut sse = Sse::default();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        sse.event = v.to_string();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        sse.id = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        sse.data = serde_json::from_str(v).unwrap();
                    }
                }
                if sse.event.is_empty() {
                    continue; // a keep-alive comment
                }
                return sse;
            }
            let frame = tokio::time::timeout(Duration::from_secs(20), self.body.frame())
                .await
                .expect("an event within 20 s")
                .expect("the stream stays open")
                .unwrap();
            if let Ok(bytes) = frame.into_data() {
                self.buffer.push_str(std::str::from_utf8(&bytes).unwrap());
            }
        }
    }
}

impl Served {
    async fn open(&self, path: &str, last_event_id: Option<&str>) -> Result<Stream, (u16, Value)> {
        let mut request = Request::get(format!("{}{path}", self.base));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = self
            .http
            .request(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = Body::new(response.into_body());
        if status != 200 {
            let bytes = body.collect().await.unwrap().to_bytes();
            return Err((
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            ));
        }
        Ok(Stream {
            body,
            buffer: String::new(),
        })
    }

    async fn place(&self, id: &str) {
        let order = json!({
            "orderId": id,
            "customerName": "Ada",
            "items": [{ "productId": "prod-x-001", "quantity": 1 }],
        });
        let answer = self
            .engine
            .call(ApiRequest::new(Method::Post, "/api/order", store()).json(order))
            .await;
        assert_eq!(answer.status, 201, "{:?}", answer.body);
    }

    async fn history(&self, id: &str) -> Vec<Value> {
        let path = format!("/api/order/tracking/{id}");
        let answer = self
            .engine
            .call(ApiRequest::new(Method::Get, path, store()))
            .await;
        answer.body["history"].as_array().unwrap().clone()
    }
}

fn store() -> TenantId {
    TenantId::new("X").unwrap()
}

#[tokio::test]
async fn an_order_stream_follows_the_order_to_delivered_and_resumes_after_what_was_seen() {
    let served = serve().await;
    served.place("live-1").await;
    let mut stream = served
        .open("/api/order/live-1/events?store=X", None)
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut last_id = 0;
    loop {
        let sse = stream.next().await;
        assert_eq!(sse.event, "order");
        assert_eq!(sse.data["orderId"], "live-1");
        seen.extend(sse.data["history"].as_array().unwrap().iter().cloned());
        let id: usize = sse.id.unwrap().parse().unwrap();
        assert!(id >= last_id, "ids never go back");
        assert_eq!(id, seen.len(), "the id counts the milestones sent");
        last_id = id;
        if sse.data["status"] == "delivered" {
            break;
        }
    }
    assert_eq!(
        seen,
        served.history("live-1").await,
        "every milestone, once, in order"
    );

    // A reconnecting client names the count it saw and gets the rest.
    let mut resumed = served
        .open("/api/order/live-1/events?store=X", Some("3"))
        .await
        .unwrap();
    let sse = resumed.next().await;
    assert_eq!(sse.data["history"].as_array().unwrap()[..], seen[3..]);
    assert_eq!(sse.id.as_deref(), Some(seen.len().to_string().as_str()));
}

#[tokio::test]
async fn the_alerts_stream_starts_with_a_snapshot_then_pushes_new_alerts() {
    let served = serve().await;
    served.place("live-2").await;
    served.engine.wait_idle().await;
    let mut stream = served
        .open("/api/alerts/stream?store=X", None)
        .await
        .unwrap();
    let snapshot = stream.next().await;
    assert_eq!(snapshot.event, "snapshot");
    let alerts = snapshot.data["alerts"].as_array().unwrap();
    assert!(
        alerts.iter().any(|a| a["id"] == "order_created:live-2"),
        "{alerts:?}"
    );
    let cursor = snapshot.id.expect("the newest alert's place");

    served.place("live-3").await;
    let pushed = stream.next().await;
    assert_eq!(pushed.event, "alert");
    assert_eq!(pushed.data["id"], "order_created:live-3");

    // Resumed from the snapshot's place: only what was raised after it.
    let mut resumed = served
        .open("/api/alerts/stream?store=X", Some(&cursor))
        .await
        .unwrap();
    let missed = resumed.next().await;
    assert_eq!(missed.event, "alert");
    assert_eq!(missed.data["id"], "order_created:live-3");
}

#[tokio::test]
async fn bad_requests_get_json_answers_not_streams() {
    let served = serve().await;
    served.place("live-4").await;
    let cases = [
        ("/api/order/live-4/events", None, 400, "missing_store"),
        (
            "/api/order/live-4/events?store=bad%20id",
            None,
            400,
            "invalid_store",
        ),
        (
            "/api/order/nope/events?store=X",
            None,
            404,
            "order_not_found",
        ),
        (
            "/api/order/live-4/events?store=X",
            Some("three"),
            400,
            "invalid_last_event_id",
        ),
        (
            "/api/order/live-4/events?store=X",
            Some("-1"),
            400,
            "invalid_last_event_id",
        ),
        (
            "/api/alerts/stream?store=X",
            Some("yesterday"),
            400,
            "invalid_last_event_id",
        ),
        (
            "/api/alerts/stream?store=nowhere",
            None,
            400,
            "unknown_store",
        ),
    ];
    for (path, last, status, code) in cases {
        let Err((got, body)) = served.open(path, last).await else {
            panic!("{path} {last:?} opened a stream");
        };
        assert_eq!(
            (got, body["code"].as_str()),
            (status, Some(code)),
            "{path} {last:?}"
        );
    }
}

#[tokio::test]
async fn a_client_holding_too_many_streams_is_refused_until_it_closes_one() {
    let served = serve().await;
    served.place("live-5").await;
    let path = "/api/order/live-5/events?store=X";
    let mut held = Vec::new();
    for _ in 0..MAX_STREAMS_PER_CLIENT {
        let mut stream = served.open(path, None).await.unwrap();
        stream.next().await;
        held.push(stream);
    }
    let Err((status, body)) = served.open(path, None).await else {
        panic!("one stream too many was opened");
    };
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("too_many_streams"))
    );

    // Closing a socket frees its place.
    drop(held.pop());
    let mut reopened = None;
    for _ in 0..50 {
        if let Ok(stream) = served.open(path, None).await {
            reopened = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reopened.expect("a place is free again").next().await;
}

/// How often the store's alerts have been read (the `alerts_api` step's runs).
fn alert_reads(engine: &Engine) -> u64 {
    engine
        .step_metrics()
        .into_iter()
        .find(|m| m.step == "alerts_api")
        .map_or(0, |m| m.processed)
}

#[tokio::test]
async fn clients_of_one_store_woken_together_share_one_read() {
    // As many as one client address may hold.
    const CLIENTS: usize = MAX_STREAMS_PER_CLIENT;
    let served = serve().await;
    served.engine.wait_idle().await;
    let mut streams = Vec::new();
    for _ in 0..CLIENTS {
        let mut stream = served
            .open("/api/alerts/stream?store=X", None)
            .await
            .unwrap();
        assert_eq!(stream.next().await.event, "snapshot");
        streams.push(stream);
    }
    let before = alert_reads(&served.engine);

    served.place("live-shared").await;
    for stream in &mut streams {
        let pushed = stream.next().await;
        assert_eq!(pushed.data["id"], "order_created:live-shared");
    }
    // One commit woke them all; a few wakes (the order's later steps, a
    // resync) may follow, each one read, never one read a client.
    let reads = alert_reads(&served.engine) - before;
    assert!(
        reads < CLIENTS as u64 / 2,
        "{reads} reads for {CLIENTS} clients"
    );
}
