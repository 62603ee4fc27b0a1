//! What the layer hands every request: its settings ([`Config`]) and the
//! layer-wide hook ([`OnComplete`]).

use std::sync::{Arc, Weak};
use std::time::Duration;

use http::StatusCode;

use crate::drain::DrainState;
use crate::Completion;

/// The layer-wide hook, run after every request's own hooks.
pub(crate) type OnComplete = Arc<dyn Fn(&Completion) + Send + Sync + 'static>;

/// How many aborted requests may keep running at once by default: see
/// [`LifecycleLayer::max_detached`](crate::LifecycleLayer::max_detached).
pub const DEFAULT_MAX_DETACHED: usize = 256;

/// Layer-wide settings, shared by every request.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) on_complete: Option<OnComplete>,
    pub(crate) ignore_abort: bool,
    pub(crate) max_detached: usize,
    pub(crate) time_limit: Option<Duration>,
    pub(crate) timeout_status: StatusCode,
    pub(crate) record_caught_panics: bool,
    /// The level of the layer's event per request; `None`: no event.
    pub(crate) log_level: Option<tracing::Level>,
    /// An event for normal completions too.
    pub(crate) log_normal: bool,
    pub(crate) drain: Arc<DrainState>,
    /// The layer's own settings, for a thread's copy of them
    /// ([`per_thread`](crate::per_thread)); `None` in the layer's own.
    pub(crate) origin: Option<Weak<Config>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            on_complete: None,
            ignore_abort: false,
            max_detached: DEFAULT_MAX_DETACHED,
            time_limit: None,
            timeout_status: StatusCode::SERVICE_UNAVAILABLE,
            record_caught_panics: true,
            log_level: Some(tracing::Level::DEBUG),
            log_normal: false,
            drain: Arc::default(),
            origin: None,
        }
    }
}

impl Config {
    /// Whether a request can continue after its client left at all, which
    /// decides whether the handler's future and an open-ended body are
    /// boxed (movable into a task).
    pub(crate) fn detachable(&self) -> bool {
        self.max_detached > 0
    }
}
