//! A collector that never answers holds up nothing (feature `otel`): the
//! engine runs every event while each export waits out its timeout, the
//! queue fills, and the spans it cannot hold are dropped and counted.
//! (Its own test binary: the export's span link is one per process.)

use std::time::Duration;

use flowline::otel::{install, OtelOptions};
use flowline::prelude::*;
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;

#[derive(Serialize, Deserialize)]
struct Ping {
    n: u32,
}
impl Event for Ping {
    const TOPIC: &'static str = "ping";
}

// One thread: the subscriber set for it records every span of the engine.
#[tokio::test]
async fn a_hung_collector_drops_spans_and_never_holds_up_the_engine() {
    // Accepts connections and never answers a byte.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}/v1/traces", hung.local_addr().unwrap());
    let export = install(
        OtelOptions::new(endpoint)
            .queue_capacity(64)
            .batch_size(16)
            .export_every(Duration::from_millis(10))
            .export_timeout(Duration::from_secs(30)),
    )
    .unwrap();
    let subscriber = tracing_subscriber::registry().with(export.layer());
    let _guard = tracing::subscriber::set_default(subscriber);

    let flow = Flow::builder()
        .external::<Ping>()
        .step(
            Step::event::<Ping>("pong")
                .handle(|_: StepContext, _: Ping| async move { Ok::<_, StepError>(()) }),
        )
        .build()
        .unwrap();
    let engine = Engine::builder(flow)
        .backend(MemoryBackend::new())
        .start()
        .await
        .unwrap();
    let tenant = TenantId::new("shop").unwrap();
    let events: Vec<Ping> = (0..2_000).map(|n| Ping { n }).collect();
    for chunk in events.chunks(200) {
        engine.emit_batch(&tenant, chunk).await.unwrap();
    }
    // Every event runs although the first export waits 30 s for an answer.
    tokio::time::timeout(Duration::from_secs(20), engine.wait_idle())
        .await
        .expect("the engine finished its work while the collector hung");
    assert_eq!(engine.local_metrics().processed, 2_000);
    assert!(
        export.dropped() >= 2_000 - 64 - 16,
        "what the queue could not hold is dropped and counted: {} dropped",
        export.dropped()
    );
    assert_eq!(export.exported(), 0, "nothing reached the collector");
    // An operator sees the drops in Prometheus.
    let metrics = flowline::prometheus::PrometheusExporter::new(engine.clone())
        .traces(&export)
        .render()
        .await;
    let dropped = format!("flowline_trace_spans_dropped_total {}", export.dropped());
    assert!(
        metrics.lines().any(|l| l == dropped),
        "{dropped} in:\n{metrics}"
    );
    engine.shutdown(Duration::from_secs(5)).await;
    drop(hung);
}
