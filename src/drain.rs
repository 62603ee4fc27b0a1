//! Graceful shutdown: [`Drain`] begins it (streams end, handlers learn),
//! waits for every lifecycle in flight, then cuts what is left so that no
//! hook is lost.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::in_flight::InFlight;

use crate::shutdown::{Ending, ShuttingDown};

/// State shared by a layer, its clones, every service it built and every
/// lifecycle they started.
#[derive(Default)]
pub(crate) struct DrainState {
    /// Lifecycles in flight: counted in when they start, out after their
    /// last hook returned.
    pub(crate) in_flight: InFlight,
    /// Cancelled when the shutdown begins ([`Drain::begin`]): streams end,
    /// handlers awaiting `shutting_down()` wake.
    pub(crate) begun: CancellationToken,
    /// Cancelled by [`Drain::shutdown`] once the grace period is over.
    pub(crate) cancel: CancellationToken,
    /// [`Readiness`](crate::Readiness) answers 503 from now on (Relaxed: a
    /// flag read by probes on its own; nothing is published with it).
    pub(crate) unready: AtomicBool,
    /// Aborted requests whose work continues right now (ignore-abort).
    pub(crate) detached: AtomicUsize,
    /// Lifecycles the end of the grace cut (continued work, a body, a
    /// handler).
    pub(crate) cancelled: AtomicUsize,
    /// Set just before `begun` and `cancel` are cancelled: what a request
    /// checks on every poll. `CancellationToken::is_cancelled` takes the
    /// token's lock, which requests on every thread would share.
    begun_flag: AtomicBool,
    cut_flag: AtomicBool,
}

impl DrainState {
    /// Whether the shutdown reached a response of this kind already: a
    /// read of a flag, no lock. (Acquire, with the Release store before
    /// the token is cancelled: a request that sees the flag sees what was
    /// done before; one that does not waits on the token.)
    #[inline]
    pub(crate) fn has_reached(&self, ending: Ending) -> bool {
        match ending {
            Ending::Sse | Ending::Grpc => self.has_begun(),
            Ending::Cut => self.cut_flag.load(Ordering::Acquire),
        }
    }

    /// Whether the shutdown began (the flag, as for [`has_reached`](Self::has_reached)).
    #[inline]
    pub(crate) fn has_begun(&self) -> bool {
        self.begun_flag.load(Ordering::Acquire)
    }

    /// Begins the shutdown: the flag, then the token.
    fn begin(&self) {
        self.begun_flag.store(true, Ordering::Release);
        self.begun.cancel();
    }

    /// Ends the grace: the flag, then the token.
    fn cut(&self) {
        self.cut_flag.store(true, Ordering::Release);
        self.cancel.cancel();
    }
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
/// # A shutdown in two steps
///
/// The shutdown **begins** ([`begin`](Self::begin), at once, never waits):
/// handlers awaiting [`Lifecycle::shutting_down`](crate::Lifecycle::shutting_down)
/// wake, and the layer ends the streams that have a protocol for "go
/// elsewhere":
///
/// - Server-Sent Events (`content-type: text/event-stream`) end cleanly at
///   once: the chunked terminator over HTTP/1.1, `END_STREAM` over HTTP/2.
///   A browser's `EventSource` reconnects after its `retry` delay (3 s by
///   default; the server can send `retry: <ms>`), to another server or to
///   this one once it is back. [`Completion::status`](crate::Completion::status)
///   stays `normal`, [`Completion::shutdown`](crate::Completion::shutdown)
///   is true.
/// - gRPC responses still streaming end with trailers `grpc-status: 14`
///   (UNAVAILABLE), which clients retry on another server;
///   [`Completion::grpc_status`](crate::Completion::grpc_status) shows 14.
///
/// Then it **drains** ([`shutdown`](Self::shutdown)): everything else in
/// flight gets `grace` to finish. When the grace runs out, a response body
/// still streaming is cut with [`ServerShutdown`](crate::ServerShutdown) (an
/// error: the client sees a failed response, never a short one that looks
/// complete), a handler still running is dropped and answered 503 (gRPC:
/// UNAVAILABLE), and continued work is cancelled; all of them end
/// [`TIMEOUT`](crate::ConnectionStatus::TIMEOUT) with `shutdown()` true.
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
/// // On Ctrl-C: begin (streams end, axum stops accepting), then give what
/// // is left 30 s and cut the rest.
/// let signal = async { tokio::signal::ctrl_c().await.unwrap() };
/// let stop = drain.on_signal(signal).grace(Duration::from_secs(30)).spawn();
/// axum::serve(listener, app)
///     .with_graceful_shutdown(drain.begun())
///     .await
///     .unwrap();
/// let report = stop.await.unwrap();
/// println!("{} finished, {} cancelled", report.finished(), report.cancelled());
/// # }
/// ```
///
/// [`on_signal`](Self::on_signal) does the steps of a rolling deploy in
/// order: [`readiness`](Self::readiness) answers 503 first, for a delay
/// that lets the load balancer stop sending; then the shutdown begins and
/// drains.
#[derive(Clone)]
pub struct Drain {
    state: Arc<DrainState>,
}

impl Drain {
    pub(crate) fn new(state: Arc<DrainState>) -> Self {
        Drain { state }
    }

    /// Begins the shutdown: at once, without waiting, and once (calling it
    /// again does nothing). [`readiness`](Self::readiness) answers 503 from
    /// now on, [`begun`](Self::begun) and every
    /// [`Lifecycle::shutting_down`](crate::Lifecycle::shutting_down)
    /// resolve, and Server-Sent Events and gRPC streams in flight end (see
    /// [the type's docs](Self#a-shutdown-in-two-steps)). Nothing else is
    /// cut: that is [`shutdown`](Self::shutdown)'s grace.
    pub fn begin(&self) {
        if !self.state.has_begun() {
            tracing::debug!(
                in_flight = self.in_flight(),
                "tower_lifecycle: the shutdown begins"
            );
        }
        self.set_unready();
        self.state.begin();
    }

    /// Whether the shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.state.has_begun()
    }

    /// Resolves once the shutdown began, at once if it already has
    /// (`Send + 'static`): the future for axum's `with_graceful_shutdown`
    /// or hyper-util's `GracefulShutdown` when something else begins it.
    pub fn begun(&self) -> ShuttingDown {
        ShuttingDown::new(&self.state.begun)
    }

    /// Awaits `signal`, then [`begin`](Self::begin)s: the one-line
    /// `with_graceful_shutdown(drain.begin_on(ctrl_c))`. Bodies other than
    /// SSE and gRPC are left to the server then; to cut them after a grace,
    /// run [`on_signal`](Self::on_signal) (or [`shutdown`](Self::shutdown))
    /// beside the server instead.
    pub fn begin_on<F>(&self, signal: F) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future + Send + 'static,
    {
        let drain = self.clone();
        async move {
            signal.await;
            drain.begin();
        }
    }

    /// Readiness answers 503 from now on; nothing else changes (the
    /// requests the server still gets are served as usual).
    pub fn set_unready(&self) {
        // Relaxed: a flag read by probes on its own; nothing is published
        // with it.
        self.state.unready.store(true, Ordering::Relaxed);
    }

    /// Whether [`readiness`](Self::readiness) answers 200.
    pub fn is_ready(&self) -> bool {
        !self.state.unready.load(Ordering::Relaxed)
    }

    /// How many lifecycles have not ended yet.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.len()
    }

    /// Resolves once no lifecycle is in flight: every request, its continued
    /// work and its hooks are done. Resolves at once when none is.
    ///
    /// Lifecycles that start while waiting are waited for too; stop the
    /// server from taking requests first (axum's `with_graceful_shutdown`).
    pub async fn wait(&self) {
        self.state.in_flight.wait().await;
    }

    /// [`begin`](Self::begin)s the shutdown if it has not begun, waits up
    /// to `grace` for every lifecycle to end, then cuts what is left: a
    /// response body still streaming ends with
    /// [`ServerShutdown`](crate::ServerShutdown), a handler still running
    /// is answered 503 (gRPC: UNAVAILABLE), continued work (from
    /// [`spawn`](crate::Lifecycle::spawn),
    /// [`after_response`](crate::Lifecycle::after_response) and
    /// ignore-abort) is cancelled; those lifecycles end
    /// [`TIMEOUT`](crate::ConnectionStatus::TIMEOUT) with
    /// [`Completion::shutdown`](crate::Completion::shutdown) set. Then it
    /// waits for their hooks.
    ///
    /// The hooks of cut lifecycles get a second `grace` to finish; what is
    /// still in flight after that (an async hook that never ends, a
    /// response hyper stopped polling) is reported in
    /// [`ShutdownReport::remaining`] and left alone. Run it beside the
    /// server (its graceful shutdown waits for the responses this cuts).
    /// After a shutdown, continued work that starts is cancelled at once.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.begin();
        let before = self.in_flight();
        let cancelled_before = self.state.cancelled.load(Ordering::Acquire);
        if tokio::time::timeout(grace, self.wait()).await.is_err() {
            tracing::warn!(
                in_flight = self.in_flight(),
                ?grace,
                "tower_lifecycle: grace period over, cancelling the work left"
            );
            self.state.cut();
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
            .field("shutting_down", &self.is_shutting_down())
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

    /// Lifecycles the end of the grace period cut: continued work
    /// cancelled, a body still streaming or a handler still running (their
    /// status has [`TIMEOUT`](crate::ConnectionStatus::TIMEOUT), their
    /// [`Completion::shutdown`](crate::Completion::shutdown) is true).
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
