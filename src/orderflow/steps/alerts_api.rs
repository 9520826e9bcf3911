//! Step 11 of 14: Alerts (the seed's missing `alert.step` and `GET /api/alerts`): list
//! newest first with filters, acknowledge, resolve.
//!
//! * `GET /api/alerts?type=warning&state=open&kind=low_stock&limit=50`: `type`
//!   is `info`, `warning` or `error`; `state` is `open`, `acknowledged` or
//!   `resolved`; `kind` is the part of the id before its first `:`
//!   (`low_stock`, `payment_failed`, ...); `limit` is 1 to 200 (50 by
//!   default). Filters look at the newest 1,000 alerts.
//! * `POST /api/alerts/{id}/acknowledge`: seen; no longer counted as active.
//! * `POST /api/alerts/{id}/resolve`: over. Low-stock alerts also resolve
//!   themselves when a restock lifts the product above its threshold.

use serde_json::json;

use crate::api::{ApiRequest, ApiResponse, Method};
use crate::engine::StepContext;
use crate::engine::{Step, StepError};
use crate::orderflow::http;
use crate::orderflow::model::{keys, Alert, AlertState};

use super::alert_listener::{change, IfMissing};

/// Alerts a listing looks at, newest first, before filtering.
const SCAN_WINDOW: usize = 1_000;
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 200;

pub(crate) fn steps() -> Vec<Step> {
    vec![
        list(),
        moved(
            "alert_acknowledge_api",
            "acknowledge",
            AlertState::Acknowledged,
        ),
        moved("alert_resolve_api", "resolve", AlertState::Resolved),
    ]
}

fn list() -> Step {
    Step::api("alerts_api", Method::Get, "/api/alerts").handle(
        |ctx: StepContext, request: ApiRequest| async move {
            if let Err(response) = http::settings(&ctx).await? {
                return Ok(response);
            }
            let (mut level, mut state, mut kind, mut limit) = (None, None, None, DEFAULT_LIMIT);
            for (name, value) in http::query(&request.path) {
                match name {
                    "type" => match value {
                        "info" | "warning" | "error" => level = Some(value.to_string()),
                        _ => {
                            return Ok(http::invalid_field(
                                "type",
                                "must be info, warning or error",
                            ))
                        }
                    },
                    "state" => match value {
                        "open" | "acknowledged" | "resolved" => state = Some(value.to_string()),
                        _ => {
                            return Ok(http::invalid_field(
                                "state",
                                "must be open, acknowledged or resolved",
                            ))
                        }
                    },
                    "kind" => match value {
                        "" => {
                            return Ok(http::invalid_field(
                                "kind",
                                "must name a kind, e.g. low_stock",
                            ))
                        }
                        _ => kind = Some(format!("{value}:")),
                    },
                    "limit" => match value.parse::<usize>() {
                        Ok(n) if (1..=MAX_LIMIT).contains(&n) => limit = n,
                        _ => {
                            return Ok(http::invalid_field(
                                "limit",
                                "must be a whole number from 1 to 200",
                            ))
                        }
                    },
                    _ => {}
                }
            }
            let alerts: Vec<Alert> = ctx
                .scan::<Alert>(keys::ALERTS_BY_TIME, SCAN_WINDOW)
                .await?
                .into_iter()
                .map(|(_, alert)| alert)
                .filter(|a| level.as_deref().is_none_or(|l| a.level.as_str() == l))
                .filter(|a| state.as_deref().is_none_or(|s| a.state.as_str() == s))
                .filter(|a| kind.as_deref().is_none_or(|k| a.id.starts_with(k)))
                .take(limit)
                .collect();
            Ok::<_, StepError>(ApiResponse::ok(&json!({ "alerts": alerts })))
        },
    )
}

fn moved(name: &'static str, verb: &'static str, to: AlertState) -> Step {
    Step::api(name, Method::Post, format!("/api/alerts/{{id}}/{verb}")).handle(
        move |ctx: StepContext, request: ApiRequest| async move {
            if let Err(response) = http::settings(&ctx).await? {
                return Ok(response);
            }
            let id = request.param("id").unwrap_or_default();
            if id.len() > 300 {
                return Ok(ApiResponse::error(404, "alert_not_found", "no such alert"));
            }
            Ok::<_, StepError>(
                match change(&ctx, id, to, ctx.now(), IfMissing::Nothing).await? {
                    Some(alert) => ApiResponse::ok(&alert),
                    None => ApiResponse::error(
                        404,
                        "alert_not_found",
                        format!("alert {id:?} not found"),
                    ),
                },
            )
        },
    )
}
