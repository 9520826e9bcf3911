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
