//! Flow registration: validation errors and warnings, and graph export.

use flowline::prelude::*;
use flowline::{CronError, FlowError, FlowWarning};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Placed {
    id: u32,
}
impl Event for Placed {
    const TOPIC: &'static str = "order.placed";
}

#[derive(Serialize, Deserialize)]
struct Paid {
    id: u32,
}
impl Event for Paid {
    const TOPIC: &'static str = "order.paid";
}

fn noop<E: Event>(name: &str) -> flowline::engine::StepBuilder<E> {
    Step::event::<E>(name)
}

fn finish<E: Event>(b: flowline::engine::StepBuilder<E>) -> Step {
    b.handle(|_ctx: StepContext, _e: E| async move { Ok::<_, StepError>(()) })
}

#[test]
fn duplicate_step_names_are_rejected() {
    let err = Flow::builder()
        .step(finish(noop::<Placed>("pay")))
        .step(finish(noop::<Paid>("pay")))
        .build()
        .unwrap_err();
    assert_eq!(err, FlowError::DuplicateStep("pay".into()));
    assert!(err.to_string().contains("\"pay\""));
}

#[test]
fn an_invalid_step_name_names_the_step() {
    let err = Flow::builder()
        .step(finish(noop::<Placed>("pay now!")))
        .build()
        .unwrap_err();
    assert!(
        matches!(err, FlowError::InvalidStepName { ref step, .. } if step == "pay now!"),
        "{err}"
    );
}

#[test]
fn an_invalid_emitted_topic_names_the_step_and_topic() {
    let err = Flow::builder()
        .step(finish(noop::<Placed>("pay").emits_topic("Order Paid")))
        .build()
        .unwrap_err();
    let FlowError::InvalidTopic { step, source } = &err else {
        panic!("{err}")
    };
    assert_eq!(step, "pay");
    assert_eq!(source.value, "Order Paid");
}

#[test]
fn a_bad_cron_expression_names_the_step() {
    let step = Step::cron("nightly", "0 0 25 * * *")
        .handle(|_ctx: StepContext, _t: CronTick| async move { Ok::<_, StepError>(()) });
    let err = Flow::builder().step(step).build().unwrap_err();
    let FlowError::InvalidCron { step, source } = &err else {
        panic!("{err}")
    };
    assert_eq!(step, "nightly");
    assert!(matches!(source, CronError::Expression { .. }));
    assert!(err.to_string().contains("nightly"), "{err}");
}

#[test]
fn an_unknown_time_zone_is_rejected() {
    let step = Step::cron("nightly", "0 0 3 * * *")
        .time_zone("Europe/Atlantis")
        .handle(|_ctx: StepContext, _t: CronTick| async move { Ok::<_, StepError>(()) });
    let err = Flow::builder().step(step).build().unwrap_err();
    assert!(
        matches!(
            err,
            FlowError::InvalidCron {
                source: CronError::TimeZone(_),
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn duplicate_and_malformed_routes_are_rejected() {
    let api = |name: &str, path: &str| {
        Step::api(name, Method::Get, path).handle(|_ctx: StepContext, _r: ApiRequest| async move {
            Ok::<_, StepError>(ApiResponse::ok(&()))
        })
    };
    let err = Flow::builder()
        .step(api("a", "/orders/{id}"))
        .step(api("b", "/orders/{id}"))
        .build()
        .unwrap_err();
    assert!(matches!(err, FlowError::DuplicateRoute { .. }), "{err}");
    let err = Flow::builder()
        .step(api("a", "orders"))
        .build()
        .unwrap_err();
    assert!(matches!(err, FlowError::InvalidPath { .. }), "{err}");
}

#[test]
fn dangling_topics_are_warnings_naming_step_and_topic() {
    let flow = Flow::builder()
        .step(finish(noop::<Placed>("pay").emits::<Paid>()))
        .build()
        .unwrap();
    let warnings = flow.warnings();
    assert!(warnings.contains(&FlowWarning::EmittedButUnconsumed {
        step: "pay".into(),
        topic: "order.paid".into()
    }));
    assert!(warnings.contains(&FlowWarning::ConsumedButNeverEmitted {
        step: "pay".into(),
        topic: "order.placed".into()
    }));
}

#[test]
fn deny_warnings_turns_them_into_an_error() {
    let err = Flow::builder()
        .step(finish(noop::<Placed>("pay").emits::<Paid>()))
        .deny_warnings()
        .build()
        .unwrap_err();
    assert!(
        matches!(err, FlowError::Warnings(ref w) if w.len() == 2),
        "{err}"
    );
}

#[test]
fn a_wired_flow_has_no_warnings_and_exports_its_graph() {
    let flow = Flow::builder()
        .external::<Placed>()
        .step(finish(noop::<Placed>("pay").emits::<Paid>()))
        .step(finish(noop::<Paid>("ship")))
        .step(
            Step::cron("sweep", "0 * * * * *")
                .emits::<Placed>()
                .handle(|_ctx: StepContext, _t: CronTick| async move { Ok::<_, StepError>(()) }),
        )
        .deny_warnings()
        .build()
        .unwrap();
    let mermaid = flow.to_mermaid();
    assert!(mermaid.starts_with("flowchart LR"));
    assert!(
        mermaid.contains("pay -- \"order.paid\" --> ship"),
        "{mermaid}"
    );
    assert!(
        mermaid.contains("sweep -- \"order.placed\" --> pay"),
        "{mermaid}"
    );
    let dot = flow.to_dot();
    assert!(dot.contains("pay -> ship [label=\"order.paid\"]"), "{dot}");
    let json = flow.to_json();
    assert_eq!(json["steps"][0]["name"], "pay");
    assert_eq!(json["steps"][0]["subscribes"][0], "order.placed");
    assert_eq!(json["steps"][2]["kind"], "cron");
    assert_eq!(json["external"][0], "order.placed");
}
