//! [`ConnectionWatch`]: the handle a request carries, and what the layer
//! keeps of it while the request is in flight.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::shared::{Reason, Shared, Wanted};

/// A handle on one connection's [`Watched`](super::Watched) socket: it
/// says when the connection is over, without keeping the socket open.
///
/// Cheap to clone (one reference count), `Send + Sync + 'static`. Insert
/// it in each request's extensions ([`WatchLayer`](super::WatchLayer)
/// does) and [`LifecycleLayer`](crate::LifecycleLayer) uses it; a handler
/// can also wait on it directly.
///
/// Holding a handle (or a [`Lifecycle`](crate::Lifecycle) that holds one)
/// does not keep the socket open: once hyper drops the connection's IO, the
/// socket closes and the handle reports the connection closed.
#[derive(Clone)]
pub struct ConnectionWatch {
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for ConnectionWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionWatch")
            .field("closed", &self.is_closed())
            .field("client_left", &self.client_left())
            .finish()
    }
}

impl ConnectionWatch {
    /// The connection is over: the client closed or reset it, the server
    /// shut it down, or the server let it go.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// The connection is over because the client closed or reset it.
    pub fn client_left(&self) -> bool {
        matches!(self.shared.reason(), Reason::Fin | Reason::Reset)
    }

    /// Resolves once the connection is over ([`is_closed`](Self::is_closed)),
    /// at once if it already is. The future owns a handle: it is
    /// `Send + 'static` and can be moved into a task.
    pub fn closed(&self) -> Closed {
        self.shared.start();
        Closed {
            inner: self.shared.closed.clone().cancelled_owned(),
            _wanted: Wanted::new(&self.shared),
        }
    }

    /// Shuts the socket down in both directions: hyper's next read sees
    /// the end of the stream and its next write fails, so it drops every
    /// request of the connection and lets it go. The client sees the
    /// connection close. Does nothing once the connection is over.
    pub fn close(&self) {
        self.shared.start();
        self.shared.close.cancel();
    }

    /// Has the watcher shut the socket down at `at` unless moved again
    /// (`None`: never).
    pub(crate) fn cut_at(&self, at: Option<Instant>) {
        // A watcher whose timer is set is running: only a cut sooner than
        // it (the first one, say) may need to start it.
        if self.shared.cut_at(at) {
            self.shared.start();
        }
    }

    pub(crate) fn reason(&self) -> Reason {
        self.shared.reason()
    }

    /// Asks the socket now whether the client closed or reset it (a peek
    /// that reads nothing). False when it is open, holds data, or the
    /// server already let it go.
    pub(crate) fn peer_gone(&self) -> bool {
        self.shared.peer_gone()
    }
}

pin_project! {
    /// The future of [`ConnectionWatch::closed`].
    #[must_use = "futures do nothing unless polled"]
    pub struct Closed {
        #[pin]
        inner: WaitForCancellationFutureOwned,
        // Keeps the watcher watching while this waits.
        _wanted: Wanted,
    }
}

impl fmt::Debug for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Closed").finish_non_exhaustive()
    }
}

impl Future for Closed {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().inner.poll(cx)
    }
}

/// What a drop of the layer's future or of an incomplete body means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Left {
    /// The client left (or nothing tells otherwise): an abort.
    Client,
    /// The server dropped the request with its client still there.
    Server,
    /// The layer shut the connection down at the request's time limit.
    Limit,
}

/// The layer's wait on a request's connection while the request is in
/// flight: the handle, and the registered wait once the request had to
/// wait. Boxed, so that the response future and body of a request without
/// a watch hold one pointer's worth for it (and stay small to move).
pub(crate) struct Waiting(Box<Watching>);

/// What [`Waiting`] holds.
struct Watching {
    watch: ConnectionWatch,
    wait: Option<Pin<Box<Closed>>>,
    /// HTTP/1.x: one request at a time, which the client can only leave by
    /// closing the connection.
    http1: bool,
    /// The time the watcher was last told to cut the connection at.
    cut: Option<Instant>,
}

impl Waiting {
    pub(crate) fn new(watch: ConnectionWatch, http1: bool) -> Self {
        Waiting(Box::new(Watching {
            watch,
            wait: None,
            http1,
            cut: None,
        }))
    }

    /// Whether the client left, if the connection is over; otherwise
    /// registers `cx` to be woken when it is. Only the client's leaving
    /// counts here: when the server cut the connection, hyper drops the
    /// request itself.
    pub(crate) fn client_left(&mut self, cx: &mut Context<'_>) -> bool {
        let this = &mut *self.0;
        if !this.watch.is_closed() {
            let watch = &this.watch;
            let wait = this.wait.get_or_insert_with(|| Box::pin(watch.closed()));
            if wait.as_mut().poll(cx).is_pending() {
                return false;
            }
        }
        this.watch.client_left()
    }

    /// Over HTTP/1.1, has the watcher shut the connection down at
    /// `deadline` should hyper stop sending the response (the client
    /// stopped reading); `None` calls it off. Takes the lock only when the
    /// deadline moved.
    pub(crate) fn cut_at(&mut self, deadline: Option<Instant>) {
        let this = &mut *self.0;
        if this.http1 && this.cut != deadline {
            this.cut = deadline;
            this.watch.cut_at(deadline);
        }
    }

    /// What a drop of a request that was not complete means, asked when it
    /// happens. `limit_passed`: the request's time limit has passed.
    pub(crate) fn left(&mut self, limit_passed: bool) -> Left {
        self.cut_at(None);
        let this = &*self.0;
        if !this.http1 {
            return Left::Client;
        }
        match this.watch.reason() {
            Reason::Fin | Reason::Reset | Reason::Ended => Left::Client,
            Reason::Cut if limit_passed => Left::Limit,
            Reason::Cut => Left::Server,
            // hyper may have seen the close before the watcher did: ask
            // the socket.
            Reason::Open if this.watch.peer_gone() => Left::Client,
            Reason::Open => Left::Server,
        }
    }
}
