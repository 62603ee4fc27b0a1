//! Reusing a per-request state: a request whose end nothing can observe
//! ends here without building a [`Completion`](crate::Completion), and its
//! state (or that of a lifecycle that ran its hooks, when nothing holds it)
//! is made that of the next request on the thread
//! ([`per_thread`](crate::per_thread)). Nothing else holds the state
//! here: proven by [`Shared::alone`] (no locked instruction), which lets a
//! state that was never locked end and restart through `&self`, or by
//! `&mut self`.

use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use super::{initial_bits, End, Shared, Stage, LOCKED, NO_SHARD, PANICKED, STATUS_BITS};
use crate::deadline::Deadline;

impl Shared {
    /// Whether nothing but `this` holds the state, read without a locked
    /// instruction (`Arc::get_mut` takes one). No `Weak` of a state is ever
    /// made, so a strong count of one is this holder alone, and it stays
    /// one: nothing else can reach the state to clone it. The fence makes
    /// what the last other holder did before it let go (a hook registered,
    /// the lock marked) visible here.
    #[inline]
    pub(crate) fn alone(this: &Arc<Self>) -> bool {
        let alone = Arc::strong_count(this) == 1;
        if alone {
            fence(Ordering::Acquire);
        }
        alone
    }

    /// Whether the state's lock was not taken during this request (so no
    /// hook was registered, nothing continues, nothing else changed).
    #[inline]
    fn never_locked(&self) -> bool {
        self.bits.load(Ordering::Relaxed) & LOCKED == 0
    }

    /// Whether the state was never locked and holds no span: all it holds
    /// then is its request's start, and with [`alone`](Self::alone) it can
    /// be ended and kept through `&self`.
    #[inline]
    pub(crate) fn pristine(&self) -> bool {
        self.never_locked() && self.span.is_none()
    }

    /// Makes an ended state that nothing else holds (a spare: see
    /// [`per_thread`](crate::per_thread)) that of a request that starts
    /// now, through `&self`: every field a request changes without the
    /// lock is an atomic, and [`release`](Self::release) cleared the rest.
    /// False, with nothing changed, if the deadline cannot restart (see
    /// [`Deadline::restart`]); then [`restart_with`](Self::restart_with).
    #[inline]
    pub(crate) fn restart(&self, grpc_cap: Option<Duration>) -> bool {
        if !self.time_limit.restart(self.config.time_limit, grpc_cap) {
            return false;
        }
        self.enter();
        true
    }

    /// [`restart`](Self::restart) through `&mut`, with a span (the one
    /// current now, which `&self` cannot store) and a new deadline.
    pub(crate) fn restart_with(&mut self, span: Option<tracing::Span>, grpc_cap: Option<Duration>) {
        self.time_limit = Deadline::new(self.config.time_limit, grpc_cap);
        self.span = span;
        self.enter();
    }

    /// The status word, the count of parts and the drain's count, as a
    /// request that starts now has them.
    #[inline]
    pub(super) fn enter(&self) {
        self.bits
            .store(initial_bits(&self.config), Ordering::Relaxed);
        self.pending.store(1, Ordering::Relaxed);
        debug_assert!(
            self.shard.load(Ordering::Relaxed) == NO_SHARD,
            "a state kept before it left the drain"
        );
        self.shard
            .store(self.config.drain.in_flight.enter(), Ordering::Relaxed);
    }

    /// Drops what an ended lifecycle's state still holds for its request
    /// (the span, the runtime, the token of its spawned work, the final
    /// completion), so that it can be kept for [`restart`](Self::restart).
    #[inline]
    pub(crate) fn release(&mut self) {
        // Each checked first: most requests hold none of these, and a
        // check is cheaper than a drop.
        if self.span.is_some() {
            self.span = None;
        }
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        // The hooks were all taken and the `after_response` work started
        // before any lifecycle ends; the lists keep their room.
        debug_assert!(state.hooks.is_empty() && state.after_response.is_empty());
        if !matches!(state.stage, Stage::Running) {
            state.stage = Stage::Running;
        }
        if state.runtime.is_some() {
            state.runtime = None;
        }
        if state.work.is_some() {
            state.work = None;
        }
        state.detached = false;
        state.refused = false;
        state.shutdown_cancelled = false;
        self.state.clear_poison();
    }

    /// Whether nothing could observe this request's completion if it ended
    /// now: nothing else holds the state (so no hook can be registered
    /// later), it was never locked (so none was registered), the layer has
    /// no `on_complete`, and no subscriber could want the layer's event.
    #[inline]
    pub(crate) fn unobserved(this: &Arc<Self>) -> bool {
        Shared::alone(this)
            && this.never_locked()
            && this.config.on_complete.is_none()
            && !crate::events::could_log(&this.config)
    }

    /// Whether the request ends without anything that could observe how:
    /// normally (no status bit, which a continued request, ABORTED, and
    /// one the shutdown cut, TIMEOUT, both have; no panic; not ended by
    /// the shutdown, which is worth an event), nothing continuing, no
    /// `on_complete`, no event wanted. The hooks are checked apart.
    #[inline]
    fn quiet(&self, bits: u8, pending: usize, end: &End) -> bool {
        bits & (STATUS_BITS | PANICKED) == 0
            && !end.panicked
            && !end.shutdown
            && pending == 1
            && self.config.on_complete.is_none()
            && !crate::events::logs_normal(&self.config)
    }

    /// [`end_unobserved`](Self::end_unobserved) without `&mut`, for a state
    /// found [`alone`](Self::alone) and [`pristine`](Self::pristine): it
    /// has no hook and nothing to release, and nothing else can reach it.
    #[inline]
    pub(crate) fn end_pristine(&self, end: &End) -> bool {
        let pending = self.pending.load(Ordering::Relaxed);
        if !self.quiet(self.bits.load(Ordering::Relaxed), pending, end) {
            return false;
        }
        self.pending.store(0, Ordering::Relaxed);
        self.leave(self.take_shard_alone());
        true
    }

    /// Ends the lifecycle here and now, the response side having ended
    /// with `end`, if nothing can observe how it ended: nothing else holds
    /// the state (`&mut self`), nothing continues, no hook, no
    /// `on_complete`, and the request ended normally without an event
    /// wanted for it. Then no [`Completion`] is built and no clock is read:
    /// the lifecycle leaves the drain's count, and the state is ready for
    /// [`restart`](Self::restart). False, with nothing changed, otherwise.
    #[inline]
    pub(crate) fn end_unobserved(&mut self, end: &End) -> bool {
        let (bits, pending) = (*self.bits.get_mut(), *self.pending.get_mut());
        if !self.quiet(bits, pending, end) {
            return false;
        }
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if !state.hooks.is_empty() || !state.after_response.is_empty() {
            return false;
        }
        *self.pending.get_mut() = 0;
        self.leave(self.take_shard_alone());
        // What the state held for the request goes now, not at its reuse.
        self.release();
        true
    }
}
