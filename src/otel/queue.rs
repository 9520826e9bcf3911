//! The bounded export queue: a finished span is handed over without
//! waiting, and a thread of its own sends batches to the collector. When the
//! collector is slow or gone, the queue fills and further spans are dropped
//! and counted: the engine never waits for its telemetry.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};

/// What became of the spans handed to the queue, counted since it started.
#[derive(Debug, Default)]
pub(super) struct Counts {
    pub(super) exported: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) failed_exports: AtomicU64,
}

/// How the queue sends.
#[derive(Clone, Copy, Debug)]
pub(super) struct QueueSettings {
    pub(super) capacity: usize,
    pub(super) batch: usize,
    pub(super) every: Duration,
    pub(super) timeout: Duration,
}

enum Message {
    Span(Box<SpanData>),
    /// Send what is queued now, then say so.
    Flush(mpsc::Sender<()>),
}

/// A span processor with a bounded queue and an exporting thread.
#[derive(Debug)]
pub(super) struct BoundedQueue {
    sender: Mutex<Option<SyncSender<Message>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    counts: Arc<Counts>,
    timeout: Duration,
}

impl BoundedQueue {
    /// Starts the exporting thread for `exporter`.
    pub(super) fn start<E: SpanExporter + 'static>(
        exporter: E,
        settings: QueueSettings,
        counts: Arc<Counts>,
    ) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::sync_channel(settings.capacity.max(1));
        let thread_counts = counts.clone();
        let worker = std::thread::Builder::new()
            .name("flowline-otel-export".to_string())
            .spawn(move || export_loop(exporter, receiver, settings, &thread_counts))?;
        Ok(BoundedQueue {
            sender: Mutex::new(Some(sender)),
            worker: Mutex::new(Some(worker)),
            counts,
            timeout: settings.timeout,
        })
    }
}

fn export_loop<E: SpanExporter>(
    exporter: E,
    receiver: Receiver<Message>,
    settings: QueueSettings,
    counts: &Counts,
) {
    // A runtime of the thread's own: exporting never takes a worker of the
    // host's runtime, and a hung collector holds up only this thread.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(error = %err, "no runtime for the trace exporter; spans are dropped");
            return;
        }
    };
    let send = |batch: &mut Vec<SpanData>| {
        if batch.is_empty() {
            return;
        }
        let spans = std::mem::take(batch);
        let n = spans.len() as u64;
        let result = runtime.block_on(async {
            tokio::time::timeout(settings.timeout, exporter.export(spans)).await
        });
        match result {
            Ok(Ok(())) => {
                counts.exported.fetch_add(n, Relaxed);
            }
            Ok(Err(err)) => failed(counts, n, &err.to_string()),
            Err(_) => failed(counts, n, "timed out"),
        }
    };
    let mut batch = Vec::with_capacity(settings.batch);
    let mut due = Instant::now() + settings.every;
    loop {
        let wait = due.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(wait) {
            Ok(Message::Span(span)) => {
                batch.push(*span);
                if batch.len() >= settings.batch {
                    send(&mut batch);
                    due = Instant::now() + settings.every;
                }
            }
            Ok(Message::Flush(done)) => {
                send(&mut batch);
                let _ = done.send(());
            }
            Err(RecvTimeoutError::Timeout) => {
                send(&mut batch);
                due = Instant::now() + settings.every;
            }
            Err(RecvTimeoutError::Disconnected) => {
                send(&mut batch);
                return;
            }
        }
    }
}

fn failed(counts: &Counts, spans: u64, why: &str) {
    counts.dropped.fetch_add(spans, Relaxed);
    // Counted always, logged for the first failed send and every 100th
    // after: a collector that is down must not flood the host's logs.
    if counts
        .failed_exports
        .fetch_add(1, Relaxed)
        .is_multiple_of(100)
    {
        tracing::warn!(spans, error = why, "spans could not be exported; dropped");
    }
}

impl SpanProcessor for BoundedQueue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        let Some(sender) = sender.as_ref() else {
            self.counts.dropped.fetch_add(1, Relaxed);
            return;
        };
        match sender.try_send(Message::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counts.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(sender) = sender else {
            return Err(OTelSdkError::AlreadyShutdown);
        };
        let (done, flushed) = mpsc::channel();
        sender
            .send(Message::Flush(done))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        flushed
            .recv_timeout(self.timeout * 2)
            .map_err(|_| OTelSdkError::Timeout(self.timeout * 2))
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        if sender.is_none() {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        // The thread sends what is queued, then sees the channel closed.
        drop(sender);
        if let Some(worker) = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = worker.join();
        }
        Ok(())
    }
}
