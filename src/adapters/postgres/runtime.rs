//! Where the database work runs: a small tokio runtime of the backend's own.
//!
//! Every operation runs as a task on this runtime, and the caller waits for
//! its answer. On a multi-thread runtime the caller awaits it; on a
//! current-thread runtime (and outside any runtime) the caller's thread blocks
//! until the answer comes. Blocking there is what keeps tokio's paused test
//! clock exact: a current-thread runtime that awaited the network would look
//! idle, and a paused clock jumps to the next timer whenever the runtime is
//! idle, so virtual time would race ahead of the work (and every timeout in
//! the connection pool would fire at once). It is what the SQLite backend
//! does with its writes on a current-thread runtime. The backend's own runtime
//! keeps real time, so the pool's timeouts mean what they say.

use std::future::Future;

use tokio::runtime::{Handle, Runtime, RuntimeFlavor};

use crate::backend::StoreError;

/// The backend's runtime; shut down when the last clone of the backend goes.
pub(super) struct DbRuntime {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl DbRuntime {
    /// Starts the runtime (two worker threads named `flowline-postgres`).
    pub(super) fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("flowline-postgres")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(DbRuntime {
            runtime: Some(runtime),
            handle,
        })
    }

    /// The runtime's handle, to start tasks that live as long as it.
    pub(super) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `work` on the backend's runtime and returns its answer.
    pub(super) async fn run<T, E>(
        &self,
        work: impl Future<Output = Result<T, E>> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<Stopped> + Send + 'static,
    {
        let on_multi_thread =
            Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
        if on_multi_thread {
            match self.handle.spawn(work).await {
                Ok(answer) => answer,
                Err(err) => Err(E::from(Stopped(err.to_string()))),
            }
        } else {
            let (send, receive) = std::sync::mpsc::sync_channel(1);
            self.handle.spawn(async move {
                // The caller is blocked on the other end until this arrives.
                let _ = send.send(work.await);
            });
            match receive.recv() {
                Ok(answer) => answer,
                Err(_) => Err(E::from(Stopped("the task ended without an answer".into()))),
            }
        }
    }
}

impl Drop for DbRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is not allowed inside another
        // runtime; shutting it down in the background is.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A task on the backend's runtime ended without an answer (it panicked, or
/// the runtime stopped).
#[derive(Debug, thiserror::Error)]
#[error("the PostgreSQL backend's task failed: {0}")]
pub(super) struct Stopped(String);

impl From<Stopped> for StoreError {
    fn from(stopped: Stopped) -> Self {
        StoreError::Backend(Box::new(stopped))
    }
}
