//! The time limit of one request: when it expires, how a handler restarts
//! it, the gRPC client's cap that nothing lifts, and the lazily armed timer
//! that the response future and body poll.
//!
//! A [`Deadline`] is shared by every part of a request (the handle, the
//! future, the body, continued work); a [`Timer`] belongs to the one part
//! that polls it.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Context;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// `at` when there is no deadline.
const NONE: u64 = u64::MAX;

/// `d` in nanoseconds, or [`NONE`] (`u64::MAX`) past 584 years.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(NONE)
}

/// When a request's time limit expires, relative to when the request
/// entered the layer.
///
/// Every field is an atomic, so that a state kept for the next request is
/// [`restart`](Self::restart)ed through `&self` (a state nothing else
/// holds, whose `&mut` would cost a locked instruction to prove).
pub(crate) struct Deadline {
    /// When the state was made: the origin of `start`.
    base: Instant,
    /// When the request entered the layer: nanoseconds since `base`.
    start: AtomicU64,
    /// Nanoseconds since `start`, or [`NONE`].
    ///
    /// Release on store, Acquire on load: a reader that sees a new deadline
    /// also sees what the writer did before it, though nothing depends on
    /// more than the value itself today.
    at: AtomicU64,
    /// The gRPC client's deadline, which [`set_limit`](Self::set_limit)
    /// cannot lift; [`NONE`] for other requests.
    cap: AtomicU64,
}

impl Deadline {
    /// A deadline `limit` from now, capped by `cap` (a gRPC client's
    /// deadline) when there is one.
    pub(crate) fn new(limit: Option<Duration>, cap: Option<Duration>) -> Self {
        let deadline = Deadline {
            base: Instant::now(),
            start: AtomicU64::new(0),
            at: AtomicU64::new(NONE),
            cap: AtomicU64::new(NONE),
        };
        deadline.limits(limit, cap);
        deadline
    }

    /// Makes this the deadline of a request that enters the layer now, as
    /// [`new`](Self::new) would. Only for a state nothing else holds: the
    /// three stores are not one change to anyone reading meanwhile. False,
    /// with nothing changed, if the clock reads earlier than when this was
    /// made (a paused test clock on another runtime of the thread): then
    /// only a new one will do.
    #[inline]
    pub(crate) fn restart(&self, limit: Option<Duration>, cap: Option<Duration>) -> bool {
        let Some(since) = Instant::now().checked_duration_since(self.base) else {
            return false;
        };
        self.start.store(nanos(since), Ordering::Relaxed);
        self.limits(limit, cap);
        true
    }

    #[inline]
    fn limits(&self, limit: Option<Duration>, cap: Option<Duration>) {
        let cap = cap.map_or(NONE, nanos);
        self.cap.store(cap, Ordering::Relaxed);
        self.at
            .store(limit.map_or(NONE, nanos).min(cap), Ordering::Release);
    }

    /// When the request entered the layer.
    #[inline]
    fn start(&self) -> Instant {
        self.base + Duration::from_nanos(self.start.load(Ordering::Relaxed))
    }

    /// How long since the request entered the layer.
    #[inline]
    pub(crate) fn elapsed(&self) -> Duration {
        self.start().elapsed()
    }

    /// When the limit expires, or `None` without one.
    #[inline]
    pub(crate) fn get(&self) -> Option<Instant> {
        match self.at.load(Ordering::Acquire) {
            NONE => None,
            n => self.start().checked_add(Duration::from_nanos(n)),
        }
    }

    /// Whether a deadline is set and has passed (reads the clock only when
    /// one is set).
    #[inline]
    pub(crate) fn passed(&self) -> bool {
        self.get().is_some_and(|d| d <= Instant::now())
    }

    /// Restarts the limit from now (`None` removes it, down to the cap) and
    /// wakes whoever waits in [`reached`](Self::reached) on `changed`.
    /// (The request's state has one `Notify` for this and its status: a
    /// waiter woken by the other re-checks and waits again.)
    pub(crate) fn set_limit(&self, limit: Option<Duration>, changed: &Notify) {
        let from_now = match limit {
            None => NONE,
            Some(limit) => nanos(self.elapsed()).saturating_add(nanos(limit)),
        };
        let cap = self.cap.load(Ordering::Relaxed);
        self.at.store(from_now.min(cap), Ordering::Release);
        changed.notify_waiters();
    }

    /// Resolves once the deadline has passed, following the changes
    /// [`set_limit`](Self::set_limit) announces on `changed`.
    pub(crate) async fn reached(&self, changed: &Notify) {
        loop {
            // Registered before the deadline is read, so that a change made
            // in between still wakes this wait.
            let mut changed = std::pin::pin!(changed.notified());
            changed.as_mut().enable();
            match self.get() {
                None => changed.await,
                Some(deadline) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {
                            if self.passed() {
                                return;
                            }
                        }
                        _ = changed => {}
                    }
                }
            }
        }
    }
}

/// A timer armed on first need against a [`Deadline`].
///
/// The `Sleep` is boxed so that the future and body that hold a timer stay
/// `Unpin` (when what they wrap is); the box is only made when a request
/// with a limit had to wait.
#[derive(Default)]
pub(crate) struct Timer(Option<Pin<Box<Sleep>>>);

impl Timer {
    /// Polls the timer against the deadline now: arms it on first need,
    /// moves it when the deadline changed, disarms it when the limit was
    /// removed. True once the deadline has passed.
    pub(crate) fn poll(&mut self, deadline: &Deadline, cx: &mut Context<'_>) -> bool {
        let Some(at) = deadline.get() else {
            self.0 = None;
            return false;
        };
        let timer = match &mut self.0 {
            Some(timer) => {
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
                timer
            }
            None => self.0.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        timer.as_mut().poll(cx).is_ready()
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_limit_restarts_from_now_and_none_lifts_it_down_to_the_cap() {
        let deadline = Deadline::new(Some(Duration::from_secs(10)), None);
        let changed = Notify::new();
        let start = Instant::now();
        assert_eq!(deadline.get(), Some(start + Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(4)).await;
        deadline.set_limit(Some(Duration::from_secs(1)), &changed);
        assert_eq!(deadline.get(), Some(start + Duration::from_secs(5)));
        deadline.set_limit(None, &changed);
        assert_eq!(deadline.get(), None);
        deadline.set_limit(Some(Duration::MAX), &changed);
        assert_eq!(deadline.get(), None, "too large to represent is no limit");

        let capped = Deadline::new(None, Some(Duration::from_secs(2)));
        assert_eq!(capped.get(), Some(start + Duration::from_secs(6)));
        capped.set_limit(None, &changed);
        assert_eq!(capped.get(), Some(start + Duration::from_secs(6)));
        capped.set_limit(Some(Duration::from_secs(1)), &changed);
        assert_eq!(capped.get(), Some(start + Duration::from_secs(5)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_starts_from_now_unless_the_clock_reads_before_the_making() {
        let deadline = Deadline::new(None, Some(Duration::from_secs(1)));
        let changed = Notify::new();
        deadline.set_limit(Some(Duration::from_secs(5)), &changed);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(deadline.passed());
        assert!(deadline.restart(Some(Duration::from_secs(10)), None));
        let now = Instant::now();
        assert_eq!(deadline.get(), Some(now + Duration::from_secs(10)));
        assert_eq!(deadline.elapsed(), Duration::ZERO, "started now");
        deadline.set_limit(None, &changed);
        assert_eq!(deadline.get(), None, "no cap left from before");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(deadline.elapsed(), Duration::from_secs(3));

        // Outside this runtime the clock is not paused, and reads an hour
        // earlier than this deadline was made.
        tokio::time::advance(Duration::from_secs(3600)).await;
        let late = Deadline::new(Some(Duration::from_secs(1)), None);
        let before = late.get();
        let restarted = std::thread::scope(|scope| {
            scope
                .spawn(|| late.restart(Some(Duration::from_secs(2)), None))
                .join()
                .unwrap()
        });
        assert!(!restarted, "a clock behind the making cannot restart it");
        assert_eq!(late.get(), before, "nothing changed");
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_follows_the_deadline() {
        let deadline = Deadline::new(Some(Duration::from_secs(1)), None);
        let changed = Notify::new();
        let mut timer = Timer::default();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(!timer.poll(&deadline, &mut cx));
        assert!(timer.0.is_some(), "armed on first need");
        deadline.set_limit(None, &changed);
        assert!(!timer.poll(&deadline, &mut cx));
        assert!(timer.0.is_none(), "disarmed without a limit");
        deadline.set_limit(Some(Duration::from_millis(10)), &changed);
        assert!(!timer.poll(&deadline, &mut cx));
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(timer.poll(&deadline, &mut cx));
        assert!(deadline.passed());
    }
}
