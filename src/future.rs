//! [`ResponseFuture`]: the handler phase.
//!
//! ABORTED is set here when the future is dropped before the inner service
//! produced the response head: hyper drops the future when the client left.
//! With ignore-abort on, the inner future is moved into a task and runs to
//! its end.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;

use http::Response;
use pin_project_lite::pin_project;

use crate::continuation::{end_in_drop, Detach};
use crate::deadline::Timer;
use crate::grpc;
use crate::panic;
use crate::response_side::ResponseSide;
use crate::shutdown::{shutdown_head, Ending, Reach};
use crate::state::{End, Shared};
use crate::tally::Bodiless;
use crate::timeout::timeout_head;
use crate::watch::{self, Waiting};
use crate::LifecycleBody;

/// The status of the answer to a request whose client left (nginx's 499):
/// never delivered, the connection is shut down.
fn client_closed_request() -> http::StatusCode {
    http::StatusCode::from_u16(499).expect("a valid status")
}

/// An answer of the layer's own, with an empty body.
fn layer_response<B: http_body::Body + Send + 'static>(
    head: http::response::Builder,
) -> Response<LifecycleBody<B>> {
    let response = head.body(()).expect("a valid answer");
    let status = response.status();
    response.map(|()| LifecycleBody::empty(status))
}

/// Answers for a handler the layer cancelled, and ends the response side
/// with `end`, the answer's head recorded.
fn answer_for<B: http_body::Body + Send + 'static>(
    shared: Arc<Shared>,
    head: http::response::Builder,
    end: End,
) -> Response<LifecycleBody<B>> {
    let at = shared.time_limit().elapsed();
    let response = layer_response(head);
    shared.response_done(End {
        response_status: Some(response.status()),
        grpc_status: grpc::status(response.headers()),
        time_to_head: Some(at),
        ..end
    });
    response
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
    ///
    /// The inner future is boxed, whatever the settings: ignore-abort can
    /// only move a future into a task if it lives on the heap from the
    /// start, and a response future that does not reserve room for the
    /// handler's future stays small when the server moves it.
    pub struct ResponseFuture<F> {
        // Boxed, so that ignore-abort can move it into a task; `None` once
        // it was dropped or moved.
        inner: Option<Pin<Box<F>>>,
        side: ResponseSide,
        timer: Timer,
        detach: Detach<F>,
        bodiless: Bodiless,
        grpc: bool,
        // The connection's watch, if the request carried one.
        connection: Option<Waiting>,
        // Its wait on the end of a shutdown's grace.
        reach: Reach,
        // Set while the inner future is being polled: still set in `drop`
        // means its `poll` panicked.
        polling: bool,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let Some((shared, _)) = this.side.take() else {
                return;
            };
            let panicked = *this.polling || std::thread::panicking();
            let mut end = End {
                panicked,
                ..End::handler()
            };
            let aborted = watch::settle(this.connection, &shared, !panicked, &mut end);
            end_in_drop(shared, (this.inner, *this.detach), aborted, end);
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("done", &self.side.is_ended())
            .field("bodiless", &self.bodiless)
            .finish_non_exhaustive()
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        inner: Pin<Box<F>>,
        side: ResponseSide,
        detach: Detach<F>,
        bodiless: Bodiless,
        grpc: bool,
        connection: Option<Waiting>,
    ) -> Self {
        ResponseFuture {
            inner: Some(inner),
            side,
            timer: Timer::default(),
            detach,
            bodiless,
            grpc,
            connection,
            reach: Reach::default(),
            polling: false,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body + Send + 'static,
{
    type Output = Result<Response<LifecycleBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        *this.polling = true;
        let panics = panic::count();
        let result = this
            .inner
            .as_mut()
            .expect("ResponseFuture polled after it completed")
            .as_mut()
            .poll(cx);
        *this.polling = false;
        if panic::count() != panics {
            // A panic caught inside (CatchPanicLayer's 500, say).
            if let Some(shared) = this.side.shared() {
                shared.panicked();
            }
        }
        let Poll::Ready(result) = result else {
            let shared = this
                .side
                .shared()
                .expect("ResponseFuture polled after it completed");
            if this.connection.as_mut().is_some_and(|c| c.client_left(cx)) {
                // As if hyper had dropped the future: abort (or continue),
                // then answer for the handler. The watcher shut the socket
                // down, so the answer is never delivered.
                let (shared, _) = this.side.take().expect("checked above");
                end_in_drop(shared, (this.inner, *this.detach), true, End::handler());
                let head = Response::builder().status(client_closed_request());
                return Poll::Ready(Ok(layer_response(head)));
            }
            if this.timer.poll(shared.time_limit(), cx) {
                // Cancel the handler, then answer for it.
                *this.inner = None;
                let (shared, _) = this.side.take().expect("checked above");
                shared.timed_out();
                let head = timeout_head(*this.grpc, shared.timeout_status());
                return Poll::Ready(Ok(answer_for(shared, head, End::handler())));
            }
            if shared.config.poll_reached(Ending::Cut, this.reach, cx) {
                // The shutdown's grace ran out: cancel the handler, then
                // answer for it.
                *this.inner = None;
                let (shared, _) = this.side.take().expect("checked above");
                shared.cancelled_by_shutdown();
                let end = End {
                    shutdown: true,
                    ..End::handler()
                };
                return Poll::Ready(Ok(answer_for(shared, shutdown_head(*this.grpc), end)));
            }
            return Poll::Pending;
        };
        assert!(
            !this.side.is_ended(),
            "ResponseFuture polled after it completed"
        );
        match result {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                let side = this.side.hand_over();
                let body = LifecycleBody::new(
                    body,
                    side,
                    *this.bodiless,
                    *this.grpc,
                    &parts,
                    this.connection.take(),
                );
                Poll::Ready(Ok(Response::from_parts(parts, body)))
            }
            Err(err) => {
                this.side.end(End {
                    service_error: true,
                    ..End::handler()
                });
                Poll::Ready(Err(err))
            }
        }
    }
}
