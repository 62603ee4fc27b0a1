//! What a connection's watch and its handles share ([`Shared`]), and the
//! watcher task, started when a request first waits.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why a connection's watch fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Reason {
    Open = 0,
    /// The client closed its side (FIN).
    Fin = 1,
    /// The client reset the connection, or the socket reported an error.
    Reset = 2,
    /// The server shut the socket down
    /// ([`ConnectionWatch::close`](super::ConnectionWatch::close), or the
    /// time limit of a response hyper was not sending).
    Cut = 3,
    /// The server let the connection go ([`Watched`](super::Watched)
    /// dropped).
    Ended = 4,
}

impl Reason {
    fn from_u8(n: u8) -> Reason {
        match n {
            1 => Reason::Fin,
            2 => Reason::Reset,
            3 => Reason::Cut,
            4 => Reason::Ended,
            _ => Reason::Open,
        }
    }
}

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

/// Where the duplicate of the connection's socket is.
#[cfg(unix)]
enum Socket {
    /// Not watched yet: the duplicate, registered nowhere.
    Idle(std::net::TcpStream),
    /// Registered in the reactor and owned by the watcher task; weak here
    /// so that only the task keeps it open.
    Watching(std::sync::Weak<tokio::net::TcpStream>),
    /// Closed, or never to be watched.
    Gone,
}

/// The cut at a time limit: when the response in flight must be done
/// (HTTP/1.1 has one at a time), and when the watcher's timer is set for.
///
/// Each response of a keep-alive connection with a limit sets `at` when its
/// body starts and clears it when the body ends, so the watcher is woken
/// only when `at` comes before the time its timer is set for; a timer that
/// goes off early finds the current `at` and sets itself again. A
/// connection serving a request a millisecond under a 30 s limit wakes its
/// watcher about once every 30 s, not twice per request.
#[derive(Default)]
struct Cut {
    at: Option<Instant>,
    timer: Option<Instant>,
}

/// What the watcher and every handle share.
pub(crate) struct Shared {
    /// Cancelled once the connection is over for the layer; `reason` says
    /// why.
    pub(super) closed: CancellationToken,
    /// Cancelled to ask the watcher to shut the socket down.
    pub(super) close: CancellationToken,
    reason: AtomicU8,
    /// When the watcher shuts the socket down on its own.
    cut: Mutex<Cut>,
    /// Wakes the watcher when the cut comes earlier than it sleeps for.
    cut_moved: Notify,
    /// Waits on the client's leaving alive now ([`Wanted`]): the watcher
    /// watches the socket only while there is one.
    wanted: AtomicUsize,
    /// Wakes the watcher when `wanted` leaves zero.
    want: Notify,
    #[cfg(unix)]
    socket: Mutex<Socket>,
    #[cfg(unix)]
    leaving: Leaving,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    #[cfg(unix)]
    pub(super) fn new(duplicate: std::net::TcpStream, leaving: Leaving) -> Self {
        Shared {
            closed: CancellationToken::new(),
            close: CancellationToken::new(),
            reason: AtomicU8::new(Reason::Open as u8),
            cut: Mutex::new(Cut::default()),
            cut_moved: Notify::new(),
            wanted: AtomicUsize::new(0),
            want: Notify::new(),
            socket: Mutex::new(Socket::Idle(duplicate)),
            leaving,
        }
    }

    /// Records why the connection is over; the first reason wins.
    pub(super) fn record(&self, reason: Reason) {
        // Release: pairs with the Acquire in `reason`, for a reader (the
        // drop of a request) that looks at the reason before `closed`
        // fired: the watcher records it before it shuts the socket down,
        // so a request hyper drops because of that shutdown sees it.
        let _ = self.reason.compare_exchange(
            Reason::Open as u8,
            reason as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Records why the connection is over and wakes every waiter.
    pub(super) fn finish(&self, reason: Reason) {
        self.record(reason);
        self.closed.cancel();
    }

    pub(super) fn reason(&self) -> Reason {
        Reason::from_u8(self.reason.load(Ordering::Acquire))
    }

    /// Moves the cut to `at` (`None`: no cut); wakes the watcher only if
    /// its timer must go off sooner, and says whether it did.
    pub(super) fn cut_at(&self, at: Option<Instant>) -> bool {
        let mut cut = lock(&self.cut);
        cut.at = at;
        let sooner = match (at, cut.timer) {
            (Some(at), Some(timer)) => at < timer,
            (Some(_), None) => true,
            (None, _) => false,
        };
        drop(cut);
        if sooner {
            // A permit if the watcher is not waiting yet: it reads `at`
            // after it registered for the next one.
            self.cut_moved.notify_one();
        }
        sooner
    }

    /// The connection's IO is dropped: the connection is over, and the
    /// duplicate closes (here if idle, in the watcher task otherwise).
    pub(super) fn end(&self) {
        self.finish(Reason::Ended);
        #[cfg(unix)]
        {
            *lock(&self.socket) = Socket::Gone;
        }
    }

    /// Starts watching, once: registers the duplicate in the reactor and
    /// spawns the watcher task. Without a tokio runtime, or if the
    /// registration fails, the connection stays unwatched (it never reads
    /// as closed before it ends).
    pub(super) fn start(self: &Arc<Self>) {
        #[cfg(unix)]
        {
            let mut socket = lock(&self.socket);
            if !matches!(*socket, Socket::Idle(_)) {
                return;
            }
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            let Socket::Idle(duplicate) = std::mem::replace(&mut *socket, Socket::Gone) else {
                return;
            };
            let _entered = runtime.enter();
            match tokio::net::TcpStream::from_std(duplicate) {
                Ok(registered) => {
                    let registered = Arc::new(registered);
                    *socket = Socket::Watching(Arc::downgrade(&registered));
                    drop(socket);
                    runtime.spawn(watch(registered, self.clone(), self.leaving));
                }
                Err(err) => tracing::debug!(%err, "tower_lifecycle: cannot watch a connection"),
            }
        }
    }

    /// Asks the socket now whether the client closed or reset it (a peek
    /// that reads nothing): false when it is open, holds data, or the
    /// server already let it go.
    pub(super) fn peer_gone(&self) -> bool {
        #[cfg(unix)]
        {
            let mut byte = [std::mem::MaybeUninit::uninit()];
            let peeked = match &*lock(&self.socket) {
                Socket::Idle(duplicate) => socket2::SockRef::from(duplicate).peek(&mut byte),
                Socket::Watching(weak) => match weak.upgrade() {
                    Some(registered) => socket2::SockRef::from(&*registered).peek(&mut byte),
                    None => return false,
                },
                Socket::Gone => return false,
            };
            match peeked {
                Ok(n) => n == 0,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            }
        }
        #[cfg(not(unix))]
        false
    }
}

/// A wait on the client's leaving (a [`Closed`](super::Closed) future),
/// counted while it lives: the watcher watches the socket only while
/// something waits. A keep-alive connection whose requests are answered at
/// once never wakes it; one whose request waited wakes it at most once
/// more, at its next incoming data, after which it stops watching.
pub(crate) struct Wanted(Arc<Shared>);

impl Wanted {
    pub(super) fn new(shared: &Arc<Shared>) -> Self {
        // AcqRel/Acquire: the count is only a hint for the watcher, which
        // re-reads it after every wake-up; the notification carries the
        // 0 -> 1 step to a watcher that is not watching.
        if shared.wanted.fetch_add(1, Ordering::AcqRel) == 0 {
            shared.want.notify_one();
        }
        Wanted(shared.clone())
    }
}

impl Drop for Wanted {
    fn drop(&mut self) {
        self.0.wanted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The watcher task: waits until the client leaves, the layer asks for the
/// socket to be shut down (now, or at a time limit), or the connection's IO
/// is dropped; then records why, shuts the socket down unless the server
/// already let it go, and closes the duplicate descriptor.
#[cfg(unix)]
async fn watch(socket: Arc<tokio::net::TcpStream>, shared: Arc<Shared>, leaving: Leaving) {
    let reason = tokio::select! {
        biased;
        () = shared.closed.cancelled() => Reason::Ended,
        () = shared.close.cancelled() => Reason::Cut,
        () = cut_due(&shared) => Reason::Cut,
        reason = watch_while_wanted(&socket, &shared, leaving) => reason,
    };
    shared.record(reason);
    if reason != Reason::Ended {
        // hyper's reads see the end and its writes fail: it drops the
        // connection's requests and lets the connection go. Shutting the
        // duplicate down acts on the socket, which hyper's descriptor
        // shares. After a reset there is nothing left to shut: the error
        // is of no interest.
        let _ = socket2::SockRef::from(&*socket).shutdown(std::net::Shutdown::Both);
    }
    shared.finish(reason);
}

/// Resolves once the client left, as `leaving` says, watching the socket
/// only while something waits on it ([`Wanted`]).
#[cfg(unix)]
async fn watch_while_wanted(
    socket: &tokio::net::TcpStream,
    shared: &Shared,
    leaving: Leaving,
) -> Reason {
    loop {
        loop {
            let want = shared.want.notified();
            tokio::pin!(want);
            // Registered before the count is read, so a wait that starts
            // in between wakes this one.
            want.as_mut().enable();
            if shared.wanted.load(Ordering::Acquire) > 0 {
                break;
            }
            want.await;
        }
        if let Some(reason) = client_leaves(socket, shared, leaving).await {
            return reason;
        }
    }
}

/// Resolves once the client left, as `leaving` says, or with `None` at the
/// first incoming data after nothing waits any more. Never reads: data for
/// hyper only wakes it, and it clears its own readiness to wait again.
#[cfg(unix)]
async fn client_leaves(
    socket: &tokio::net::TcpStream,
    shared: &Shared,
    leaving: Leaving,
) -> Option<Reason> {
    let mut interest = tokio::io::Interest::READABLE | tokio::io::Interest::ERROR;
    loop {
        let Ok(ready) = socket.ready(interest).await else {
            return Some(Reason::Reset);
        };
        if ready.is_error() {
            return Some(Reason::Reset);
        }
        if ready.is_read_closed() {
            if leaving == Leaving::FinOrReset {
                return Some(Reason::Fin);
            }
            // tokio never clears a read-closed readiness: waiting for
            // READABLE again would return at once, forever.
            interest = tokio::io::Interest::ERROR;
            continue;
        }
        // Data for hyper. Clear this registration's readiness without
        // reading, so that the next wait waits for new data or a close.
        let _ = socket.try_io(tokio::io::Interest::READABLE, || {
            Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
        });
        if shared.wanted.load(Ordering::Acquire) == 0 {
            return None;
        }
    }
}

/// Resolves once the time set with `ConnectionWatch::cut_at` passes;
/// follows the time as it moves.
#[cfg(unix)]
async fn cut_due(shared: &Shared) {
    loop {
        let moved = shared.cut_moved.notified();
        tokio::pin!(moved);
        // Registered before reading the time, so a move in between wakes.
        moved.as_mut().enable();
        let timer = {
            let mut cut = lock(&shared.cut);
            if cut.at.is_some_and(|at| at <= Instant::now()) {
                return;
            }
            cut.timer = cut.at;
            cut.timer
        };
        match timer {
            Some(at) => tokio::select! {
                // Past it: the loop checks the cut as it is now.
                () = tokio::time::sleep_until(at) => {}
                () = &mut moved => {}
            },
            None => moved.await,
        }
    }
}
