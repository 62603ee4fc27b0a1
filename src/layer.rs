//! [`LifecycleLayer`]: the builder.

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use crate::drain::DrainState;
use crate::hooks::OnComplete;
use crate::{Completion, Drain, LifecycleService};

/// How many aborted requests may keep running at once by default: see
/// [`LifecycleLayer::max_detached`].
pub const DEFAULT_MAX_DETACHED: usize = 256;

/// Layer-wide settings, shared by every request.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) on_complete: Option<OnComplete>,
    pub(crate) ignore_abort: bool,
    pub(crate) max_detached: usize,
    pub(crate) drain: Arc<DrainState>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            on_complete: None,
            ignore_abort: false,
            max_detached: DEFAULT_MAX_DETACHED,
            drain: Arc::default(),
        }
    }
}

/// Applies [`LifecycleService`] to a service: every request gets a
/// [`Lifecycle`](crate::Lifecycle) handle in its extensions and a response
/// body that knows whether it was delivered.
///
/// Clones of a layer share one [`Drain`] and one
/// [`max_detached`](Self::max_detached) budget.
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
    /// at most [`DEFAULT_MAX_DETACHED`] detached requests.
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
    /// ignore-abort (default [`DEFAULT_MAX_DETACHED`], 256).
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
    /// two allocations per request that keep the handler's future and the
    /// response body movable into a task (they live inline then).
    pub fn max_detached(mut self, max: usize) -> Self {
        Arc::make_mut(&mut self.config).max_detached = max;
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
        LifecycleService::from_config(inner, self.config.clone())
    }
}

impl fmt::Debug for LifecycleLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LifecycleLayer")
            .field("on_complete", &self.config.on_complete.is_some())
            .field("ignore_abort", &self.config.ignore_abort)
            .field("max_detached", &self.config.max_detached)
            .finish()
    }
}
