//! The per-request handle, [`Lifecycle`], and the state it shares with the
//! response future and body.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::StatusCode;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::completion::Phase;
use crate::hooks::{self, BoxFuture, Chain, Hook, Hooks, OnComplete};
use crate::layer::Config;
use crate::{Completion, ConnectionStatus};

/// Internal bits beside the status bits: a panic unwound through the
/// request's processing; the ignore-abort policy is on.
const PANICKED: u8 = 0x80;
const IGNORE_ABORT: u8 = 0x40;
const STATUS_BITS: u8 = 0b11;

/// A deadline stored as nanoseconds since the request entered the layer;
/// `NO_DEADLINE` is none.
const NO_DEADLINE: u64 = u64::MAX;

/// How much earlier than the client's `grpc-timeout` the layer gives up:
/// a tenth of it, at most 20 ms. The client and tonic's own `grpc-timeout`
/// handling start their clocks first; answering a little early is what lets
/// the layer's `DEADLINE_EXCEEDED` reach the client before they give up
/// (tonic reports its own timeouts as `CANCELLED`, and the server would see
/// an abort).
fn grpc_margin(timeout: Duration) -> Duration {
    (timeout / 10).min(Duration::from_millis(20))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(NO_DEADLINE)
}

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

    /// Sets this request's time limit, restarting the clock from now, like
    /// PHP's `set_time_limit()`: the request must be done (response sent,
    /// continued work finished) within `limit` from this call. `None`
    /// removes the limit.
    ///
    /// A gRPC client's deadline (`grpc-timeout`) stays a cap that this
    /// cannot lift: past it the client is gone anyway. `Some(Duration::ZERO)`
    /// expires at once; a limit too large to represent (such as
    /// `Duration::MAX`) is no limit.
    ///
    /// The handler's future and the body pick a new deadline up the next
    /// time they are polled (at once when the handler itself calls this);
    /// continued work picks it up at once. Once the limit expired, or the
    /// lifecycle ended, this has no effect.
    pub fn set_time_limit(&self, limit: Option<Duration>) {
        self.shared.set_time_limit(limit);
    }

    /// When the time limit expires, or `None` without one.
    pub fn deadline(&self) -> Option<Instant> {
        self.shared.deadline()
    }

    /// Sets this request's ignore-abort policy and returns the previous one,
    /// like PHP's `ignore_user_abort()`. It starts as the layer's
    /// [`ignore_abort`](crate::LifecycleLayer::ignore_abort) default.
    ///
    /// The policy is read at the moment the abort is detected, so a
    /// handler can turn it on around the part that must finish and off
    /// again after; turned off again before the client leaves, the request
    /// is cancelled as usual. Once the abort was handled, changing it has no
    /// effect.
    pub fn ignore_abort(&self, ignore: bool) -> bool {
        let old = if ignore {
            self.shared.bits.fetch_or(IGNORE_ABORT, Ordering::AcqRel)
        } else {
            self.shared.bits.fetch_and(!IGNORE_ABORT, Ordering::AcqRel)
        };
        old & IGNORE_ABORT != 0
    }

    /// Runs `work` in a task as part of this request: the lifecycle (and
    /// so its hooks, and [`Drain`](crate::Drain)) waits for it to finish.
    ///
    /// The work is cancelled (dropped at its current `.await`) when the
    /// client aborts while ignore-abort is off, or when the continuing
    /// request was refused by [`max_detached`](crate::LifecycleLayer::max_detached);
    /// with ignore-abort on it keeps running. [`Drain::shutdown`](crate::Drain::shutdown)
    /// cancels it once its grace period is over (status gets
    /// [`TIMEOUT`](ConnectionStatus::TIMEOUT)).
    ///
    /// Work spawned after the abort was handled (from `after_response`
    /// work, say) is not cancelled by it. Called after the lifecycle ended,
    /// the work runs as a plain task that is no longer part of it. Called
    /// outside a tokio runtime, the work is dropped with a
    /// `tracing::warn!`.
    pub fn spawn<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Ok(handle) = Handle::try_current() else {
            tracing::warn!(
                "tower_lifecycle: Lifecycle::spawn outside a tokio runtime; the work was dropped"
            );
            return;
        };
        match self.shared.add_work() {
            Some(guard) => {
                let cancel = self.shared.work_token();
                guard.spawn(&handle, work, Some(cancel));
            }
            None => {
                handle.spawn(work);
            }
        }
    }

    /// Runs `work` once the response is finished — its last byte handed to
    /// the server, or the client gone — as part of this request's lifecycle:
    /// PHP's `fastcgi_finish_request()`. The handler can answer
    /// `202 Accepted` at once and carry on here.
    ///
    /// The client's abort does not cancel it, whatever the ignore-abort
    /// policy; [`Drain::shutdown`](crate::Drain::shutdown) does, once its
    /// grace period is over. The hooks run after it. Several calls run their
    /// work concurrently, each in its own task.
    ///
    /// Called after the response finished, the work starts at once; after
    /// the lifecycle ended, it runs as a plain task that is no longer part
    /// of it. Without a tokio runtime when the response finishes, the work
    /// is dropped with a `tracing::warn!`.
    pub fn after_response<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.shared.after_response(Box::pin(work));
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
/// request for it.
pub(crate) struct Shared {
    bits: AtomicU8,
    /// The response side (1 until it ended) plus continued work not yet
    /// finished. The lifecycle ends when it drops to 0.
    pending: AtomicUsize,
    aborted: Notify,
    start: Instant,
    /// When the time limit expires, in nanoseconds since `start`.
    deadline: AtomicU64,
    /// The gRPC client's deadline, which `set_time_limit` cannot lift.
    cap: u64,
    deadline_changed: Notify,
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
    /// How the response side ended, once it has.
    response: Option<End>,
    /// Work waiting for the response side to end.
    after_response: Vec<BoxFuture>,
    /// Cancels spawned work on abort (unless it continues) and on shutdown.
    work: Option<CancellationToken>,
    /// This request holds one of the layer's `max_detached` slots.
    detached: bool,
    /// Ignore-abort was on but the request could not continue.
    refused: bool,
    /// Some continued work of this request was cancelled by a shutdown.
    shutdown_cancelled: bool,
    /// Counts this lifecycle in the layer's `Drain`.
    token: Option<TaskTrackerToken>,
}

/// How the response side of a request ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct End {
    pub(crate) phase: Phase,
    pub(crate) panicked: bool,
    pub(crate) response_status: Option<StatusCode>,
    pub(crate) bytes_sent: u64,
    pub(crate) body_error: bool,
    pub(crate) service_error: bool,
    pub(crate) grpc_status: Option<i32>,
}

impl End {
    pub(crate) fn handler() -> Self {
        End {
            phase: Phase::Handler,
            panicked: false,
            response_status: None,
            bytes_sent: 0,
            body_error: false,
            service_error: false,
            grpc_status: None,
        }
    }
}

impl Shared {
    /// `grpc_timeout` is the request's `grpc-timeout`, if any.
    pub(crate) fn new(config: Arc<Config>, grpc_timeout: Option<Duration>) -> Self {
        let bits = if config.ignore_abort { IGNORE_ABORT } else { 0 };
        let token = config.drain.tracker.token();
        let cap = grpc_timeout.map_or(NO_DEADLINE, |t| nanos(t - grpc_margin(t)));
        let deadline = config.time_limit.map_or(NO_DEADLINE, nanos).min(cap);
        Shared {
            bits: AtomicU8::new(bits),
            pending: AtomicUsize::new(1),
            aborted: Notify::new(),
            start: Instant::now(),
            deadline: AtomicU64::new(deadline),
            cap,
            deadline_changed: Notify::new(),
            config,
            state: Mutex::new(State {
                token: Some(token),
                ..State::default()
            }),
        }
    }

    pub(crate) fn status(&self) -> ConnectionStatus {
        let bits = self.bits.load(Ordering::Acquire) & STATUS_BITS;
        #[cfg(test)]
        seam::after_status_read();
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

    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.deadline.load(Ordering::Acquire) {
            NO_DEADLINE => None,
            n => self.start.checked_add(Duration::from_nanos(n)),
        }
    }

    /// Whether a deadline is set and has passed (reads the clock only when
    /// one is set).
    pub(crate) fn past_deadline(&self) -> bool {
        self.deadline().is_some_and(|d| d <= Instant::now())
    }

    fn set_time_limit(&self, limit: Option<Duration>) {
        let from_now = match limit {
            None => NO_DEADLINE,
            Some(limit) => nanos(self.start.elapsed()).saturating_add(nanos(limit)),
        };
        self.deadline
            .store(from_now.min(self.cap), Ordering::Release);
        self.deadline_changed.notify_waiters();
    }

    /// Resolves once the deadline has passed, following changes to it.
    pub(crate) async fn deadline_reached(&self) {
        loop {
            let mut changed = std::pin::pin!(self.deadline_changed.notified());
            changed.as_mut().enable();
            match self.deadline() {
                None => changed.await,
                Some(deadline) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {
                            if self.deadline().is_some_and(|d| d <= Instant::now()) {
                                return;
                            }
                        }
                        _ = changed => {}
                    }
                }
            }
        }
    }

    /// A panic unwound through, or was caught inside, the request's
    /// processing.
    pub(crate) fn panicked(&self) {
        self.set(PANICKED);
    }

    /// The time limit expired.
    pub(crate) fn timed_out(&self) {
        self.set(ConnectionStatus::TIMEOUT.bits());
        tracing::debug!("tower_lifecycle: the request's time limit expired");
    }

    pub(crate) fn timeout_status(&self) -> StatusCode {
        self.config.timeout_status
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

    /// Whether continuing after an abort is possible at all, which decides
    /// whether the handler's future and the body are boxed.
    pub(crate) fn detachable(&self) -> bool {
        self.config.max_detached > 0
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

    /// The hooks are done: the lifecycle leaves the drain's count.
    pub(crate) fn release(&self) {
        let token = self.lock().token.take();
        drop(token);
    }

    /// The client left: sets ABORTED and decides, by the ignore-abort
    /// policy read now, whether the request's work continues. Returns the
    /// runtime to continue on, holding a `max_detached` slot, or `None`
    /// after cancelling the request's spawned work.
    ///
    /// `movable`: the caller has work it can move into a task (a boxed
    /// handler future or open-ended body). Without it and without spawned
    /// work, there is nothing to continue, and no slot is taken.
    pub(crate) fn abort(&self, movable: bool) -> Option<Handle> {
        self.set(ConnectionStatus::ABORTED.bits());
        let spawned = self.lock().work.is_some();
        if (movable || spawned) && self.bits.load(Ordering::Acquire) & IGNORE_ABORT != 0 {
            match self.try_detach() {
                Ok(handle) => return Some(handle),
                Err(reason) => {
                    tracing::warn!(
                        reason,
                        "tower_lifecycle: ignore-abort is on but the request cannot continue; cancelling it"
                    );
                    self.lock().refused = true;
                }
            }
        }
        if let Some(work) = &self.lock().work {
            work.cancel();
        }
        None
    }

    fn try_detach(&self) -> Result<Handle, &'static str> {
        let max = self.config.max_detached;
        if max == 0 {
            return Err("max_detached is 0");
        }
        let handle = Handle::try_current().map_err(|_| "no tokio runtime to continue on")?;
        let detached = &self.config.drain.detached;
        detached
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| "max_detached requests are already continuing")?;
        self.lock().detached = true;
        Ok(handle)
    }

    /// Counts one more piece of continued work, unless the lifecycle is
    /// already over (`None` then: the work is not part of it).
    pub(crate) fn add_work(self: &Arc<Self>) -> Option<WorkGuard> {
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n > 0).then_some(n + 1)
            })
            .ok()
            .map(|_| WorkGuard::new(self.clone()))
    }

    /// The token that cancels this request's spawned work.
    fn work_token(&self) -> CancellationToken {
        let mut state = self.lock();
        if let Some(token) = &state.work {
            return token.clone();
        }
        // Work spawned after the abort was handled (from `after_response`
        // work, say) is not cancelled by it.
        let token = self.config.drain.cancel.child_token();
        state.work = Some(token.clone());
        token
    }

    fn after_response(self: &Arc<Self>, work: BoxFuture) {
        let Some(guard) = self.add_work() else {
            match Handle::try_current() {
                Ok(handle) => drop(handle.spawn(work)),
                Err(_) => tracing::warn!(
                    "tower_lifecycle: after_response work outside a tokio runtime was dropped"
                ),
            }
            return;
        };
        let mut state = self.lock();
        if state.response.is_none() {
            state.after_response.push(work);
            // Still counted in `pending`: `response_done` makes a guard
            // again when it starts the work.
            drop(guard.disarm());
            return;
        }
        drop(state);
        guard.start(work, None);
    }

    /// A shutdown cancelled some of this request's continued work.
    fn cancelled_by_shutdown(&self) {
        self.set(ConnectionStatus::TIMEOUT.bits());
        let mut state = self.lock();
        if !std::mem::replace(&mut state.shutdown_cancelled, true) {
            self.config.drain.cancelled.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The response side ended: starts `after_response` work, then ends the
    /// lifecycle unless continued work is still running.
    pub(crate) fn response_done(self: Arc<Self>, end: End) {
        if end.panicked {
            self.set(PANICKED);
        }
        let after = {
            let mut state = self.lock();
            state.response = Some(end);
            std::mem::take(&mut state.after_response)
        };
        for work in after {
            // Each was counted in `pending` when registered.
            WorkGuard::new(self.clone()).start(work, None);
        }
        self.done_one(Some(end.phase));
    }

    /// One part is done; `phase` is where the lifecycle ended if it was the
    /// last (`None`: where the response side ended).
    fn done_one(self: Arc<Self>, phase: Option<Phase>) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.finish(phase);
        }
    }

    /// Builds the completion and runs the hooks. Reached exactly once, by
    /// whatever brought `pending` to zero.
    fn finish(self: Arc<Self>, phase: Option<Phase>) {
        let all = self.bits.load(Ordering::Acquire);
        let (completion, hooks) = {
            let mut state = self.lock();
            let end = state.response.unwrap_or_else(End::handler);
            let completion = Completion {
                status: self.status(),
                phase: phase.unwrap_or(end.phase),
                elapsed: self.start.elapsed(),
                bytes_sent: end.bytes_sent,
                response_status: end.response_status,
                panicked: all & PANICKED != 0,
                body_error: end.body_error,
                service_error: end.service_error,
                grpc_status: end.grpc_status,
                continued: state.detached,
                detach_refused: state.refused,
            };
            // One lock for the common case of no hook: take the first, or
            // mark the end and take the drain token.
            let hooks = match state.hooks.pop_front() {
                Some(first) => Hooks::First(first),
                None => {
                    state.ended = Some(completion.clone());
                    Hooks::Done(state.token.take())
                }
            };
            (completion, hooks)
        };
        if completion.continued {
            self.config.drain.detached.fetch_sub(1, Ordering::AcqRel);
        }
        tracing::debug!(
            status = %completion.status,
            phase = %completion.phase,
            bytes_sent = completion.bytes_sent,
            panicked = completion.panicked,
            continued = completion.continued,
            "tower_lifecycle: request lifecycle ended"
        );
        Chain::start(self, completion, hooks);
    }
}

/// One piece of continued work of a request: dropping it (the work ended,
/// was cancelled, or its task was dropped) counts it done.
pub(crate) struct WorkGuard {
    shared: Option<Arc<Shared>>,
    /// Work the client's abort cancelled does not count as continued: if
    /// it ends last, the lifecycle ends in the response side's phase.
    cancelled_by_abort: bool,
}

impl WorkGuard {
    fn new(shared: Arc<Shared>) -> Self {
        WorkGuard {
            shared: Some(shared),
            cancelled_by_abort: false,
        }
    }

    fn disarm(mut self) -> Arc<Shared> {
        self.shared.take().expect("armed")
    }

    fn shared(&self) -> &Arc<Shared> {
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
        let shutdown = self.shared().config.drain.cancel.clone();
        let cancel = cancel.unwrap_or_else(|| shutdown.clone());
        let mut guard = self;
        handle.spawn(async move {
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
                _ = shared.deadline_reached() => shared.timed_out(),
                _ = work => {}
            }
            drop(shared);
            drop(guard);
        });
    }
}

impl Drop for WorkGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            // Dropped while unwinding: the work panicked.
            if std::thread::panicking() {
                shared.set(PANICKED);
            }
            let phase = (!self.cancelled_by_abort).then_some(Phase::Continued);
            shared.done_one(phase);
        }
    }
}

/// A test seam: lets a test run code right after the status was read, the
/// one moment where another thread's abort would race a waiter.
#[cfg(test)]
mod seam {
    use std::cell::RefCell;

    thread_local! {
        static AFTER_STATUS_READ: RefCell<Option<Box<dyn FnOnce()>>> = RefCell::new(None);
    }

    /// Runs `f` the next time this thread reads a status.
    pub(super) fn once_after_status_read(f: impl FnOnce() + 'static) {
        AFTER_STATUS_READ.with(|seam| *seam.borrow_mut() = Some(Box::new(f)));
    }

    pub(super) fn after_status_read() {
        if let Some(f) = AFTER_STATUS_READ.with(|seam| seam.borrow_mut().take()) {
            f();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    use super::{seam, Lifecycle, Shared};

    /// An abort that lands between `aborted()` reading the status and
    /// waiting must still wake it: the waiter registers before it reads.
    #[test]
    fn an_abort_right_after_the_status_read_still_wakes_aborted() {
        let shared = Arc::new(Shared::new(Default::default(), None));
        let lifecycle = Lifecycle {
            shared: shared.clone(),
        };
        let mut aborted = pin!(lifecycle.aborted());
        seam::once_after_status_read(move || {
            shared.abort(false);
        });
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(
            aborted.as_mut().poll(&mut cx),
            Poll::Ready(()),
            "the abort between the status read and the wait was lost"
        );
    }

    /// Once aborted, `aborted()` resolves at once, and any number of
    /// waiters resolve.
    #[test]
    fn aborted_resolves_for_every_waiter() {
        let shared = Arc::new(Shared::new(Default::default(), None));
        let lifecycle = Lifecycle {
            shared: shared.clone(),
        };
        let mut cx = Context::from_waker(Waker::noop());
        let mut first = pin!(lifecycle.aborted());
        let mut second = pin!(lifecycle.aborted());
        assert!(first.as_mut().poll(&mut cx).is_pending());
        assert!(second.as_mut().poll(&mut cx).is_pending());
        shared.abort(false);
        assert!(first.as_mut().poll(&mut cx).is_ready());
        assert!(second.as_mut().poll(&mut cx).is_ready());
        assert!(pin!(lifecycle.aborted()).poll(&mut cx).is_ready());
    }
}
