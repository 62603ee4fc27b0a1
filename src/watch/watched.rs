//! [`Watched`]: the connection's IO, and the task that watches its socket.

use std::fmt;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use super::connection::{Reason, Shared};
use super::ConnectionWatch;

/// What counts as the client leaving.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Leaving {
    /// A FIN or a reset: the client closed its side, or the whole
    /// connection. This is what hyper's default `half_close(false)` assumes
    /// too (it closes the connection when it reads the end of the stream).
    #[default]
    FinOrReset,
    /// Only a reset. For servers built with `http1().half_close(true)`,
    /// whose clients may shut their sending side down and still wait for
    /// the response. A FIN cannot be told from such a half-close without
    /// writing; a client that left for good is seen once a write to it
    /// makes its system answer with a reset.
    ResetOnly,
}

pin_project! {
    /// A connection's IO with a watch on its socket.
    ///
    /// Wraps the stream hyper serves (it is tokio's `AsyncRead +
    /// AsyncWrite`: `TokioIo::new(watched)`), and owns a task that waits on
    /// a duplicate of the socket's descriptor, registered in tokio's
    /// reactor on its own and never read from. Dropping the `Watched`
    /// (hyper does when the connection ends) stops the task and closes the
    /// duplicate, and every [`ConnectionWatch`] of the connection reports it
    /// closed.
    ///
    /// See [the module](super) for what the layer does with the watch.
    pub struct Watched<IO> {
        #[pin]
        io: IO,
        watch: ConnectionWatch,
    }

    impl<IO> PinnedDrop for Watched<IO> {
        fn drop(this: Pin<&mut Self>) {
            // Wakes the task, which closes the duplicate descriptor: the
            // socket must not outlive the connection's IO.
            this.watch.shared.finish(Reason::Ended);
        }
    }
}

impl Watched<TcpStream> {
    /// Watches `stream` as [`Leaving::FinOrReset`] says.
    ///
    /// Must be called within a tokio runtime (it registers a descriptor in
    /// the reactor and spawns the watcher task).
    ///
    /// # Errors
    ///
    /// When the socket is no longer connected (the client already reset
    /// it: there is nothing to watch, and nothing to serve), or duplicating
    /// or registering its descriptor fails (the process ran out of
    /// descriptors, say).
    pub fn new(stream: TcpStream) -> io::Result<Self> {
        Self::with_leaving(stream, Leaving::default())
    }

    /// Watches `stream`, taking for the client's leaving what `leaving`
    /// says.
    ///
    /// # Errors
    ///
    /// As for [`new`](Self::new).
    pub fn with_leaving(stream: TcpStream, leaving: Leaving) -> io::Result<Self> {
        stream.peer_addr()?;
        let duplicate = std::net::TcpStream::from(stream.as_fd().try_clone_to_owned()?);
        // The flag is shared with the original descriptor (one open file),
        // and already set by tokio; set it anyway, `from_std` requires it.
        duplicate.set_nonblocking(true)?;
        let duplicate = Arc::new(TcpStream::from_std(duplicate)?);
        let shared = Arc::new(Shared::new(Arc::downgrade(&duplicate)));
        tokio::spawn(watch(duplicate, shared.clone(), leaving));
        Ok(Watched {
            io: stream,
            watch: ConnectionWatch { shared },
        })
    }
}

impl<IO> Watched<IO> {
    /// A handle on the watch, for the connection's requests.
    pub fn watch(&self) -> ConnectionWatch {
        self.watch.clone()
    }

    /// A reference to the IO.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// A mutable reference to the IO.
    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// A pinned mutable reference to the IO.
    pub fn get_pin_mut(self: Pin<&mut Self>) -> Pin<&mut IO> {
        self.project().io
    }
}

impl<IO: fmt::Debug> fmt::Debug for Watched<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watched")
            .field("io", &self.io)
            .field("watch", &self.watch)
            .finish()
    }
}

impl<IO: AsyncRead> AsyncRead for Watched<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite> AsyncWrite for Watched<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// The watcher task: waits until the client leaves, the layer asks for the
/// socket to be shut down (now, or at a time limit), or the connection's IO
/// is dropped; then records why, shuts the socket down unless the server
/// already let it go, and closes the duplicate descriptor.
async fn watch(socket: Arc<TcpStream>, shared: Arc<Shared>, leaving: Leaving) {
    let reason = tokio::select! {
        biased;
        () = shared.closed.cancelled() => Reason::Ended,
        () = shared.close.cancelled() => Reason::Cut,
        () = cut_due(&shared) => Reason::Cut,
        reason = client_leaves(&socket, leaving) => reason,
    };
    shared.record(reason);
    if reason != Reason::Ended {
        // hyper's reads see the end and its writes fail: it drops the
        // connection's requests and lets the connection go. Shutting the
        // duplicate down acts on the socket, which hyper's descriptor
        // shares. After a reset there is nothing left to shut: the error
        // is of no interest.
        let _ = socket2::SockRef::from(&*socket).shutdown(Shutdown::Both);
    }
    shared.finish(reason);
}

/// Resolves once the client left, as `leaving` says. Never reads: data
/// for hyper only wakes it, and it clears its own readiness to wait again.
async fn client_leaves(socket: &TcpStream, leaving: Leaving) -> Reason {
    let mut interest = Interest::READABLE | Interest::ERROR;
    loop {
        let Ok(ready) = socket.ready(interest).await else {
            return Reason::Reset;
        };
        if ready.is_error() {
            return Reason::Reset;
        }
        if ready.is_read_closed() {
            if leaving == Leaving::FinOrReset {
                return Reason::Fin;
            }
            // tokio never clears a read-closed readiness: waiting for
            // READABLE again would return at once, forever.
            interest = Interest::ERROR;
            continue;
        }
        // Data for hyper. Clear this registration's readiness without
        // reading, so that the next wait waits for new data or a close.
        let _ = socket.try_io(Interest::READABLE, || {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
    }
}

/// Resolves once the time set with `ConnectionWatch::cut_at` passes;
/// follows the time as it moves.
async fn cut_due(shared: &Shared) {
    loop {
        let moved = shared.cut_moved.notified();
        tokio::pin!(moved);
        // Registered before reading the time, so a move in between wakes.
        moved.as_mut().enable();
        match shared.cut_at() {
            Some(at) => tokio::select! {
                () = tokio::time::sleep_until(at) => return,
                () = &mut moved => {}
            },
            None => moved.await,
        }
    }
}
