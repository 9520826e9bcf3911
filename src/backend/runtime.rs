//! Where a networked adapter's work runs: a small tokio runtime of its own.
//!
//! Every operation runs as a task on this runtime, and the caller waits for
//! its answer. On a multi-thread runtime the caller awaits it; on a
//! current-thread runtime (and outside any runtime) the caller's thread blocks
//! until the answer comes. Blocking there is what keeps tokio's paused test
//! clock exact: a current-thread runtime that awaited the network would look
//! idle, and a paused clock jumps to the next timer whenever the runtime is
//! idle, so virtual time would race ahead of the work (and every timeout in
//! the connection pool would fire at once). It is what the SQLite backend
//! does with its writes on a current-thread runtime. The adapter's own runtime
//! keeps real time, so its timeouts mean what they say. The PostgreSQL backend
//! and the NATS transport run on one each; an adapter written outside this
//! crate that talks to a server can do the same.

use std::future::Future;

use tokio::runtime::{Handle, Runtime, RuntimeFlavor};

use crate::backend::StoreError;

/// An adapter's own runtime; shut down when it is dropped.
///
/// ```
/// use flowline::backend::{AdapterRuntime, RuntimeStopped};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let runtime = AdapterRuntime::start("my-adapter").unwrap();
/// let answer = runtime
///     .run(async { Ok::<_, RuntimeStopped>(6 * 7) })
///     .await;
/// assert_eq!(answer.unwrap(), 42);
/// # }
/// ```
pub struct AdapterRuntime {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl std::fmt::Debug for AdapterRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterRuntime").finish_non_exhaustive()
    }
}

impl AdapterRuntime {
    /// Starts the runtime: two worker threads named `flowline-<name>`.
    ///
    /// # Errors
    /// The operating system refused the threads.
    pub fn start(name: &str) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("flowline-{name}"))
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(AdapterRuntime {
            runtime: Some(runtime),
            handle,
        })
    }

    /// The runtime's handle, to start tasks that live as long as it.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `work` on the adapter's runtime and returns its answer.
    ///
    /// # Errors
    /// `work`'s own, or [`RuntimeStopped`] if its task ended without an answer.
    pub async fn run<T, E>(
        &self,
        work: impl Future<Output = Result<T, E>> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<RuntimeStopped> + Send + 'static,
    {
        let on_multi_thread =
            Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
        if on_multi_thread {
            match self.handle.spawn(work).await {
                Ok(answer) => answer,
                Err(err) => Err(E::from(RuntimeStopped(err.to_string()))),
            }
        } else {
            let (send, receive) = std::sync::mpsc::sync_channel(1);
            self.handle.spawn(async move {
                // The caller is blocked on the other end until this arrives.
                let _ = send.send(work.await);
            });
            match receive.recv() {
                Ok(answer) => answer,
                Err(_) => Err(E::from(RuntimeStopped(
                    "the task ended without an answer".into(),
                ))),
            }
        }
    }
}

impl Drop for AdapterRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is not allowed inside another
        // runtime; shutting it down in the background is.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A task on an adapter's runtime ended without an answer (it panicked, or
/// the runtime stopped).
#[derive(Debug, thiserror::Error)]
#[error("the adapter's task failed: {0}")]
pub struct RuntimeStopped(String);

impl From<RuntimeStopped> for StoreError {
    fn from(stopped: RuntimeStopped) -> Self {
        StoreError::Backend(Box::new(stopped))
    }
}
