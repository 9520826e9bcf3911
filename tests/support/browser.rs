//! A real browser for the page tests: Debian's headless Chromium, driven
//! through chromedriver (WebDriver, `fantoccini`). Needs `/usr/bin/chromium`
//! and `/usr/bin/chromedriver` (Debian packages `chromium` and
//! `chromium-driver`; `.ci/run` installs them), or `FLOWLINE_CHROMEDRIVER` /
//! `FLOWLINE_CHROMIUM`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::ClientBuilder;
use serde_json::json;

/// chromedriver, killed when the test ends.
pub(crate) struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Starts chromedriver and waits until it answers.
pub(crate) async fn start_driver() -> (Driver, String) {
    let path =
        std::env::var("FLOWLINE_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
    let port = free_port();
    let child = Command::new(&path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {path} ({e}): install Debian's chromium and chromium-driver, or set FLOWLINE_CHROMEDRIVER")
        });
    let driver = Driver(child);
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "chromedriver did not listen on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (driver, format!("http://127.0.0.1:{port}"))
}

/// A Chromium session of `width` x `height`, with its chromedriver (keep
/// the driver alive as long as the session).
pub(crate) async fn browser(width: u32, height: u32) -> (Driver, fantoccini::Client) {
    let (driver, webdriver) = start_driver().await;
    let chromium =
        std::env::var("FLOWLINE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     format!("--window-size={width},{height}")],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&webdriver)
        .await
        .expect("a Chromium session through chromedriver");
    (driver, client)
}

/// The text of the first element `css` matches, read in one script: the page
/// redraws every second, so a found element may be replaced before a second
/// command could read it.
pub(crate) async fn text(client: &fantoccini::Client, css: &str) -> String {
    let value = client
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
            vec![json!(css)],
        )
        .await
        .expect(css);
    value.as_str().unwrap_or_default().to_string()
}

/// Polls `check` until it holds, for at most 20 s.
pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the page never showed {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
