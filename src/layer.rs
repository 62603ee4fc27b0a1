//! [`LifecycleLayer`]: the builder.

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use crate::hooks::OnComplete;
use crate::{Completion, LifecycleService};

/// Layer-wide settings, shared by every request.
#[derive(Clone, Default)]
pub(crate) struct Config {
    pub(crate) on_complete: Option<OnComplete>,
}

/// Applies [`LifecycleService`] to a service: every request gets a
/// [`Lifecycle`](crate::Lifecycle) handle in its extensions and a response
/// body that knows whether it was delivered.
///
/// See the [crate documentation](crate) for what happens when.
///
/// # Example
///
/// ```
/// use tower_lifecycle::LifecycleLayer;
///
/// let layer = LifecycleLayer::new().on_complete(|done| {
///     tracing::info!(status = %done.status(), phase = %done.phase(), "request done");
/// });
/// # let _ = layer;
/// ```
#[derive(Clone, Default)]
#[must_use]
pub struct LifecycleLayer {
    config: Arc<Config>,
}

impl LifecycleLayer {
    /// A layer with no layer-wide hook.
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
            .finish()
    }
}
