//! The system tenant cannot be claimed from outside, over real HTTP: a flow
//! whose API step fans a note out to whichever tenant its body names is served
//! on a loopback socket, and no header or body lets a caller act as the
//! engine's own tenant (which alone may address other tenants).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use flowline::http::{api_router, HttpOptions};
use flowline::{
    ApiResponse, EmitError, EmitOptions, Engine, Event, Flow, Method, Step, StepContext, StepError,
    TenantId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const TENANT_HEADER: &str = "X-Tenant";

#[derive(Serialize, Deserialize)]
struct Note {
    text: String,
}

impl Event for Note {
    const TOPIC: &'static str = "note.sent";
}

/// What the API step reads from its body: where to send the note. A
/// `TenantId` field, so a body naming the system tenant fails to decode.
#[derive(Deserialize)]
struct Send {
    to: TenantId,
    text: String,
}

struct Served {
    base: String,
    engine: Engine,
    calls: Arc<AtomicUsize>,
}

/// Starts the engine and serves its API on 127.0.0.1 (an ephemeral port).
async fn serve() -> Served {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let flow = Flow::builder()
        .step(
            Step::api("send-note", Method::Post, "/notes")
                .emits::<Note>()
                .handle(move |ctx: StepContext, request| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let send: Send = match serde_json::from_value(request.body) {
                            Ok(send) => send,
                            Err(err) => {
                                return Ok(ApiResponse::error(422, "bad_note", err.to_string()))
                            }
                        };
                        let note = Note { text: send.text };
                        match ctx.emit_with(&note, EmitOptions::new().tenant(send.to)) {
                            Ok(_) => Ok(ApiResponse::json(202, &json!({ "sent": true }))),
                            Err(err @ EmitError::CrossTenant { .. }) => {
                                Ok(ApiResponse::error(403, "cross_tenant", err.to_string()))
                            }
                            Err(err) => Err(StepError::permanent(err)),
                        }
                    }
                }),
        )
        .step(
            Step::event::<Note>("keep-note").handle(|ctx: StepContext, note: Note| async move {
                ctx.put("note", &note.text)?;
                Ok::<_, StepError>(())
            }),
        )
        .build()
        .expect("a valid flow");
    let engine = Engine::builder(flow)
        .start()
        .await
        .expect("the engine starts");
    let router = api_router(
        engine.clone(),
        HttpOptions::new().tenant_header(TENANT_HEADER),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    Served {
        base,
        engine,
        calls,
    }
}

impl Served {
    /// The note kept in `tenant`'s state, if any.
    async fn note(&self, tenant: &TenantId) -> Option<String> {
        self.engine.state::<String>(tenant, "note").await.unwrap()
    }
}

/// Posts `body` to `/notes` as `tenant` (no header when `None`); the status and JSON answer.
async fn post_note(base: &str, tenant: Option<&str>, body: Value) -> (u16, Value) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<String>();
    let mut request = axum::http::Request::post(format!("{base}/notes"))
        .header("content-type", "application/json");
    if let Some(tenant) = tenant {
        request = request.header(TENANT_HEADER, tenant);
    }
    let response = client
        .request(request.body(body.to_string()).unwrap())
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn no_tenant_header_names_the_system_tenant() {
    let served = serve().await;
    let system = TenantId::system();
    for forged in [
        system.as_str(),
        "system",
        "SYSTEM",
        " system ",
        "System",
        "flowline",
        "admin",
    ] {
        let (status, body) = post_note(
            &served.base,
            Some(forged),
            json!({ "to": "victim", "text": "hi" }),
        )
        .await;
        assert_eq!(status, 400, "{forged:?}: {body}");
        assert_eq!(body["code"], "invalid_tenant", "{forged:?}: {body}");
    }
    assert_eq!(
        served.calls.load(Ordering::SeqCst),
        0,
        "a refused tenant never reaches a step"
    );
    served.engine.wait_idle().await;
    let victim = TenantId::new("victim").unwrap();
    assert_eq!(served.note(&victim).await, None);
}

#[tokio::test]
async fn a_tenant_cannot_address_another_one_nor_name_the_system_tenant_in_a_body() {
    let served = serve().await;
    let victim = TenantId::new("victim").unwrap();

    let (status, body) = post_note(
        &served.base,
        Some("shop-a"),
        json!({ "to": "victim", "text": "spam" }),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "cross_tenant");

    // A payload cannot produce the system tenant either: it does not decode.
    let (status, body) = post_note(
        &served.base,
        Some("shop-a"),
        json!({ "to": TenantId::system().as_str(), "text": "spam" }),
    )
    .await;
    assert_eq!(status, 422, "{body}");

    // An ordinary note to the caller's own tenant goes through.
    let (status, body) = post_note(
        &served.base,
        Some("shop-a"),
        json!({ "to": "shop-a", "text": "mine" }),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    served.engine.wait_idle().await;

    let shop = TenantId::new("shop-a").unwrap();
    assert_eq!(served.note(&shop).await.as_deref(), Some("mine"));
    assert_eq!(served.note(&victim).await, None);
    assert_eq!(served.note(&TenantId::system()).await, None);
}
