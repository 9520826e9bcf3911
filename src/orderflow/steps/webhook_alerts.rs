//! With webhooks (feature `webhooks`): a store's endpoint disabled after
//! failing for too long raises an error alert, "Webhook Endpoint Disabled",
//! keyed by the endpoint and the start of its failing stretch (a later
//! stretch raises a new one). Re-enable the endpoint through the admin API.

use crate::engine::{Step, StepContext};
use crate::orderflow::model::{Alert, AlertLevel, AlertState};
use crate::webhooks::WebhookEndpointDisabled;

use super::alert_listener::raise;

pub(crate) fn step() -> Step {
    Step::event::<WebhookEndpointDisabled>("webhook_alerts").handle(
        |ctx: StepContext, disabled: WebhookEndpointDisabled| async move {
            let alert = Alert {
                id: format!(
                    "webhook_disabled:{}:{}",
                    disabled.endpoint,
                    disabled.failing_since.as_millis()
                ),
                level: AlertLevel::Error,
                title: "Webhook Endpoint Disabled".to_string(),
                message: format!(
                    "Deliveries to {} stopped: {}. Mend the receiver, then enable the endpoint again.",
                    disabled.url, disabled.reason
                ),
                order_id: None,
                product_id: None,
                timestamp: ctx.now(),
                state: AlertState::Open,
                resolved_at: None,
            };
            raise(&ctx, alert).await
        },
    )
}
