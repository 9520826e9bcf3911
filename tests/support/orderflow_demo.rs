//! The orderflow on a memory backend with the demo stores registered and
//! their catalogues seeded, for the HTTP tests.

use flowline::orderflow;
use flowline::{Engine, Flow, MemoryBackend};

/// Starts `flow` (an `Orderflow`) on a new memory backend, registers stores
/// X, Y and Z, seeds their catalogues and waits until that is done.
pub(crate) async fn demo_engine(flow: Flow) -> Engine {
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
    engine
}

/// The orderflow with every parcel delivered at once and a gateway that
/// approves every charge, on the demo stores: [`demo_engine`] of it.
#[allow(dead_code)] // not every test that includes this file uses it
pub(crate) async fn instant_demo_engine() -> Engine {
    use flowline::orderflow::{MockCarrier, MockGateway, Orderflow, Timings};
    let gateway = MockGateway::builder()
        .build(flowline::Clock::system())
        .expect("the mock gateway's defaults are valid");
    let flow = Orderflow::new(gateway, MockCarrier::new(1))
        .timings(Timings::default().instant_delivery())
        .flow()
        .expect("the orderflow builds");
    demo_engine(flow).await
}
