//! A loopback TCP proxy that a test can cut and restore, to play a server
//! that goes away and comes back (an outage, a network partition) without
//! touching the real server.
//!
//! While cut, every connection through it is closed and new ones are closed
//! as soon as they are accepted, so clients see the server as down.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A proxy from a local port to `target`, forwarding both ways.
pub(crate) struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    accept: AbortHandle,
}

struct Shared {
    target: SocketAddr,
    up: AtomicBool,
    links: Mutex<Vec<AbortHandle>>,
    /// Connections refused while cut.
    refused: AtomicU64,
}

impl Proxy {
    /// Listens on a free loopback port; forwards to `target`.
    pub(crate) async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port for the proxy");
        let port = listener.local_addr().expect("the proxy's address").port();
        let shared = Arc::new(Shared {
            target,
            up: AtomicBool::new(true),
            links: Mutex::new(Vec::new()),
            refused: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept(listener, shared.clone())).abort_handle();
        Proxy {
            port,
            shared,
            accept,
        }
    }

    /// The local port clients connect to.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Closes every connection and refuses new ones until [`restore`](Self::restore).
    pub(crate) fn cut(&self) {
        self.shared.up.store(false, Ordering::SeqCst);
        for link in self.shared.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    /// Forwards new connections again.
    pub(crate) fn restore(&self) {
        self.shared.up.store(true, Ordering::SeqCst);
    }

    /// How many connections were refused while cut.
    pub(crate) fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    while let Ok((client, _)) = listener.accept().await {
        if !shared.up.load(Ordering::SeqCst) {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            drop(client);
            continue;
        }
        let target = shared.target;
        let link = tokio::spawn(forward(client, target)).abort_handle();
        let mut links = shared.links.lock().unwrap();
        links.retain(|l| !l.is_finished());
        links.push(link);
        // A cut between the check above and here must still close it.
        if !shared.up.load(Ordering::SeqCst) {
            for link in links.drain(..) {
                link.abort();
            }
        }
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr) {
    if let Ok(mut server) = TcpStream::connect(target).await {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    }
}
