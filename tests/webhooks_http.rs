//! A store's webhook endpoints over HTTP: bad registrations are `400` with a
//! code and keep nothing; only the store's `admin` key (or the operator's)
//! manages them; a receiver answering garbage (an endless body, bytes that
//! are not HTTP) fails its own deliveries and holds up no one else's.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use axum::Router;
use flowline::http::{webhooks_router, ApiKeys, KeyOwner, Scope};
use flowline::webhooks::{DeliveryState, Destinations, EndpointSpec, WebhookOptions, Webhooks};
use flowline::{Engine, Event, Flow, MemoryBackend, TenantId};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tower::ServiceExt;

#[derive(Serialize, Deserialize)]
struct OrderCreated {
    order: u32,
}
impl Event for OrderCreated {
    const TOPIC: &'static str = "order.created";
}

struct Setup {
    engine: Engine,
    webhooks: Webhooks,
    keys: ApiKeys,
    app: Router,
}

async fn setup() -> Setup {
    let webhooks = Webhooks::new([OrderCreated::TOPIC]).options(
        WebhookOptions::default()
            .destinations(Destinations::public_only().allow_loopback())
            .timeout(Duration::from_millis(500))
            .backoff(Duration::from_millis(10), Duration::from_millis(50))
            .give_up_after(3, Duration::from_secs(60)),
    );
    let flow = Flow::builder()
        .steps(webhooks.steps().unwrap())
        .build()
        .unwrap();
    let engine = Engine::builder(flow)
        .backend(MemoryBackend::new())
        .start()
        .await
        .unwrap();
    let keys = ApiKeys::new(engine.clone());
    let app = webhooks_router(webhooks.endpoints(engine.clone()), keys.clone());
    Setup {
        engine,
        webhooks,
        keys,
        app,
    }
}

async fn call(
    app: &Router,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {key}"));
    let body = match body {
        Some(body) => {
            request = request.header("content-type", "application/json");
            Body::from(body.to_string())
        }
        None => Body::empty(),
    };
    let response = app
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn key(keys: &ApiKeys, store: &str, scopes: &[&str]) -> String {
    let scopes: Vec<Scope> = scopes.iter().map(|s| Scope::new(*s).unwrap()).collect();
    let owner = KeyOwner::Store(TenantId::new(store).unwrap());
    keys.create(owner, &scopes, "test")
        .await
        .unwrap()
        .secret()
        .to_string()
}

#[tokio::test]
async fn bad_registrations_are_400_with_a_code_and_keep_nothing() {
    let setup = setup().await;
    let admin = key(&setup.keys, "X", &["admin"]).await;
    let path = "/admin/stores/X/webhooks";
    let huge_secret = format!("whsec_{}", "A".repeat(4000));
    for (body, code) in [
        (
            json!({ "url": "not a url", "topics": ["order.*"] }),
            "invalid_url",
        ),
        (
            json!({ "url": "ftp://example.com/", "topics": ["order.*"] }),
            "unsupported_scheme",
        ),
        (
            json!({ "url": "gopher://example.com/", "topics": ["order.*"] }),
            "unsupported_scheme",
        ),
        (
            json!({ "url": "http://169.254.169.254/latest", "topics": ["order.*"] }),
            "refused_destination",
        ),
        (
            json!({ "url": "http://10.0.0.7/", "topics": ["order.*"] }),
            "refused_destination",
        ),
        (
            json!({ "url": "https://example.com/", "topics": ["refund.*"] }),
            "unknown_topic",
        ),
        (
            json!({ "url": "https://example.com/", "topics": ["Order Created"] }),
            "invalid_topic_pattern",
        ),
        (
            json!({ "url": "https://example.com/", "topics": [] }),
            "topic_count",
        ),
        (
            json!({ "url": "https://example.com/", "topics": ["order.*"], "secret": huge_secret }),
            "invalid_secret",
        ),
        (
            json!({ "url": "https://example.com/", "topics": ["order.*"], "secret": "plain" }),
            "invalid_secret",
        ),
        (
            json!({ "url": "https://example.com/", "topics": ["order.*"], "extra": true }),
            "invalid_body",
        ),
        (json!({ "url": 5 }), "invalid_body"),
    ] {
        let (status, answer) = call(&setup.app, "POST", path, &admin, Some(body.clone())).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{body}"
        );
    }
    let (status, listed) = call(&setup.app, "GET", path, &admin, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["endpoints"], json!([]));
    let (status, answer) = call(
        &setup.app,
        "GET",
        "/admin/stores/X/webhooks/ep_0123456789abcdef",
        &admin,
        None,
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("endpoint_not_found"))
    );
    let (status, answer) = call(
        &setup.app,
        "GET",
        "/admin/stores/bad%20id/webhooks",
        &admin,
        None,
    )
    .await;
    assert!(status.is_client_error(), "{status} {answer}");
}

#[tokio::test]
async fn only_the_store_s_admin_key_or_the_operator_manages_its_endpoints() {
    let setup = setup().await;
    let writer = key(&setup.keys, "X", &["orders:write"]).await;
    let other_admin = key(&setup.keys, "Y", &["admin"]).await;
    let operator = setup
        .keys
        .create(KeyOwner::Operator, &[], "ops")
        .await
        .unwrap();
    let path = "/admin/stores/X/webhooks";
    assert_eq!(
        call(&setup.app, "GET", path, "flk_nonsense", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&setup.app, "GET", path, &writer, None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&setup.app, "GET", path, &other_admin, None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&setup.app, "GET", path, operator.secret(), None)
            .await
            .0,
        StatusCode::OK
    );
}

/// A receiver that answers with a body that never ends.
async fn endless() -> String {
    let app = Router::new().route(
        "/hooks",
        post(|| async {
            let chunks =
                futures::stream::repeat_with(|| Ok::<_, std::io::Error>(vec![b'x'; 64 * 1024]));
            axum::response::Response::new(Body::from_stream(chunks))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A "receiver" that answers bytes that are not HTTP, then hangs up.
async fn not_http() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let _ = socket.write_all(b"\x00\xffgarbage\r\n\r\n").await;
        }
    });
    url
}

async fn fine() -> String {
    let app = Router::new().route("/hooks", post(|| async { StatusCode::NO_CONTENT }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_answering_garbage_fail_their_own_deliveries_only() {
    let setup = setup().await;
    let endpoints = setup.webhooks.endpoints(setup.engine.clone());
    let mut registered = Vec::new();
    for (store, url) in [
        ("X", endless().await),
        ("Y", not_http().await),
        ("Z", fine().await),
    ] {
        let tenant = TenantId::new(store).unwrap();
        let endpoint = endpoints
            .register(&tenant, EndpointSpec::new(url, ["order.*"]))
            .await
            .unwrap();
        registered.push((tenant, endpoint.endpoint.id));
    }
    for order in 0..5 {
        for (tenant, _) in &registered {
            setup
                .engine
                .emit(tenant, &OrderCreated { order })
                .await
                .unwrap();
        }
    }
    let (z, z_endpoint) = &registered[2];
    let mut delivered = 0;
    for _ in 0..300 {
        let log = endpoints.deliveries(z, z_endpoint, 100).await.unwrap();
        delivered = log
            .iter()
            .filter(|m| m.state == DeliveryState::Delivered)
            .count();
        if delivered == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        delivered, 5,
        "store Z's healthy endpoint got all its messages"
    );

    // The endless body is read only as far as the log keeps it, and the
    // answer still counts (2xx); the garbage is a failed attempt, logged.
    let (x, x_endpoint) = &registered[0];
    let (y, y_endpoint) = &registered[1];
    for _ in 0..300 {
        let x_log = endpoints.deliveries(x, x_endpoint, 100).await.unwrap();
        let y_log = endpoints.deliveries(y, y_endpoint, 100).await.unwrap();
        let x_done = x_log.len() == 5 && x_log.iter().all(|m| m.state == DeliveryState::Delivered);
        let y_failing = y_log.len() == 5
            && y_log
                .iter()
                .all(|m| m.attempts.iter().all(|a| a.status.is_none()));
        if x_done && y_failing {
            let kept = x_log[0].attempts[0].body.as_ref().map_or(0, String::len);
            assert!(
                kept <= 1024 + 3,
                "the log keeps at most 1 KiB of a body: {kept}"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the garbage receivers' logs never showed their attempts");
}
