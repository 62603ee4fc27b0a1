//! [`LifecycleBody`]: the body phase, and the rules that tell a complete
//! body from an aborted one.
//!
//! ABORTED is set here when the body is dropped before it was complete:
//! hyper drops the body when it can no longer deliver it.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Buf;
use http::{header, response::Parts, Method, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::completion::Phase;

use crate::continuation::{continue_body, end_in_drop, Detach, Inner, InnerProj};
use crate::deadline::Timer;
use crate::grpc;
use crate::panic;
use crate::state::{End, Shared};
use crate::{BoxError, TimedOut};

pin_project! {
    /// Response body of [`LifecycleService`](crate::LifecycleService).
    ///
    /// Forwards frames, trailers, [`size_hint`](Body::size_hint) and
    /// [`is_end_stream`](Body::is_end_stream) of the inner body untouched,
    /// counts the data bytes it yields, and ends the request's lifecycle when
    /// the inner body ends, fails, or is dropped.
    ///
    /// # When is a body complete
    ///
    /// hyper does not always poll a body to its end: it stops as soon as it
    /// knows nothing more can come. So a body dropped early is *complete*
    /// (the lifecycle ends [`NORMAL`](crate::ConnectionStatus::NORMAL)) when
    /// any of these held before the drop, and aborted otherwise:
    ///
    /// - the inner body returned `None`, or yielded trailers;
    /// - it reported [`is_end_stream`](Body::is_end_stream) at construction
    ///   or after a frame;
    /// - the data bytes yielded reached an exact [`size_hint`](Body::size_hint)
    ///   or the response's `Content-Length`;
    /// - the request method was `HEAD`, or `CONNECT` with a 2xx response
    ///   (hyper sends no body then);
    /// - the response status was 1xx, 204 No Content or 304 Not Modified.
    ///
    /// A body that yields an error ends the lifecycle at once with
    /// [`Completion::body_error`](crate::Completion::body_error) set and is
    /// not an abort.
    ///
    /// # Errors
    ///
    /// The error type is [`BoxError`]: the inner body's error, or
    /// [`TimedOut`] when the request's
    /// [time limit](crate::LifecycleLayer::time_limit) expires while the
    /// body streams. The body ends with it, so hyper resets the stream or
    /// closes the connection. A gRPC response ends with trailers
    /// `grpc-status: 4` (DEADLINE_EXCEEDED) instead, which is how a gRPC
    /// client learns a streaming call ran out of time.
    ///
    /// # Ignore-abort
    ///
    /// Dropped before it was complete while ignore-abort is on, the inner
    /// body is moved into a task and polled to its end, its frames
    /// discarded, so whatever produces it (a task feeding a channel, say)
    /// keeps succeeding. The lifecycle ends when the drain does. A body
    /// with an exact size hint (`Full`, `Empty`, …) has no producer to keep
    /// alive and is not drained; it also stays inline, which saves an
    /// allocation.
    #[project = LifecycleBodyProj]
    pub struct LifecycleBody<B> {
        #[pin]
        inner: Inner<B>,
        timer: Timer,
        shared: Option<Arc<Shared>>,
        drain: Detach<B>,
        status: StatusCode,
        sent: u64,
        expected: Option<u64>,
        complete: bool,
        grpc: bool,
        // From the response head (a trailers-only answer) or the trailers.
        grpc_status: Option<i32>,
        polling: bool,
    }

    impl<B> PinnedDrop for LifecycleBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let Some(shared) = this.shared.take() else {
                return;
            };
            let panicked = *this.polling || std::thread::panicking();
            let end = End {
                panicked,
                ..body_end(*this.status, *this.sent, *this.grpc_status)
            };
            // The body's own drop (its producer learns) runs before the hooks.
            end_in_drop(shared, this.inner, *this.drain, !*this.complete && !panicked, end);
        }
    }
}

/// Requests whose response hyper sends without a body (RFC 9110 §6.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bodiless {
    No,
    Head,
    Connect,
}

impl Bodiless {
    pub(crate) fn of(method: &Method) -> Self {
        if method == Method::HEAD {
            Bodiless::Head
        } else if method == Method::CONNECT {
            Bodiless::Connect
        } else {
            Bodiless::No
        }
    }

    fn response(self, status: StatusCode) -> bool {
        match self {
            Bodiless::No => {
                status.is_informational()
                    || status == StatusCode::NO_CONTENT
                    || status == StatusCode::NOT_MODIFIED
            }
            Bodiless::Head => true,
            Bodiless::Connect => status.is_success() || Bodiless::No.response(status),
        }
    }
}

fn body_end(status: StatusCode, sent: u64, grpc_status: Option<i32>) -> End {
    End {
        phase: Phase::Body,
        response_status: Some(status),
        bytes_sent: sent,
        grpc_status,
        ..End::handler()
    }
}

impl<B: Body + Send + 'static> LifecycleBody<B> {
    pub(crate) fn new(
        inner: B,
        shared: Arc<Shared>,
        bodiless: Bodiless,
        grpc: bool,
        parts: &Parts,
    ) -> Self {
        let content_length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let exact = inner.size_hint().exact();
        let expected = match (exact, content_length) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let status = parts.status;
        let complete = bodiless.response(status) || expected == Some(0) || inner.is_end_stream();
        let boxed = shared.detachable() && !complete && exact.is_none();
        LifecycleBody {
            // Only a body whose length is open can have a producer that
            // draining keeps alive; `Full` and the like stay inline.
            inner: Inner::new(inner, boxed),
            timer: Timer::default(),
            shared: Some(shared),
            drain: continue_body::<B>,
            status,
            sent: 0,
            expected,
            complete,
            grpc,
            grpc_status: if grpc {
                grpc::status(&parts.headers)
            } else {
                None
            },
            polling: false,
        }
    }
}

impl<B> LifecycleBody<B> {
    /// The empty body of the layer's own timeout response.
    pub(crate) fn timed_out(status: StatusCode) -> Self
    where
        B: Body + Send + 'static,
    {
        LifecycleBody {
            inner: Inner::Gone,
            timer: Timer::default(),
            shared: None,
            drain: continue_body::<B>,
            status,
            sent: 0,
            expected: Some(0),
            complete: true,
            grpc: false,
            grpc_status: None,
            polling: false,
        }
    }
}

impl<B> fmt::Debug for LifecycleBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LifecycleBody")
            .field("status", &self.status)
            .field("bytes_sent", &self.sent)
            .field("expected", &self.expected)
            .field("complete", &self.complete)
            .field("ended", &self.shared.is_none())
            .finish_non_exhaustive()
    }
}

impl<B> LifecycleBody<B> {
    /// A reference to the inner body; `None` once it ended (returned
    /// `None` or an error, or was cut by the time limit; it is dropped
    /// then), and for the layer's own timeout response.
    pub fn get_ref(&self) -> Option<&B> {
        match &self.inner {
            Inner::Inline { future } => Some(future),
            Inner::Boxed { future } => future.as_deref(),
            Inner::Gone => None,
        }
    }
}

/// The time limit expired while the body streams: the inner body is
/// dropped and the body ends so that the client cannot take it for
/// complete: with an error (hyper resets the stream or closes the
/// connection), or, for gRPC, with trailers saying `DEADLINE_EXCEEDED`.
fn expire<B, D>(this: LifecycleBodyProj<'_, B>) -> Poll<Option<Result<Frame<D>, BoxError>>> {
    let mut inner = this.inner;
    inner.set(Inner::Gone);
    if *this.grpc {
        *this.grpc_status = Some(grpc::DEADLINE_EXCEEDED);
    }
    if let Some(shared) = this.shared.take() {
        shared.timed_out();
        shared.response_done(body_end(*this.status, *this.sent, *this.grpc_status));
    }
    if *this.grpc {
        *this.complete = true;
        return Poll::Ready(Some(Ok(
            Frame::trailers(grpc::deadline_exceeded_trailers()),
        )));
    }
    Poll::Ready(Some(Err(Box::new(TimedOut))))
}

impl<B> Body for LifecycleBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        // A body that is always ready must not outrun the limit either.
        if this
            .shared
            .as_deref()
            .is_some_and(|shared| shared.time_limit().passed())
        {
            return expire(this);
        }
        let mut inner = match this.inner.as_mut().project() {
            InnerProj::Gone => return Poll::Ready(None),
            inner => inner.get(),
        };
        *this.polling = true;
        let panics = panic::count();
        let result = inner.as_mut().poll_frame(cx);
        *this.polling = false;
        if panic::count() != panics {
            if let Some(shared) = this.shared.as_deref() {
                shared.panicked();
            }
        }
        match &result {
            Poll::Pending => {
                let expired = this
                    .shared
                    .as_deref()
                    .is_some_and(|shared| this.timer.poll(shared.time_limit(), cx));
                if expired {
                    return expire(this);
                }
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.sent += data.remaining() as u64;
                } else if let Some(trailers) = frame.trailers_ref() {
                    *this.complete = true;
                    if *this.grpc {
                        *this.grpc_status = grpc::status(trailers).or(*this.grpc_status);
                    }
                }
                if this.expected.is_some_and(|n| *this.sent >= n) || inner.is_end_stream() {
                    *this.complete = true;
                }
                // Progress was made: a timer armed while waiting stays
                // armed (and is moved if the deadline changed) next time.
            }
            Poll::Ready(Some(Err(_))) => {
                // Ended: never poll it again (see `Poll::Ready(None)`).
                this.inner.set(Inner::Gone);
                if let Some(shared) = this.shared.take() {
                    shared.response_done(End {
                        body_error: true,
                        ..body_end(*this.status, *this.sent, *this.grpc_status)
                    });
                }
            }
            Poll::Ready(None) => {
                // Some wrappers outside poll a body again after its end
                // (tower-http's `CompressionLayer` does), and many bodies
                // panic then (a `futures::stream::unfold`): answer `None`
                // again from here on without asking the inner body, which
                // is dropped now, so its cleanup runs before the hooks.
                this.inner.set(Inner::Gone);
                *this.complete = true;
                if let Some(shared) = this.shared.take() {
                    shared.response_done(body_end(*this.status, *this.sent, *this.grpc_status));
                }
            }
        }
        result.map(|frame| frame.map(|frame| frame.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.get_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.get_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
