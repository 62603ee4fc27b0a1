//! [`LifecycleLayer`]: the builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use tower_layer::Layer;

use crate::config::Config;
use crate::{Completion, Drain, LifecycleService};

/// Applies [`LifecycleService`] to a service: every request gets a
/// [`Lifecycle`](crate::Lifecycle) handle in its extensions and a response
/// body that knows whether it was delivered.
///
/// Clones of a layer share one [`Drain`] and one
/// [`max_detached`](Self::max_detached) budget.
///
/// # Where it goes
///
/// Outside every layer that can end a request on its own. The layer learns
/// that the client left when the server drops the response future or body
/// early; a layer outside it that drops them (tower-http's `TimeoutLayer`
/// answering 408, say) is indistinguishable from a client that left, and its
/// requests are reported [`ABORTED`](crate::ConnectionStatus::ABORTED). Use
/// [`time_limit`](Self::time_limit) instead of `TimeoutLayer`: it reports
/// `TIMEOUT` and covers the body too. Layers that only pass the response
/// on (tracing, CORS, compression) may sit on either side; tower-http's
/// `CompressionLayer` is better *outside* this one, which then shields the
/// handler's body from compression polling it again after its end (a
/// `futures::stream::unfold` body panics then). In axum, the last
/// `.layer(..)` call is the outermost.
///
/// See the [crate documentation](crate) for what happens when.
///
/// # Example
///
/// ```
/// use tower_lifecycle::LifecycleLayer;
///
/// let layer = LifecycleLayer::new()
///     .ignore_abort(true)
///     .max_detached(64)
///     .on_complete(|done| {
///         tracing::info!(status = %done.status(), phase = %done.phase(), "request done");
///     });
/// let drain = layer.drain(); // for graceful shutdown
/// # let _ = (layer, drain);
/// ```
#[derive(Clone, Default)]
#[must_use]
pub struct LifecycleLayer {
    config: Arc<Config>,
}

impl LifecycleLayer {
    /// A layer with the defaults: no layer-wide hook, ignore-abort off,
    /// at most [`DEFAULT_MAX_DETACHED`](crate::DEFAULT_MAX_DETACHED) detached requests.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a hook that runs for every request, once, after the request's
    /// own hooks (those registered with
    /// [`Lifecycle::on_shutdown`](crate::Lifecycle::on_shutdown) and
    /// [`on_shutdown_async`](crate::Lifecycle::on_shutdown_async)), with
    /// the same [`Completion`].
    ///
    /// Like every hook it runs under `catch_unwind` (a panic is logged, not
    /// propagated) and where the lifecycle ends, so it must be quick. Set
    /// again, it replaces the previous one.
    ///
    /// Each thread that serves requests keeps a copy of the layer's
    /// settings (so that requests on different threads never write one
    /// reference count), and a few per-request states of ended requests,
    /// which hold the settings they were made with. A copy, and the
    /// closure with it, is dropped when the services holding it are gone
    /// and that thread next meets a layer it has no copy of, or when the
    /// thread ends: not the moment the layer is dropped.
    pub fn on_complete<F>(mut self, f: F) -> Self
    where
        F: Fn(&Completion) + Send + Sync + 'static,
    {
        Arc::make_mut(&mut self.config).on_complete = Some(Arc::new(f));
        self
    }

    /// The ignore-abort policy every request starts with (default `false`).
    /// PHP's `ignore_user_abort()` setting; a handler changes it for its own
    /// request with [`Lifecycle::ignore_abort`](crate::Lifecycle::ignore_abort).
    ///
    /// When the client leaves and the policy (read at that moment) is on,
    /// the request's work keeps running in a task instead of being
    /// cancelled: a handler that had not produced the head runs to its end
    /// (its response is discarded), a body is drained to its end (so
    /// whatever feeds it keeps succeeding), and work from
    /// [`Lifecycle::spawn`](crate::Lifecycle::spawn) is not cancelled. The
    /// hooks run once all of it ended, with
    /// [`ABORTED`](crate::ConnectionStatus::ABORTED) set, and
    /// [`Completion::continued`] true. At most
    /// [`max_detached`](Self::max_detached) requests continue at once.
    pub fn ignore_abort(mut self, ignore: bool) -> Self {
        Arc::make_mut(&mut self.config).ignore_abort = ignore;
        self
    }

    /// How many aborted requests may keep running at once under
    /// ignore-abort (default [`DEFAULT_MAX_DETACHED`](crate::DEFAULT_MAX_DETACHED), 256).
    ///
    /// Ignore-abort lets a client start work and leave; without a bound, a
    /// client that does that in a loop piles up work the server can no
    /// longer shed. Over the bound an abort cancels as if ignore-abort were
    /// off: the status is still `ABORTED`, [`Completion::detach_refused`] is
    /// true, and a `tracing::warn!` says so. 256 is far above the number of
    /// must-finish jobs a service usually runs at once, and small enough that
    /// the tasks, their buffers and the work they do stay bounded. The count
    /// is shared by every service built from this layer and its clones.
    ///
    /// `max_detached(0)` turns continuing off altogether. It also saves the
    /// allocation that keeps an open-ended response body movable into a
    /// task (it lives inline then). A body with an exact size hint (`Full`,
    /// `Empty`) is never boxed: it has no producer to keep alive. The
    /// handler's future is boxed either way (see
    /// [`ResponseFuture`](crate::ResponseFuture)).
    pub fn max_detached(mut self, max: usize) -> Self {
        Arc::make_mut(&mut self.config).max_detached = max;
        self
    }

    /// Sets the time limit of every request (default: none), PHP's
    /// `max_execution_time`: the clock starts when the request enters the
    /// layer and covers the whole lifecycle (response head, body, continued
    /// work). A handler restarts or removes it for its own request with
    /// [`Lifecycle::set_time_limit`](crate::Lifecycle::set_time_limit); a
    /// gRPC request's `grpc-timeout` header caps it (and sets one when the
    /// layer has none).
    ///
    /// The `grpc-timeout` deadline is applied slightly early (by a tenth of
    /// it, at most 20 ms): the client, and tonic's own `grpc-timeout`
    /// handling outside this layer, started their clocks first, and
    /// answering `DEADLINE_EXCEEDED` a little before them is what makes the
    /// client see `DEADLINE_EXCEEDED` (tonic reports its own timeouts as
    /// `CANCELLED`) and the hooks see `timeout` rather than `aborted`.
    ///
    /// When it expires, [`TIMEOUT`](crate::ConnectionStatus::TIMEOUT) is
    /// set and:
    ///
    /// - before the response head, the handler is cancelled (dropped) and
    ///   the client gets [`timeout_status`](Self::timeout_status) (503 by
    ///   default) with an empty body, or, for a gRPC request, a
    ///   trailers-only response with `grpc-status: 4` (DEADLINE_EXCEEDED);
    ///   the hooks run with phase `Handler`;
    /// - while the body streams, the body ends with the error
    ///   [`TimedOut`](crate::TimedOut), so hyper resets the stream or
    ///   closes the connection: the client never mistakes a cut response
    ///   for a complete one; phase `Body`;
    /// - continued work (ignore-abort, `spawn`, `after_response`) is
    ///   cancelled; a client that had left makes the status
    ///   `aborted|timeout` (3).
    ///
    /// The timer is armed lazily: a handler that is ready on its first poll
    /// and a body that never makes hyper wait pay for no timer. A body hyper
    /// is not polling (the client is not reading, so the socket is full)
    /// notices the limit at its next poll; if the client leaves first, the
    /// drop past the deadline records both: `aborted|timeout` (3).
    ///
    /// # Panics
    ///
    /// A zero limit is refused with a panic here, when the layer is built:
    /// it could only ever answer with the timeout. Not setting a limit is
    /// how to have none.
    ///
    /// # Differences from tower-http's `TimeoutLayer`
    ///
    /// `TimeoutLayer` covers the response head only, answers 408 Request
    /// Timeout (a status that tells the client *it* was too slow sending
    /// the request, which is why this layer answers 503 by default), and
    /// the handler never learns it timed out. Here the limit covers the
    /// body and continued work too, can be restarted from the handler, sets
    /// `TIMEOUT` in the status word the hooks see, and speaks gRPC.
    pub fn time_limit(mut self, limit: Duration) -> Self {
        assert!(
            !limit.is_zero(),
            "LifecycleLayer::time_limit: a zero time limit would time every request out; \
             leave it unset for no limit"
        );
        Arc::make_mut(&mut self.config).time_limit = Some(limit);
        self
    }

    /// The status of the response sent when the time limit expires before
    /// the response head (default 503 Service Unavailable). Not 408 Request
    /// Timeout: that one means the client was too slow sending its request,
    /// and clients retry it as such. gRPC requests always get a gRPC
    /// `DEADLINE_EXCEEDED` instead.
    pub fn timeout_status(mut self, status: StatusCode) -> Self {
        Arc::make_mut(&mut self.config).timeout_status = status;
        self
    }

    /// Whether building a service from this layer installs the
    /// process-wide panic hook (default `true`) that lets it record a panic
    /// caught *inside* it, by tower-http's `CatchPanicLayer` say, in
    /// [`Completion::panicked`].
    ///
    /// A panic that unwinds through this layer is recorded without the hook.
    /// One that a layer inside catches and turns into a response is not
    /// visible to this layer in any other way: its `poll` returns the 500
    /// normally, and axum drops the request (and the
    /// [`Lifecycle`](crate::Lifecycle) in it) before a handler without
    /// extractors even runs. The hook counts panics per thread; the layer
    /// compares the count before and after it calls into the inner service
    /// or body. It chains to the hook that was installed before it, so the
    /// default hook still prints the message. See
    /// [`install_panic_hook`](crate::install_panic_hook) if your program
    /// sets a panic hook of its own after building the service.
    ///
    /// `false` leaves the process's panic hook alone: then a panic caught
    /// inside the layer is recorded only if a `Lifecycle` handle was dropped
    /// while it unwound (a handler that took the extractor, say), or if
    /// another layer or [`install_panic_hook`](crate::install_panic_hook)
    /// installed the hook. The hook is process-wide; this setting only
    /// decides whether this layer installs it.
    pub fn record_caught_panics(mut self, record: bool) -> Self {
        Arc::make_mut(&mut self.config).record_caught_panics = record;
        self
    }

    /// The level of the layer's own event for each request that did not end
    /// normally: aborted, timed out, panicked, or ended by the shutdown
    /// (`Some(Level::DEBUG)` by default; `None`: no event).
    ///
    /// One `tracing` event per such request, target `tower_lifecycle`,
    /// message `request ended`, with the [`Completion`](crate::Completion)'s
    /// fields: `status`, `phase`, `log_status`, `elapsed`, `time_to_head`,
    /// `bytes_sent`, `response_status`, `grpc_status`, `panicked`,
    /// `continued`, `shutdown`. It is emitted in the request's span (see
    /// [the crate docs](crate#logs-traces-and-metrics)) just before the
    /// hooks run. With no subscriber listening at that level it costs one
    /// check of the level.
    ///
    /// ```text
    /// DEBUG tower_lifecycle: request ended status=aborted phase=body log_status=499 elapsed=999.224908ms time_to_head=Some(190.599µs) bytes_sent=20 response_status=200 panicked=false continued=false shutdown=false
    /// ```
    ///
    /// (`response_status` and `grpc_status` are left out when there is
    /// none.)
    pub fn log_level(mut self, level: Option<tracing::Level>) -> Self {
        Arc::make_mut(&mut self.config).log_level = level;
        self
    }

    /// Whether normal completions get the event too (`false` by default):
    /// an access log of every request, at [`log_level`](Self::log_level).
    pub fn log_normal(mut self, all: bool) -> Self {
        Arc::make_mut(&mut self.config).log_normal = all;
        self
    }

    /// A [`Drain`] for graceful shutdown: it counts and waits for every
    /// lifecycle started by services built from this layer or its clones.
    pub fn drain(&self) -> Drain {
        Drain::new(self.config.drain.clone())
    }
}

impl<S> Layer<S> for LifecycleLayer {
    type Service = LifecycleService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        if self.config.record_caught_panics {
            crate::panic::ensure_installed();
        }
        LifecycleService::from_config(inner, self.config.clone())
    }
}

impl fmt::Debug for LifecycleLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LifecycleLayer")
            .field("on_complete", &self.config.on_complete.is_some())
            .field("ignore_abort", &self.config.ignore_abort)
            .field("max_detached", &self.config.max_detached)
            .field("time_limit", &self.config.time_limit)
            .field("timeout_status", &self.config.timeout_status)
            .field("record_caught_panics", &self.config.record_caught_panics)
            .field("log_level", &self.config.log_level)
            .field("log_normal", &self.config.log_normal)
            .finish()
    }
}
