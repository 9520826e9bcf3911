//! A webhook receiver, as a merchant would write one: it verifies each
//! message's signature (Standard Webhooks, with `flowline::webhooks::verify`),
//! refuses timestamps more than five minutes from its clock, and handles
//! each `webhook-id` once, answering a repeat `200` without handling it again
//! (a sender retries when an answer is lost).
//!
//! ```text
//! cargo run --features webhooks,axum --example webhook_receiver -- --listen 127.0.0.1:4300 --secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
//! curl -s -o /dev/null -w '%{http_code}\n' -X POST 127.0.0.1:4300/hooks -H 'webhook-id: msg_1' -H 'webhook-timestamp: 1' -H 'webhook-signature: v1,AAAA' -d '{}' | grep -x 401
//! ```
//!
//! Flags: `--listen ADDR` (default `127.0.0.1:4300`), `--secret whsec_…`
//! (repeatable: during a rotation, both; required). Answers: `204` handled,
//! `200` a repeat, `400` a message without the three headers, `401` a bad
//! signature or a stale timestamp. It remembers the last 100,000 ids.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use flowline::webhooks::{verify, Signed, WebhookSecret};

/// How many ids the receiver remembers for de-duplication.
const REMEMBERED: usize = 100_000;

struct Receiver {
    secrets: Vec<WebhookSecret>,
    seen: Mutex<(HashSet<String>, VecDeque<String>)>,
}

fn args() -> Result<(String, Vec<WebhookSecret>), String> {
    let mut listen = "127.0.0.1:4300".to_string();
    let mut secrets = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = value()?,
            "--secret" => {
                secrets.push(WebhookSecret::parse(&value()?).map_err(|e| format!("--secret: {e}"))?)
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if secrets.is_empty() {
        return Err("--secret whsec_… is required".to_string());
    }
    Ok((listen, secrets))
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(timestamp), Some(signatures)) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) else {
        return StatusCode::BAD_REQUEST;
    };
    let now = chrono::Utc::now().timestamp();
    let signed = Signed {
        id,
        timestamp,
        signatures,
    };
    if let Err(err) = verify(&receiver.secrets, &signed, &body, now) {
        eprintln!("refused {id}: {err}");
        return StatusCode::UNAUTHORIZED;
    }
    {
        let mut seen = receiver.seen.lock().unwrap_or_else(|e| e.into_inner());
        if !seen.0.insert(id.to_string()) {
            return StatusCode::OK;
        }
        seen.1.push_back(id.to_string());
        if seen.1.len() > REMEMBERED {
            if let Some(oldest) = seen.1.pop_front() {
                seen.0.remove(&oldest);
            }
        }
    }
    // Handle the event here, once per id.
    println!("{id} {}", String::from_utf8_lossy(&body));
    StatusCode::NO_CONTENT
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (listen, secrets) = match args() {
        Ok(parsed) => parsed,
        Err(err) => {
            eprintln!(
                "{err}\nusage: webhook_receiver [--listen ADDR] --secret whsec_… [--secret …]"
            );
            std::process::exit(2);
        }
    };
    let receiver = Arc::new(Receiver {
        secrets,
        seen: Mutex::new((HashSet::new(), VecDeque::new())),
    });
    let app = Router::new()
        .route("/hooks", post(receive))
        .with_state(receiver);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("receiving on http://{}/hooks", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
