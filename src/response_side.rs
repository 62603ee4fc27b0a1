//! [`ResponseSide`]: the one part of the layer that answers for a request's
//! response at any moment, and ends it exactly once.
//!
//! It is held, in turn, by [`LifecycleService::call`](crate::LifecycleService)
//! (while the inner service's `call` runs), by the
//! [`ResponseFuture`](crate::ResponseFuture) (handler phase) and by the
//! [`LifecycleBody`](crate::LifecycleBody) (body phase); each hands it on
//! with [`hand_over`](ResponseSide::hand_over). Whoever ends the response
//! side takes it out ([`take`](ResponseSide::take) or
//! [`end`](ResponseSide::end)), which leaves it ended behind,
//! so a later drop does nothing. Dropped while still open, it ends the
//! response side as a panic: only an unwind leaves it open in the holders
//! that do not end it themselves (the inner `call` panicked).

use std::mem;
use std::sync::Arc;

use crate::state::{End, Shared};

/// The response side of one request, in the hands of its current holder.
pub(crate) struct ResponseSide(Stage);

/// Where the response side of one request stands.
enum Stage {
    /// Not complete yet: dropped now, the client left.
    Open(Arc<Shared>),
    /// A body that is complete by the rules of
    /// [`LifecycleBody`](crate::LifecycleBody) but has not ended yet:
    /// dropped now, it ends normally.
    Complete(Arc<Shared>),
    /// The response side ended (or never was this holder's).
    Ended,
}

impl ResponseSide {
    /// A response side that has not ended.
    #[inline]
    pub(crate) fn open(shared: Arc<Shared>) -> Self {
        ResponseSide(Stage::Open(shared))
    }

    /// A holder that has no response side to end (the layer's own timeout
    /// body).
    pub(crate) fn ended() -> Self {
        ResponseSide(Stage::Ended)
    }

    /// The request's state while the response side is not over.
    #[inline]
    pub(crate) fn shared(&self) -> Option<&Arc<Shared>> {
        match &self.0 {
            Stage::Open(shared) | Stage::Complete(shared) => Some(shared),
            Stage::Ended => None,
        }
    }

    /// Whether the response side ended.
    #[inline]
    pub(crate) fn is_ended(&self) -> bool {
        matches!(self.0, Stage::Ended)
    }

    /// Whether it is complete (or ended): a drop now is no abort.
    #[inline]
    pub(crate) fn is_complete(&self) -> bool {
        !matches!(self.0, Stage::Open(_))
    }

    /// The body reached a point where it is complete.
    #[inline]
    pub(crate) fn complete(&mut self) {
        self.0 = match mem::replace(&mut self.0, Stage::Ended) {
            Stage::Open(shared) | Stage::Complete(shared) => Stage::Complete(shared),
            Stage::Ended => Stage::Ended,
        };
    }

    /// Moves the response side to its next holder, leaving it ended here.
    #[inline]
    pub(crate) fn hand_over(&mut self) -> ResponseSide {
        ResponseSide(mem::replace(&mut self.0, Stage::Ended))
    }

    /// Takes the state out to end the response side, with whether it was
    /// complete; `None` if it had ended.
    #[inline]
    pub(crate) fn take(&mut self) -> Option<(Arc<Shared>, bool)> {
        match mem::replace(&mut self.0, Stage::Ended) {
            Stage::Open(shared) => Some((shared, false)),
            Stage::Complete(shared) => Some((shared, true)),
            Stage::Ended => None,
        }
    }

    /// Ends the response side with `end` (no-op once ended).
    #[inline]
    pub(crate) fn end(&mut self, end: End) {
        if let Some((shared, _)) = self.take() {
            shared.response_done(end);
        }
    }
}

impl Drop for ResponseSide {
    fn drop(&mut self) {
        self.end(End {
            panicked: true,
            ..End::handler()
        });
    }
}
