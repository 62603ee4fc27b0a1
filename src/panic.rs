//! Seeing panics that something inside the layer catches.
//!
//! A panic that unwinds through the layer's own `poll` is seen directly: the
//! response future or body is dropped while it was still polling. A panic
//! that a layer *inside* ours catches (tower-http's `CatchPanicLayer`, which
//! turns it into a 500) never reaches us that way: our `poll` returns
//! normally with the 500. And axum drops the request, with the
//! [`Lifecycle`](crate::Lifecycle) in its extensions, before a handler
//! without extractors runs, so no handle is dropped during the unwind either.
//!
//! So the layer keeps a per-thread count of panics, raised by a process-wide
//! panic hook, and compares it before and after it polls the inner future or
//! body (and calls the inner service): a count that moved means a panic
//! started and was caught inside that call, on this thread, while this
//! request was being processed. A tokio worker polls one task at a time, so
//! the count cannot move for another request in between.
//!
//! The hook chains to the one that was installed before it (the default hook
//! still prints the panic message), and is installed once per process, when
//! the first service is built from a layer with
//! [`record_caught_panics`](crate::LifecycleLayer::record_caught_panics) on
//! (the default). A program that sets its own hook with
//! [`std::panic::set_hook`] after that replaces ours; call
//! [`install_panic_hook`] after it to chain ours in again.

use std::cell::Cell;
use std::sync::Once;

thread_local! {
    /// Panics that started on this thread, ever. Only compared for
    /// inequality, so wrapping is harmless.
    static PANICS: Cell<u64> = const { Cell::new(0) };
}

static INSTALLED: Once = Once::new();

/// Installs the panic hook that lets the layer record panics caught inside
/// it (by `CatchPanicLayer`, say) in
/// [`Completion::panicked`](crate::Completion::panicked), chained to the
/// hook installed now: that one still runs, after ours, for every panic.
///
/// Building a service from a [`LifecycleLayer`](crate::LifecycleLayer)
/// installs it once per process already (unless
/// [`record_caught_panics(false)`](crate::LifecycleLayer::record_caught_panics)).
/// Call this yourself only when you set a panic hook of your own with
/// [`std::panic::set_hook`] after building the service, which replaces ours.
/// Calling it more than once is harmless: each call adds one more link to
/// the chain, and the layer only notices whether the count moved.
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // `try_with`: a panic while the thread's locals are being torn down
        // has nothing to count.
        let _ = PANICS.try_with(|count| count.set(count.get().wrapping_add(1)));
        previous(info);
    }));
}

/// Installs the hook unless this process already did.
pub(crate) fn ensure_installed() {
    INSTALLED.call_once(install_panic_hook);
}

/// The number of panics that started on this thread so far.
#[inline]
pub(crate) fn count() -> u64 {
    PANICS.try_with(Cell::get).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_panic_moves_the_count_on_its_own_thread_only() {
        ensure_installed();
        let before = count();
        let caught = std::panic::catch_unwind(|| panic!("caught here"));
        assert!(caught.is_err());
        assert_ne!(count(), before, "the hook counted the panic");

        let here = count();
        std::thread::spawn(|| {
            let _ = std::panic::catch_unwind(|| panic!("on another thread"));
        })
        .join()
        .unwrap();
        assert_eq!(count(), here, "another thread's panic is not counted here");
    }
}
