//! What the layer hands every request: its settings ([`Config`]) and the
//! layer-wide hook ([`OnComplete`]).

use std::sync::{Arc, Weak};
use std::task::Context;
use std::time::Duration;

use http::StatusCode;
use tokio_util::sync::CancellationToken;

use crate::drain::DrainState;
use crate::shutdown::{Ending, Reach};
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
    /// The drain's two tokens (the shutdown began; its grace ended) as
    /// this copy's requests wait on them. A thread's copy has child tokens
    /// of the drain's, cancelled with them: a request that waits registers
    /// with its thread's token, not with one every worker locks.
    begun: CancellationToken,
    cut: CancellationToken,
    /// The layer's own settings, for a thread's copy of them
    /// ([`per_thread`](crate::per_thread)); `None` in the layer's own.
    pub(crate) origin: Option<Weak<Config>>,
}

impl Default for Config {
    fn default() -> Self {
        let drain = Arc::<DrainState>::default();
        Config {
            begun: drain.begun.clone(),
            cut: drain.cancel.clone(),
            on_complete: None,
            ignore_abort: false,
            max_detached: DEFAULT_MAX_DETACHED,
            time_limit: None,
            timeout_status: StatusCode::SERVICE_UNAVAILABLE,
            record_caught_panics: true,
            log_level: Some(tracing::Level::DEBUG),
            log_normal: false,
            drain,
            origin: None,
        }
    }
}

impl Config {
    /// A copy of these settings for one thread, with tokens of its own
    /// (see [`per_thread`](crate::per_thread)).
    pub(crate) fn copy_for_thread(&self, layer: Weak<Config>) -> Config {
        Config {
            begun: self.drain.begun.child_token(),
            cut: self.drain.cancel.child_token(),
            origin: Some(layer),
            ..self.clone()
        }
    }

    /// The token whose cancellation ends a response body of this kind:
    /// SSE and gRPC end when the shutdown begins, others when its grace
    /// runs out.
    pub(crate) fn reaches(&self, ending: Ending) -> &CancellationToken {
        match ending {
            Ending::Sse | Ending::Grpc => &self.begun,
            Ending::Cut => &self.cut,
        }
    }

    /// The token cancelled when the shutdown's grace ends.
    pub(crate) fn cut(&self) -> &CancellationToken {
        &self.cut
    }

    /// The token cancelled when the shutdown begins.
    pub(crate) fn begun(&self) -> &CancellationToken {
        &self.begun
    }

    /// Whether the shutdown reached a response of this kind; otherwise
    /// registers `cx` on `reach`, to be woken when it does.
    pub(crate) fn poll_reached(
        &self,
        ending: Ending,
        reach: &mut Reach,
        cx: &mut Context<'_>,
    ) -> bool {
        self.drain.has_reached(ending) || reach.poll(self.reaches(ending), cx)
    }

    /// Whether a request can continue after its client left at all, which
    /// decides whether the handler's future and an open-ended body are
    /// boxed (movable into a task).
    pub(crate) fn detachable(&self) -> bool {
        self.max_detached > 0
    }
}
