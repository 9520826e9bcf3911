//! The order lifecycle end to end, on the test harness's virtual clock, once on
//! the memory backend and once on a SQLite file: every scenario below runs on
//! both. With the `postgres` feature each also runs on PostgreSQL, in a schema
//! of its own (`cargo test --features postgres --test orderflow_e2e`; the
//! server at `postgres://postgres@127.0.0.1:5432/test` unless
//! `FLOWLINE_POSTGRES_URL` says otherwise).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flowline::orderflow::{
    self, AlertState, Carrier, CarrierError, FraudVerified, Label, MockCarrier, MockGateway,
    MockGatewayBuilder, Orderflow, PaymentRetrying, Product, ReviewDecision, SeedCatalogue,
    SeedProduct, Shipment, Stock, StoreConfig, StoreSettings, ThresholdReached, Timings,
    DEMO_PRICE,
};
use flowline::testing::{test_config, TestHarness, TEST_EPOCH};
use flowline::{
    ApiRequest, ApiResponse, Backend, Clock, DeadLetterQuery, Method, RetryPolicy, StepName,
    TenantId,
};
use serde_json::{json, Value};

fn store(id: &str) -> TenantId {
    TenantId::new(id).unwrap()
}

fn sqlite() -> Arc<dyn Backend> {
    let dir = tempfile::Builder::new()
        .prefix("orderflow-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
        .keep();
    Arc::new(flowline::SqliteBackend::open(dir.join("orders.db")).unwrap())
}

fn memory() -> Arc<dyn Backend> {
    Arc::new(flowline::MemoryBackend::new())
}

#[cfg(feature = "postgres")]
#[path = "support/postgres.rs"]
mod pg;

#[cfg(feature = "postgres")]
async fn postgres() -> Arc<dyn Backend> {
    Arc::new(pg::fresh_backend("flowline_of_").await)
}

/// A carrier whose first `failures` delivery attempts of every parcel fail.
struct NobodyHome {
    failures: u32,
    labels: MockCarrier,
}

#[async_trait]
impl Carrier for NobodyHome {
    async fn create_label(&self, shipment: &Shipment) -> Result<Label, CarrierError> {
        self.labels.create_label(shipment).await
    }
    async fn attempt_delivery(&self, _tracking: &str, attempt: u32) -> Result<bool, CarrierError> {
        Ok(attempt > self.failures)
    }
}

/// A store front on a running engine: stores X, Y and Z seeded with the demo
/// catalogue, plus `prod-x-bulk` (1,000 units) in X for large orders.
struct Shop {
    h: TestHarness,
    gateway: MockGateway,
}

impl Shop {
    async fn open(backend: Arc<dyn Backend>, gateway: MockGatewayBuilder) -> Shop {
        Self::open_with(
            backend,
            gateway,
            MockCarrier::new(1),
            orderflow::demo_stores(),
        )
        .await
    }

    async fn with_carrier(backend: Arc<dyn Backend>, carrier: impl Carrier) -> Shop {
        Self::open_with(
            backend,
            MockGateway::builder(),
            carrier,
            orderflow::demo_stores(),
        )
        .await
    }

    async fn open_with(
        backend: Arc<dyn Backend>,
        gateway: MockGatewayBuilder,
        carrier: impl Carrier,
        stores: Vec<StoreConfig>,
    ) -> Shop {
        Self::open_timed(backend, gateway, carrier, stores, Timings::default()).await
    }

    async fn open_timed(
        backend: Arc<dyn Backend>,
        gateway: MockGatewayBuilder,
        carrier: impl Carrier,
        stores: Vec<StoreConfig>,
        timings: Timings,
    ) -> Shop {
        let clock = Clock::starting_at(TEST_EPOCH);
        let gateway = gateway.build(clock).unwrap();
        let flow = Orderflow::new(gateway.clone(), carrier)
            .timings(timings)
            .flow()
            .unwrap();
        let h = TestHarness::start_configured(flow, backend, clock, test_config())
            .await
            .unwrap();
        orderflow::bootstrap(h.engine(), &stores).await.unwrap();
        orderflow::seed_demo(h.engine()).await.unwrap();
        let bulk = SeedProduct {
            product: Product {
                id: "prod-x-bulk".into(),
                name: "Bulk Cable".into(),
                price: DEMO_PRICE,
                threshold: 10,
            },
            stock: 1_000,
        };
        h.emit(
            &store("X"),
            &SeedCatalogue {
                products: vec![bulk],
            },
        )
        .await
        .unwrap();
        h.settle().await;
        Shop { h, gateway }
    }

    async fn call(&self, method: Method, path: &str, at: &str, body: Value) -> ApiResponse {
        let request = ApiRequest::new(method, path, store(at)).json(body);
        self.h.engine().call(request).await
    }

    async fn order(
        &self,
        at: &str,
        id: &str,
        customer: &str,
        lines: &[(&str, u32)],
    ) -> ApiResponse {
        let items: Vec<Value> = lines
            .iter()
            .map(|(p, q)| json!({ "productId": p, "quantity": q }))
            .collect();
        let body = json!({ "orderId": id, "customerName": customer, "items": items });
        self.call(Method::Post, "/api/order", at, body).await
    }

    async fn tracking(&self, at: &str, id: &str) -> ApiResponse {
        let path = format!("/api/order/tracking/{id}");
        self.call(Method::Get, &path, at, Value::Null).await
    }

    async fn status(&self, at: &str, id: &str) -> String {
        let tracking = self.tracking(at, id).await;
        assert_eq!(tracking.status, 200, "{:?}", tracking.body);
        tracking.body["status"].as_str().unwrap().to_string()
    }

    async fn milestones(&self, at: &str, id: &str) -> Vec<String> {
        let tracking = self.tracking(at, id).await;
        tracking.body["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["status"].as_str().unwrap().to_string())
            .collect()
    }

    /// The product's counts.
    async fn stock(&self, at: &str, product: &str) -> Stock {
        let (_, counts) = orderflow::stock_counts(self.h.engine(), &store(at), product)
            .await
            .unwrap()
            .unwrap();
        counts
    }

    async fn dashboard(&self, at: &str) -> Value {
        let stats = self
            .call(Method::Get, "/api/dashboard/stats", at, Value::Null)
            .await;
        assert_eq!(stats.status, 200, "{:?}", stats.body);
        stats.body
    }

    async fn alerts(&self, at: &str, query: &str) -> Vec<Value> {
        let path = format!("/api/alerts{query}");
        let listed = self.call(Method::Get, &path, at, Value::Null).await;
        assert_eq!(listed.status, 200, "{:?}", listed.body);
        listed.body["alerts"].as_array().unwrap().clone()
    }

    /// Lets the delivery timers run out.
    async fn let_deliveries_finish(&self) {
        self.h.advance(Duration::from_secs(60)).await;
    }
}

macro_rules! on_every_backend {
    ($($name:ident),+ $(,)?) => {
        mod memory {
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    super::$name(super::memory()).await;
                }
            )+
        }
        mod sqlite {
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    super::$name(super::sqlite()).await;
                }
            )+
        }
        #[cfg(feature = "postgres")]
        mod postgres {
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    super::$name(super::postgres().await).await;
                }
            )+
        }
    };
}

on_every_backend!(
    a_paid_order_is_delivered_with_its_history,
    payment_rides_out_an_outage_and_charges_once,
    a_declined_payment_fails_the_order_and_releases_its_stock,
    a_flagged_order_waits_and_is_released_by_review,
    a_flagged_order_rejected_by_review_is_never_charged,
    a_hold_nobody_reviews_expires_and_a_late_decision_changes_nothing,
    a_fraud_service_releases_a_hold_by_emitting_fraud_verified,
    an_order_beyond_the_stock_fails_without_a_charge,
    low_stock_is_alerted_once_per_crossing_and_resolved_by_a_restock,
    a_failed_delivery_attempt_is_retried,
    a_parcel_nobody_takes_is_returned_refunded_and_restocked,
    the_same_idempotency_key_makes_one_order,
    another_store_cannot_see_an_order,
    legacy_submissions_go_through_the_same_intake,
    bad_requests_get_typed_answers,
    cancelling_refunds_and_gives_stock_back_but_never_mid_charge,
    a_parcel_the_carrier_refuses_fails_the_paid_order_and_is_refunded,
    a_payment_out_of_retries_raises_a_stall_alert_and_its_replay_charges_once,
);

async fn a_paid_order_is_delivered_with_its_history(backend: Arc<dyn Backend>) {
    let shop = Shop::open(backend, MockGateway::builder()).await;
    let created = shop.order("X", "o-1", "Ada", &[("prod-x-001", 2)]).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.body["status"], "pending");
    assert_eq!(
        created.body["total"],
        json!({ "minor": 19_800, "currency": "USD" })
    );

    shop.h.settle().await;
    assert_eq!(
        shop.status("X", "o-1").await,
        "fulfilled",
        "delivery waits for its timers"
    );
    shop.let_deliveries_finish().await;

    assert_eq!(shop.status("X", "o-1").await, "delivered");
    assert_eq!(
        shop.milestones("X", "o-1").await,
        [
            "ORDER_CREATED",
            "INVENTORY_RESERVED",
            "PAYMENT_RECEIVED",
            "INVENTORY_COMMITTED",
            "PICKED",
            "PACKED",
            "CARRIER_RESERVED",
            "WAREHOUSE_NOTIFIED",
            "INVOICED",
            "FULFILLED",
            "LABEL_CREATED",
            "SHIPPED",
            "IN_TRANSIT",
            "OUT_FOR_DELIVERY",
            "DELIVERED",
        ]
    );
    let tracking = shop.tracking("X", "o-1").await;
    assert!(tracking.body["trackingNumber"]
        .as_str()
        .unwrap()
        .starts_with("MOT-"));
    let history = tracking.body["history"].as_array().unwrap();
    let shipped_at = history[11]["timestamp"].as_i64().unwrap();
    let created_at = history[0]["timestamp"].as_i64().unwrap();
    assert_eq!(
        shipped_at - created_at,
        2_000,
        "shipped after the 2 s timer, at its real time"
    );

    assert_eq!(shop.gateway.captures_for(&store("X"), "o-1"), 1);
    let watch = shop.stock("X", "prod-x-001").await;
    assert_eq!((watch.available, watch.reserved, watch.sold), (48, 0, 2));
    let stats = shop.dashboard("X").await;
    assert_eq!(stats["totalOrders"], 1);
    assert_eq!(stats["revenue"]["minor"], 19_800);
    assert_eq!(stats["ordersByStatus"]["delivered"], 1);
    assert_eq!(stats["fulfillmentRate"], 100.0);
    assert_eq!(stats["recentOrders"][0]["orderId"], "o-1");
    assert_eq!(stats["recentOrders"][0]["status"], "completed");
    assert!(shop.h.dead_letters().await.is_empty());
}

async fn payment_rides_out_an_outage_and_charges_once(backend: Arc<dyn Backend>) {
    let outage = MockGateway::builder().outage(TEST_EPOCH, TEST_EPOCH + Duration::from_secs(20));
    let shop = Shop::open(backend, outage).await;
    assert_eq!(
        shop.order("Y", "o-2", "Bo", &[("prod-y-001", 1)])
            .await
            .status,
        201
    );
    shop.h.settle().await;
    assert_eq!(
        shop.status("Y", "o-2").await,
        "reserved",
        "waiting out the outage"
    );
    let retrying = shop.h.emitted::<PaymentRetrying>();
    assert!(!retrying.is_empty());
    let open = shop.alerts("Y", "?type=warning&state=open").await;
    assert!(
        open.iter().any(|a| a["id"] == "payment_retrying:o-2"),
        "{open:?}"
    );

    shop.h.advance(Duration::from_secs(120)).await;
    assert_eq!(shop.status("Y", "o-2").await, "delivered");
    assert_eq!(
        shop.gateway.captures_for(&store("Y"), "o-2"),
        1,
        "one charge in the ledger"
    );
    let ledger = shop.gateway.ledger();
    assert_eq!(ledger.len(), 1);
    assert!(
        ledger[0].calls >= 2,
        "the gateway was asked again with the same key"
    );
    let retried = shop.h.emitted::<PaymentRetrying>().len();
    assert!(
        retried >= 2,
        "backed off more than once through 20 s: {retried}"
    );
    let resolved = shop.alerts("Y", "?state=resolved").await;
    assert!(
        resolved.iter().any(|a| a["id"] == "payment_retrying:o-2"),
        "{resolved:?}"
    );
    assert!(shop.h.dead_letters().await.is_empty());
}

async fn a_declined_payment_fails_the_order_and_releases_its_stock(backend: Arc<dyn Backend>) {
    let shop = Shop::open(backend, MockGateway::builder().approval_rate(0.0)).await;
    assert_eq!(
        shop.order("Z", "o-3", "Cy", &[("prod-z-002", 5)])
            .await
            .status,
        201
    );
    shop.h.settle().await;

    assert_eq!(shop.status("Z", "o-3").await, "failed");
    let milestones = shop.milestones("Z", "o-3").await;
    assert_eq!(milestones[2], "PAYMENT_DECLINED");
    assert!(
        milestones.contains(&"INVENTORY_RELEASED".to_string()),
        "{milestones:?}"
    );
    let kit = shop.stock("Z", "prod-z-002").await;
    assert_eq!((kit.available, kit.reserved, kit.sold), (45, 0, 0));
    assert_eq!(shop.gateway.captures_for(&store("Z"), "o-3"), 0);
    let errors = shop.alerts("Z", "?type=error").await;
    assert_eq!(errors[0]["id"], "payment_failed:o-3");
    let stats = shop.dashboard("Z").await;
    assert_eq!(stats["revenue"]["minor"], 0);
    assert_eq!(stats["ordersByStatus"]["failed"], 1);
}

async fn a_flagged_order_waits_and_is_released_by_review(backend: Arc<dyn Backend>) {
    let shop = Shop::open(backend, MockGateway::builder()).await;
    // 102 units at 99.00: above 10,000.00 and above 100 units, two indicators.
    assert_eq!(
        shop.order("X", "o-4", "Dee", &[("prod-x-bulk", 102)])
            .await
            .status,
        201
    );
    shop.h.settle().await;
    assert_eq!(shop.status("X", "o-4").await, "flagged");
    assert_eq!(
        shop.stock("X", "prod-x-bulk").await.available,
        1_000,
        "nothing reserved"
    );
    assert!(
        shop.gateway.ledger().is_empty(),
        "nothing charged while held"
    );

    let review = json!({ "decision": "release", "note": "called the customer" });
    let released = shop
        .call(Method::Post, "/api/order/o-4/review", "X", review.clone())
        .await;
    assert_eq!(released.status, 202, "{:?}", released.body);
    assert_eq!(released.body["decision"], "release");
    let again = shop
        .call(Method::Post, "/api/order/o-4/review", "X", review)
        .await;
    assert_eq!(again.status, 409, "a review settles a hold once");
    shop.h.settle().await;
    shop.let_deliveries_finish().await;
    assert_eq!(shop.status("X", "o-4").await, "delivered");
    assert_eq!(shop.gateway.captures_for(&store("X"), "o-4"), 1);
    let milestones = shop.milestones("X", "o-4").await;
    assert_eq!(
        milestones[..3],
        ["ORDER_CREATED", "FLAGGED", "REVIEW_RELEASED"]
    );
}

async fn a_flagged_order_rejected_by_review_is_never_charged(backend: Arc<dyn Backend>) {
    let shop = Shop::open(backend, MockGateway::builder()).await;
    assert_eq!(
        shop.order("X", "o-5", "Eve", &[("prod-x-bulk", 150)])
            .await
            .status,
        201
    );
    shop.h.settle().await;
    let warnings = shop.alerts("X", "?type=warning").await;
    assert!(
        warnings.iter().any(|a| a["id"] == "order_flagged:o-5"),
        "{warnings:?}"
    );

    let reject = json!({ "decision": "reject" });
    let rejected = shop
        .call(Method::Post, "/api/order/o-5/review", "X", reject)
        .await;
    assert_eq!(rejected.status, 202, "{:?}", rejected.body);
    shop.h.settle().await;
    assert_eq!(shop.status("X", "o-5").await, "rejected");
    assert!(shop.gateway.ledger().is_empty());
    assert_eq!(shop.stock("X", "prod-x-bulk").await.available, 1_000);
    let bad = shop
        .call(
            Method::Post,
            "/api/order/o-5/review",
            "X",
            json!({ "decision": "maybe" }),
        )
        .await;
    assert_eq!(
        (bad.status, bad.body["field"].clone()),
        (422, json!("decision"))
    );
}

async fn a_hold_nobody_reviews_expires_and_a_late_decision_changes_nothing(
    backend: Arc<dyn Backend>,
) {
    let shop = Shop::open(backend, MockGateway::builder()).await;
    assert_eq!(
        shop.order("X", "o-6", "Fay", &[("prod-x-bulk", 120)])
            .await
            .status,
        201
    );
    shop.h.settle().await;
    assert_eq!(shop.status("X", "o-6").await, "flagged");
    shop.h.advance(Timings::default().review_timeout).await;
    assert_eq!(
        shop.status("X", "o-6").await,
        "rejected",
        "a hold never charges by default"
    );
    assert_eq!(
        shop.milestones("X", "o-6").await,
        ["ORDER_CREATED", "FLAGGED", "REVIEW_EXPIRED"]
    );
    let queue = shop
        .call(Method::Get, "/api/order/held", "X", Value::Null)
        .await;
    assert_eq!(queue.body["held"], json!([]), "off the review queue");

    let late = shop
        .call(
            Method::Post,
            "/api/order/o-6/review",
            "X",
            json!({ "decision": "release" }),
        )
        .await;
    assert_eq!(
        (late.status, late.body["code"].clone()),
        (409, json!("not_held"))
    );
    // A fraud service's decision that comes too late is ignored, not applied.
    shop.h
        .emit(
            &store("X"),
            &FraudVerified {
                order_id: "o-6".into(),
                decision: ReviewDecision::Release,
                note: None,
            },
        )
        .await
        .unwrap();
    shop.h.settle().await;
    assert_eq!(shop.status("X", "o-6").await, "rejected");
    assert!(shop.gateway.ledger().is_empty());
    assert_eq!(shop.stock("X", "prod-x-bulk").await.available, 1_000);
    assert!(shop.h.dead_letters().await.is_empty());
}

async fn a_fraud_service_releases_a_hold_by_emitting_fraud_verified(backend: Arc<dyn Backend>) {
    let shop = Shop::open(backend, MockGateway::builder()).await;
    for id in ["o-7", "o-8"] {
        let placed = shop.order("X", id, "Gus", &[("prod-x-bulk", 110)]).await;
        assert_eq!(placed.status, 201, "{:?}", placed.body);
    }
    shop.h.settle().await;
    shop.h
        .emit(
            &store("X"),
            &FraudVerified {
                order_id: "o-7".into(),
                decision: ReviewDecision::Release,
                note: Some("verified by the fraud service".into()),
            },
        )
        .await
        .unwrap();
    let cancelled = shop
        .call(Method::Post, "/api/order/o-8/cancel", "X", json!({}))
        .await;
    assert_eq!(cancelled.status, 200, "{:?}", cancelled.body);
    shop.h.settle().await;
    shop.let_deliveries_finish().await;
    assert_eq!(shop.status("X", "o-7").await, "delivered");
    assert_eq!(shop.gateway.captures_for(&store("X"), "o-7"), 1);

    // Long after both holds' timeouts: the released order's timer was
    // cancelled with the decision, the cancelled one's finds nothing to do.
    shop.h.advance(Timings::default().review_timeout * 2).await;
    assert_eq!(shop.status("X", "o-7").await, "delivered");
    assert_eq!(shop.status("X", "o-8").await, "cancelled");
    let milestones = shop.milestones("X", "o-7").await;
    assert_eq!(
        milestones[..3],
        ["ORDER_CREATED", "FLAGGED", "REVIEW_RELEASED"]
    );
    assert!(!milestones.contains(&"REVIEW_EXPIRED".to_string()));
    assert!(shop.h.dead_letters().await.is_empty());
}

async fn an_order_beyond_the_stock_fails_without_a_charge(backend: Arc<dyn Backend>) {
    let shop = Shop::open(backend, MockGateway::builder()).await;
    // Two lines: the first fits, the second does not; neither is reserved.
    let lines = [("prod-x-001", 3), ("prod-x-004", 16)];
    assert_eq!(shop.order("X", "o-6", "Fay", &lines).await.status, 201);
    shop.h.settle().await;

    assert_eq!(shop.status("X", "o-6").await, "failed");
    assert_eq!(
        shop.stock("X", "prod-x-001").await.available,
        50,
        "all or nothing"
    );
    assert_eq!(shop.stock("X", "prod-x-004").await.available, 15);
    assert!(shop.gateway.ledger().is_empty());
    let tracking = shop.tracking("X", "o-6").await;
    assert_eq!(
        tracking.body["failure"],
        "prod-x-004: 16 wanted, 15 available"
    );
    let errors = shop.alerts("X", "?type=error").await;
    assert_eq!(errors[0]["id"], "inventory_failed:o-6");
}

async fn low_stock_is_alerted_once_per_crossing_and_resolved_by_a_restock(
    backend: Arc<dyn Backend>,
) {
    let shop = Shop::open(backend, MockGateway::builder()).await;
    // Store Y's headset is seeded at 12, under its threshold of 20: the first
    // stock check announces it, later checks do not repeat it.
    shop.h.advance(Duration::from_secs(61)).await;
    shop.h.advance(Duration::from_secs(180)).await;
    let announced = shop.h.emitted::<ThresholdReached>();
    assert_eq!(announced.len(), 1, "{announced:?}");
    assert_eq!(announced[0].product_id, "prod-y-003");
    let low = shop.alerts("Y", "?type=warning&state=open").await;
    assert_eq!(low.len(), 1);
    assert_eq!(low[0]["id"], "low_stock:prod-y-003:1");
    assert_eq!(shop.dashboard("Y").await["activeAlerts"], 1);
    assert!(
        shop.alerts("X", "?type=warning").await.is_empty(),
        "only store Y is low"
    );

    orderflow::restock(shop.h.engine(), &store("Y"), "prod-y-003", 20)
        .await
        .unwrap();
    // Stock signals are debounced per product (5 s quiet by default).
    shop.h.advance(Duration::from_secs(6)).await;
    let resolved = shop.alerts("Y", "?state=resolved").await;
    assert_eq!(resolved[0]["id"], "low_stock:prod-y-003:1");
    assert_eq!(shop.dashboard("Y").await["activeAlerts"], 0);
    let headset = shop.stock("Y", "prod-y-003").await;
    assert_eq!((headset.available, headset.restocked), (32, 20));

    // Selling it below 20 again is a new crossing, announced at once by the
    // reservation, and a new alert once its signals are quiet.
    assert_eq!(
        shop.order("Y", "o-7", "Gil", &[("prod-y-003", 13)])
            .await
            .status,
        201
    );
    shop.h.settle().await;
    assert!(
        shop.alerts("Y", "?type=warning&state=open")
            .await
            .is_empty(),
        "the alert waits for the quiet period"
    );
    shop.h.advance(Duration::from_secs(6)).await;
    let open = shop.alerts("Y", "?type=warning&state=open").await;
    assert_eq!(open[0]["id"], "low_stock:prod-y-003:2", "{open:?}");
    shop.h.advance(Duration::from_secs(120)).await;
    assert_eq!(
        shop.h.emitted::<ThresholdReached>().len(),
        2,
        "one per crossing"
    );
    let ack = shop
        .call(
            Method::Post,
            "/api/alerts/low_stock:prod-y-003:2/acknowledge",
            "Y",
            Value::Null,
        )
        .await;
    assert_eq!(ack.status, 200, "{:?}", ack.body);
    assert_eq!(
        ack.body["state"],
        serde_json::to_value(AlertState::Acknowledged).unwrap()
    );
    let missing = shop
        .call(Method::Post, "/api/alerts/nope/resolve", "Y", Value::Null)
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        shop.h.state::<String>(&store("Y"), "alert/nope").await,
        None,
        "resolving an unknown alert through the API leaves nothing behind"
    );

    // A product that dips under its threshold and is restocked within the
    // quiet period raises nothing: flapping does not repeat alerts.
    orderflow::restock(shop.h.engine(), &store("Y"), "prod-y-003", 20)
        .await
        .unwrap();
    shop.h.advance(Duration::from_secs(6)).await;
    let headset = shop.stock("Y", "prod-y-003").await;
    assert_eq!(headset.available, 39);
    assert_eq!(
        shop.order("Y", "o-8", "Gil", &[("prod-y-003", 20)])
            .await
            .status,
        201
    );
    shop.h.settle().await;
    orderflow::restock(shop.h.engine(), &store("Y"), "prod-y-003", 20)
        .await
        .unwrap();
    shop.h.advance(Duration::from_secs(6)).await;
    assert_eq!(
        shop.h.emitted::<ThresholdReached>().len(),
        3,
        "the dip is a third crossing"
    );
    let alerts = shop.alerts("Y", "?type=warning").await;
    assert!(
        alerts.iter().all(|a| a["id"] != "low_stock:prod-y-003:3"),
        "a dip that is over within the quiet period raises no alert: {alerts:?}"
    );
}

async fn a_failed_delivery_attempt_is_retried(backend: Arc<dyn Backend>) {
    let shop = Shop::with_carrier(
        backend,
        NobodyHome {
            failures: 1,
            labels: MockCarrier::new(3),
        },
    )
    .await;
    assert_eq!(
        shop.order("X", "o-8", "Hal", &[("prod-x-002", 1)])
            .await
            .status,
        201
    );
    shop.h.settle().await;
    shop.let_deliveries_finish().await;
    assert_eq!(shop.status("X", "o-8").await, "delivered");
    let milestones = shop.milestones("X", "o-8").await;
    let tail = &milestones[milestones.len() - 4..];
    assert_eq!(
        tail,
        [
            "OUT_FOR_DELIVERY",
            "DELIVERY_ATTEMPT_FAILED",
            "OUT_FOR_DELIVERY",
            "DELIVERED"
        ]
    );
    assert_eq!(
        shop.tracking("X", "o-8").await.body["delivery"],
        "delivered"
    );
}

async fn a_parcel_nobody_takes_is_returned_refunded_and_restocked(backend: Arc<dyn Backend>) {
    let shop = Shop::with_carrier(
        backend,
        NobodyHome {
            failures: u32::MAX,
            labels: MockCarrier::new(3),
        },
    )
    .await;
    assert_eq!(
        shop.order("X", "o-13", "Max", &[("prod-x-002", 4)])
            .await
            .status,
        201
    );
    shop.h.settle().await;
    shop.let_deliveries_finish().await;
    assert_eq!(shop.status("X", "o-13").await, "returned");
    let milestones = shop.milestones("X", "o-13").await;
    let attempts = milestones
        .iter()
        .filter(|m| *m == "DELIVERY_ATTEMPT_FAILED")
        .count();
    assert_eq!(attempts, 3, "{milestones:?}");
    assert!(
        milestones.contains(&"REFUNDED".to_string()),
        "{milestones:?}"
    );
    assert!(
        milestones.contains(&"INVENTORY_RETURNED".to_string()),
        "{milestones:?}"
    );
    let kit = shop.stock("X", "prod-x-002").await;
    assert_eq!((kit.available, kit.sold), (30, 0));
    let stats = shop.dashboard("X").await;
    assert_eq!(stats["revenue"]["minor"], 0, "captured, then refunded");
    assert_eq!(stats["refunded"]["minor"], 39_600);
    assert!(shop.gateway.ledger()[0].refunded);
}

async fn the_same_idempotency_key_makes_one_order(backend: Arc<dyn Backend>) {
    let shop = Shop::open(backend, MockGateway::builder()).await;
    let body = json!({
        "orderId": "o-9",
        "customerName": "Ida",
        "items": [{ "productId": "prod-z-001", "quantity": 1 }],
    });
    let send = |body: Value| {
        let request = ApiRequest::new(Method::Post, "/api/order", store("Z"))
            .header("Idempotency-Key", "checkout-42")
            .json(body);
        shop.h.engine().call(request)
    };
    let first = send(body.clone()).await;
    let second = send(body.clone()).await;
    assert_eq!(first.status, 201);
    assert_eq!(
        (second.status, &second.body),
        (201, &first.body),
        "the original answer"
    );
    assert!(second
        .headers
        .iter()
        .any(|(k, v)| k == "Idempotent-Replayed" && v == "true"));

    let mut other = body;
    other["items"][0]["quantity"] = json!(2);
    let conflict = send(other).await;
    assert_eq!(
        (conflict.status, conflict.body["code"].clone()),
        (409, json!("idempotency_conflict"))
    );

    shop.h.settle().await;
    shop.let_deliveries_finish().await;
    assert_eq!(shop.dashboard("Z").await["totalOrders"], 1);
    assert_eq!(shop.gateway.captures_for(&store("Z"), "o-9"), 1);
    assert_eq!(shop.stock("Z", "prod-z-001").await.sold, 1);
}

async fn a_parcel_the_carrier_refuses_fails_the_paid_order_and_is_refunded(
    backend: Arc<dyn Backend>,
) {
    let shop = Shop::with_carrier(backend, MockCarrier::new(1).refusal_rate(1.0)).await;
    let before = shop.stock("X", "prod-x-001").await;
    let created = shop.order("X", "o-20", "Ann", &[("prod-x-001", 2)]).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    shop.h.settle().await;
    assert_eq!(shop.status("X", "o-20").await, "failed");
    let milestones = shop.milestones("X", "o-20").await;
    for expected in ["FULFILMENT_FAILED", "INVENTORY_RETURNED", "REFUNDED"] {
        assert!(milestones.iter().any(|m| m == expected), "{milestones:?}");
    }
    assert_eq!(shop.gateway.captures_for(&store("X"), "o-20"), 1);
    assert!(
        shop.gateway
            .ledger()
            .iter()
            .any(|e| e.order_id == "o-20" && e.refunded),
        "the charge is refunded"
    );
    let after = shop.stock("X", "prod-x-001").await;
    assert_eq!(
        (after.available, after.reserved, after.sold),
        (before.available, 0, 0),
        "the units are back"
    );
    assert!(shop.h.dead_letters().await.is_empty());
}

async fn another_store_cannot_see_an_order(backend: Arc<dyn Backend>) {
    let shop = Shop::open(backend, MockGateway::builder()).await;
    assert_eq!(
        shop.order("X", "o-10", "Jo", &[("prod-x-001", 1)])
            .await
            .status,
        201
    );
    shop.h.settle().await;
    assert_eq!(shop.tracking("X", "o-10").await.status, 200);
    let elsewhere = shop.tracking("Y", "o-10").await;
    assert_eq!(
        (elsewhere.status, elsewhere.body["code"].clone()),
        (404, json!("order_not_found"))
    );
    // The same id is free in another store, and is another order there.
    assert_eq!(
        shop.order("Y", "o-10", "Jo", &[("prod-y-001", 1)])
            .await
            .status,
        201
    );
    shop.h.settle().await;
    assert_eq!(shop.dashboard("X").await["totalOrders"], 1);
    assert_eq!(shop.dashboard("Y").await["totalOrders"], 1);
}

async fn legacy_submissions_go_through_the_same_intake(backend: Arc<dyn Backend>) {
    let shop = Shop::open(backend, MockGateway::builder()).await;
    let body = json!({
        "orderId": "o-11",
        "customerName": "Kim",
        "items": [{ "productName": "Motia IoT Sensor Kit", "quantity": 2 }],
        "totalAmount": 198,
    });
    let answer = shop
        .call(Method::Post, "/api/order/submit", "Y", body.clone())
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body,
        json!({ "success": true, "message": "Order received successfully", "status": "success" })
    );
    let again = shop
        .call(Method::Post, "/api/order/submit", "Y", body.clone())
        .await;
    assert_eq!(again.body["message"], "Order already exists");

    // With an Idempotency-Key, a replay answers in the legacy shape too, and
    // the key stays bound to this API.
    let keyed = |path: &str, body: Value| {
        let request = ApiRequest::new(Method::Post, path, store("Y"))
            .header("Idempotency-Key", "legacy-7")
            .json(body);
        shop.h.engine().call(request)
    };
    let mut fresh = body.clone();
    fresh["orderId"] = json!("o-13");
    let first = keyed("/api/order/submit", fresh.clone()).await;
    let replay = keyed("/api/order/submit", fresh.clone()).await;
    assert_eq!((first.status, &first.body), (200, &answer.body));
    assert_eq!(
        (replay.status, &replay.body),
        (200, &answer.body),
        "the legacy answer, replayed"
    );
    let elsewhere = keyed("/api/order", fresh).await;
    assert_eq!(elsewhere.status, 409, "{:?}", elsewhere.body);

    let mut wrong_total = body;
    wrong_total["orderId"] = json!("o-12");
    wrong_total["totalAmount"] = json!(1);
    let refused = shop
        .call(Method::Post, "/api/order/submit", "Y", wrong_total)
        .await;
    assert_eq!(refused.status, 422);
    assert_eq!(
        (
            refused.body["status"].clone(),
            refused.body["field"].clone()
        ),
        (json!("error"), json!("total"))
    );

    shop.h.settle().await;
    shop.let_deliveries_finish().await;
    assert_eq!(shop.status("Y", "o-11").await, "delivered");
    assert_eq!(shop.status("Y", "o-13").await, "delivered");
    assert_eq!(
        shop.stock("Y", "prod-y-002").await.sold,
        4,
        "o-11 and o-13, two each"
    );
    assert_eq!(shop.tracking("Y", "o-12").await.status, 404);
}

async fn bad_requests_get_typed_answers(backend: Arc<dyn Backend>) {
    let stores = vec![StoreConfig {
        store: store("X"),
        settings: StoreSettings::new("Motia Prime").screening(false),
    }];
    let shop = Shop::open_with(backend, MockGateway::builder(), MockCarrier::new(1), stores).await;
    let unknown = shop.order("Q", "o-1", "Lu", &[("prod-x-001", 1)]).await;
    assert_eq!(
        (unknown.status, unknown.body["code"].clone()),
        (400, json!("unknown_store"))
    );

    let cases = [
        (
            json!({ "orderId": "o-1", "customerName": "Lu", "items": [] }),
            "items",
        ),
        (
            json!({ "orderId": "o-1", "customerName": "Lu", "items": [{ "productId": "prod-x-001", "quantity": 1.5 }] }),
            "items[0].quantity",
        ),
        (
            json!({ "orderId": "o-1", "customerName": "Lu", "items": [{ "productId": "nope", "quantity": 1 }] }),
            "items[0].productId",
        ),
        (
            json!({ "orderId": "o-1", "customerName": "Lu", "items": [{ "productId": "prod-x-001", "quantity": 1 }],
                    "total": { "minor": 1, "currency": "USD" } }),
            "total",
        ),
        (
            json!({ "orderId": "has space", "customerName": "Lu", "items": [] }),
            "orderId",
        ),
        (json!("not an object"), "body"),
    ];
    for (body, field) in cases {
        let refused = shop
            .call(Method::Post, "/api/order", "X", body.clone())
            .await;
        assert_eq!(refused.status, 422, "{body}: {:?}", refused.body);
        assert_eq!(refused.body["field"], field, "{body}");
        assert_eq!(refused.body["code"], "validation_failed");
    }
    let long_key = ApiRequest::new(Method::Post, "/api/order", store("X"))
        .header("Idempotency-Key", "x".repeat(300));
    assert_eq!(shop.h.engine().call(long_key).await.status, 400);
    // An order id longer than any key: no such order, whichever API is asked.
    let long_id = "o".repeat(600);
    for (method, path) in [
        (Method::Get, format!("/api/order/tracking/{long_id}")),
        (Method::Post, format!("/api/order/{long_id}/cancel")),
        (Method::Post, format!("/api/order/{long_id}/review")),
    ] {
        let answer = shop
            .call(method, &path, "X", json!({ "decision": "release" }))
            .await;
        assert_eq!(answer.status, 404, "{path}: {:?}", answer.body);
    }
    assert_eq!(
        shop.dashboard("X").await["totalOrders"],
        0,
        "nothing refused was kept"
    );

    // Screening is off in this store: a 150-unit order is not held.
    assert_eq!(
        shop.order("X", "o-2", "Lu", &[("prod-x-bulk", 150)])
            .await
            .status,
        201
    );
    shop.h.settle().await;
    assert_eq!(shop.status("X", "o-2").await, "fulfilled");
}

/// Many orders race for one product's last units, on real threads: exactly the
/// stock is sold, every order ends delivered or failed, nothing goes negative.
async fn a_hot_product_sells_exactly_its_stock(backend: Arc<dyn Backend>) {
    let instant = Timings::default().instant_delivery();
    let stores = orderflow::demo_stores();
    let shop = Shop::open_timed(
        backend,
        MockGateway::builder(),
        MockCarrier::new(1),
        stores,
        instant,
    )
    .await;
    // Store X's dev board: 15 units. 60 orders of 1 or 2 units, all at once.
    let orders = (0..60).map(|n| {
        let id = format!("hot-{n}");
        let shop = &shop;
        async move {
            let quantity = 1 + n % 2;
            let created = shop
                .order("X", &id, &format!("c-{n}"), &[("prod-x-004", quantity)])
                .await;
            assert_eq!(created.status, 201, "{:?}", created.body);
            (id, quantity)
        }
    });
    // Meanwhile the stock is read again and again: each read must add up,
    // however reservations and payments interleave with it.
    let done = std::sync::atomic::AtomicBool::new(false);
    let reads = async {
        let mut reads = 0;
        while !done.load(std::sync::atomic::Ordering::Acquire) {
            let board = shop.stock("X", "prod-x-004").await;
            assert!(board.is_balanced(), "{board:?}");
            reads += 1;
            tokio::task::yield_now().await;
        }
        reads
    };
    let work = async {
        let placed = futures::future::join_all(orders).await;
        shop.h.settle().await;
        done.store(true, std::sync::atomic::Ordering::Release);
        placed
    };
    let (placed, reads) = tokio::join!(work, reads);
    assert!(reads > 0);
    let mut sold = 0;
    for (id, quantity) in &placed {
        match shop.status("X", id).await.as_str() {
            "delivered" => sold += quantity,
            "failed" => {}
            other => panic!("order {id} ended {other}"),
        }
    }
    let board = shop.stock("X", "prod-x-004").await;
    assert_eq!(board.sold, sold, "{board:?}");
    assert_eq!(
        (board.available + board.sold, board.reserved),
        (15, 0),
        "{board:?}"
    );
    assert!(
        board.available <= 1,
        "the last unit is left only if every order wanted 2: {board:?}"
    );
    // Racing reservations crossed the low-stock threshold once, and exactly
    // one of them announced it.
    let lows: Vec<_> = shop
        .h
        .emitted::<ThresholdReached>()
        .into_iter()
        .filter(|low| low.product_id == "prod-x-004")
        .collect();
    assert_eq!(lows.len(), 1, "{lows:?}");
    assert_eq!(lows[0].crossing, 1);
}

mod racing {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hot_product_sells_exactly_its_stock_on_memory() {
        super::a_hot_product_sells_exactly_its_stock(super::memory()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hot_product_sells_exactly_its_stock_on_sqlite() {
        super::a_hot_product_sells_exactly_its_stock(super::sqlite()).await;
    }

    #[cfg(feature = "postgres")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hot_product_sells_exactly_its_stock_on_postgres() {
        super::a_hot_product_sells_exactly_its_stock(super::postgres().await).await;
    }
}

async fn cancelling_refunds_and_gives_stock_back_but_never_mid_charge(backend: Arc<dyn Backend>) {
    let outage = MockGateway::builder().outage(
        TEST_EPOCH + Duration::from_secs(100),
        TEST_EPOCH + Duration::from_secs(200),
    );
    let shop = Shop::open(backend, outage).await;
    let cancel = |id: &str| {
        let request = ApiRequest::new(Method::Post, format!("/api/order/{id}/cancel"), store("X"))
            .json(json!({ "reason": "changed my mind" }));
        shop.h.engine().call(request)
    };

    // Held for review: nothing is held, so it is simply cancelled.
    assert_eq!(
        shop.order("X", "c-1", "Ann", &[("prod-x-bulk", 120)])
            .await
            .status,
        201
    );
    shop.h.settle().await;
    assert_eq!(cancel("c-1").await.status, 200);
    let queue = shop
        .call(Method::Get, "/api/order/held", "X", Value::Null)
        .await;
    assert_eq!(queue.body["held"], json!([]));

    // Paid and fulfilled, not yet shipped: refunded, stock taken back, and the
    // parcel's timers stop.
    assert_eq!(
        shop.order("X", "c-2", "Ben", &[("prod-x-001", 5)])
            .await
            .status,
        201
    );
    shop.h.settle().await;
    assert_eq!(shop.status("X", "c-2").await, "fulfilled");
    let parcel_moves = || {
        let metrics = shop.h.engine().step_metrics();
        metrics
            .iter()
            .find(|m| m.step == "delivery")
            .unwrap()
            .processed
    };
    let moved = parcel_moves();
    assert_eq!(cancel("c-2").await.status, 200);
    shop.let_deliveries_finish().await;
    assert_eq!(
        parcel_moves(),
        moved,
        "the parcel's waiting move was cancelled with the order"
    );
    assert_eq!(shop.status("X", "c-2").await, "cancelled");
    let milestones = shop.milestones("X", "c-2").await;
    assert!(
        milestones.contains(&"REFUNDED".to_string()),
        "{milestones:?}"
    );
    assert!(
        !milestones.contains(&"SHIPPED".to_string()),
        "{milestones:?}"
    );
    let watch = shop.stock("X", "prod-x-001").await;
    assert_eq!((watch.available, watch.reserved, watch.sold), (50, 0, 0));
    let stats = shop.dashboard("X").await;
    assert_eq!(stats["revenue"]["minor"], 0);
    assert_eq!(stats["ordersByStatus"]["cancelled"], 2);

    // Delivered: too late.
    assert_eq!(
        shop.order("X", "c-3", "Cal", &[("prod-x-002", 1)])
            .await
            .status,
        201
    );
    shop.h.settle().await;
    shop.let_deliveries_finish().await;
    let late = cancel("c-3").await;
    assert_eq!(
        (late.status, late.body["code"].clone()),
        (409, json!("not_cancellable"))
    );

    // Being charged through the outage: refused until the charge is settled.
    shop.h.advance(Duration::from_secs(50)).await;
    assert_eq!(
        shop.order("X", "c-4", "Dot", &[("prod-x-002", 1)])
            .await
            .status,
        201
    );
    shop.h.settle().await;
    assert_eq!(shop.status("X", "c-4").await, "reserved");
    let busy = cancel("c-4").await;
    assert_eq!(
        (busy.status, busy.body["code"].clone()),
        (409, json!("payment_in_progress"))
    );
    shop.h.advance(Duration::from_secs(300)).await;
    assert_eq!(shop.status("X", "c-4").await, "delivered");
    assert_eq!(
        shop.gateway.ledger().iter().filter(|e| e.refunded).count(),
        1,
        "c-2 only"
    );
    assert!(shop.h.dead_letters().await.is_empty());
}

async fn a_payment_out_of_retries_raises_a_stall_alert_and_its_replay_charges_once(
    backend: Arc<dyn Backend>,
) {
    let outage = MockGateway::builder().outage(TEST_EPOCH, TEST_EPOCH + Duration::from_secs(3600));
    let timings = Timings {
        payment_retry: RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(2))
            .max_attempts(3),
        ..Timings::default()
    };
    let shop = Shop::open_timed(
        backend,
        outage,
        MockCarrier::new(1),
        orderflow::demo_stores(),
        timings,
    )
    .await;
    let placed = shop.order("Y", "s-1", "Stu", &[("prod-y-001", 1)]).await;
    assert_eq!(placed.status, 201, "{:?}", placed.body);
    shop.h.settle().await;
    shop.h.advance(Duration::from_secs(30)).await;

    assert_eq!(shop.status("Y", "s-1").await, "reserved", "held, not lost");
    let dead = shop.h.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].step, "payment_processing");
    let errors = shop.alerts("Y", "?type=error").await;
    let stalled = errors
        .iter()
        .find(|a| a["id"] == "order_stalled:s-1")
        .unwrap_or_else(|| panic!("no stall alert in {errors:?}"));
    assert_eq!(stalled["title"], "Order Stalled");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap()
            .contains("payment_processing"),
        "{stalled:?}"
    );

    // The gateway is back: the operator replays, and the order goes on.
    shop.h.advance(Duration::from_secs(3600)).await;
    let query = DeadLetterQuery::new().step(StepName::new("payment_processing").unwrap());
    assert_eq!(shop.h.engine().replay_matching(&query).await.unwrap(), 1);
    shop.h.settle().await;
    shop.let_deliveries_finish().await;
    assert_eq!(shop.status("Y", "s-1").await, "delivered");
    assert_eq!(shop.gateway.captures_for(&store("Y"), "s-1"), 1);
    assert!(shop.h.dead_letters().await.is_empty());
}
