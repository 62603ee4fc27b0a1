//! The state one request's parts share: the [`Lifecycle`](crate::Lifecycle)
//! handles, the response future, the response body and continued work.
//!
//! It is the one allocation the layer makes per request for its own use,
//! and it goes through these stages, each entered once:
//!
//! 1. **handler**: the response future runs the inner service;
//! 2. **body**: the response body streams (the future handed its part of
//!    `pending` over to the body);
//! 3. **continued**: the response side ended ([`Stage::Responded`]),
//!    and work is still running: a handler or body kept alive after the
//!    client left, [`spawn`](crate::Lifecycle::spawn)ed or
//!    [`after_response`](crate::Lifecycle::after_response) work. `pending`
//!    counts the response side (1 until it ended) plus each piece of work;
//! 4. **hooks**: whatever brought `pending` to zero built the
//!    [`Completion`] and runs the hooks ([`hooks`](crate::hooks));
//! 5. **ended**: no hook is left ([`Stage::Ended`]); a hook
//!    registered now runs at once.
//!
//! The status word and two flags live in one atomic byte, read without a
//! lock; everything else that changes is under one mutex that is never held
//! while user code runs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::StatusCode;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::completion::Phase;
use crate::config::{Config, OnComplete};
use crate::deadline::Deadline;
pub(crate) use crate::end::End;
use crate::hook::{self, BoxFuture, Hook, Hooks};
use crate::{Completion, ConnectionStatus};

mod reuse;

/// Internal bits beside the status bits: a panic unwound through the
/// request's processing; the ignore-abort policy is on.
pub(crate) const PANICKED: u8 = 0x80;
pub(crate) const IGNORE_ABORT: u8 = 0x40;
/// The state's lock was taken during this request: only a state never
/// locked is known, without the lock, to hold nothing but its request's
/// start (no hook, no continued work, no runtime, no work token).
const LOCKED: u8 = 0x20;
const STATUS_BITS: u8 = 0b11;
/// [`Shared::shard`] once the lifecycle left the drain's count.
const NO_SHARD: u8 = u8::MAX;

/// State shared by the [`Lifecycle`] handles, the response future and the
/// response body of one request: the one allocation the layer makes per
/// request for it.
pub(crate) struct Shared {
    pub(crate) bits: AtomicU8,
    /// The response side (1 until it ended) plus continued work not yet
    /// finished. The lifecycle ends when it drops to 0.
    pub(crate) pending: AtomicUsize,
    /// Wakes the waits on the status ([`until_aborted`](Self::until_aborted))
    /// and on the deadline ([`until_deadline`](Self::until_deadline)): one
    /// `Notify` for both, each waiter re-checks its own condition.
    wake: Notify,
    time_limit: Deadline,
    pub(crate) config: Arc<Config>,
    /// The span current when the layer was called (a `TraceLayer`'s request
    /// span, say), when a subscriber could want it: the parent of all the
    /// request does later (hooks, continued work, the layer's event).
    pub(crate) span: Option<tracing::Span>,
    /// This lifecycle's shard in the layer's `Drain` count, until it left
    /// ([`NO_SHARD`] then). An atomic, not part of the locked state, so
    /// that the end of a request nothing observes takes no lock; taken
    /// with a `swap` wherever two parts could race for it.
    shard: AtomicU8,
    state: Mutex<State>,
}

/// How far the lifecycle is, as the locked state knows it.
#[derive(Default)]
pub(crate) enum Stage {
    /// The response side has not ended.
    #[default]
    Running,
    /// The response side ended, like this; continued work or the hooks
    /// remain.
    Responded(End),
    /// The hooks have all been taken: the final completion, for a hook
    /// registered late.
    Ended(Completion),
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) hooks: VecDeque<Hook>,
    pub(crate) stage: Stage,
    /// The runtime current when an async hook was registered.
    pub(crate) runtime: Option<Handle>,
    /// Work waiting for the response side to end.
    pub(crate) after_response: Vec<BoxFuture>,
    /// Cancels spawned work on abort (unless it continues) and on shutdown.
    pub(crate) work: Option<CancellationToken>,
    /// This request holds one of the layer's `max_detached` slots.
    pub(crate) detached: bool,
    /// Ignore-abort was on but the request could not continue.
    pub(crate) refused: bool,
    /// The end of a shutdown's grace cut this request (its continued work,
    /// its body or its handler).
    pub(crate) shutdown_cancelled: bool,
}

impl Shared {
    /// `grpc_cap` is what the request's `grpc-timeout` allows, if any.
    pub(crate) fn new(config: Arc<Config>, grpc_cap: Option<Duration>) -> Self {
        let shared = Shared {
            bits: AtomicU8::new(0),
            pending: AtomicUsize::new(0),
            wake: Notify::new(),
            time_limit: Deadline::new(config.time_limit, grpc_cap),
            config,
            span: current_span(),
            shard: AtomicU8::new(NO_SHARD),
            state: Mutex::new(State::default()),
        };
        // Counted in as a reused state is (see `reuse`).
        shared.enter();
        shared
    }

    /// Resolves once ABORTED is set, at once if it already is.
    pub(crate) async fn until_aborted(&self) {
        loop {
            // Registered before the status is read, so that an abort in
            // between still wakes this wait (`notify_waiters` wakes only
            // registered waiters).
            let mut notified = std::pin::pin!(self.wake.notified());
            notified.as_mut().enable();
            if self.status().is_aborted() {
                return;
            }
            notified.await;
        }
    }

    /// Sets the ignore-abort policy; returns the previous one.
    pub(crate) fn set_ignore_abort(&self, ignore: bool) -> bool {
        // AcqRel: `abort` reads the policy with Acquire, so whatever the
        // handler did before turning it on is visible to the task that
        // continues its work.
        let old = if ignore {
            self.bits.fetch_or(IGNORE_ABORT, Ordering::AcqRel)
        } else {
            self.bits.fetch_and(!IGNORE_ABORT, Ordering::AcqRel)
        };
        old & IGNORE_ABORT != 0
    }

    /// Whether the hooks have all been taken.
    pub(crate) fn is_ended(&self) -> bool {
        matches!(self.lock().stage, Stage::Ended(_))
    }

    #[inline]
    pub(crate) fn status(&self) -> ConnectionStatus {
        let bits = self.bits.load(Ordering::Acquire) & STATUS_BITS;
        #[cfg(test)]
        seam::after_status_read();
        ConnectionStatus::from_bits(bits).unwrap_or(ConnectionStatus::NORMAL)
    }

    pub(crate) fn set(&self, bits: u8) {
        let old = self.bits.fetch_or(bits, Ordering::AcqRel);
        if bits & ConnectionStatus::ABORTED.bits() != 0
            && old & ConnectionStatus::ABORTED.bits() == 0
        {
            self.wake.notify_waiters();
        }
    }

    /// The request's time limit.
    #[inline]
    pub(crate) fn time_limit(&self) -> &Deadline {
        &self.time_limit
    }

    /// Restarts the time limit from now (`None` lifts it, down to a gRPC
    /// cap).
    pub(crate) fn set_time_limit(&self, limit: Option<Duration>) {
        self.time_limit.set_limit(limit, &self.wake);
    }

    /// Resolves once the time limit has passed, following its changes.
    pub(crate) async fn until_deadline(&self) {
        self.time_limit.reached(&self.wake).await;
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

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // Marked once per request, before the lock is taken: whoever later
        // finds the state alone sees the mark (see `alone`).
        if self.bits.load(Ordering::Relaxed) & LOCKED == 0 {
            self.bits.fetch_or(LOCKED, Ordering::Relaxed);
        }
        // Hooks never run under the lock, so a poisoned lock only means a
        // panic elsewhere; the state itself is always consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes this lifecycle's drain shard, if it has not left.
    pub(crate) fn take_shard(&self) -> Option<u8> {
        in_drain(self.shard.swap(NO_SHARD, Ordering::AcqRel))
    }

    /// [`take_shard`](Self::take_shard) for a state nothing else holds (it
    /// is [`alone`](Self::alone), or dropped): a plain load and store, no
    /// locked instruction.
    pub(crate) fn take_shard_alone(&self) -> Option<u8> {
        let shard = self.shard.load(Ordering::Relaxed);
        self.shard.store(NO_SHARD, Ordering::Relaxed);
        in_drain(shard)
    }

    pub(crate) fn register(&self, hook: Hook) {
        let mut state = self.lock();
        match &state.stage {
            Stage::Running | Stage::Responded(_) => state.hooks.push_back(hook),
            Stage::Ended(completion) => {
                let completion = completion.clone();
                let runtime = state.runtime.clone();
                drop(state);
                self.in_span(|| hook::run_late(hook, &completion, runtime));
            }
        }
    }

    /// Runs `f` in the request's span, if it has one.
    pub(crate) fn in_span<T>(&self, f: impl FnOnce() -> T) -> T {
        match &self.span {
            Some(span) => span.in_scope(f),
            None => f(),
        }
    }

    /// The request's span, or a disabled one: what a task it starts is
    /// instrumented with.
    pub(crate) fn task_span(&self) -> tracing::Span {
        self.span.clone().unwrap_or_else(tracing::Span::none)
    }

    pub(crate) fn remember_runtime(&self) {
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
        self.config.detachable()
    }

    /// The next hook to run; or, when none is left, marks the lifecycle
    /// ended and takes its drain token, under the same lock (so no hook
    /// registered meanwhile is lost, and the end costs one lock).
    pub(crate) fn next_hook(&self, completion: &Completion) -> Result<Hook, Option<u8>> {
        let mut state = self.lock();
        match state.hooks.pop_front() {
            Some(hook) => Ok(hook),
            None => {
                state.stage = Stage::Ended(completion.clone());
                Err(self.take_shard())
            }
        }
    }

    /// Leaves the drain's count, if still in it.
    pub(crate) fn leave(&self, token: Option<u8>) {
        if let Some(shard) = token {
            self.config.drain.in_flight.leave(shard);
        }
    }

    /// One part is done; `phase` is where the lifecycle ended if it was the
    /// last (`None`: where the response side ended). The last one gets the
    /// completion and the hooks to run, for [`Chain::start`](crate::chain::Chain::start).
    #[must_use]
    ///
    /// `now`: the time since the request entered the layer, if the caller
    /// just read it (saves a clock read).
    pub(crate) fn done_one(
        &self,
        phase: Option<Phase>,
        now: Option<Duration>,
    ) -> Option<(Completion, Hooks)> {
        // AcqRel: the last part to finish sees everything the others did
        // before they counted themselves done.
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            Some(self.finish(phase, now))
        } else {
            None
        }
    }

    /// Builds the completion and takes the first hook. Reached exactly
    /// once, by whatever brought `pending` to zero.
    fn finish(&self, phase: Option<Phase>, now: Option<Duration>) -> (Completion, Hooks) {
        let all = self.bits.load(Ordering::Acquire);
        let (completion, hooks) = {
            let mut state = self.lock();
            let end = match state.stage {
                Stage::Responded(end) => end,
                Stage::Running | Stage::Ended(_) => End::handler(),
            };
            let completion = Completion {
                status: self.status(),
                phase: phase.unwrap_or(end.phase),
                elapsed: now.unwrap_or_else(|| self.time_limit.elapsed()),
                bytes_sent: end.bytes_sent,
                response_status: end.response_status,
                panicked: all & PANICKED != 0,
                body_error: end.body_error,
                service_error: end.service_error,
                cancelled: end.cancelled,
                shutdown: end.shutdown || state.shutdown_cancelled,
                cut: end.cut,
                time_to_head: end.time_to_head,
                time_to_body_end: end.time_to_body_end,
                timeout_status: self.config.timeout_status,
                grpc_status: end.grpc_status,
                continued: state.detached,
                detach_refused: state.refused,
            };
            // One lock for the common case of no hook: take the first, or
            // mark the end and take the drain token.
            let hooks = match state.hooks.pop_front() {
                Some(first) => Hooks::First(first),
                None => {
                    state.stage = Stage::Ended(completion.clone());
                    Hooks::Done(self.take_shard())
                }
            };
            (completion, hooks)
        };
        if completion.continued {
            self.config.drain.detached.fetch_sub(1, Ordering::AcqRel);
        }
        self.in_span(|| crate::events::emit(&completion, &self.config));
        (completion, hooks)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // A lifecycle whose hooks never ran to their end (its chain was
        // dropped with the runtime) still leaves the count.
        self.leave(self.take_shard_alone());
    }
}

/// A shard as [`Shared::shard`] holds it, if the lifecycle is still in the
/// drain's count.
fn in_drain(shard: u8) -> Option<u8> {
    (shard != NO_SHARD).then_some(shard)
}

/// The bits a request starts with: the layer's ignore-abort default.
fn initial_bits(config: &Config) -> u8 {
    if config.ignore_abort {
        IGNORE_ABORT
    } else {
        0
    }
}

/// The current span, when a subscriber could want it: none without one
/// (one check of a global flag), and none outside any span.
pub(crate) fn current_span() -> Option<tracing::Span> {
    if !tracing::dispatcher::has_been_set() {
        return None;
    }
    let span = tracing::Span::current();
    (!span.is_none()).then_some(span)
}

/// A test seam: lets a test run code right after the status was read, the
/// one moment where another thread's abort would race a waiter.
#[cfg(test)]
pub(crate) mod seam {
    use std::cell::RefCell;

    thread_local! {
        static AFTER_STATUS_READ: RefCell<Option<Box<dyn FnOnce()>>> = RefCell::new(None);
    }

    /// Runs `f` the next time this thread reads a status.
    pub(crate) fn once_after_status_read(f: impl FnOnce() + 'static) {
        AFTER_STATUS_READ.with(|seam| *seam.borrow_mut() = Some(Box::new(f)));
    }

    pub(crate) fn after_status_read() {
        if let Some(f) = AFTER_STATUS_READ.with(|seam| seam.borrow_mut().take()) {
            f();
        }
    }
}
