//! [`ResponseFuture`]: the handler phase.
//!
//! ABORTED is set here when the future is dropped before the inner service
//! produced the response head: hyper drops the future when the client left.
//! With ignore-abort on, the inner future is moved into a task and runs to
//! its end.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;
use tokio::runtime::Handle;
use tokio::time::Sleep;

use crate::body::Bodiless;
use crate::lifecycle::{End, Shared, WorkGuard};
use crate::panic;
use crate::timeout::{grpc_status, poll_deadline, timeout_head};
use crate::LifecycleBody;

pin_project! {
    /// The inner future, inline, or boxed so that it can be moved into a
    /// task when it must outlive the client.
    #[project = InnerProj]
    pub(crate) enum Inner<F> {
        Inline { #[pin] future: F },
        Boxed { future: Option<Pin<Box<F>>> },
        // Dropped early, so that its own cleanup runs before the hooks.
        Gone,
    }
}

impl<F> Inner<F> {
    /// Whether the inner value can be moved into a task.
    pub(crate) fn is_boxed(&self) -> bool {
        matches!(self, Inner::Boxed { future: Some(_) })
    }

    pub(crate) fn new(future: F, boxed: bool) -> Self {
        if boxed {
            Inner::Boxed {
                future: Some(Box::pin(future)),
            }
        } else {
            Inner::Inline { future }
        }
    }
}

impl<'a, F> InnerProj<'a, F> {
    /// The inner value, pinned, whichever way it is stored.
    pub(crate) fn get(self) -> Pin<&'a mut F> {
        match self {
            InnerProj::Inline { future } => future,
            InnerProj::Boxed { future } => future
                .as_mut()
                .expect("used after it was detached")
                .as_mut(),
            InnerProj::Gone => panic!("used after it was dropped"),
        }
    }

    /// Takes a boxed inner value out (to move it into a task).
    pub(crate) fn take(self) -> Option<Pin<Box<F>>> {
        match self {
            InnerProj::Inline { .. } | InnerProj::Gone => None,
            InnerProj::Boxed { future } => future.take(),
        }
    }
}

/// Runs a detached inner future to its end in a task.
pub(crate) type Detach<F> = fn(Pin<Box<F>>, &Handle, WorkGuard);

/// Ends the response side from the `Drop` of the future or the body. If
/// `aborted`, sets ABORTED and, under ignore-abort, moves the inner value
/// into a task with `detach`. Then drops the inner value, so that its own
/// cleanup has run when the hooks see the outcome, and ends with `end`.
pub(crate) fn end_in_drop<T>(
    shared: Arc<Shared>,
    mut inner: Pin<&mut Inner<T>>,
    detach: Detach<T>,
    aborted: bool,
    end: End,
) {
    if aborted {
        // A stalled reader: hyper stopped polling (the client stopped
        // reading, or sent nothing more), so the deadline passed unseen.
        // The drop is the first chance to record it, and nothing is left
        // to continue once the limit is over.
        // (The connection watch will let the layer act on the deadline
        // while hyper is not polling, and tell a client that left from a
        // layer outside this one that dropped the future.)
        let expired = shared.past_deadline();
        if expired {
            shared.timed_out();
        }
        if let Some(handle) = shared.abort(inner.is_boxed() && !expired) {
            if let (Some(value), Some(guard)) = (inner.as_mut().project().take(), shared.add_work())
            {
                detach(value, &handle, guard);
            }
        }
    }
    inner.set(Inner::Gone);
    shared.response_done(end);
}

pin_project! {
    /// Response future of [`LifecycleService`](crate::LifecycleService).
    ///
    /// Dropped before it resolved, it ends the request's handler phase with
    /// [`ABORTED`](crate::ConnectionStatus::ABORTED), unless the drop comes
    /// from a panic in the handler (then
    /// [`Completion::panicked`](crate::Completion::panicked) is set instead).
    /// If ignore-abort is on at that moment, the inner future keeps running
    /// in a task until it ends, and its response is discarded. Once it
    /// resolves, the response body takes over.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Inner<F>,
        shared: Option<Arc<Shared>>,
        sleep: Option<Pin<Box<Sleep>>>,
        detach: Detach<F>,
        bodiless: Bodiless,
        grpc: bool,
        // Set while the inner future is being polled: still set in `drop`
        // means its `poll` panicked.
        polling: bool,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let Some(shared) = this.shared.take() else {
                return;
            };
            let panicked = *this.polling || std::thread::panicking();
            let end = End {
                panicked,
                ..End::handler()
            };
            end_in_drop(shared, this.inner, *this.detach, !panicked, end);
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("done", &self.shared.is_none())
            .field("bodiless", &self.bodiless)
            .finish_non_exhaustive()
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        inner: Inner<F>,
        shared: Arc<Shared>,
        detach: Detach<F>,
        bodiless: Bodiless,
        grpc: bool,
    ) -> Self {
        ResponseFuture {
            inner,
            shared: Some(shared),
            sleep: None,
            detach,
            bodiless,
            grpc,
            polling: false,
        }
    }
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

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body + Send + 'static,
{
    type Output = Result<Response<LifecycleBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        *this.polling = true;
        let panics = panic::count();
        let result = this.inner.as_mut().project().get().poll(cx);
        *this.polling = false;
        if panic::count() != panics {
            // A panic caught inside (CatchPanicLayer's 500, say).
            if let Some(shared) = this.shared.as_deref() {
                shared.panicked();
            }
        }
        let Poll::Ready(result) = result else {
            let shared = this
                .shared
                .as_deref()
                .expect("ResponseFuture polled after it completed");
            if poll_deadline(this.sleep, shared, cx) {
                // Cancel the handler, then answer for it.
                this.inner.set(Inner::Gone);
                let shared = this.shared.take().expect("checked above");
                shared.timed_out();
                let response = timeout_head(*this.grpc, shared.timeout_status())
                    .body(LifecycleBody::timed_out(shared.timeout_status()))
                    .expect("a valid timeout response");
                shared.response_done(End {
                    response_status: Some(response.status()),
                    grpc_status: grpc_status(response.headers()),
                    ..End::handler()
                });
                return Poll::Ready(Ok(response));
            }
            return Poll::Pending;
        };
        let shared = this
            .shared
            .take()
            .expect("ResponseFuture polled after it completed");
        match result {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                let body = LifecycleBody::new(body, shared, *this.bodiless, *this.grpc, &parts);
                Poll::Ready(Ok(Response::from_parts(parts, body)))
            }
            Err(err) => {
                shared.response_done(End {
                    service_error: true,
                    ..End::handler()
                });
                Poll::Ready(Err(err))
            }
        }
    }
}
