//! Keeping a request's work alive after its client left (ignore-abort),
//! and the other work that outlives the response side: one word for all of
//! it, *continued* work.
//!
//! - [`Inner`] holds the body, inline or boxed so that it can be moved into
//!   a task (the handler's future is always boxed: see
//!   [`ResponseFuture`](crate::ResponseFuture)); [`Slot`] is what both
//!   offer the end of a response side;
//! - [`end_in_drop`] is how the response future and body end when they are
//!   dropped: an abort, then, by the ignore-abort policy read at that
//!   moment, the inner value continues in a task ([`Detach`]) or is
//!   dropped;
//! - [`WorkGuard`](crate::work_guard::WorkGuard) counts one piece of
//!   continued work in the request's state and runs it (its own file).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Buf;
use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::chain::Chain;
use crate::hook::BoxFuture;
use crate::per_thread;
use crate::state::{End, Shared, Stage, IGNORE_ABORT, PANICKED};
use crate::work_guard::WorkGuard;
use crate::ConnectionStatus;

pin_project! {
    /// The inner future, inline, or boxed so that it can be moved into a
    /// task when it must outlive the client, with what runs it there.
    #[project = InnerProj]
    pub(crate) enum Inner<F> {
        Inline { #[pin] future: F },
        Boxed { future: Option<Pin<Box<F>>>, detach: Detach<F> },
        // Dropped early, so that its own cleanup runs before the hooks.
        Gone,
    }
}

impl<F> Inner<F> {
    /// Whether the inner value can be moved into a task.
    pub(crate) fn is_boxed(&self) -> bool {
        matches!(
            self,
            Inner::Boxed {
                future: Some(_),
                ..
            }
        )
    }

    /// Boxed with `detach`, if given: only what can continue is boxed.
    pub(crate) fn new(future: F, detach: Option<Detach<F>>) -> Self {
        match detach {
            Some(detach) => Inner::Boxed {
                future: Some(Box::pin(future)),
                detach,
            },
            None => Inner::Inline { future },
        }
    }
}

impl<'a, F> InnerProj<'a, F> {
    /// The inner value, pinned, whichever way it is stored.
    pub(crate) fn get(self) -> Pin<&'a mut F> {
        match self {
            InnerProj::Inline { future } => future,
            InnerProj::Boxed { future, .. } => future
                .as_mut()
                .expect("used after it was detached")
                .as_mut(),
            InnerProj::Gone => panic!("used after it was dropped"),
        }
    }

    /// Takes a boxed inner value out (to move it into a task), with what
    /// runs it there.
    pub(crate) fn take(self) -> Option<(Pin<Box<F>>, Detach<F>)> {
        match self {
            InnerProj::Inline { .. } | InnerProj::Gone => None,
            InnerProj::Boxed { future, detach } => future.take().map(|future| (future, *detach)),
        }
    }
}

/// Where the inner value (a handler's future, a body) lives, as
/// [`end_in_drop`] needs it: whether it could move into a task, giving it
/// up to do so, and dropping it.
pub(crate) trait Slot<T> {
    /// Whether the value can be moved into a task.
    fn is_boxed(&self) -> bool;
    /// Takes a boxed value out (to move it into a task), with what runs
    /// it there.
    fn take_boxed(&mut self) -> Option<(Pin<Box<T>>, Detach<T>)>;
    /// Drops the value now, so that its own cleanup runs before the hooks.
    fn clear(&mut self);
}

impl<T> Slot<T> for Pin<&mut Inner<T>> {
    fn is_boxed(&self) -> bool {
        Inner::is_boxed(self)
    }

    fn take_boxed(&mut self) -> Option<(Pin<Box<T>>, Detach<T>)> {
        self.as_mut().project().take()
    }

    fn clear(&mut self) {
        self.set(Inner::Gone);
    }
}

/// A handler's future, always boxed, and what runs it in a task.
impl<T> Slot<T> for (&mut Option<Pin<Box<T>>>, Detach<T>) {
    fn is_boxed(&self) -> bool {
        self.0.is_some()
    }

    fn take_boxed(&mut self) -> Option<(Pin<Box<T>>, Detach<T>)> {
        self.0.take().map(|future| (future, self.1))
    }

    fn clear(&mut self) {
        *self.0 = None;
    }
}

/// Runs an inner value (a handler's future, a body) to its end in a task.
///
/// A function pointer, not a trait bound on the future or body: the
/// bounds it needs (`Send + 'static`, `Future<Output = Result<Response<B>,
/// E>>` or `Body`) are only known where the service is built, and a plain
/// `fn` lets [`ResponseFuture`](crate::ResponseFuture) and
/// [`LifecycleBody`](crate::LifecycleBody) carry it without those bounds
/// on every impl.
pub(crate) type Detach<F> = fn(Pin<Box<F>>, &Handle, WorkGuard);

/// Ends the response side from the `Drop` of the future or the body. If
/// `aborted`, sets ABORTED and, under ignore-abort, moves the inner value
/// into a task with its [`Detach`]. Then drops the inner value, so that its
/// own cleanup has run when the hooks see the outcome, and ends with `end`.
pub(crate) fn end_in_drop<T>(
    shared: Arc<Shared>,
    mut inner: impl Slot<T>,
    aborted: bool,
    end: End,
) {
    if aborted {
        // A stalled reader: hyper stopped polling (the client stopped
        // reading, or sent nothing more), so the deadline passed unseen.
        // The drop is the first chance to record it. Under ignore-abort the
        // work still continues as usual, and its task ends at once on the
        // passed deadline (`Completion::continued` stays what it always
        // meant: the client left with ignore-abort on). With a connection
        // watch the layer cuts such a connection at the deadline itself
        // (`watch::settle`).
        if shared.time_limit().passed() {
            shared.timed_out();
        }
        if let Some(handle) = shared.abort(inner.is_boxed()) {
            if let (Some((value, detach)), Some(guard)) = (inner.take_boxed(), shared.add_work()) {
                detach(value, &handle, guard);
            }
        }
    }
    inner.clear();
    shared.response_done(end);
}

/// The [`Detach`] of a handler future: runs it to its end, discarding its
/// response, unless a shutdown cancels it.
pub(crate) fn detach_handler<F, B, E>(future: Pin<Box<F>>, handle: &Handle, guard: WorkGuard)
where
    F: Future<Output = Result<Response<B>, E>> + Send + 'static,
{
    let work = async move {
        match future.await {
            Ok(response) => tracing::debug!(
                status = %response.status(),
                "tower_lifecycle: the handler finished after its client left; its response is discarded"
            ),
            Err(_) => tracing::debug!("tower_lifecycle: the handler failed after its client left"),
        }
    };
    guard.spawn(handle, work, None);
}

/// The [`Detach`] of a body: polls it to its end, discarding frames, so
/// that whatever produces it keeps succeeding, unless a shutdown cancels it.
pub(crate) fn continue_body<B>(body: Pin<Box<B>>, handle: &Handle, guard: WorkGuard)
where
    B: Body + Send + 'static,
{
    let work = async move {
        let mut body = body;
        let mut drained: u64 = 0;
        loop {
            match std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        drained += data.remaining() as u64;
                    }
                }
                Some(Err(_)) => {
                    tracing::debug!(
                        drained,
                        "tower_lifecycle: a body drained after its client left failed"
                    );
                    return;
                }
                None => break,
            }
        }
        tracing::debug!(
            drained,
            "tower_lifecycle: drained a body to its end after its client left"
        );
    };
    guard.spawn(handle, work, None);
}

impl Shared {
    /// The client left: sets ABORTED and decides, by the ignore-abort
    /// policy read now, whether the request's work continues. Returns the
    /// runtime to continue on, holding a `max_detached` slot, or `None`
    /// after cancelling the request's spawned work.
    ///
    /// `movable`: the caller has work it can move into a task (a boxed
    /// handler future or open-ended body). Without it and without spawned
    /// work, there is nothing to continue, and no slot is taken.
    pub(crate) fn abort(&self, movable: bool) -> Option<Handle> {
        // The handler's future is boxed whatever the settings; with
        // `max_detached(0)` it still cannot continue.
        let movable = movable && self.detachable();
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
    pub(crate) fn work_token(&self) -> CancellationToken {
        let mut state = self.lock();
        if let Some(token) = &state.work {
            return token.clone();
        }
        // Work spawned after the abort was handled (from `after_response`
        // work, say) is not cancelled by it.
        let token = self.config.cut().child_token();
        state.work = Some(token.clone());
        token
    }

    pub(crate) fn after_response(self: &Arc<Self>, work: BoxFuture) {
        let Some(guard) = self.add_work() else {
            match Handle::try_current() {
                Ok(handle) => drop(handle.spawn(work.instrument(self.task_span()))),
                Err(_) => tracing::warn!(
                    "tower_lifecycle: after_response work outside a tokio runtime was dropped"
                ),
            }
            return;
        };
        let mut state = self.lock();
        if matches!(state.stage, Stage::Running) {
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
    pub(crate) fn cancelled_by_shutdown(&self) {
        self.set(ConnectionStatus::TIMEOUT.bits());
        let mut state = self.lock();
        if !std::mem::replace(&mut state.shutdown_cancelled, true) {
            self.config.drain.cancelled.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The response side ended: starts `after_response` work, then ends the
    /// lifecycle unless continued work is still running.
    pub(crate) fn response_done(self: Arc<Self>, mut end: End) {
        // Most requests: nothing holds the state, waits or listens any more.
        let Err(shared) = per_thread::end_unobserved(self, &end) else {
            return;
        };
        // One clock read for the end of the body and, when nothing
        // continues, the end of the lifecycle.
        let now = end.time_to_head.map(|_| shared.time_limit().elapsed());
        end.time_to_body_end = now;
        if end.panicked {
            shared.set(PANICKED);
        }
        let after = {
            let mut state = shared.lock();
            state.stage = Stage::Responded(end);
            std::mem::take(&mut state.after_response)
        };
        for work in after {
            // Each was counted in `pending` when registered.
            WorkGuard::new(shared.clone()).start(work, None);
        }
        if let Some((completion, hooks)) = shared.done_one(Some(end.phase), now) {
            Chain::start(shared, completion, hooks);
        }
    }
}
