//! Running a lifecycle's hooks: registration order, exactly once, panic
//! isolation.
//!
//! The lifecycle's end builds one [`Completion`] and hands it to a
//! [`Chain`], which takes the request's hooks one by one from the shared
//! state until none is left, then runs the layer's `on_complete`. Sync hooks
//! run inline; an async hook moves the rest of the chain into a task on the
//! runtime, so hooks still run strictly in order. Every hook runs under
//! `catch_unwind`. If the task carrying the chain is dropped before the
//! chain ends (the runtime shut down), the chain's `Drop` runs what is left
//! of it inline, so a sync hook is never lost.

use std::sync::Arc;

use tokio::runtime::Handle;
use tracing::Instrument;

use crate::hook::{guarded, make_async, run_sync, BoxFuture, CatchUnwind, Hook, Hooks};
use crate::per_thread;
use crate::state::Shared;
use crate::Completion;

/// What is left to run of one lifecycle's hooks.
pub(crate) struct Chain {
    shared: Option<Arc<Shared>>,
    completion: Completion,
    /// Where the chain stands with the request's hooks.
    hooks: Hooks,
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

    /// The request's span, entered while hooks run.
    fn span(&self) -> tracing::Span {
        self.shared
            .as_ref()
            .map_or_else(tracing::Span::none, |s| s.task_span())
    }

    fn run(mut self) {
        let span = self.span();
        let _entered = span.enter();
        while let Some(hook) = self.advance() {
            match self.handle() {
                Some(handle) => {
                    let rest = async move {
                        CatchUnwind(hook).await;
                        self.run();
                    };
                    handle.spawn(rest.instrument(span.clone()));
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
                Hooks::More => match shared.next_hook(&self.completion) {
                    Ok(hook) => Some(hook),
                    Err(token) => {
                        self.hooks = Hooks::Done(token);
                        None
                    }
                },
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
                    if let Hooks::Done(token) = std::mem::replace(&mut self.hooks, Hooks::More) {
                        shared.leave(token);
                    }
                    per_thread::recycle(shared);
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
        let span = self.span();
        let _entered = span.enter();
        while let Some(fut) = self.advance() {
            drop(fut);
            tracing::warn!(
                "tower_lifecycle: the runtime shut down before an async shutdown hook could run; it was dropped"
            );
        }
    }
}
