//! [`Watched`]: the connection's IO, owning the watch on its socket.

use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::shared::{Leaving, Shared};
use super::ConnectionWatch;

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
            // Closes the duplicate descriptor (now, or through the task):
            // the socket must not outlive the connection's IO.
            this.watch.shared.end();
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
        // Not registered, no task yet: that waits until a request waits
        // (`Shared::start`). The descriptor is non-blocking already (the
        // flag belongs to the open file, which tokio set up).
        let duplicate = std::net::TcpStream::from(stream.as_fd().try_clone_to_owned()?);
        let shared = Arc::new(Shared::new(duplicate, leaving));
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
