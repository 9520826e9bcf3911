//! An OTLP/HTTP receiver for the trace tests: it decodes the protobuf the
//! exporter sends and keeps each span's ids, name, service, `step` and links.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;

/// One span as the receiver decoded it.
#[derive(Clone, Debug)]
pub(crate) struct Received {
    pub(crate) service: String,
    pub(crate) trace: String,
    pub(crate) span: String,
    pub(crate) parent: String,
    pub(crate) name: String,
    pub(crate) step: Option<String>,
    pub(crate) attempt: Option<i64>,
    /// The (trace, span) each link points to.
    pub(crate) links: Vec<(String, String)>,
    /// The `error.type` attribute, on a failed execution's span.
    pub(crate) error_type: Option<String>,
}

/// What the receiver was sent, shared with its handler.
#[derive(Clone, Default)]
pub(crate) struct Spans(pub(crate) Arc<Mutex<Vec<Received>>>);

impl Spans {
    pub(crate) fn all(&self) -> Vec<Received> {
        self.0.lock().unwrap().clone()
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn string(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    })
}

fn int(attributes: &[KeyValue], key: &str) -> Option<i64> {
    attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            Value::IntValue(n) => Some(*n),
            // tracing-opentelemetry sends a `u32` field as its text.
            Value::StringValue(s) => s.parse().ok(),
            _ => None,
        }
    })
}

/// `POST /v1/traces`: decodes and keeps the spans; `400` for a body that
/// is not an export request.
pub(crate) async fn receive(State(spans): State<Spans>, body: Bytes) -> StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut kept = spans.0.lock().unwrap();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .as_ref()
            .and_then(|r| string(&r.attributes, "service.name"))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                kept.push(Received {
                    service: service.clone(),
                    trace: hex(&span.trace_id),
                    span: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    step: string(&span.attributes, "step"),
                    attempt: int(&span.attributes, "attempt"),
                    error_type: string(&span.attributes, "error.type"),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                    name: span.name,
                });
            }
        }
    }
    StatusCode::OK
}
