//! Running hooks: registration order, exactly once, panic isolation.
//!
//! The lifecycle's end builds one [`Completion`] and hands it to a
//! [`Chain`], which takes the request's hooks one by one from the shared
//! state until none is left, then runs the layer's `on_complete`. Sync hooks
//! run inline; an async hook moves the rest of the chain into a task on the
//! runtime, so hooks still run strictly in order. Every hook runs under
//! `catch_unwind`. If the task carrying the chain is dropped before the
//! chain ends (the runtime shut down), the chain's `Drop` runs what is left
//! of it inline, so a sync hook is never lost.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::runtime::Handle;

use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::state::Shared;
use crate::Completion;

pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A hook registered on one request.
pub(crate) enum Hook {
    Sync(Box<dyn FnOnce(&Completion) + Send + 'static>),
    Async(Box<dyn FnOnce(Completion) -> BoxFuture + Send + 'static>),
}

/// What is left to run of one lifecycle's hooks.
pub(crate) struct Chain {
    shared: Option<Arc<Shared>>,
    completion: Completion,
    /// Where the chain stands with the request's hooks.
    hooks: Hooks,
}

/// The request's hooks, as the lifecycle's end found them: it takes the
/// first hook, or, when there is none, marks the lifecycle ended and takes
/// its drain token, under the one lock it holds anyway.
pub(crate) enum Hooks {
    /// This hook runs first; the rest are taken one by one.
    First(Hook),
    /// Taken one by one from the shared state.
    More,
    /// None left: after `on_complete`, the token is dropped.
    Done(Option<TaskTrackerToken>),
}

impl Chain {
    /// Runs the hooks of a lifecycle that just ended.
    ///
    /// During a panic unwind the chain is handed to the runtime instead of
    /// running inline: a drop that happens while unwinding is no place to run
    /// user code. Without a runtime it runs inline, still under
    /// `catch_unwind`, which keeps a panicking hook from escaping.
    pub(crate) fn start(shared: Arc<Shared>, completion: Completion, hooks: Hooks) {
        let chain = Chain {
            shared: Some(shared),
            completion,
            hooks,
        };
        if std::thread::panicking() {
            if let Some(handle) = chain.handle() {
                handle.spawn(async move { chain.run() });
                return;
            }
        }
        chain.run();
    }

    fn handle(&self) -> Option<Handle> {
        Handle::try_current()
            .ok()
            .or_else(|| self.shared.as_ref().and_then(|s| s.runtime()))
    }

    fn run(mut self) {
        while let Some(hook) = self.advance() {
            match self.handle() {
                Some(handle) => {
                    handle.spawn(async move {
                        CatchUnwind(hook).await;
                        self.run();
                    });
                    return;
                }
                None => tracing::warn!(
                    "tower_lifecycle: no tokio runtime to run an async shutdown hook on; it was dropped"
                ),
            }
        }
    }

    /// Runs sync hooks until an async hook comes up (returned, to be awaited)
    /// or none is left (then `on_complete` runs and the chain is over).
    fn advance(&mut self) -> Option<BoxFuture> {
        loop {
            let shared = self.shared.as_ref()?;
            let next = match std::mem::replace(&mut self.hooks, Hooks::More) {
                Hooks::First(hook) => Some(hook),
                Hooks::More => shared.next_hook(&self.completion),
                done @ Hooks::Done(_) => {
                    self.hooks = done;
                    None
                }
            };
            match next {
                Some(Hook::Sync(f)) => run_sync(f, &self.completion),
                Some(Hook::Async(f)) => {
                    if let Some(fut) = make_async(f, &self.completion) {
                        return Some(fut);
                    }
                }
                None => {
                    let shared = self.shared.take()?;
                    if let Some(on_complete) = shared.on_complete() {
                        guarded("on_complete", || on_complete(&self.completion));
                    }
                    // The lifecycle leaves the drain's count last.
                    match std::mem::replace(&mut self.hooks, Hooks::More) {
                        Hooks::Done(token) => drop(token),
                        _ => shared.release(),
                    }
                    return None;
                }
            }
        }
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        // Only reached with hooks left when the task carrying the chain was
        // dropped unfinished: the runtime is going away, so async hooks can
        // no longer run, but sync hooks and `on_complete` still do.
        while let Some(fut) = self.advance() {
            drop(fut);
            tracing::warn!(
                "tower_lifecycle: the runtime shut down before an async shutdown hook could run; it was dropped"
            );
        }
    }
}

/// Runs a hook registered after its lifecycle had ended: at once, with the
/// final completion.
pub(crate) fn run_late(hook: Hook, completion: &Completion, runtime: Option<Handle>) {
    match hook {
        Hook::Sync(f) => run_sync(f, completion),
        Hook::Async(f) => {
            let Some(fut) = make_async(f, completion) else {
                return;
            };
            match Handle::try_current().ok().or(runtime) {
                Some(handle) => {
                    handle.spawn(CatchUnwind(fut));
                }
                None => tracing::warn!(
                    "tower_lifecycle: no tokio runtime to run an async shutdown hook on; it was dropped"
                ),
            }
        }
    }
}

fn run_sync(f: Box<dyn FnOnce(&Completion) + Send>, completion: &Completion) {
    guarded("on_shutdown", || f(completion));
}

fn make_async(
    f: Box<dyn FnOnce(Completion) -> BoxFuture + Send>,
    completion: &Completion,
) -> Option<BoxFuture> {
    let completion = completion.clone();
    guarded("on_shutdown_async", move || f(completion))
}

/// Calls `f`, turning a panic into a `tracing::error!` event.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Option<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(value) => Some(value),
        Err(payload) => {
            tracing::error!(
                hook = what,
                panic = panic_message(&*payload),
                "tower_lifecycle: a shutdown hook panicked; the remaining hooks still run"
            );
            None
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "<non-string panic payload>"
    }
}

/// Polls an async hook under `catch_unwind`.
struct CatchUnwind(BoxFuture);

impl Future for CatchUnwind {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let fut = &mut self.0;
        match guarded("on_shutdown_async", || fut.as_mut().poll(cx)) {
            Some(poll) => poll,
            None => Poll::Ready(()),
        }
    }
}
