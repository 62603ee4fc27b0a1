//! The per-request handle, [`Lifecycle`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::Instant;

use crate::hook::Hook;
use crate::shutdown::ShuttingDown;
use crate::state::Shared;
use crate::Completion;
use crate::ConnectionStatus;

/// A handle on the lifecycle of one request.
///
/// [`LifecycleLayer`](crate::LifecycleLayer) creates one for every request
/// and inserts it into the request's extensions before calling the inner
/// service. Get it with `req.extensions().get::<Lifecycle>()`, or, with the
/// `axum` feature, as an extractor. It is cheap to clone (one reference
/// count) and every clone speaks of the same request; it can be moved into
/// tasks and kept after the request ended.
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_lifecycle::{Lifecycle, LifecycleLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(LifecycleLayer::new())
///     .service_fn(|req: Request<()>| async move {
///         let lifecycle = req.extensions().get::<Lifecycle>().unwrap();
///         lifecycle.on_shutdown(|done| {
///             println!("{} in the {} phase after {:?}", done.status(), done.phase(), done.elapsed());
///         });
///         Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("hello")))
///     });
/// let response = svc.oneshot(Request::new(())).await.unwrap();
/// drop(response); // the hook runs once the body is done with: here, "normal"
/// # }
/// ```
#[derive(Clone)]
pub struct Lifecycle {
    pub(crate) shared: Arc<Shared>,
}

impl Lifecycle {
    /// The status word now: [`ConnectionStatus::NORMAL`] until the client
    /// leaves, then [`ConnectionStatus::ABORTED`]. PHP's
    /// `connection_status()`.
    pub fn status(&self) -> ConnectionStatus {
        self.shared.status()
    }

    /// Whether the client has left: the server dropped the response future
    /// or body before it was complete. PHP's `connection_aborted()`.
    pub fn is_aborted(&self) -> bool {
        self.status().is_aborted()
    }

    /// A future that resolves once [`ABORTED`](ConnectionStatus::ABORTED)
    /// is set, at once if it already is.
    ///
    /// Any number of futures may wait; each resolves. The future owns a
    /// clone of the handle, so it can be moved into a task. It never
    /// resolves for a request that ends normally: pair it with the work it
    /// guards, for example in `tokio::select!`.
    pub fn aborted(&self) -> impl Future<Output = ()> + Send + 'static {
        let shared = self.shared.clone();
        async move { shared.until_aborted().await }
    }

    /// Whether the server's shutdown began ([`Drain::begin`](crate::Drain::begin)).
    pub fn is_shutting_down(&self) -> bool {
        self.shared.config.drain.has_begun()
    }

    /// A future that resolves once the server's shutdown began
    /// ([`Drain::begin`](crate::Drain::begin)), at once if it already has.
    /// `Send + 'static`: it owns what it waits on.
    ///
    /// For work that can end early: a long-poll answers now, a job
    /// checkpoints, a stream ends itself
    /// (`stream.take_until(lifecycle.shutting_down())`). The layer already
    /// ends Server-Sent Events and gRPC streams when the shutdown begins;
    /// other responses are left to finish within the drain's grace.
    pub fn shutting_down(&self) -> ShuttingDown {
        ShuttingDown::new(self.shared.config.begun())
    }

    /// Sets this request's time limit, restarting the clock from now, like
    /// PHP's `set_time_limit()`: the request must be done (response sent,
    /// continued work finished) within `limit` from this call. `None`
    /// removes the limit.
    ///
    /// A gRPC client's deadline (`grpc-timeout`) stays a cap that this
    /// cannot lift: past it the client is gone anyway. `Some(Duration::ZERO)`
    /// expires at once; a limit too large to represent (such as
    /// `Duration::MAX`) is no limit.
    ///
    /// The handler's future and the body pick a new deadline up the next
    /// time they are polled (at once when the handler itself calls this);
    /// continued work picks it up at once. Once the limit expired, or the
    /// lifecycle ended, this has no effect.
    pub fn set_time_limit(&self, limit: Option<Duration>) {
        self.shared.set_time_limit(limit);
    }

    /// When the time limit expires, or `None` without one.
    pub fn deadline(&self) -> Option<Instant> {
        self.shared.time_limit().get()
    }

    /// Sets this request's ignore-abort policy and returns the previous one,
    /// like PHP's `ignore_user_abort()`. It starts as the layer's
    /// [`ignore_abort`](crate::LifecycleLayer::ignore_abort) default.
    ///
    /// The policy is read at the moment the abort is detected, so a
    /// handler can turn it on around the part that must finish and off
    /// again after; turned off again before the client leaves, the request
    /// is cancelled as usual. Once the abort was handled, changing it has no
    /// effect.
    pub fn ignore_abort(&self, ignore: bool) -> bool {
        self.shared.set_ignore_abort(ignore)
    }

    /// Runs `work` in a task as part of this request: the lifecycle (and
    /// so its hooks, and [`Drain`](crate::Drain)) waits for it to finish.
    ///
    /// The work is cancelled (dropped at its current `.await`) when the
    /// client aborts while ignore-abort is off, or when the continuing
    /// request was refused by [`max_detached`](crate::LifecycleLayer::max_detached);
    /// with ignore-abort on it keeps running. [`Drain::shutdown`](crate::Drain::shutdown)
    /// cancels it once its grace period is over (status gets
    /// [`TIMEOUT`](ConnectionStatus::TIMEOUT)).
    ///
    /// Work spawned after the abort was handled (from `after_response`
    /// work, say) is not cancelled by it. Called after the lifecycle ended,
    /// the work runs as a plain task that is no longer part of it. Called
    /// outside a tokio runtime, the work is dropped with a
    /// `tracing::warn!`.
    pub fn spawn<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Ok(handle) = Handle::try_current() else {
            tracing::warn!(
                "tower_lifecycle: Lifecycle::spawn outside a tokio runtime; the work was dropped"
            );
            return;
        };
        match self.shared.add_work() {
            Some(guard) => {
                let cancel = self.shared.work_token();
                guard.spawn(&handle, work, Some(cancel));
            }
            None => {
                handle.spawn(work);
            }
        }
    }

    /// Runs `work` once the response is finished — its last byte handed to
    /// the server, or the client gone — as part of this request's lifecycle:
    /// PHP's `fastcgi_finish_request()`. The handler can answer
    /// `202 Accepted` at once and carry on here.
    ///
    /// The client's abort does not cancel it, whatever the ignore-abort
    /// policy; [`Drain::shutdown`](crate::Drain::shutdown) does, once its
    /// grace period is over. The hooks run after it. Several calls run their
    /// work concurrently, each in its own task.
    ///
    /// Called after the response finished, the work starts at once; after
    /// the lifecycle ended, it runs as a plain task that is no longer part
    /// of it. Without a tokio runtime when the response finishes, the work
    /// is dropped with a `tracing::warn!`.
    pub fn after_response<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.shared.after_response(Box::pin(work));
    }

    /// Registers a hook that runs once when the request's lifecycle ends,
    /// with its [`Completion`]. PHP's `register_shutdown_function()`.
    ///
    /// Hooks run in registration order; a hook registered while the hooks
    /// run (from inside a hook, say) runs after the ones already there.
    /// A panicking hook is caught, logged with `tracing::error!`, and the
    /// next hook still runs.
    ///
    /// Registered after the lifecycle ended (the handle was kept, for
    /// example in a task), the hook runs at once, on the calling thread,
    /// with the final `Completion`.
    ///
    /// Sync hooks run where the lifecycle ends, often inside hyper's
    /// connection task: keep them quick. Use
    /// [`on_shutdown_async`](Self::on_shutdown_async) for I/O.
    pub fn on_shutdown<F>(&self, f: F)
    where
        F: FnOnce(&Completion) + Send + 'static,
    {
        self.shared.register(Hook::Sync(Box::new(f)));
    }

    /// Registers an async hook: when its turn comes, `f` is called with the
    /// [`Completion`] and the future it returns is spawned on the tokio
    /// runtime; hooks registered after it run once that future finished.
    ///
    /// The runtime is the one current where the lifecycle ends, or else the
    /// one current when this hook was registered. With neither, or when the
    /// runtime shuts down before the future ran, the hook is dropped with a
    /// `tracing::warn!`. A panic in `f` or in its future is caught and
    /// logged like a sync hook's.
    pub fn on_shutdown_async<F, Fut>(&self, f: F)
    where
        F: FnOnce(Completion) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.shared.remember_runtime();
        self.shared
            .register(Hook::Async(Box::new(move |completion| {
                Box::pin(f(completion))
            })));
    }
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        // A handle dropped while unwinding belongs to code that panicked.
        // This is how a panic caught further in (by a `CatchPanicLayer`
        // inside ours) still shows in `Completion::panicked`.
        if std::thread::panicking() {
            self.shared.panicked();
        }
    }
}

impl fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lifecycle")
            .field("status", &self.status())
            .field("ended", &self.shared.is_ended())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    use super::Lifecycle;
    use crate::state::{seam, Shared};

    /// An abort that lands between `aborted()` reading the status and
    /// waiting must still wake it: the waiter registers before it reads.
    #[test]
    fn an_abort_right_after_the_status_read_still_wakes_aborted() {
        let shared = Arc::new(Shared::new(Default::default(), None));
        let lifecycle = Lifecycle {
            shared: shared.clone(),
        };
        let mut aborted = pin!(lifecycle.aborted());
        seam::once_after_status_read(move || {
            shared.abort(false);
        });
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(
            aborted.as_mut().poll(&mut cx),
            Poll::Ready(()),
            "the abort between the status read and the wait was lost"
        );
    }

    /// Once aborted, `aborted()` resolves at once, and any number of
    /// waiters resolve.
    #[test]
    fn aborted_resolves_for_every_waiter() {
        let shared = Arc::new(Shared::new(Default::default(), None));
        let lifecycle = Lifecycle {
            shared: shared.clone(),
        };
        let mut cx = Context::from_waker(Waker::noop());
        let mut first = pin!(lifecycle.aborted());
        let mut second = pin!(lifecycle.aborted());
        assert!(first.as_mut().poll(&mut cx).is_pending());
        assert!(second.as_mut().poll(&mut cx).is_pending());
        shared.abort(false);
        assert!(first.as_mut().poll(&mut cx).is_ready());
        assert!(second.as_mut().poll(&mut cx).is_ready());
        assert!(pin!(lifecycle.aborted()).poll(&mut cx).is_ready());
    }
}
