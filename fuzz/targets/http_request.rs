//! Arbitrary HTTP requests through the order system's whole HTTP face, as
//! `orderflow_server` mounts it with API keys on: `api_router`, the live
//! streams, the store front, the OpenAPI document, the workbench, the key
//! admin API and the webhook endpoints, on a memory backend with the demo
//! stores seeded.
//!
//! The input is a request in HTTP/1.1's text shape: `METHOD target`, header
//! lines `name: value`, an empty line, then the body. Requests that HTTP
//! itself would refuse before any route (a method, target or header that
//! does not parse) are skipped. In the target and header values, `$KEY_X`,
//! `$KEY_Y` and `$OPERATOR` stand for live API keys of stores X and Y and of
//! the operator, created when the app starts (keys are random), so the
//! fuzzer reaches past authentication.
//!
//! Every answer must be below `500` and come within ten seconds; an error
//! answered as JSON must be `{"code", "message"}`.

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderName, HeaderValue, Method, Request};
use axum::Router;
use flowline::http::{
    admin_router, api_router, operator_only, webhooks_router, workbench_router, ApiKeys,
    HttpOptions, KeyOwner, Scope,
};
use flowline::orderflow::{
    self, live_router, openapi_router, storefront_router, MockCarrier, MockGateway, Orderflow,
    STORE_HEADER,
};
use flowline::webhooks::Webhooks;
use flowline::{Clock, Engine, MemoryBackend, TenantId};
use tokio::runtime::Runtime;
use tower::ServiceExt;

/// Requests one app serves before it is rebuilt, so that what the fuzzer's
/// orders accumulate stays bounded.
const REQUESTS_PER_APP: u32 = 20_000;
/// Longest a request may take (no route waits anywhere near as long).
const PATIENCE: Duration = Duration::from_secs(10);
/// The most of a body read back.
const MOST_READ: usize = 1 << 20;

/// Sends the request in `data` to the app and checks the answer.
pub fn check(data: &[u8]) {
    static APP: OnceLock<Mutex<Option<App>>> = OnceLock::new();
    let mut app = APP
        .get_or_init(|| Mutex::new(None))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if app.as_ref().is_none_or(|a| a.served >= REQUESTS_PER_APP) {
        if let Some(old) = app.take() {
            old.stop();
        }
        *app = Some(App::start());
    }
    let app = app.as_mut().expect("started above");
    app.served += 1;
    let Some(request) = app.request(data) else {
        return;
    };
    let router = app.router.clone();
    app.runtime.block_on(answer_checked(router, request));
}

async fn answer_checked(router: Router, request: Request<Body>) {
    let what = format!("{} {}", request.method(), request.uri());
    let response = tokio::time::timeout(PATIENCE, router.oneshot(request))
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {PATIENCE:?}"))
        .expect("a router's error type is Infallible");
    let status = response.status();
    assert!(status.as_u16() < 500, "{what}: answered {status}");
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if !content_type.starts_with("application/json") {
        return; // pages, scripts, live streams (which never end)
    }
    let body = tokio::time::timeout(
        PATIENCE,
        axum::body::to_bytes(response.into_body(), MOST_READ),
    )
    .await
    .unwrap_or_else(|_| panic!("{what}: the body did not end within {PATIENCE:?}"));
    let Ok(body) = body else {
        return; // longer than we read: a listing of many orders
    };
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|err| {
        panic!("{what}: {status} with a JSON content type but not JSON: {err}")
    });
    if status.is_client_error() {
        let typed = json["code"].is_string() && json["message"].is_string();
        assert!(
            typed,
            "{what}: {status} without {{\"code\", \"message\"}}: {json}"
        );
    }
}

struct App {
    runtime: Runtime,
    engine: Engine,
    router: Router,
    /// `$KEY_X`, `$KEY_Y`, `$OPERATOR` and the secrets they stand for.
    keys: Vec<(&'static str, String)>,
    served: u32,
}

impl App {
    fn start() -> App {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime builds");
        let (engine, router, keys) = runtime.block_on(async {
            let gateway = MockGateway::builder()
                .seed(7)
                .build(Clock::system())
                .expect("the mock gateway's defaults are valid");
            let webhooks = Webhooks::new(orderflow::WEBHOOK_TOPICS);
            let flow = Orderflow::new(gateway, MockCarrier::new(7))
                .flow_with(Orderflow::webhook_steps(&webhooks).expect("webhook steps build"))
                .expect("the orderflow builds");
            let engine = Engine::builder(flow)
                .backend(MemoryBackend::new())
                .start()
                .await
                .expect("the orderflow starts");
            orderflow::bootstrap(&engine, &orderflow::demo_stores())
                .await
                .expect("the demo stores register");
            orderflow::seed_demo(&engine)
                .await
                .expect("the demo catalogues seed");
            engine.wait_idle().await;

            let api_keys = ApiKeys::new(engine.clone());
            let scopes = [
                orderflow::read_scope(),
                orderflow::write_scope(),
                Scope::admin(),
            ];
            let mut keys = Vec::new();
            for (name, store) in [("$KEY_X", "X"), ("$KEY_Y", "Y")] {
                let owner = KeyOwner::Store(TenantId::new(store).expect("a demo store id"));
                let key = api_keys
                    .create(owner, &scopes, "fuzz")
                    .await
                    .expect("a key");
                keys.push((name, key.secret().to_string()));
            }
            let operator = api_keys
                .create(KeyOwner::Operator, &[], "fuzz")
                .await
                .expect("an operator key");
            keys.push(("$OPERATOR", operator.secret().to_string()));

            let options = HttpOptions::new()
                .tenant_header(STORE_HEADER)
                .body_limit(64 * 1024)
                .api_keys(orderflow::auth_options(api_keys.clone()));
            let router = storefront_router()
                .merge(openapi_router())
                .merge(operator_only(
                    workbench_router(engine.clone()),
                    api_keys.clone(),
                ))
                .merge(admin_router(api_keys.clone()))
                .merge(webhooks_router(
                    webhooks.endpoints(engine.clone()),
                    api_keys,
                ))
                .merge(live_router(engine.clone(), &options))
                .merge(api_router(engine.clone(), options));
            (engine, router, keys)
        });
        App {
            runtime,
            engine,
            router,
            keys,
            served: 0,
        }
    }

    fn stop(self) {
        let App {
            runtime, engine, ..
        } = self;
        runtime.block_on(async {
            engine.shutdown(Duration::from_secs(5)).await;
        });
    }

    /// The request `data` describes, keys filled in; `None` where HTTP
    /// itself would not carry it.
    fn request(&self, data: &[u8]) -> Option<Request<Body>> {
        let (head, body) = split_head(data);
        let head = std::str::from_utf8(head).ok()?;
        let mut lines = head.lines();
        let (method, target) = lines.next()?.trim_end().split_once(' ')?;
        let mut request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).ok()?)
            .uri(self.with_keys(target));
        for line in lines {
            let (name, value) = line.split_once(':')?;
            let name = HeaderName::from_bytes(name.trim().as_bytes()).ok()?;
            let value = HeaderValue::from_str(&self.with_keys(value.trim())).ok()?;
            request = request.header(name, value);
        }
        let mut request = request.body(Body::from(body.to_vec())).ok()?;
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40_000))));
        Some(request)
    }

    fn with_keys(&self, text: &str) -> String {
        let mut text = text.to_string();
        for (name, secret) in &self.keys {
            text = text.replace(name, secret);
        }
        text
    }
}

/// The head (request line and headers) and the body, split at the first
/// empty line; no empty line means no body.
fn split_head(data: &[u8]) -> (&[u8], &[u8]) {
    for (i, pair) in data.windows(2).enumerate() {
        if pair == b"\n\n" {
            return (&data[..i], &data[i + 2..]);
        }
        if data[i..].starts_with(b"\r\n\r\n") {
            return (&data[..i], &data[i + 4..]);
        }
    }
    (data, &[])
}
