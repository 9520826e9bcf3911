//! Many live clients at once: memory the server holds for them, and how long
//! an alert takes to reach all of them.
//!
//! ```text
//! cargo run --release --all-features --example sse_load -- --clients 1000 --orders 20
//! ```
//!
//! (`axum` and `orderflow` are the features it needs; `--all-features` shares
//! one release build with the other examples' lines.)
//!
//! The server (this process: orderflow on the memory backend, the API and the
//! live routes on a loopback port) starts a second process of this example
//! for the clients, so that its own resident memory counts the server's side
//! only. The clients open `--clients` streams of store X's alerts
//! (`GET /api/alerts/stream`), then place `--orders` orders one after another
//! (100 ms apart) and time, for each, from sending the order to each client
//! reading its `order_created` alert. The server prints its resident memory
//! (`VmRSS`) before the clients connect and while they are all connected; the
//! clients print the latency percentiles over every (order, client) pair.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    clients: usize,
    orders: usize,
    /// Set in the clients' process: the server's address.
    connect: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        clients: 1000,
        orders: 20,
        connect: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--clients" => {
                args.clients = value()?.parse().map_err(|e| format!("--clients: {e}"))?
            }
            "--orders" => args.orders = value()?.parse().map_err(|e| format!("--orders: {e}"))?,
            "--connect" => args.connect = Some(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

/// This process's resident memory, in KiB (Linux).
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = match args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}\nusage: sse_load [--clients N] [--orders M]");
            std::process::exit(2);
        }
    };
    match &args.connect {
        Some(addr) => clients(addr, args.clients, args.orders).await,
        None => server(&args).await,
    }
}

async fn server(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    use flowline::http::{api_router, HttpOptions};
    use flowline::orderflow::{
        self, live_router, MockCarrier, MockGateway, Orderflow, Timings, STORE_HEADER,
    };
    use flowline::{Clock, Engine, MemoryBackend};

    let gateway = MockGateway::builder().build(Clock::system())?;
    let flow = Orderflow::new(gateway, MockCarrier::new(1))
        .timings(Timings::default().instant_delivery())
        .flow()?;
    let engine = Engine::builder(flow)
        .backend(MemoryBackend::new())
        .start()
        .await?;
    orderflow::bootstrap(&engine, &orderflow::demo_stores()).await?;
    orderflow::seed_demo(&engine).await?;
    engine.wait_idle().await;
    let options = HttpOptions::new().tenant_header(STORE_HEADER);
    let app = live_router(engine.clone(), &options).merge(api_router(engine.clone(), options));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_kib().unwrap_or(0);
    println!(
        "sse_load: {} clients, {} orders, {} cores",
        args.clients,
        args.orders,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("server resident memory before the clients: {before} KiB");

    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--connect", &addr.to_string()])
        .args(["--clients", &args.clients.to_string()])
        .args(["--orders", &args.orders.to_string()])
        .stdout(std::process::Stdio::inherit())
        .spawn()?;
    // While the clients are connected (they place orders for a few
    // seconds), the highest resident memory seen.
    let mut peak = before;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                peak = peak.max(rss_kib().unwrap_or(0));
            }
        }
    };
    println!(
        "server resident memory with the clients connected: {peak} KiB at the highest, {} KiB more, {:.1} KiB a client",
        peak.saturating_sub(before),
        peak.saturating_sub(before) as f64 / args.clients.max(1) as f64
    );
    engine.shutdown(Duration::from_secs(5)).await;
    if !status.success() {
        return Err(format!("the clients failed: {status}").into());
    }
    Ok(())
}

/// Opens a stream of store X's alerts; the socket, its headers read.
async fn open(addr: &str) -> std::io::Result<TcpStream> {
    let mut socket = TcpStream::connect(addr).await?;
    let request = format!(
        "GET /api/alerts/stream?store=X HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if socket.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&head).to_string(),
        ));
    }
    Ok(socket)
}

async fn place(addr: &str, id: &str) -> std::io::Result<()> {
    let body = format!(
        r#"{{"orderId":"{id}","customerName":"Ada","items":[{{"productId":"prod-x-001","quantity":1}}]}}"#
    );
    let request = format!(
        "POST /api/order HTTP/1.1\r\nHost: {addr}\r\nX-Store-ID: X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut socket = TcpStream::connect(addr).await?;
    socket.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    socket.read_to_end(&mut answer).await?;
    if !answer.starts_with(b"HTTP/1.1 201") {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&answer).to_string(),
        ));
    }
    Ok(())
}

async fn clients(addr: &str, n: usize, orders: usize) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        sockets.push(open(addr).await?);
    }
    println!(
        "{n} streams open in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    // Each client reads until it has seen every order's alert, and notes when.
    let clock = Instant::now();
    let mut readers = Vec::with_capacity(n);
    for mut socket in sockets {
        readers.push(tokio::spawn(async move {
            let mut seen = vec![None; orders];
            let mut text = String::new();
            let mut buffer = vec![0u8; 4096];
            while seen.iter().any(Option::is_none) {
                let read = socket.read(&mut buffer).await?;
                if read == 0 {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
                }
                text.push_str(&String::from_utf8_lossy(&buffer[..read]));
                for (i, at) in seen.iter_mut().enumerate() {
                    if at.is_none() && text.contains(&format!("\"order_created:sse-{i}\"")) {
                        *at = Some(clock.elapsed());
                    }
                }
                // Keep only a tail that may hold the start of an event.
                if text.len() > 64 * 1024 {
                    text.drain(..text.len() - 4096);
                }
            }
            Ok::<_, std::io::Error>(seen)
        }));
    }
    let mut sent = Vec::with_capacity(orders);
    for i in 0..orders {
        sent.push(clock.elapsed());
        place(addr, &format!("sse-{i}")).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut latencies = Vec::with_capacity(n * orders);
    for reader in readers {
        let seen = tokio::time::timeout(Duration::from_secs(60), reader).await???;
        for (i, at) in seen.into_iter().enumerate() {
            let at = at.expect("seen");
            latencies.push(at.saturating_sub(sent[i]));
        }
    }
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "alert latency over {} deliveries (order sent -> client read): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        latencies.len(),
        pick(0.5).as_secs_f64() * 1000.0,
        pick(0.99).as_secs_f64() * 1000.0,
        pick(1.0).as_secs_f64() * 1000.0
    );
    Ok(())
}
