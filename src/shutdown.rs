//! The shutdown reaching requests in flight: what a handler awaits
//! ([`ShuttingDown`]), how each kind of response body ends when the
//! shutdown begins or its grace runs out, and the error a cut body ends
//! with ([`ServerShutdown`]).
//!
//! | response | when the shutdown begins | when the grace runs out |
//! | --- | --- | --- |
//! | `text/event-stream` (SSE) | ends cleanly at once | — |
//! | gRPC (`application/grpc…`) | trailers `grpc-status: 14` at once | — |
//! | any other open-ended body | left to finish | cut with [`ServerShutdown`] |
//! | a body of exact size (`Full`) | left to finish | left to finish |
//! | a handler still running | left to finish | dropped, answered 503 (gRPC: 14) |

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::StatusCode;
use pin_project_lite::pin_project;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::grpc;
use crate::header;

pin_project! {
    /// Resolves once the layer's shutdown began
    /// ([`Drain::begin`](crate::Drain::begin)), at once if it already has.
    ///
    /// From [`Lifecycle::shutting_down`](crate::Lifecycle::shutting_down)
    /// and [`Drain::begun`](crate::Drain::begun). It owns what it waits on:
    /// `Send + 'static`, so it can end a stream
    /// (`stream.take_until(lifecycle.shutting_down())`) or be handed to
    /// `with_graceful_shutdown`.
    #[must_use = "futures do nothing unless polled"]
    pub struct ShuttingDown {
        #[pin]
        inner: WaitForCancellationFutureOwned,
    }
}

impl ShuttingDown {
    pub(crate) fn new(begun: &CancellationToken) -> Self {
        ShuttingDown {
            inner: begun.clone().cancelled_owned(),
        }
    }
}

impl Future for ShuttingDown {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().inner.poll(cx)
    }
}

impl fmt::Debug for ShuttingDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShuttingDown").finish_non_exhaustive()
    }
}

/// The error a response body ends with when the shutdown's grace ran out
/// before it was complete.
///
/// hyper answers a body error by resetting the stream (HTTP/2) or closing
/// the connection (HTTP/1.1): the client sees a failed download, never a
/// short one that looks complete. Find it with
/// `err.downcast_ref::<ServerShutdown>()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ServerShutdown;

impl fmt::Display for ServerShutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the server shut down before the response was complete")
    }
}

impl std::error::Error for ServerShutdown {}

/// What a response body does when the shutdown reaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Server-Sent Events: end cleanly when the shutdown begins; the
    /// client's `EventSource` reconnects (to another server).
    Sse,
    /// A gRPC response: end with `grpc-status: 14` when the shutdown
    /// begins; clients retry UNAVAILABLE elsewhere.
    Grpc,
    /// Anything else: may finish within the grace; cut with an error when
    /// it runs out.
    Cut,
}

impl Ending {
    /// How a response with these headers ends; `None` for a body whose
    /// size is known exactly (`Full`, `Empty`: already in memory, nothing
    /// open-ended to end or cut, even after the grace), whatever its
    /// content type: only an open-ended body is an event stream.
    #[inline]
    pub(crate) fn of(grpc: bool, headers: &HeaderMap, exact: bool) -> Option<Self> {
        if grpc {
            Some(Ending::Grpc)
        } else if exact {
            None
        } else if header::get(headers, &CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
        {
            Some(Ending::Sse)
        } else {
            Some(Ending::Cut)
        }
    }
}

/// A response's wait on the shutdown: registered (one allocation) only
/// when the handler or the body first has to wait, so a response that is
/// ready at once pays nothing.
#[derive(Default)]
pub(crate) struct Reach {
    wait: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl Reach {
    /// Whether `token` (the drain's token for this response's
    /// [`Ending`]) was cancelled; otherwise registers `cx` to be woken when
    /// it is. The caller checked the drain's flag first, so this asks the
    /// token (and takes its lock) only through the wait itself.
    pub(crate) fn poll(&mut self, token: &CancellationToken, cx: &mut Context<'_>) -> bool {
        let wait = self
            .wait
            .get_or_insert_with(|| Box::pin(token.clone().cancelled_owned()));
        wait.as_mut().poll(cx).is_ready()
    }
}

/// The answer for a handler the shutdown's grace cut: 503 for HTTP (the
/// server closes the connection: it is shutting down), a trailers-only
/// UNAVAILABLE for gRPC.
pub(crate) fn shutdown_head(grpc: bool) -> http::response::Builder {
    if grpc {
        grpc::SHUTDOWN.head()
    } else {
        http::Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header(CONTENT_LENGTH, HeaderValue::from_static("0"))
    }
}
