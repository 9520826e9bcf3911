//! API keys per store over HTTP: a store's key acts in its own store within
//! its scopes; a missing or wrong key is 401 and another store's key 403,
//! both JSON and neither telling whether the store exists; rotation keeps
//! the old key for its overlap; revocation is at once; the workbench and the
//! admin API want the operator's key.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use flowline::http::{
    admin_router, api_router, operator_only, workbench_router, ApiKeys, AuthOptions, HttpOptions,
    KeyError, KeyOwner, Scope,
};
use flowline::orderflow::{live_router, STORE_HEADER};
use flowline::{Engine, TenantId};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

#[path = "support/orderflow_demo.rs"]
mod demo;

struct Served {
    engine: Engine,
    keys: ApiKeys,
    app: Router,
}

async fn serve() -> Served {
    let engine = demo::instant_demo_engine().await;
    let keys = ApiKeys::new(engine.clone());
    let auth = AuthOptions::new(keys.clone()).scopes(
        Scope::new("orders:read").unwrap(),
        Scope::new("orders:write").unwrap(),
    );
    let options = HttpOptions::new()
        .tenant_header(STORE_HEADER)
        .api_keys(auth);
    let app = operator_only(workbench_router(engine.clone()), keys.clone())
        .merge(admin_router(keys.clone()))
        .merge(live_router(engine.clone(), &options))
        .merge(api_router(engine.clone(), options));
    Served { engine, keys, app }
}

fn scopes(names: &[&str]) -> Vec<Scope> {
    names.iter().map(|n| Scope::new(*n).unwrap()).collect()
}

fn store(id: &str) -> TenantId {
    TenantId::new(id).unwrap()
}

impl Served {
    async fn key(&self, store_id: &str, names: &[&str]) -> String {
        let owner = KeyOwner::Store(store(store_id));
        let created = self
            .keys
            .create(owner, &scopes(names), "test")
            .await
            .unwrap();
        created.secret().to_string()
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        store: Option<&str>,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value, Option<String>) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(store) = store {
            request = request.header("x-store-id", store);
        }
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let body = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        let response = self
            .app
            .clone()
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let challenge = response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, json, challenge)
    }
}

impl Served {
    /// The status of store `store`'s dashboard read with `key`.
    async fn stats(&self, store: &str, key: &str) -> StatusCode {
        let auth = bearer(key);
        let path = "/api/dashboard/stats";
        self.send("GET", path, Some(store), Some(&auth), None)
            .await
            .0
    }
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

fn order(id: &str) -> Value {
    json!({
        "orderId": id,
        "customerName": "Ada",
        "items": [{ "productId": "prod-x-001", "quantity": 1 }],
    })
}

#[tokio::test]
async fn a_store_key_acts_in_its_own_store_within_its_scopes() {
    let served = serve().await;
    let writer = served.key("X", &["orders:read", "orders:write"]).await;
    let reader = served.key("X", &["orders:read"]).await;

    let (status, body, _) = served
        .send(
            "POST",
            "/api/order",
            Some("X"),
            Some(&bearer(&writer)),
            Some(order("k-1")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _, _) = served
        .send(
            "GET",
            "/api/order/tracking/k-1",
            Some("X"),
            Some(&bearer(&reader)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // A read-only key may not place orders: 403, before any step runs.
    let (status, body, _) = served
        .send(
            "POST",
            "/api/order",
            Some("X"),
            Some(&bearer(&reader)),
            Some(order("k-2")),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    served.engine.wait_idle().await;
    let (status, _, _) = served
        .send(
            "GET",
            "/api/order/tracking/k-2",
            Some("X"),
            Some(&bearer(&writer)),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the refused order was never placed"
    );

    // `admin` in its own store allows every scope there.
    let admin = served.key("X", &["admin"]).await;
    let (status, _, _) = served
        .send(
            "POST",
            "/api/order",
            Some("X"),
            Some(&bearer(&admin)),
            Some(order("k-3")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn refusals_say_nothing_of_whether_the_store_exists() {
    let served = serve().await;
    let x = served.key("X", &["orders:read", "orders:write"]).await;
    let mut unknown_secret = x.clone();
    unknown_secret.pop();
    unknown_secret.push(if x.ends_with('A') { 'B' } else { 'A' });

    // Without a live key: 401 with a challenge, the same for a store that
    // exists (Y) and one that does not (nowhere).
    for store in ["Y", "nowhere"] {
        for auth in [
            None,
            Some("Bearer nonsense".to_string()),
            Some(bearer(&unknown_secret)),
        ] {
            let (status, body, challenge) = served
                .send(
                    "GET",
                    "/api/dashboard/stats",
                    Some(store),
                    auth.as_deref(),
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{store} {auth:?}");
            assert_eq!(
                body,
                json!({ "code": "unauthorized", "message": "a valid API key is required" })
            );
            assert_eq!(challenge.as_deref(), Some("Bearer realm=\"flowline\""));
        }
    }
    // X's key elsewhere: 403, the same answer for Y and for nowhere.
    let mut answers = Vec::new();
    for store in ["Y", "nowhere"] {
        answers.push(
            served
                .send(
                    "GET",
                    "/api/dashboard/stats",
                    Some(store),
                    Some(&bearer(&x)),
                    None,
                )
                .await,
        );
    }
    assert_eq!(answers[0].0, StatusCode::FORBIDDEN);
    assert_eq!(answers[0], answers[1]);

    // The live streams check the same way.
    let (status, _, _) = served
        .send(
            "GET",
            "/api/alerts/stream?store=Y",
            None,
            Some(&bearer(&x)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = served
        .send("GET", "/api/alerts/stream?store=X", None, None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_rotated_key_works_for_its_overlap_and_a_revoked_one_at_once_no_more() {
    let served = serve().await;
    let owner = KeyOwner::Store(store("X"));
    let old = served
        .keys
        .create(owner, &scopes(&["orders:read"]), "erp")
        .await
        .unwrap();
    let new = served
        .keys
        .rotate(&old.key.id, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(
        (new.key.owner.clone(), new.key.scopes.clone()),
        (old.key.owner.clone(), old.key.scopes.clone())
    );
    for key in [old.secret(), new.secret()] {
        let status = served.stats("X", key).await;
        assert_eq!(status, StatusCode::OK, "both work during the overlap");
    }
    let listed = served.keys.list(Some(&store("X"))).await.unwrap();
    let old_listed = listed.iter().find(|k| k.id == old.key.id).unwrap();
    assert!(
        old_listed.expires_at.is_some(),
        "the old key shows when it ends"
    );

    // No overlap: the old key stops at once.
    let newest = served
        .keys
        .rotate(&new.key.id, Duration::ZERO)
        .await
        .unwrap();
    let (status, _, _) = served
        .send(
            "GET",
            "/api/dashboard/stats",
            Some("X"),
            Some(&bearer(new.secret())),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    assert!(served.keys.revoke(&newest.key.id).await.unwrap());
    let (status, _, _) = served
        .send(
            "GET",
            "/api/dashboard/stats",
            Some("X"),
            Some(&bearer(newest.secret())),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        !served.keys.revoke(&newest.key.id).await.unwrap(),
        "gone already"
    );
    assert!(matches!(
        served.keys.rotate(&newest.key.id, Duration::ZERO).await,
        Err(KeyError::NotFound(_))
    ));
}

#[tokio::test]
async fn only_the_operator_key_opens_the_workbench_and_the_admin_api() {
    let served = serve().await;
    let store_admin = served.key("X", &["admin"]).await;
    let operator = served
        .keys
        .create(KeyOwner::Operator, &[], "ops")
        .await
        .unwrap();
    let operator = operator.secret().to_string();

    let (status, _, challenge) = served
        .send("GET", "/_flowline/api/stats", None, None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        challenge.unwrap().starts_with("Basic "),
        "a browser asks for the key"
    );
    let (status, _, _) = served
        .send(
            "GET",
            "/_flowline/api/stats",
            None,
            Some(&bearer(&store_admin)),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a store's admin is not the operator"
    );
    // A browser sends the key as Basic's password.
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("operator:{operator}"))
    );
    let (status, _, _) = served
        .send("GET", "/_flowline/api/stats", None, Some(&basic), None)
        .await;
    assert_eq!(status, StatusCode::OK);

    // The admin API: create (shown once), list (no secrets), rotate, revoke.
    let op = bearer(&operator);
    let (status, created, _) = served
        .send(
            "POST",
            "/admin/keys",
            None,
            Some(&op),
            Some(json!({ "store": "Y", "scopes": ["orders:read"], "label": "crm" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["store"], "Y");
    let status = served.stats("Y", &key).await;
    assert_eq!(status, StatusCode::OK);
    let (_, listed, _) = served
        .send("GET", "/admin/keys?store=Y", None, Some(&op), None)
        .await;
    let listed = listed["keys"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert!(
        listed[0].get("key").is_none(),
        "a secret is shown once only"
    );
    assert!(!listed.iter().any(|k| k.to_string().contains(&key[20..])));

    let (status, rotated, _) = served
        .send(
            "POST",
            &format!("/admin/keys/{id}/rotate"),
            None,
            Some(&op),
            Some(json!({ "overlapSeconds": 0 })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let new_id = rotated["id"].as_str().unwrap();
    let (status, _, _) = served
        .send(
            "DELETE",
            &format!("/admin/keys/{new_id}"),
            None,
            Some(&op),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body, _) = served
        .send(
            "DELETE",
            &format!("/admin/keys/{new_id}"),
            None,
            Some(&op),
            None,
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("key_not_found"))
    );

    // A store's key may not manage keys.
    let (status, _, _) = served
        .send(
            "GET",
            "/admin/keys",
            None,
            Some(&bearer(&store_admin)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn bad_admin_requests_are_typed_4xx() {
    let served = serve().await;
    let operator = served
        .keys
        .create(KeyOwner::Operator, &[], "ops")
        .await
        .unwrap();
    let op = bearer(operator.secret());
    let cases = [
        (
            json!({ "store": "Y", "scopes": ["Orders Write"] }),
            "invalid_scope",
        ),
        (json!({ "store": "Y", "scopes": [] }), "no_scopes"),
        (
            json!({ "store": "bad id", "scopes": ["orders:read"] }),
            "invalid_store",
        ),
        (
            json!({ "store": "Y", "scopes": ["orders:read"], "label": "x".repeat(201) }),
            "label_too_long",
        ),
        (
            json!({ "store": "Y", "scopes": ["orders:read"], "extra": 1 }),
            "invalid_body",
        ),
        (json!({ "store": 7 }), "invalid_body"),
    ];
    for (body, code) in cases {
        let (status, answer, _) = served
            .send("POST", "/admin/keys", None, Some(&op), Some(body.clone()))
            .await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{body}"
        );
    }
    let (status, answer, _) = served
        .send(
            "POST",
            "/admin/keys/0123456789abcdef/rotate",
            None,
            Some(&op),
            Some(json!({ "overlapSeconds": 1 })),
        )
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("key_not_found"))
    );
    let (status, answer, _) = served
        .send(
            "POST",
            "/admin/keys/../rotate",
            None,
            Some(&op),
            Some(json!({ "overlapSeconds": 1 })),
        )
        .await;
    assert!(status.is_client_error(), "{status} {answer}");
    let (status, answer, _) = served
        .send(
            "POST",
            "/admin/keys/0123456789abcdef/rotate",
            None,
            Some(&op),
            Some(json!({ "overlapSeconds": 999_999_999 })),
        )
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("overlap_too_long"))
    );
    let (status, answer, _) = served
        .send("GET", "/admin/keys?store=bad%20id", None, Some(&op), None)
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_store"))
    );
    assert!(matches!(Scope::new(""), Err(KeyError::InvalidScope { .. })));
    assert!(matches!(
        Scope::new("a".repeat(65)),
        Err(KeyError::InvalidScope { .. })
    ));
}
