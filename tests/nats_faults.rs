//! Faults on a split backend (SQLite beside NATS JetStream, issue 14): every
//! effect exactly once, nothing accepted lost.
//!
//! * `a_nats_restart_mid_run_loses_and_doubles_nothing`: an engine works
//!   through a few thousand events while the test kills the NATS server
//!   (SIGKILL) and starts it again with the same command line. Emits go on
//!   meanwhile (they land in the store's outbox, so every one is accepted).
//! * `a_cut_connection_mid_run_loses_and_doubles_nothing`: the transport
//!   reaches the server through a loopback proxy, cut for three seconds.
//! * `connecting_where_nothing_listens_is_a_typed_error`.
//!
//! After each fault, every event must be recorded exactly once, the counters
//! must add up, and nothing may be dead-lettered or left queued.
//!
//! Needs a NATS server with JetStream on 127.0.0.1:4222, started by this
//! machine's user (the restart test reads its command line from `/proc` and
//! starts it again). Run with `cargo test --features nats --test nats_faults`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowline::prelude::*;
use flowline::{
    EngineConfig, NatsError, NatsOptions, NatsTransport, SplitBackend, Store, Timestamp, Transport,
};
use serde::{Deserialize, Serialize};

#[path = "support/nats.rs"]
mod nats;
#[path = "support/proxy.rs"]
mod proxy;

const TENANT: &str = "faults";
const EVENTS: u64 = 3_000;
const LIVE_BASE: u64 = 1_000_000;
const PARTITIONS: u64 = 32;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
const PREFIX: &str = "FLTEST_FAULTS_";

/// The faults share one server: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Serialize, Deserialize)]
struct Work {
    n: u64,
}
impl Event for Work {
    const TOPIC: &'static str = "work";
}

type Split = SplitBackend<SqliteBackend, NatsTransport>;

fn flow() -> Flow {
    let count = Step::event::<Work>("count")
        .retry(
            RetryPolicy::exponential(Duration::from_millis(10), Duration::from_millis(500))
                .max_attempts(1_000),
        )
        .lease(Duration::from_secs(5))
        .handle(|ctx: StepContext, work: Work| async move {
            let n = work.n;
            if ctx.get::<bool>(&format!("ledger/{n}")).await?.is_some() {
                ctx.put(&format!("dup/{n}"), &true)?;
            } else {
                ctx.put(&format!("ledger/{n}"), &true)?;
            }
            ctx.add(&format!("ledger-count/{}", n % PARTITIONS), 1)?;
            Ok(())
        });
    Flow::builder()
        .external::<Work>()
        .steps([count])
        .build()
        .expect("a valid flow")
}

fn store() -> SqliteBackend {
    let dir = tempfile::Builder::new()
        .prefix("nats-faults-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("a temporary directory")
        .keep();
    SqliteBackend::open(dir.join("flowline.db")).expect("a new database file")
}

async fn transport(url: String) -> NatsTransport {
    let stream = nats::fresh_stream(PREFIX);
    let options = NatsOptions::new(url)
        .stream(stream.clone())
        .subject_prefix(stream)
        .ack_wait(Duration::from_secs(3));
    NatsTransport::connect_with(options)
        .await
        .expect("NATS with JetStream on 127.0.0.1:4222")
}

async fn start_seeded(backend: &Split) -> (Engine, TenantId) {
    let engine = Engine::builder(flow())
        .backend(backend.clone())
        .config(EngineConfig {
            batch_size: 64,
            max_in_flight: 256,
            poll_interval: Duration::from_millis(50),
            ..EngineConfig::default()
        })
        .start()
        .await
        .expect("an engine");
    let tenant = TenantId::new(TENANT).unwrap();
    let seeded: Vec<Work> = (0..EVENTS).map(|n| Work { n }).collect();
    for chunk in seeded.chunks(500) {
        engine.emit_batch(&tenant, chunk).await.expect("seeding");
    }
    (engine, tenant)
}

/// Emits a numbered event every 5 ms until `stop`; answers the accepted ones.
fn spawn_emitter(
    engine: &Engine,
    tenant: &TenantId,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<u64>> {
    let (engine, tenant, stop) = (engine.clone(), tenant.clone(), stop.clone());
    tokio::spawn(async move {
        let mut accepted = Vec::new();
        let mut n = LIVE_BASE;
        while !stop.load(Ordering::Acquire) {
            if engine.emit(&tenant, &Work { n }).await.is_ok() {
                accepted.push(n);
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        accepted
    })
}

async fn scan(backend: &Split, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let tenant = TenantId::new(TENANT).unwrap();
    backend
        .store()
        .scan(&tenant, prefix, usize::MAX)
        .await
        .expect("scan")
        .into_iter()
        .map(|(k, v)| (k, v.value.to_vec()))
        .collect()
}

/// Waits until the queue is empty and at least `must` events are counted.
async fn drain(backend: &Split, must: usize) {
    let from = Instant::now();
    loop {
        let counted: u64 = scan(backend, "ledger-count/")
            .await
            .iter()
            .map(|(_, v)| serde_json::from_slice::<u64>(v).unwrap())
            .sum();
        let empty = backend
            .depth(Timestamp::system_now())
            .await
            .is_ok_and(|d| d.pending() == 0);
        if counted >= must as u64 && empty {
            return;
        }
        assert!(
            from.elapsed() < DRAIN_TIMEOUT,
            "not drained within {DRAIN_TIMEOUT:?}: {counted} of {must} counted, queue {:?}",
            backend.depth(Timestamp::system_now()).await.ok()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every accepted event recorded exactly once, nothing else, nothing left.
async fn verify_exactly_once(backend: &Split, accepted: &BTreeSet<u64>, faults: &str) {
    let ledger: BTreeSet<u64> = scan(backend, "ledger/")
        .await
        .iter()
        .map(|(k, _)| k.strip_prefix("ledger/").unwrap().parse().unwrap())
        .collect();
    let dups = scan(backend, "dup/").await;
    let counted: u64 = scan(backend, "ledger-count/")
        .await
        .iter()
        .map(|(_, v)| serde_json::from_slice::<u64>(v).unwrap())
        .sum();
    let dead = backend
        .dead_letters(&Default::default())
        .await
        .expect("dead letters");
    let missing: Vec<_> = accepted.difference(&ledger).take(10).collect();
    let unexpected: Vec<_> = ledger.difference(accepted).take(10).collect();
    assert!(
        missing.is_empty(),
        "{faults}: accepted events lost, e.g. {missing:?}"
    );
    assert!(
        unexpected.is_empty(),
        "{faults}: never emitted: {unexpected:?}"
    );
    assert!(
        dups.is_empty(),
        "{faults}: {} duplicate effects",
        dups.len()
    );
    assert_eq!(counted, ledger.len() as u64, "{faults}: counters add up");
    assert!(dead.is_empty(), "{faults}: dead letters {dead:?}");
}

/// Runs the seeded engine and an emitter through `fault`, then checks.
async fn survive<F, Fut>(backend: Split, faults: &str, fault: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (engine, tenant) = start_seeded(&backend).await;
    let stop = Arc::new(AtomicBool::new(false));
    let emitter = spawn_emitter(&engine, &tenant, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    fault().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Release);
    let live = emitter.await.expect("the emitter");
    let accepted: BTreeSet<u64> = (0..EVENTS).chain(live.iter().copied()).collect();
    assert!(!live.is_empty(), "emits were accepted during the fault");
    drain(&backend, accepted.len()).await;
    engine.shutdown(Duration::from_secs(10)).await;
    verify_exactly_once(&backend, &accepted, faults).await;
    let _ = backend.broker().delete_stream().await;
}

/// The running server's command line, read from `/proc`.
fn server_command() -> Vec<String> {
    let pid = std::process::Command::new("pgrep")
        .args(["-x", "nats-server"])
        .output()
        .expect("pgrep");
    let pid = String::from_utf8_lossy(&pid.stdout)
        .lines()
        .next()
        .expect("a running nats-server")
        .trim()
        .to_string();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("its command line");
    cmdline
        .split(|b| *b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect()
}

async fn port_open(up: bool) {
    let from = Instant::now();
    while tokio::net::TcpStream::connect("127.0.0.1:4222")
        .await
        .is_ok()
        != up
    {
        assert!(
            from.elapsed() < Duration::from_secs(30),
            "server up={up} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_run_loses_and_doubles_nothing() {
    let _one = SERIAL.lock().await;
    let command = server_command();
    let backend = SplitBackend::new(store(), transport(nats::url()).await);
    survive(backend, "a NATS restart", || async move {
        let status = std::process::Command::new("pkill")
            .args(["-KILL", "-x", "nats-server"])
            .status()
            .expect("pkill");
        assert!(status.success(), "killed the server");
        port_open(false).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Detached: it outlives this test, as the server the machine started
        // would, so it is never waited on.
        #[allow(clippy::zombie_processes)]
        std::process::Command::new(&command[0])
            .args(&command[1..])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("restarting the server");
        port_open(true).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_mid_run_loses_and_doubles_nothing() {
    let _one = SERIAL.lock().await;
    let proxy = proxy::Proxy::start("127.0.0.1:4222".parse().unwrap()).await;
    let url = format!("nats://127.0.0.1:{}", proxy.port());
    let backend = SplitBackend::new(store(), transport(url).await);
    survive(backend, "a cut connection", || async {
        proxy.cut();
        tokio::time::sleep(Duration::from_secs(3)).await;
        proxy.restore();
    })
    .await;
    assert!(
        proxy.refused() > 0,
        "the client tried to reconnect while cut"
    );
}

#[tokio::test]
async fn connecting_where_nothing_listens_is_a_typed_error() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let from = Instant::now();
    let err = NatsTransport::connect(format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(matches!(err, NatsError::Connect(_)), "{err}");
    assert!(from.elapsed() < Duration::from_secs(10), "promptly");
    let err = NatsTransport::connect_with(NatsOptions::new("nats://127.0.0.1:4222").stream("a.b"))
        .await
        .unwrap_err();
    assert!(matches!(err, NatsError::InvalidOption(_)), "{err}");
}
