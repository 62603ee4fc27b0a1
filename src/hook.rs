//! One hook: what a request registers, and running it under
//! `catch_unwind` so that its panic never escapes.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::runtime::Handle;

use crate::Completion;

pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A hook registered on one request.
pub(crate) enum Hook {
    Sync(Box<dyn FnOnce(&Completion) + Send + 'static>),
    Async(Box<dyn FnOnce(Completion) -> BoxFuture + Send + 'static>),
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
    Done(Option<u8>),
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
                    // In the span current here: the request's.
                    handle.spawn(tracing::Instrument::in_current_span(CatchUnwind(fut)));
                }
                None => tracing::warn!(
                    "tower_lifecycle: no tokio runtime to run an async shutdown hook on; it was dropped"
                ),
            }
        }
    }
}

pub(crate) fn run_sync(f: Box<dyn FnOnce(&Completion) + Send>, completion: &Completion) {
    guarded("on_shutdown", || f(completion));
}

pub(crate) fn make_async(
    f: Box<dyn FnOnce(Completion) -> BoxFuture + Send>,
    completion: &Completion,
) -> Option<BoxFuture> {
    let completion = completion.clone();
    guarded("on_shutdown_async", move || f(completion))
}

/// Calls `f`, turning a panic into a `tracing::error!` event.
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Option<T> {
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
pub(crate) struct CatchUnwind(pub(crate) BoxFuture);

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
