//! Property test of the order lifecycle: random streams of orders, restocks,
//! cancellations, gateway behaviour (declines, 5xx answers, lost responses, an outage) and
//! engine restarts, on the memory backend and on a SQLite file, and with the
//! `postgres` feature on PostgreSQL too, each case in a schema of its own
//! (`cargo test --features postgres --test orderflow_properties`).
//!
//! Whatever the stream, once it has run out:
//! * every accepted order is in a terminal status;
//! * no product's counts went negative, and per product
//!   available + reserved + sold = initial + restocked, after every restart too;
//! * what is sold is exactly what delivered orders bought;
//! * the gateway captured at most once per order, and only for orders that
//!   were paid; money is kept for delivered orders and refunded for every other;
//! * the dashboard's revenue is what the gateway captured minus what it refunded;
//! * nothing was dead-lettered.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flowline::orderflow::{
    self, MockCarrier, MockGateway, OrderStatus, Orderflow, Product, SeedCatalogue, SeedProduct,
    Stock, StoreConfig, StoreSettings, Timings, DEMO_PRICE,
};
use flowline::testing::{test_config, TestHarness, TEST_EPOCH};
use flowline::{ApiRequest, Backend, Clock, Method, TenantId};
use proptest::prelude::*;
use serde_json::{json, Value};

const STORES: [&str; 3] = ["X", "Y", "Z"];
const BULK: &str = "bulk";

fn products(store: &str) -> Vec<String> {
    let s = store.to_lowercase();
    let mut ids: Vec<String> = (1..=4).map(|i| format!("prod-{s}-{i:03}")).collect();
    ids.push(format!("prod-{s}-{BULK}"));
    ids
}

#[derive(Clone, Debug)]
enum Op {
    /// Up to three lines of small quantities.
    Order {
        store: usize,
        customer: usize,
        lines: Vec<(usize, u32)>,
    },
    /// 102 to 150 units of the bulk product: held for review when screened.
    BigOrder {
        store: usize,
        customer: usize,
        quantity: u32,
    },
    Restock {
        store: usize,
        product: usize,
        quantity: u32,
    },
    /// Ask to cancel the n-th order placed so far (modulo their count).
    Cancel { nth: usize },
    /// Let virtual time pass.
    Wait { seconds: u64 },
    /// Stop the engine and start a new one on the same data.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3usize, 0..4usize, prop::collection::vec((0..5usize, 1..=12u32), 1..=3)).prop_map(
            |(store, customer, mut lines)| {
                lines.sort_by_key(|l| l.0);
                lines.dedup_by_key(|l| l.0);
                Op::Order { store, customer, lines }
            }
        ),
        1 => (0..3usize, 0..4usize, 102..=150u32)
            .prop_map(|(store, customer, quantity)| Op::BigOrder { store, customer, quantity }),
        2 => (0..3usize, 0..5usize, 1..=40u32)
            .prop_map(|(store, product, quantity)| Op::Restock { store, product, quantity }),
        2 => (1..=90u64).prop_map(|seconds| Op::Wait { seconds }),
        1 => any::<usize>().prop_map(|nth| Op::Cancel { nth }),
        1 => Just(Op::Restart),
    ]
}

#[derive(Clone, Debug)]
struct World {
    seed: u64,
    approval_rate: f64,
    server_error_rate: f64,
    lost_response_rate: f64,
    /// Seconds after the start at which the gateway is down for 30 s.
    outage_at: Option<u64>,
    /// Stores with fraud screening off.
    unscreened: Vec<bool>,
    ops: Vec<Op>,
}

fn world() -> impl Strategy<Value = World> {
    (
        any::<u64>(),
        0.5..=1.0f64,
        0.0..=0.3f64,
        0.0..=0.2f64,
        prop::option::of(0..120u64),
        prop::collection::vec(any::<bool>(), 3),
        prop::collection::vec(op(), 1..40),
    )
        .prop_map(
            |(
                seed,
                approval_rate,
                server_error_rate,
                lost_response_rate,
                outage_at,
                unscreened,
                ops,
            )| World {
                seed,
                approval_rate,
                server_error_rate,
                lost_response_rate,
                outage_at,
                unscreened,
                ops,
            },
        )
}

/// Where the engine keeps its data between restarts.
enum Data {
    Memory(flowline::MemoryBackend),
    Sqlite(PathBuf),
    /// A restart makes a new engine on a clone of the backend (same pool and schema).
    #[cfg(feature = "postgres")]
    Postgres(flowline::PostgresBackend),
}

impl Data {
    fn backend(&self) -> Arc<dyn Backend> {
        match self {
            Data::Memory(memory) => Arc::new(memory.clone()),
            Data::Sqlite(path) => Arc::new(flowline::SqliteBackend::open(path).unwrap()),
            #[cfg(feature = "postgres")]
            Data::Postgres(postgres) => Arc::new(postgres.clone()),
        }
    }
}

struct Run {
    world: World,
    data: Data,
    gateway: MockGateway,
    h: Option<TestHarness>,
    /// Accepted orders: (store, order id) → lines (product id, quantity).
    orders: BTreeMap<(String, String), Vec<(String, u32)>>,
    initial: BTreeMap<(String, String), u32>,
}

impl Run {
    async fn start(world: World, data: Data) -> Run {
        let mut gateway = MockGateway::builder()
            .seed(world.seed)
            .approval_rate(world.approval_rate)
            .server_error_rate(world.server_error_rate)
            .lost_response_rate(world.lost_response_rate);
        if let Some(at) = world.outage_at {
            let from = TEST_EPOCH + Duration::from_secs(at);
            gateway = gateway.outage(from, from + Duration::from_secs(30));
        }
        let gateway = gateway.build(Clock::starting_at(TEST_EPOCH)).unwrap();
        let mut run = Run {
            world,
            data,
            gateway,
            h: None,
            orders: BTreeMap::new(),
            initial: BTreeMap::new(),
        };
        run.boot(TEST_EPOCH).await;
        let stores: Vec<StoreConfig> = STORES
            .iter()
            .zip(&run.world.unscreened)
            .map(|(id, off)| StoreConfig {
                store: TenantId::new(id).unwrap(),
                settings: StoreSettings::new(*id).screening(!off),
            })
            .collect();
        let h = run.h();
        orderflow::bootstrap(h.engine(), &stores).await.unwrap();
        orderflow::seed_demo(h.engine()).await.unwrap();
        for id in STORES {
            let bulk = SeedProduct {
                product: Product {
                    id: format!("prod-{}-{BULK}", id.to_lowercase()),
                    name: "Bulk Cable".into(),
                    price: DEMO_PRICE,
                    threshold: 10,
                },
                stock: 400,
            };
            let seed = SeedCatalogue {
                products: vec![bulk],
            };
            h.emit(&TenantId::new(id).unwrap(), &seed).await.unwrap();
        }
        h.settle().await;
        for id in STORES {
            for product in products(id) {
                let record = run.stock(id, &product).await;
                run.initial
                    .insert((id.to_string(), product), record.available);
            }
        }
        run
    }

    fn h(&self) -> &TestHarness {
        self.h.as_ref().unwrap()
    }

    async fn boot(&mut self, now: flowline::Timestamp) {
        let flow = Orderflow::new(
            self.gateway.clone(),
            MockCarrier::new(self.world.seed).failed_attempt_rate(0.3),
        )
        .timings(Timings::default())
        .flow()
        .unwrap();
        let h = TestHarness::start_configured(
            flow,
            self.data.backend(),
            Clock::starting_at(now),
            test_config(),
        )
        .await
        .unwrap();
        self.h = Some(h);
    }

    async fn restart(&mut self) {
        let now = self.h().now();
        let h = self.h.take().unwrap();
        h.shutdown().await;
        drop(h);
        self.boot(now).await;
        self.check_stock_balances().await;
    }

    /// The product's counts.
    async fn stock(&self, store: &str, product: &str) -> Stock {
        let tenant = TenantId::new(store).unwrap();
        let (_, counts) = orderflow::stock_counts(self.h().engine(), &tenant, product)
            .await
            .unwrap()
            .unwrap();
        counts
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        store: &str,
        body: Value,
    ) -> flowline::ApiResponse {
        let request = ApiRequest::new(method, path, TenantId::new(store).unwrap()).json(body);
        self.h().engine().call(request).await
    }

    async fn place(&mut self, store: usize, customer: usize, lines: Vec<(String, u32)>) {
        let store = STORES[store];
        let id = format!("o-{}", self.orders.len() + 1);
        let items: Vec<Value> = lines
            .iter()
            .map(|(p, q)| json!({ "productId": p, "quantity": q }))
            .collect();
        let body = json!({ "orderId": id, "customerName": format!("customer-{customer}"), "items": items });
        let answer = self.call(Method::Post, "/api/order", store, body).await;
        assert_eq!(answer.status, 201, "{:?}", answer.body);
        self.orders.insert((store.to_string(), id), lines);
    }

    async fn apply(&mut self, op: Op) {
        match op {
            Op::Order {
                store,
                customer,
                lines,
            } => {
                let ids = products(STORES[store]);
                let lines = lines
                    .into_iter()
                    .map(|(p, q)| (ids[p].clone(), q))
                    .collect();
                self.place(store, customer, lines).await;
            }
            Op::BigOrder {
                store,
                customer,
                quantity,
            } => {
                let bulk = products(STORES[store])[4].clone();
                self.place(store, customer, vec![(bulk, quantity)]).await;
            }
            Op::Restock {
                store,
                product,
                quantity,
            } => {
                let store = STORES[store];
                let product = &products(store)[product];
                let tenant = TenantId::new(store).unwrap();
                orderflow::restock(self.h().engine(), &tenant, product, quantity)
                    .await
                    .unwrap();
            }
            Op::Cancel { nth } => {
                if let Some((store, id)) = self.orders.keys().nth(nth % self.orders.len().max(1)) {
                    let path = format!("/api/order/{id}/cancel");
                    let answer = self.call(Method::Post, &path, store, Value::Null).await;
                    assert!(matches!(answer.status, 200 | 409), "{:?}", answer.body);
                }
            }
            Op::Wait { seconds } => self.h().advance(Duration::from_secs(seconds)).await,
            Op::Restart => self.restart().await,
        }
    }

    async fn status(&self, store: &str, id: &str) -> String {
        let tracking = self
            .call(
                Method::Get,
                &format!("/api/order/tracking/{id}"),
                store,
                Value::Null,
            )
            .await;
        tracking.body["status"].as_str().unwrap().to_string()
    }

    /// Reviews every held order: releases or rejects it, as the world's seed says.
    async fn review_held(&self) {
        for (store, id) in self.orders.keys() {
            if self.status(store, id).await == "flagged" {
                let coin = id.bytes().map(u64::from).sum::<u64>() ^ self.world.seed;
                let decision = if coin.is_multiple_of(2) {
                    "release"
                } else {
                    "reject"
                };
                let path = format!("/api/order/{id}/review");
                let answer = self
                    .call(Method::Post, &path, store, json!({ "decision": decision }))
                    .await;
                assert_eq!(answer.status, 202, "{:?}", answer.body);
            }
        }
    }

    /// Every product's counts add up, on either backend, as the restarted
    /// engine finds them.
    async fn check_stock_balances(&self) {
        for store in STORES {
            for product in products(store) {
                let record = self.stock(store, &product).await;
                assert!(record.is_balanced(), "{store}: {record:?}");
            }
        }
    }

    async fn check_the_end(&self) {
        let terminal = |status: &str| {
            OrderStatus::ALL
                .iter()
                .any(|s| s.is_terminal() && s.as_str() == status)
        };
        let ledger = self.gateway.ledger();
        let mut bought: BTreeMap<(String, String), u32> = BTreeMap::new();
        for ((store, id), lines) in &self.orders {
            let status = self.status(store, id).await;
            assert!(terminal(&status), "order {store}/{id} is {status}");
            let captures = self
                .gateway
                .captures_for(&TenantId::new(store).unwrap(), id);
            assert!(captures <= 1, "order {store}/{id} charged {captures} times");
            if matches!(status.as_str(), "delivered" | "returned") {
                assert_eq!(
                    captures, 1,
                    "order {store}/{id} was {status} without a charge"
                );
            }
            if matches!(status.as_str(), "rejected") {
                assert_eq!(captures, 0, "rejected order {store}/{id} was charged");
            }
            let kept = ledger.iter().any(|e| {
                e.store.as_str() == store
                    && &e.order_id == id
                    && e.transaction_id.is_some()
                    && !e.refunded
            });
            assert_eq!(
                kept,
                status == "delivered",
                "order {store}/{id} is {status}: money kept {kept}"
            );
            if status == "delivered" {
                for (product, quantity) in lines {
                    *bought.entry((store.clone(), product.clone())).or_default() += quantity;
                }
            }
        }
        for store in STORES {
            for product in products(store) {
                let record = self.stock(store, &product).await;
                let key = (store.to_string(), product.clone());
                assert!(record.is_balanced(), "{record:?}");
                assert_eq!(record.initial, self.initial[&key]);
                assert_eq!(record.reserved, 0, "{record:?}: nothing open holds stock");
                assert_eq!(
                    record.sold,
                    bought.get(&key).copied().unwrap_or(0),
                    "{record:?}"
                );
            }
            let tenant = TenantId::new(store).unwrap();
            let ledger: Vec<_> = self
                .gateway
                .ledger()
                .into_iter()
                .filter(|e| e.store == tenant)
                .collect();
            let captured: i64 = ledger
                .iter()
                .filter(|e| e.transaction_id.is_some())
                .map(|e| e.amount.minor)
                .sum();
            let refunded: i64 = ledger
                .iter()
                .filter(|e| e.refunded)
                .map(|e| e.amount.minor)
                .sum();
            let stats = self
                .call(Method::Get, "/api/dashboard/stats", store, Value::Null)
                .await;
            assert_eq!(
                stats.body["revenue"]["minor"],
                json!(captured - refunded),
                "store {store}"
            );
            let placed = self.orders.keys().filter(|(s, _)| s == store).count();
            assert_eq!(stats.body["totalOrders"], json!(placed), "store {store}");
        }
        let dead = self.h().dead_letters().await;
        assert!(
            dead.is_empty(),
            "{:?}",
            dead.iter().map(|d| &d.last_error).collect::<Vec<_>>()
        );
    }
}

async fn run(world: World, data: Data) {
    let ops = world.ops.clone();
    let mut run = Run::start(world, data).await;
    for op in ops {
        run.apply(op).await;
    }
    // Let payments ride out the outage and deliveries finish, then settle holds.
    run.h().advance(Duration::from_secs(30 * 60)).await;
    run.review_held().await;
    run.h().advance(Duration::from_secs(30 * 60)).await;
    run.check_the_end().await;
    run.h().shutdown().await;
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn orders_end_terminal_and_money_and_stock_add_up_on_memory(world in world()) {
        runtime().block_on(run(world, Data::Memory(flowline::MemoryBackend::new())));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn orders_end_terminal_and_money_and_stock_add_up_on_sqlite(world in world()) {
        let dir = tempfile::Builder::new()
            .prefix("orderflow-props-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap()
            .keep();
        runtime().block_on(run(world, Data::Sqlite(dir.join("orders.db"))));
    }
}

#[cfg(feature = "postgres")]
#[path = "support/postgres.rs"]
mod pg;

// Fewer cases than SQLite (plus the seeds in the regressions file): each case
// is several seconds of round trips.
#[cfg(feature = "postgres")]
proptest! {
    #![proptest_config(ProptestConfig { cases: 3, ..ProptestConfig::default() })]

    #[test]
    fn orders_end_terminal_and_money_and_stock_add_up_on_postgres(world in world()) {
        runtime().block_on(async {
            let backend = pg::fresh_backend("flowline_of_").await;
            run(world, Data::Postgres(backend)).await;
        });
    }
}
