//! [`WorkGuard`]: one piece of a request's continued work (a handler or
//! body kept alive after the client left, `spawn`ed or `after_response`
//! work), counted in the request's state while it runs, and run in a task
//! that a shutdown, the time limit or (for spawned work) the client's
//! abort cancels.

use std::future::Future;
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::chain::Chain;
use crate::completion::Phase;
use crate::state::Shared;

/// One piece of continued work of a request: dropping it (the work ended,
/// was cancelled, or its task was dropped) counts it done.
pub(crate) struct WorkGuard {
    shared: Option<Arc<Shared>>,
    /// Work the client's abort cancelled does not count as continued: if
    /// it ends last, the lifecycle ends in the response side's phase.
    cancelled_by_abort: bool,
}

impl WorkGuard {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        WorkGuard {
            shared: Some(shared),
            cancelled_by_abort: false,
        }
    }

    pub(crate) fn disarm(mut self) -> Arc<Shared> {
        self.shared.take().expect("armed")
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        self.shared.as_ref().expect("armed")
    }

    /// Runs `work` in a task on the current runtime (or drops it with a
    /// warning without one), cancelled by `cancel` or, without it, by a
    /// shutdown.
    pub(crate) fn start<F>(self, work: F, cancel: Option<CancellationToken>)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match Handle::try_current() {
            Ok(handle) => self.spawn(&handle, work, cancel),
            Err(_) => tracing::warn!(
                "tower_lifecycle: no tokio runtime to run continued work on; it was dropped"
            ),
        }
    }

    /// Runs `work` in a task on `handle`, cancelled by `cancel` (a child of
    /// the shutdown token) or, without it, by a shutdown.
    pub(crate) fn spawn<F>(self, handle: &Handle, work: F, cancel: Option<CancellationToken>)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let shutdown = self.shared().config.cut().clone();
        let cancel = cancel.unwrap_or_else(|| shutdown.clone());
        let mut guard = self;
        let span = guard.shared().task_span();
        let task = async move {
            let shared = guard.shared().clone();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    if shutdown.is_cancelled() {
                        shared.cancelled_by_shutdown();
                    } else {
                        guard.cancelled_by_abort = true;
                    }
                }
                _ = shared.until_deadline() => shared.timed_out(),
                _ = work => {}
            }
            drop(shared);
            drop(guard);
        };
        handle.spawn(task.instrument(span));
    }
}

impl Drop for WorkGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            // Dropped while unwinding: the work panicked.
            if std::thread::panicking() {
                shared.panicked();
            }
            let phase = (!self.cancelled_by_abort).then_some(Phase::Continued);
            if let Some((completion, hooks)) = shared.done_one(phase, None) {
                Chain::start(shared, completion, hooks);
            }
        }
    }
}
