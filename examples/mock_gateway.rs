//! The seed's mock bank (SEED_SPEC §4) as one command: a [`MockGateway`] served
//! over HTTP by [`gateway_router`], for an order flow charging through
//! `HttpGateway` (feature `http-gateway`) or for poking at with curl.
//!
//! ```text
//! cargo run --features axum --example mock_gateway
//! cargo run --features axum --example mock_gateway -- --listen 127.0.0.1:4200 \
//!     --approval-rate 0.7 --latency-ms 50 --server-error-rate 0.05 \
//!     --lost-response-rate 0.02 --outage-every-s 60 --outage-for-s 10 --seed 7
//! curl -s localhost:4100/charges -H 'content-type: application/json' -d \
//!   '{"store":"X","order_id":"o-1","amount":{"minor":2500,"currency":"USD"},"idempotency_key":"k-1"}'
//! curl -s localhost:4100/ledger
//! ```
//!
//! | flag | default | meaning |
//! |---|---|---|
//! | `--listen ADDR` | `127.0.0.1:4100` | where to listen |
//! | `--approval-rate F` | `1.0` | share of charges approved (a key's decision is fixed by the seed) |
//! | `--latency-ms N` | `0` | how long each call takes |
//! | `--server-error-rate F` | `0.0` | share of calls answered `503 server_error` before anything is captured |
//! | `--lost-response-rate F` | `0.0` | share of captured charges whose answer is lost (the server holds the request; the client times out) |
//! | `--outage-every-s N` `--outage-for-s M` | none | down (`503 unavailable`) for M seconds every N seconds, first N seconds after the start, for the next 24 hours; give both, M < N |
//! | `--seed N` | `0` | the seed of every decision |
//!
//! Bad flags print the usage line and exit with status 2 (`--help` prints it
//! and exits with 0). Ctrl-C stops
//! accepting connections and lets calls in flight finish, for at most
//! 5 seconds (a held lost response is cut off).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use flowline::orderflow::{gateway_router, MockGateway};
use flowline::Clock;

const USAGE: &str = "usage: mock_gateway [--listen ADDR] [--approval-rate F] [--latency-ms N] \
                     [--server-error-rate F] [--lost-response-rate F] \
                     [--outage-every-s N --outage-for-s M] [--seed N]";

/// How long calls in flight may take to finish after Ctrl-C.
const GRACE: Duration = Duration::from_secs(5);
/// How far ahead outage windows are laid out.
const OUTAGE_HORIZON: Duration = Duration::from_secs(24 * 3600);
/// At most this many outage windows.
const MAX_OUTAGES: u64 = 10_000;

struct Args {
    listen: SocketAddr,
    approval_rate: f64,
    latency: Duration,
    server_error_rate: f64,
    lost_response_rate: f64,
    /// Every N seconds, for M seconds.
    outages: Option<(u64, u64)>,
    seed: u64,
}

fn parse<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e| format!("{flag}: {value:?} is not valid ({e})"))
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 4100)),
        approval_rate: 1.0,
        latency: Duration::ZERO,
        server_error_rate: 0.0,
        lost_response_rate: 0.0,
        outages: None,
        seed: 0,
    };
    let (mut every, mut length) = (None, None);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let flag = arg.as_str();
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag {
            "--listen" => args.listen = parse(flag, &value()?)?,
            "--approval-rate" => args.approval_rate = parse(flag, &value()?)?,
            "--latency-ms" => args.latency = Duration::from_millis(parse(flag, &value()?)?),
            "--server-error-rate" => args.server_error_rate = parse(flag, &value()?)?,
            "--lost-response-rate" => args.lost_response_rate = parse(flag, &value()?)?,
            "--outage-every-s" => every = Some(parse::<u64>(flag, &value()?)?),
            "--outage-for-s" => length = Some(parse::<u64>(flag, &value()?)?),
            "--seed" => args.seed = parse(flag, &value()?)?,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    args.outages = match (every, length) {
        (None, None) => None,
        (Some(every), Some(length)) if length > 0 && length < every => Some((every, length)),
        (Some(_), Some(_)) => {
            return Err("--outage-for-s must be above 0 and below --outage-every-s".into())
        }
        _ => return Err("--outage-every-s and --outage-for-s go together".into()),
    };
    Ok(args)
}

fn gateway(args: &Args) -> Result<MockGateway, String> {
    let clock = Clock::system();
    let start = clock.now();
    let mut builder = MockGateway::builder()
        .seed(args.seed)
        .approval_rate(args.approval_rate)
        .server_error_rate(args.server_error_rate)
        .lost_response_rate(args.lost_response_rate)
        .latency(args.latency);
    if let Some((every, length)) = args.outages {
        let windows = (OUTAGE_HORIZON.as_secs() / every).clamp(1, MAX_OUTAGES);
        for n in 1..=windows {
            let from = start + Duration::from_secs(n * every);
            builder = builder.outage(from, from + Duration::from_secs(length));
        }
    }
    builder.build(clock).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let parsed = args().and_then(|args| gateway(&args).map(|gateway| (args, gateway)));
    let (args, gateway) = match parsed {
        Ok(parsed) => parsed,
        // An empty message: --help asked for the usage line.
        Err(message) if message.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("mock_gateway: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("mock_gateway: cannot listen on {}: {err}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(args.listen);
    println!(
        "Mock payment gateway listening on http://{addr} (seed {})",
        args.seed
    );
    if let Some((every, length)) = args.outages {
        println!("  down for {length} s every {every} s");
    }

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server =
        axum::serve(listener, gateway_router(gateway.clone())).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
    let mut server = tokio::spawn(async move { server.await });
    tokio::select! {
        signal = tokio::signal::ctrl_c() => {
            if let Err(err) = signal {
                eprintln!("mock_gateway: cannot wait for Ctrl-C: {err}");
                return ExitCode::FAILURE;
            }
        }
        ended = &mut server => {
            eprintln!("mock_gateway: the server stopped: {ended:?}");
            return ExitCode::FAILURE;
        }
    }
    println!(
        "shutting down: letting calls in flight finish (at most {} s)",
        GRACE.as_secs()
    );
    let _ = stop.send(());
    if tokio::time::timeout(GRACE, server).await.is_err() {
        println!(
            "  calls still in flight after {} s were cut off",
            GRACE.as_secs()
        );
    }
    let ledger = gateway.ledger();
    let captured = ledger.iter().filter(|e| e.transaction_id.is_some()).count();
    let declined = ledger.iter().filter(|e| e.declined.is_some()).count();
    let refunded = ledger.iter().filter(|e| e.refunded).count();
    println!("ledger: {captured} captured ({refunded} refunded), {declined} declined");
    ExitCode::SUCCESS
}
