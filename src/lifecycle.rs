//! The per-request handle, [`Lifecycle`], and the state it shares with the
//! response future and body.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use http::StatusCode;
use tokio::runtime::Handle;
use tokio::sync::Notify;

use crate::completion::Phase;
use crate::hooks::{self, Chain, Hook, OnComplete};
use crate::layer::Config;
use crate::{Completion, ConnectionStatus};

/// Internal bit beside the status bits: a panic unwound through the
/// request's processing.
const PANICKED: u8 = 0x80;
const STATUS_BITS: u8 = 0b11;

/// A handle on the lifecycle of one request.
///
/// [`LifecycleLayer`](crate::LifecycleLayer) creates one for every request
/// and inserts it into the request's extensions before calling the inner
/// service. Get it with `req.extensions().get::<Lifecycle>()`, or, with the
/// `axum` feature, as an extractor. It is cheap to clone (one reference
/// count) and every clone speaks of the same request; it can be moved into
/// tasks and kept after the request ended.
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_lifecycle::{Lifecycle, LifecycleLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(LifecycleLayer::new())
///     .service_fn(|req: Request<()>| async move {
///         let lifecycle = req.extensions().get::<Lifecycle>().unwrap();
///         lifecycle.on_shutdown(|done| {
///             println!("{} in the {} phase after {:?}", done.status(), done.phase(), done.elapsed());
///         });
///         Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("hello")))
///     });
/// let response = svc.oneshot(Request::new(())).await.unwrap();
/// drop(response); // the hook runs once the body is done with: here, "normal"
/// # }
/// ```
#[derive(Clone)]
pub struct Lifecycle {
    pub(crate) shared: Arc<Shared>,
}

impl Lifecycle {
    /// The status word now: [`ConnectionStatus::NORMAL`] until the client
    /// leaves, then [`ConnectionStatus::ABORTED`]. PHP's
    /// `connection_status()`.
    pub fn status(&self) -> ConnectionStatus {
        self.shared.status()
    }

    /// Whether the client has left: the server dropped the response future
    /// or body before it was complete. PHP's `connection_aborted()`.
    pub fn is_aborted(&self) -> bool {
        self.status().is_aborted()
    }

    /// A future that resolves once [`ABORTED`](ConnectionStatus::ABORTED)
    /// is set, at once if it already is.
    ///
    /// Any number of futures may wait; each resolves. The future owns a
    /// clone of the handle, so it can be moved into a task. It never
    /// resolves for a request that ends normally: pair it with the work it
    /// guards, for example in `tokio::select!`.
    pub fn aborted(&self) -> impl Future<Output = ()> + Send + 'static {
        let shared = self.shared.clone();
        async move {
            loop {
                let mut notified = std::pin::pin!(shared.aborted.notified());
                notified.as_mut().enable();
                if shared.status().is_aborted() {
                    return;
                }
                notified.await;
            }
        }
    }

    /// Registers a hook that runs once when the request's lifecycle ends,
    /// with its [`Completion`]. PHP's `register_shutdown_function()`.
    ///
    /// Hooks run in registration order; a hook registered while the hooks
    /// run (from inside a hook, say) runs after the ones already there.
    /// A panicking hook is caught, logged with `tracing::error!`, and the
    /// next hook still runs.
    ///
    /// Registered after the lifecycle ended (the handle was kept, for
    /// example in a task), the hook runs at once, on the calling thread,
    /// with the final `Completion`.
    ///
    /// Sync hooks run where the lifecycle ends, often inside hyper's
    /// connection task: keep them quick. Use
    /// [`on_shutdown_async`](Self::on_shutdown_async) for I/O.
    pub fn on_shutdown<F>(&self, f: F)
    where
        F: FnOnce(&Completion) + Send + 'static,
    {
        self.shared.register(Hook::Sync(Box::new(f)));
    }

    /// Registers an async hook: when its turn comes, `f` is called with the
    /// [`Completion`] and the future it returns is spawned on the tokio
    /// runtime; hooks registered after it run once that future finished.
    ///
    /// The runtime is the one current where the lifecycle ends, or else the
    /// one current when this hook was registered. With neither, or when the
    /// runtime shuts down before the future ran, the hook is dropped with a
    /// `tracing::warn!`. A panic in `f` or in its future is caught and
    /// logged like a sync hook's.
    pub fn on_shutdown_async<F, Fut>(&self, f: F)
    where
        F: FnOnce(Completion) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.shared.remember_runtime();
        self.shared
            .register(Hook::Async(Box::new(move |completion| {
                Box::pin(f(completion))
            })));
    }
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        // A handle dropped while unwinding belongs to code that panicked.
        // This is how a panic caught further in (by a `CatchPanicLayer`
        // inside ours) still shows in `Completion::panicked`.
        if std::thread::panicking() {
            self.shared.set(PANICKED);
        }
    }
}

impl fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lifecycle")
            .field("status", &self.status())
            .field("ended", &self.shared.lock().ended.is_some())
            .finish()
    }
}

/// State shared by the [`Lifecycle`] handles, the response future and the
/// response body of one request: the one allocation the layer makes per
/// request.
pub(crate) struct Shared {
    bits: AtomicU8,
    aborted: Notify,
    start: Instant,
    config: Arc<Config>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    hooks: VecDeque<Hook>,
    /// Set once the hooks have all been taken: the final completion.
    ended: Option<Completion>,
    /// The runtime current when an async hook was registered.
    runtime: Option<Handle>,
}

/// How the response side of a request ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct End {
    pub(crate) phase: Phase,
    pub(crate) aborted: bool,
    pub(crate) panicked: bool,
    pub(crate) response_status: Option<StatusCode>,
    pub(crate) bytes_sent: u64,
    pub(crate) body_error: bool,
    pub(crate) service_error: bool,
}

impl End {
    pub(crate) fn handler() -> Self {
        End {
            phase: Phase::Handler,
            aborted: false,
            panicked: false,
            response_status: None,
            bytes_sent: 0,
            body_error: false,
            service_error: false,
        }
    }
}

impl Shared {
    pub(crate) fn new(config: Arc<Config>) -> Self {
        Shared {
            bits: AtomicU8::new(0),
            aborted: Notify::new(),
            start: Instant::now(),
            config,
            state: Mutex::new(State::default()),
        }
    }

    pub(crate) fn status(&self) -> ConnectionStatus {
        let bits = self.bits.load(Ordering::Acquire) & STATUS_BITS;
        ConnectionStatus::from_bits(bits).unwrap_or(ConnectionStatus::NORMAL)
    }

    fn set(&self, bits: u8) {
        let old = self.bits.fetch_or(bits, Ordering::AcqRel);
        if bits & ConnectionStatus::ABORTED.bits() != 0
            && old & ConnectionStatus::ABORTED.bits() == 0
        {
            self.aborted.notify_waiters();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Hooks never run under the lock, so a poisoned lock only means a
        // panic elsewhere; the state itself is always consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(&self, hook: Hook) {
        let mut state = self.lock();
        match state.ended.clone() {
            None => state.hooks.push_back(hook),
            Some(completion) => {
                let runtime = state.runtime.clone();
                drop(state);
                hooks::run_late(hook, &completion, runtime);
            }
        }
    }

    fn remember_runtime(&self) {
        if let Ok(handle) = Handle::try_current() {
            let mut state = self.lock();
            if state.runtime.is_none() {
                state.runtime = Some(handle);
            }
        }
    }

    pub(crate) fn runtime(&self) -> Option<Handle> {
        self.lock().runtime.clone()
    }

    pub(crate) fn on_complete(&self) -> Option<&OnComplete> {
        self.config.on_complete.as_ref()
    }

    /// The next hook to run, or `None`, which marks the lifecycle ended
    /// (under the same lock, so no hook registered meanwhile is lost).
    pub(crate) fn next_hook(&self, completion: &Completion) -> Option<Hook> {
        let mut state = self.lock();
        let hook = state.hooks.pop_front();
        if hook.is_none() {
            state.ended = Some(completion.clone());
        }
        hook
    }

    /// Ends the lifecycle: builds the completion and runs the hooks.
    ///
    /// Called exactly once per request, by whichever of the response future
    /// or body owns the response side when it ends.
    pub(crate) fn end(self: Arc<Self>, end: End) {
        let mut bits = 0;
        if end.aborted {
            bits |= ConnectionStatus::ABORTED.bits();
        }
        if end.panicked {
            bits |= PANICKED;
        }
        if bits != 0 {
            self.set(bits);
        }
        let all = self.bits.load(Ordering::Acquire);
        let completion = Completion {
            status: self.status(),
            phase: end.phase,
            elapsed: self.start.elapsed(),
            bytes_sent: end.bytes_sent,
            response_status: end.response_status,
            panicked: all & PANICKED != 0,
            body_error: end.body_error,
            service_error: end.service_error,
        };
        tracing::debug!(
            status = %completion.status,
            phase = %completion.phase,
            bytes_sent = completion.bytes_sent,
            panicked = completion.panicked,
            "tower_lifecycle: request lifecycle ended"
        );
        Chain::start(self, completion);
    }
}
