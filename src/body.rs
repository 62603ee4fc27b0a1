//! [`LifecycleBody`]: the body phase, and the rules that tell a complete
//! body from an aborted one.
//!
//! ABORTED is set here when the body is dropped before it was complete:
//! hyper drops the body when it can no longer deliver it.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{response::Parts, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::continuation::{continue_body, end_in_drop, Detach, Inner, InnerProj};
use crate::deadline::Timer;
use crate::grpc;
use crate::panic;
use crate::response_side::ResponseSide;
use crate::shutdown::{Ending, Reach, ServerShutdown};
use crate::state::{End, Shared};
use crate::tally::{content_length, Bodiless, Tally};
use crate::watch::{self, Waiting};
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
        // Open until complete by the rules above, then Complete, then Ended.
        side: ResponseSide,
        tally: Tally,
        timer: Timer,
        // The connection's watch, if the request carried one.
        connection: Option<Waiting>,
        // What the shutdown does to this body, and its wait on it.
        ending: Option<Ending>,
        reach: Reach,
        // Set while the inner body is being polled: still set in `drop`
        // means its `poll_frame` panicked.
        polling: bool,
    }

    impl<B> PinnedDrop for LifecycleBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(connection) = this.connection.as_mut() {
                // Nothing more to send: no cut at the time limit.
                connection.cut_at(None);
            }
            let Some((shared, complete)) = this.side.take() else {
                return;
            };
            let panicked = *this.polling || std::thread::panicking();
            let mut end = End {
                panicked,
                ..this.tally.end()
            };
            let aborted = watch::settle(this.connection, &shared, !complete && !panicked, &mut end);
            // The body's own drop (its producer learns) runs before the hooks.
            end_in_drop(shared, this.inner, aborted, end);
        }
    }
}

impl<B: Body + Send + 'static> LifecycleBody<B> {
    #[inline]
    pub(crate) fn new(
        inner: B,
        side: ResponseSide,
        bodiless: Bodiless,
        grpc: bool,
        parts: &Parts,
        mut connection: Option<Waiting>,
    ) -> Self {
        let exact = inner.size_hint().exact();
        // A handler-set `Content-Length` below the body's size is what
        // hyper sends (a `Content-Length: 0` answer has no body at all).
        let expected = match (exact, content_length(&parts.headers)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let complete =
            bodiless.response(parts.status) || expected == Some(0) || inner.is_end_stream();
        // Only a body whose length is open can have a producer that
        // continuing keeps alive; `Full` and the like stay inline.
        let boxed = side.shared().is_some_and(|s| s.detachable()) && !complete && exact.is_none();
        if let (Some(connection), Some(shared)) = (&mut connection, side.shared()) {
            connection.cut_at(shared.time_limit().get());
        }
        // The time to head only when something could ever read it.
        let head = if side.shared().is_some_and(Shared::unobserved) {
            None
        } else {
            side.shared().map(|shared| shared.time_limit().elapsed())
        };
        let mut body = LifecycleBody {
            inner: Inner::new(inner, boxed.then_some(continue_body::<B> as Detach<B>)),
            side,
            tally: Tally::new(
                parts.status,
                expected,
                grpc,
                grpc.then(|| grpc::status(&parts.headers)).flatten(),
                head,
            ),
            timer: Timer::default(),
            connection,
            ending: Ending::of(grpc, &parts.headers, exact.is_some()),
            reach: Reach::default(),
            polling: false,
        };
        if complete {
            body.side.complete();
        }
        body
    }

    /// The empty body of an answer of the layer's own (the timeout
    /// response, the answer to a client that left).
    pub(crate) fn empty(status: StatusCode) -> Self {
        LifecycleBody {
            inner: Inner::Gone,
            side: ResponseSide::ended(),
            tally: Tally::new(status, Some(0), false, None, None),
            timer: Timer::default(),
            connection: None,
            ending: None,
            reach: Reach::default(),
            polling: false,
        }
    }
}

impl<B> fmt::Debug for LifecycleBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LifecycleBody")
            .field("status", &self.tally.status)
            .field("bytes_sent", &self.tally.sent)
            .field("expected", &self.tally.expected())
            .field("complete", &self.side.is_complete())
            .field("ended", &self.side.is_ended())
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
            Inner::Boxed { future, .. } => future.as_deref(),
            Inner::Gone => None,
        }
    }

    /// A mutable reference to the inner body; `None` as for
    /// [`get_ref`](Self::get_ref).
    pub fn get_mut(&mut self) -> Option<&mut B>
    where
        B: Unpin,
    {
        match &mut self.inner {
            Inner::Inline { future } => Some(future),
            Inner::Boxed { future, .. } => future.as_mut().map(|b| b.as_mut().get_mut()),
            Inner::Gone => None,
        }
    }

    /// A pinned mutable reference to the inner body; `None` as for
    /// [`get_ref`](Self::get_ref).
    pub fn get_pin_mut(self: Pin<&mut Self>) -> Option<Pin<&mut B>> {
        match self.project().inner.project() {
            InnerProj::Gone => None,
            // A boxed body is only taken out (to continue it) while the
            // body is dropped, never while it can be reached here.
            inner => Some(inner.get()),
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
    if this.tally.grpc {
        this.tally.grpc_status = Some(grpc::DEADLINE_EXCEEDED);
    }
    if let Some((shared, _)) = this.side.take() {
        shared.timed_out();
        shared.response_done(End {
            cut: true,
            ..this.tally.end()
        });
    }
    if this.tally.grpc {
        return Poll::Ready(Some(Ok(Frame::trailers(grpc::DEADLINE.trailers()))));
    }
    Poll::Ready(Some(Err(Box::new(TimedOut))))
}

/// How the shutdown ends this body if it reached it while the body is not
/// complete: checked before each poll without waiting (`cx` is `None`),
/// and when the inner body waits, registering `cx` to be woken.
fn reached_by_shutdown(
    side: &ResponseSide,
    ending: Option<Ending>,
    reach: &mut Reach,
    cx: Option<&mut Context<'_>>,
) -> Option<Ending> {
    let ending = ending?;
    let shared = side.shared().filter(|_| !side.is_complete())?;
    let drain = &shared.config.drain;
    let reached = match cx {
        Some(cx) => shared.config.poll_reached(ending, reach, cx),
        None => drain.has_reached(ending),
    };
    reached.then_some(ending)
}

/// The shutdown reached a body that was not complete: it ends as its kind
/// says (see [`shutdown`](crate::shutdown)), the inner body dropped.
fn reached<B, D>(
    this: LifecycleBodyProj<'_, B>,
    ending: Ending,
) -> Poll<Option<Result<Frame<D>, BoxError>>> {
    let mut inner = this.inner;
    inner.set(Inner::Gone);
    if ending == Ending::Grpc {
        this.tally.grpc_status = Some(grpc::UNAVAILABLE);
    }
    if let Some((shared, _)) = this.side.take() {
        if ending == Ending::Cut {
            shared.cancelled_by_shutdown();
        }
        shared.response_done(End {
            shutdown: true,
            cut: ending == Ending::Cut,
            ..this.tally.end()
        });
    }
    match ending {
        Ending::Sse => Poll::Ready(None),
        Ending::Grpc => Poll::Ready(Some(Ok(Frame::trailers(grpc::SHUTDOWN.trailers())))),
        Ending::Cut => Poll::Ready(Some(Err(Box::new(ServerShutdown)))),
    }
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
            .side
            .shared()
            .is_some_and(|shared| shared.time_limit().passed())
        {
            return expire(this);
        }
        if let Some(ending) = reached_by_shutdown(this.side, *this.ending, this.reach, None) {
            return reached(this, ending);
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
            if let Some(shared) = this.side.shared() {
                shared.panicked();
            }
        }
        match &result {
            Poll::Pending if this.connection.as_mut().is_some_and(|c| c.client_left(cx)) => {
                // As if hyper had dropped the body.
                if let Some((shared, complete)) = this.side.take() {
                    let end = this.tally.end();
                    end_in_drop(shared, this.inner, !complete, end);
                }
                return Poll::Ready(Some(Err(watch::client_left())));
            }
            Poll::Pending => {
                let expired = this
                    .side
                    .shared()
                    .is_some_and(|shared| this.timer.poll(shared.time_limit(), cx));
                if expired {
                    return expire(this);
                }
                if let Some(ending) =
                    reached_by_shutdown(this.side, *this.ending, this.reach, Some(cx))
                {
                    return reached(this, ending);
                }
            }
            Poll::Ready(Some(Ok(frame))) => {
                if this.tally.frame(frame) || inner.is_end_stream() {
                    this.side.complete();
                }
                // Progress was made: a timer armed while waiting stays
                // armed (and is moved if the deadline changed) next time.
            }
            Poll::Ready(Some(Err(_))) => {
                // Ended: never poll it again (see `Poll::Ready(None)`).
                this.inner.set(Inner::Gone);
                this.side.end(End {
                    body_error: true,
                    ..this.tally.end()
                });
            }
            Poll::Ready(None) => {
                // Some wrappers outside poll a body again after its end
                // (tower-http's `CompressionLayer` does), and many bodies
                // panic then (a `futures::stream::unfold`): answer `None`
                // again from here on without asking the inner body, which
                // is dropped now, so its cleanup runs before the hooks.
                this.inner.set(Inner::Gone);
                this.side.end(this.tally.end());
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
