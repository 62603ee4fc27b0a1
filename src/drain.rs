//! Graceful shutdown: [`Drain`] waits for every lifecycle in flight, then
//! cancels what is left so that no hook is lost.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// State shared by a layer, its clones, every service it built and every
/// lifecycle they started.
#[derive(Default)]
pub(crate) struct DrainState {
    /// One token per lifecycle, held until its last hook returned.
    pub(crate) tracker: TaskTracker,
    /// Cancelled by [`Drain::shutdown`] once the grace period is over.
    pub(crate) cancel: CancellationToken,
    /// Aborted requests whose work continues right now (ignore-abort).
    pub(crate) detached: AtomicUsize,
    /// Lifecycles whose continued work the shutdown cancelled.
    pub(crate) cancelled: AtomicUsize,
}

/// A handle for graceful shutdown, from
/// [`LifecycleLayer::drain`](crate::LifecycleLayer::drain).
///
/// It counts every request lifecycle started by the layer (and its clones)
/// that has not ended yet: requests being handled or streamed, work that
/// continues after the response or after the client left
/// ([`Lifecycle::spawn`](crate::Lifecycle::spawn),
/// [`Lifecycle::after_response`](crate::Lifecycle::after_response),
/// ignore-abort), and hooks still running, async ones included. A lifecycle
/// leaves the count after its last hook and the layer's `on_complete`
/// returned.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use axum::{routing::post, Router};
/// use tower_lifecycle::LifecycleLayer;
///
/// # #[tokio::main] async fn main() {
/// let layer = LifecycleLayer::new();
/// let drain = layer.drain();
/// let app: Router = Router::new().route("/", post(|| async { "ok" })).layer(layer);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await.unwrap();
/// axum::serve(listener, app)
///     .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.unwrap() })
///     .await
///     .unwrap();
/// // The server stopped taking requests; let the work it started finish.
/// let report = drain.shutdown(Duration::from_secs(30)).await;
/// println!("{} finished, {} cancelled", report.finished(), report.cancelled());
/// # }
/// ```
#[derive(Clone)]
pub struct Drain {
    state: Arc<DrainState>,
}

impl Drain {
    pub(crate) fn new(state: Arc<DrainState>) -> Self {
        Drain { state }
    }

    /// How many lifecycles have not ended yet.
    pub fn in_flight(&self) -> usize {
        self.state.tracker.len()
    }

    /// Resolves once no lifecycle is in flight: every request, its continued
    /// work and its hooks are done. Resolves at once when none is.
    ///
    /// Lifecycles that start while waiting are waited for too; stop the
    /// server from taking requests first (axum's `with_graceful_shutdown`).
    pub async fn wait(&self) {
        let tracker = &self.state.tracker;
        // Closing only lets `wait` resolve once the count is zero; lifecycles
        // are still tracked after it.
        tracker.close();
        tracker.wait().await;
    }

    /// Waits up to `grace` for every lifecycle to end, then cancels the
    /// continued work that is left (work from
    /// [`spawn`](crate::Lifecycle::spawn),
    /// [`after_response`](crate::Lifecycle::after_response) and
    /// ignore-abort), sets [`TIMEOUT`](crate::ConnectionStatus::TIMEOUT) on
    /// those lifecycles, and waits for their hooks to run.
    ///
    /// The hooks of cancelled lifecycles get a second `grace` to finish;
    /// what is still in flight after that (an async hook that never ends,
    /// a request the server still owns) is reported in
    /// [`ShutdownReport::remaining`] and left alone.
    ///
    /// Requests still owned by the server (a handler or a body hyper is
    /// still polling) are the server's to end: stop it first. After a
    /// shutdown, continued work that starts is cancelled at once.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let before = self.in_flight();
        let cancelled_before = self.state.cancelled.load(Ordering::Acquire);
        if tokio::time::timeout(grace, self.wait()).await.is_err() {
            tracing::warn!(
                in_flight = self.in_flight(),
                ?grace,
                "tower_lifecycle: grace period over, cancelling the work left"
            );
            self.state.cancel.cancel();
            if tokio::time::timeout(grace, self.wait()).await.is_err() {
                tracing::warn!(
                    in_flight = self.in_flight(),
                    "tower_lifecycle: lifecycles still in flight after the shutdown"
                );
            }
        }
        let cancelled = self.state.cancelled.load(Ordering::Acquire) - cancelled_before;
        let remaining = self.in_flight();
        ShutdownReport {
            finished: before.saturating_sub(cancelled + remaining),
            cancelled,
            remaining,
        }
    }
}

impl fmt::Debug for Drain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain")
            .field("in_flight", &self.in_flight())
            .field("cancelled", &self.state.cancel.is_cancelled())
            .finish()
    }
}

/// What [`Drain::shutdown`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    finished: usize,
    cancelled: usize,
    remaining: usize,
}

impl ShutdownReport {
    /// Lifecycles in flight when the shutdown began that ended on their own.
    pub fn finished(&self) -> usize {
        self.finished
    }

    /// Lifecycles whose continued work was cancelled when the grace period
    /// ran out (their status has [`TIMEOUT`](crate::ConnectionStatus::TIMEOUT)).
    pub fn cancelled(&self) -> usize {
        self.cancelled
    }

    /// Lifecycles still in flight when the shutdown returned: hooks that
    /// did not finish within the second grace period, or requests the
    /// server had not ended.
    pub fn remaining(&self) -> usize {
        self.remaining
    }
}
