//! The Prometheus exporter says what the engine did: each step's commits,
//! failures, retries and dead letters, its latency histograms, the queue by
//! state, hold-backs per flow-control key, cron fires, and per-tenant counts
//! only when asked for and never past their cap. (A real Prometheus scrapes
//! the order system in `.ci/prometheus`.)

use std::time::Duration;

use flowline::flow_control::{Limit, LimitKey};
use flowline::prelude::*;
use flowline::prometheus::PrometheusExporter;
use flowline::EngineConfig;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Visit {
    page: String,
}
impl Event for Visit {
    const TOPIC: &'static str = "visit";
}

#[derive(Serialize, Deserialize)]
struct Signup {
    email: String,
}
impl Event for Signup {
    const TOPIC: &'static str = "signup";
}

fn flow() -> Flow {
    Flow::builder()
        .external::<Visit>()
        .external::<Signup>()
        .step(
            Step::event::<Visit>("count_visit")
                .handle(|_: StepContext, _: Visit| async move { Ok::<_, StepError>(()) }),
        )
        .step(
            Step::event::<Visit>("broken")
                .retry(RetryPolicy::none())
                .handle(|_: StepContext, _: Visit| async move {
                    Err::<(), _>(StepError::retryable("the mail server is down"))
                }),
        )
        .step(
            Step::event::<Signup>("welcome")
                .limit(
                    Limit::rate(1, Duration::from_secs(3600))
                        .per(LimitKey::tenant())
                        .named("hourly"),
                )
                .handle(|_: StepContext, _: Signup| async move { Ok::<_, StepError>(()) }),
        )
        .step(
            Step::cron("tick", "* * * * * *")
                .handle(|_: StepContext, _: CronTick| async move { Ok::<_, StepError>(()) }),
        )
        .build()
        .expect("a valid flow")
}

/// The value of the one sample whose name and labels are `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn settled(engine: &Engine, until: impl Fn(&str) -> bool) -> String {
    let exporter = PrometheusExporter::new(engine.clone());
    for _ in 0..200 {
        let text = exporter.render().await;
        if until(&text) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the metrics never settled:\n{}", exporter.render().await);
}

#[tokio::test]
async fn each_step_says_what_it_did_and_how_long_it_took() {
    let engine = Engine::builder(flow())
        .backend(MemoryBackend::new())
        .start()
        .await
        .unwrap();
    let shop = TenantId::new("shop").unwrap();
    for page in ["home", "cart", "checkout"] {
        engine
            .emit(&shop, &Visit { page: page.into() })
            .await
            .unwrap();
    }
    let text = settled(&engine, |t| {
        sample(t, r#"flowline_step_dead_lettered_total{step="broken"}"#) == Some(3.0)
            && sample(t, r#"flowline_step_processed_total{step="count_visit"}"#) == Some(3.0)
    })
    .await;

    assert_eq!(
        sample(&text, r#"flowline_step_failed_total{step="broken"}"#),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, r#"flowline_step_retried_total{step="broken"}"#),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"flowline_step_handler_duration_seconds_count{step="count_visit"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"flowline_step_handler_duration_seconds_bucket{le="+Inf",step="count_visit"}"#
        ),
        Some(3.0),
        "buckets are cumulative"
    );
    assert_eq!(
        sample(
            &text,
            r#"flowline_step_end_to_end_duration_seconds_count{step="count_visit"}"#
        ),
        Some(3.0)
    );
    // The queue is read from the backend (at most once a second per exporter).
    let fresh = PrometheusExporter::new(engine.clone()).render().await;
    assert_eq!(
        sample(&fresh, r#"flowline_queue_deliveries{state="dead"}"#),
        Some(3.0)
    );
    assert_eq!(
        sample(&fresh, r#"flowline_queue_deliveries{state="ready"}"#),
        Some(0.0)
    );
    assert!(text.contains("# TYPE flowline_step_handler_duration_seconds histogram"));
    assert!(text.contains("# UNIT flowline_step_handler_duration_seconds seconds"));
    assert!(
        !text.contains("flowline_tenant_processed"),
        "per-tenant series only when the engine counts per tenant"
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn hold_backs_are_counted_per_key_and_cron_fires_with_their_lag() {
    let engine = Engine::builder(flow())
        .backend(MemoryBackend::new())
        .start()
        .await
        .unwrap();
    let (a, b) = (TenantId::new("a").unwrap(), TenantId::new("b").unwrap());
    for tenant in [&a, &a, &a, &b] {
        let signup = Signup {
            email: "x@example.com".into(),
        };
        engine.emit(tenant, &signup).await.unwrap();
    }
    let text = settled(&engine, |t| {
        sample(
            t,
            r#"flowline_flow_control_throttled_total{step="welcome",limit="hourly",key="a"}"#,
        ) >= Some(2.0)
            && sample(t, r#"flowline_cron_fires_total{step="tick"}"#) >= Some(1.0)
    })
    .await;
    assert_eq!(
        sample(&text, r#"flowline_step_processed_total{step="welcome"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"flowline_flow_control_throttled_total{step="welcome",limit="hourly",key="b"}"#
        ),
        None,
        "b's one signup ran at once"
    );
    // The two held back wait in the backend, due when the budget allows.
    let fresh = PrometheusExporter::new(engine.clone()).render().await;
    assert_eq!(
        sample(
            &fresh,
            r#"flowline_step_queue_deliveries{step="welcome",state="delayed"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &fresh,
            r#"flowline_step_queue_deliveries{step="count_visit",state="ready"}"#
        ),
        Some(0.0),
        "a step with nothing queued has its series, at zero"
    );
    let fires = sample(&text, r#"flowline_cron_fires_total{step="tick"}"#).unwrap();
    assert_eq!(
        sample(&text, r#"flowline_cron_lag_seconds_count{step="tick"}"#),
        Some(fires)
    );
    assert!(
        !text.contains(r#"flowline_cron_fires_total{step="welcome"}"#),
        "only cron steps have cron series"
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn per_tenant_counts_are_opt_in_and_capped_with_an_other_bucket() {
    let engine = Engine::builder(flow())
        .backend(MemoryBackend::new())
        .config(EngineConfig {
            tenant_metrics: 2,
            ..EngineConfig::default()
        })
        .start()
        .await
        .unwrap();
    for name in ["s1", "s2", "s3", "s4"] {
        let tenant = TenantId::new(name).unwrap();
        engine
            .emit(
                &tenant,
                &Visit {
                    page: "home".into(),
                },
            )
            .await
            .unwrap();
    }
    let text = settled(&engine, |t| {
        sample(t, r#"flowline_step_processed_total{step="count_visit"}"#) == Some(4.0)
            && sample(t, r#"flowline_step_dead_lettered_total{step="broken"}"#) == Some(4.0)
    })
    .await;
    let tenants: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("flowline_tenant_processed_total"))
        .collect();
    assert_eq!(tenants.len(), 3, "two tenants and \"other\": {tenants:?}");
    let processed: f64 = tenants
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(
        processed >= 4.0,
        "every tenant's commits are counted: {tenants:?}"
    );
    assert!(tenants.iter().any(|l| l.contains(r#"tenant="other""#)));
    let dead: f64 = text
        .lines()
        .filter(|l| l.starts_with("flowline_tenant_dead_lettered_total"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(dead, 4.0);
    engine.shutdown(Duration::from_secs(5)).await;
}
