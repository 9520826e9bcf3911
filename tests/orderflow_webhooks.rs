//! The whole order system over HTTP with webhooks: each store registers an
//! endpoint through the admin API; store X's receiver fails every other
//! request, Y's hangs past the timeout on every third, Z's is down for the
//! first 10 s. Orders are placed over HTTP with API keys. In the end every
//! message of every store is delivered, verified, and (de-duplicated by
//! `webhook-id`) recorded exactly once, and each order's events are among
//! them once each. An endpoint disabled for failing raises the store's alert.

use std::collections::{HashMap, HashSet};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::post;
use axum::Router;
use flowline::http::{api_router, webhooks_router, ApiKeys, HttpOptions, KeyOwner};
use flowline::orderflow::{self, MockCarrier, MockGateway, Orderflow, Timings, STORE_HEADER};
use flowline::webhooks::{
    verify, DeliveryState, Destinations, EndpointSpec, Signed, WebhookOptions, WebhookSecret,
    Webhooks,
};
use flowline::{ApiRequest, Clock, Engine, MemoryBackend, Method, TenantId};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

const ORDERS: usize = 8;

#[derive(Clone, Copy, PartialEq)]
enum Mood {
    FailsEveryOther,
    HangsEveryThird,
    Fine,
}

/// An event as a message names it: its topic and its order.
type Named = (String, String);

#[derive(Clone)]
struct Receiver {
    mood: Mood,
    secret: Arc<Mutex<Option<WebhookSecret>>>,
    requests: Arc<Mutex<usize>>,
    /// Verified messages by `webhook-id`: (topic, order id) and how many
    /// times each arrived.
    received: Arc<Mutex<HashMap<String, (Named, usize)>>>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = {
        let mut requests = r.requests.lock().unwrap();
        *requests += 1;
        *requests
    };
    match r.mood {
        Mood::FailsEveryOther if n % 2 == 0 => return StatusCode::INTERNAL_SERVER_ERROR,
        Mood::HangsEveryThird if n % 3 == 0 => {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        _ => {}
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let signed = Signed {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signatures: header("webhook-signature"),
    };
    let secret = r.secret.lock().unwrap().clone().expect("registered first");
    let now = chrono::Utc::now().timestamp();
    if verify(&[secret], &signed, &body, now).is_err() {
        return StatusCode::UNAUTHORIZED;
    }
    let message: Value = serde_json::from_slice(&body).unwrap();
    let topic = message["type"].as_str().unwrap().to_string();
    let order = message["data"]["orderId"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let mut received = r.received.lock().unwrap();
    received
        .entry(signed.id.to_string())
        .or_insert(((topic, order), 0))
        .1 += 1;
    StatusCode::NO_CONTENT
}

/// A receiver on its own port; with `down_for`, nothing listens there until
/// that time has passed.
async fn receiver(mood: Mood, down_for: Duration) -> (Receiver, String) {
    let r = Receiver {
        mood,
        secret: Arc::default(),
        requests: Arc::default(),
        received: Arc::default(),
    };
    let app = Router::new()
        .route("/hooks", post(receive))
        .with_state(r.clone());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hooks");
    tokio::spawn(async move {
        tokio::time::sleep(down_for).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        axum::serve(listener, app).await
    });
    (r, url)
}

async fn call(
    app: &Router,
    method: &str,
    path: &str,
    store: &str,
    key: &str,
    body: Value,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("x-store-id", store)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The order system with `webhooks`, on memory, the demo stores seeded.
async fn orderflow_with(webhooks: &Webhooks) -> Engine {
    let gateway = MockGateway::builder().build(Clock::system()).unwrap();
    let flow = Orderflow::new(gateway, MockCarrier::new(1))
        .timings(Timings::default().instant_delivery())
        .flow_with(Orderflow::webhook_steps(webhooks).unwrap())
        .unwrap();
    let engine = Engine::builder(flow)
        .backend(MemoryBackend::new())
        .start()
        .await
        .unwrap();
    orderflow::bootstrap(&engine, &orderflow::demo_stores())
        .await
        .unwrap();
    orderflow::seed_demo(&engine).await.unwrap();
    // The stores' registration runs as steps: done before any order.
    engine.wait_idle().await;
    engine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_gets_every_event_once_from_receivers_that_fail_hang_or_are_down() {
    let webhooks = Webhooks::new(orderflow::WEBHOOK_TOPICS).options(
        WebhookOptions::default()
            .destinations(Destinations::public_only().allow_loopback())
            .timeout(Duration::from_millis(500))
            .backoff(Duration::from_millis(50), Duration::from_secs(1))
            .give_up_after(1000, Duration::from_secs(600)),
    );
    let engine = orderflow_with(&webhooks).await;

    let keys = ApiKeys::new(engine.clone());
    let operator = keys.create(KeyOwner::Operator, &[], "test").await.unwrap();
    let key = operator.secret().to_string();
    let options = HttpOptions::new()
        .tenant_header(STORE_HEADER)
        .api_keys(orderflow::auth_options(keys.clone()));
    let app = webhooks_router(webhooks.endpoints(engine.clone()), keys.clone())
        .merge(api_router(engine.clone(), options));

    let mut receivers = Vec::new();
    for (store, mood, down) in [
        ("X", Mood::FailsEveryOther, Duration::ZERO),
        ("Y", Mood::HangsEveryThird, Duration::ZERO),
        ("Z", Mood::Fine, Duration::from_secs(10)),
    ] {
        let (r, url) = receiver(mood, down).await;
        let path = format!("/admin/stores/{store}/webhooks");
        let (status, registered) = call(
            &app,
            "POST",
            &path,
            store,
            &key,
            json!({ "url": url, "topics": ["*"] }),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{registered}");
        *r.secret.lock().unwrap() =
            Some(WebhookSecret::parse(registered["secret"].as_str().unwrap()).unwrap());
        receivers.push((store, r, registered["id"].as_str().unwrap().to_string()));
    }

    let mut placed = Vec::new();
    for n in 0..ORDERS {
        for (store, product) in [
            ("X", "prod-x-001"),
            ("Y", "prod-y-001"),
            ("Z", "prod-z-001"),
        ] {
            let id = format!("hook-{store}-{n}");
            let order = json!({
                "orderId": id,
                "customerName": "Ada",
                "items": [{ "productId": product, "quantity": 1 }],
            });
            let (status, body) = call(&app, "POST", "/api/order", store, &key, order).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            placed.push((store, id));
        }
    }

    // Every store's log ends with every message delivered.
    let endpoints = webhooks.endpoints(engine.clone());
    for (store, r, endpoint) in &receivers {
        let tenant = TenantId::new(*store).unwrap();
        let mut done = false;
        for _ in 0..900 {
            let log = endpoints
                .deliveries(&tenant, endpoint, 10_000)
                .await
                .unwrap();
            let delivered = log
                .iter()
                .filter(|m| m.state == DeliveryState::Delivered)
                .count();
            if !log.is_empty()
                && delivered == log.len()
                && r.received.lock().unwrap().len() == log.len()
            {
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(done, "store {store}'s messages all delivered");
    }

    for (store, r, endpoint) in &receivers {
        let received = r.received.lock().unwrap().clone();
        let unique: HashSet<&Named> = received.values().map(|(what, _)| what).collect();
        assert_eq!(
            unique.len(),
            received.len(),
            "store {store}: no event in two messages"
        );
        for (_, id) in placed.iter().filter(|(s, _)| s == store) {
            for topic in [
                "order.created",
                "payment.processed",
                "order.completed",
                "delivery.shipped",
                "delivery.delivered",
            ] {
                assert!(
                    unique.contains(&(topic.to_string(), id.clone())),
                    "store {store}: {topic} of {id}"
                );
            }
        }
        // Each receiver's trouble (errors, timeouts, refused connections)
        // made the sender try again; the log keeps those attempts.
        let tenant = TenantId::new(*store).unwrap();
        let log = endpoints
            .deliveries(&tenant, endpoint, 10_000)
            .await
            .unwrap();
        assert!(
            log.iter().any(|m| m.attempts.len() > 1),
            "store {store}: some message took more than one attempt"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_disabled_for_failing_raises_the_store_s_alert() {
    let webhooks = Webhooks::new(orderflow::WEBHOOK_TOPICS).options(
        WebhookOptions::default()
            .destinations(Destinations::public_only().allow_loopback())
            .give_up_after(1, Duration::from_secs(60))
            .disable_after(Duration::ZERO),
    );
    let engine = orderflow_with(&webhooks).await;
    // Nothing listens at this port: every attempt is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = TenantId::new("X").unwrap();
    let url = format!("http://127.0.0.1:{port}/hooks");
    webhooks
        .endpoints(engine.clone())
        .register(&store, EndpointSpec::new(&url, ["order.created"]))
        .await
        .unwrap();
    let order = json!({
        "orderId": "hook-alert-1",
        "customerName": "Ada",
        "items": [{ "productId": "prod-x-001", "quantity": 1 }],
    });
    let placed = engine
        .call(ApiRequest::new(Method::Post, "/api/order", store.clone()).json(order))
        .await;
    assert_eq!(placed.status, 201, "{:?}", placed.body);
    engine.wait_idle().await;
    let alerts = engine
        .call(ApiRequest::new(Method::Get, "/api/alerts", store))
        .await;
    let titles: Vec<&str> = alerts.body["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["title"].as_str())
        .collect();
    assert!(titles.contains(&"Webhook Endpoint Disabled"), "{titles:?}");
}
