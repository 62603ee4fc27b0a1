//! Tests of what each thread keeps of a layer: its copy of the settings
//! and its spare states.

use std::sync::Arc;

use super::{settings, start, LOCAL};
use crate::config::Config;
use crate::hook::Hook;
use crate::state::{End, Shared};

fn entries() -> usize {
    LOCAL.with(|local| local.borrow().len())
}

#[test]
fn each_thread_has_its_own_copy_dropped_once_the_layer_is_gone() {
    let config = Arc::new(Config::default());
    let a = settings(&config);
    let b = settings(&config);
    assert!(Arc::ptr_eq(&a, &b), "one copy per thread");
    assert!(!Arc::ptr_eq(&a, &config));
    assert!(Arc::ptr_eq(&a.drain, &config.drain), "the drain is shared");
    assert!(Arc::ptr_eq(&settings(&a), &a), "a copy finds its own layer");
    let other = {
        let config = config.clone();
        std::thread::spawn(move || settings(&config))
            .join()
            .unwrap()
    };
    assert!(!Arc::ptr_eq(&a, &other), "another thread has its own");
    // A miss (another layer) keeps the copies of layers still alive.
    let second = Arc::new(Config::default());
    let _ = settings(&second);
    assert!(
        Arc::ptr_eq(&settings(&config), &a),
        "still this thread's copy"
    );
    drop(second);
    let copy = Arc::downgrade(&a);
    drop(config);
    // The layer is gone, but a service clone still holds the copy.
    let _ = settings(&Arc::new(Config::default()));
    assert!(copy.upgrade().is_some(), "kept while a copy is in use");
    assert!(Arc::ptr_eq(&settings(&a), &a), "and still found");
    drop((a, b, other));
    // The next miss on this thread drops copies of layers that are gone.
    let _ = settings(&Arc::new(Config::default()));
    assert!(copy.upgrade().is_none());
    assert_eq!(entries(), 1, "only the newest layer's copy is left");
}

#[test]
fn a_live_layers_copy_is_kept_while_nothing_uses_it() {
    let config = Arc::new(Config::default());
    let copy = Arc::downgrade(&settings(&config));
    // A miss, with no service holding the copy right now.
    let _ = settings(&Arc::new(Config::default()));
    let again = settings(&config);
    assert!(
        copy.upgrade()
            .is_some_and(|copy| Arc::ptr_eq(&copy, &again)),
        "the same copy, not a new one"
    );
}

#[test]
fn a_copy_made_on_another_thread_finds_that_threads_copy_of_the_layer() {
    let config = Arc::new(Config::default());
    let here = settings(&config);
    let (from_copy, from_layer) = std::thread::spawn(move || {
        // A service clone made here, then cloned again on this thread.
        let from_copy = settings(&here);
        (from_copy, settings(&config))
    })
    .join()
    .unwrap();
    assert!(
        Arc::ptr_eq(&from_copy, &from_layer),
        "one copy per thread and layer, whichever copy it was made from"
    );
}

#[test]
fn a_copys_shutdown_tokens_are_children_of_the_drains() {
    for begun in [true, false] {
        let config = Arc::new(Config::default());
        let copy = settings(&config);
        let tokens = |c: &Config| {
            if begun {
                c.begun().clone()
            } else {
                c.cut().clone()
            }
        };
        let drains = if begun {
            config.drain.begun.clone()
        } else {
            config.drain.cancel.clone()
        };
        tokens(&copy).cancel();
        assert!(
            !drains.is_cancelled(),
            "cancelling a thread's token leaves the drain's alone"
        );
        let other = std::thread::spawn({
            let config = config.clone();
            move || settings(&config)
        })
        .join()
        .unwrap();
        assert!(!tokens(&other).is_cancelled(), "nor another thread's");
        drains.cancel();
        assert!(
            tokens(&other).is_cancelled(),
            "the drain's cancels the copy's"
        );
    }
}

/// Ends `state` with nothing observing it, checks that it left the
/// drain, and starts the next request with `next`, which must reuse it.
fn end_then_reuse(
    config: &Config,
    state: Arc<Shared>,
    next: impl FnOnce() -> Arc<Shared>,
) -> Arc<Shared> {
    let address = Arc::as_ptr(&state);
    super::end_unobserved(state, &End::handler())
        .unwrap_or_else(|_| panic!("nothing observes this end"));
    assert_eq!(config.drain.in_flight.len(), 0, "it left the drain");
    let reused = next();
    assert_eq!(Arc::as_ptr(&reused), address, "the same state, reused");
    assert_eq!(config.drain.in_flight.len(), 1);
    reused
}

fn spares() -> usize {
    super::SPARE.with(|spare| spare.borrow().len())
}

#[test]
fn a_thread_keeps_up_to_its_bound_of_spare_states() {
    let config = Arc::new(Config::default());
    let states: Vec<_> = (0..super::SPARE_MAX + 2)
        .map(|_| start(&config, None))
        .collect();
    assert_eq!(spares(), 0);
    for (n, state) in states.into_iter().enumerate() {
        super::end_unobserved(state, &End::handler())
            .unwrap_or_else(|_| panic!("nothing observes this end"));
        assert_eq!(spares(), (n + 1).min(super::SPARE_MAX));
    }
    assert_eq!(config.drain.in_flight.len(), 0, "every one left the drain");
    // A state whose hooks ran is kept too, unless something holds it.
    let hooked = || {
        let shared = start(&config, None);
        shared.register(Hook::Sync(Box::new(|_| {})));
        shared
    };
    let ended = hooked();
    assert_eq!(spares(), super::SPARE_MAX - 1, "one taken");
    ended.response_done(End::handler());
    assert_eq!(spares(), super::SPARE_MAX, "kept after its hook ran");
    let held = hooked();
    let holder = held.clone();
    held.response_done(End::handler());
    assert_eq!(spares(), super::SPARE_MAX - 1, "held elsewhere: not kept");
    assert!(holder.is_ended());
    assert_eq!(config.drain.in_flight.len(), 0);
}

/// A layer's settings and the state of a request started with them, in
/// the drain's count.
fn one_started() -> (Arc<Config>, Arc<Shared>) {
    let config = Arc::new(Config::default());
    let state = start(&config, None);
    assert_eq!(config.drain.in_flight.len(), 1);
    (config, state)
}

#[test]
fn an_unobserved_end_keeps_the_state_for_the_next_request() {
    let (config, first) = one_started();
    let second = end_then_reuse(&config, first, || start(&config, None));
    assert!(second.status().is_normal());

    // A second holder (a `Lifecycle` handle) can still register a hook:
    // the end is observed, and the state given back.
    let handle = second.clone();
    let second = super::end_unobserved(second, &End::handler()).expect_err("a handle is alive");
    drop(handle);
    // A hook registered earlier is observed too.
    second.register(crate::hook::Hook::Sync(Box::new(|_| {})));
    assert!(super::end_unobserved(second, &End::handler()).is_err());
}

#[test]
fn a_state_locked_without_a_hook_still_ends_unobserved_and_is_pristine_again() {
    let config = Arc::new(Config::default());
    let first = start(&config, None);
    assert!(first.pristine(), "a new state was never locked");
    assert!(!first.is_ended(), "taking the lock to read it");
    assert!(!first.pristine(), "locked once: checked through `&mut`");
    let second = end_then_reuse(&config, first, || start(&config, None));
    assert!(
        second.pristine(),
        "the mark is the request's, not the state's"
    );
    end_then_reuse(&config, second, || start(&config, None));
}

#[test]
fn a_spare_restarted_in_a_span_holds_that_span_and_lets_go_of_it_at_the_end() {
    let config = Arc::new(Config::default());
    tracing::subscriber::with_default(tracing_subscriber::registry(), || {
        let first = start(&config, None);
        assert!(first.span.is_none(), "outside any span");
        let span = tracing::info_span!("request");
        let second = end_then_reuse(&config, first, || span.in_scope(|| start(&config, None)));
        assert_eq!(
            second.span.as_ref().and_then(tracing::Span::id),
            span.id(),
            "the span current at its start"
        );
        let third = end_then_reuse(&config, second, || start(&config, None));
        assert!(third.span.is_none(), "the last request's span let go");
    });
}

#[test]
fn a_spare_made_under_a_clock_ahead_restarts_with_a_new_deadline() {
    let mut config = Config::default();
    config.time_limit = Some(std::time::Duration::from_secs(30));
    let config = Arc::new(config);
    // Made and kept on a paused runtime whose clock ran an hour ahead.
    let made = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(async {
            tokio::time::advance(std::time::Duration::from_secs(3600)).await;
            let state = start(&config, None);
            let address = Arc::as_ptr(&state);
            super::end_unobserved(state, &End::handler())
                .unwrap_or_else(|_| panic!("nothing observes this end"));
            address
        });
    // Outside that runtime the clock reads earlier than the making.
    let now = tokio::time::Instant::now();
    let state = start(&config, None);
    assert_eq!(Arc::as_ptr(&state), made, "the spare, reused");
    let deadline = state.time_limit().get().expect("a time limit");
    assert!(
        deadline <= now + std::time::Duration::from_secs(60),
        "30 s from now, not from an hour ahead"
    );
    assert_eq!(config.drain.in_flight.len(), 1);
}

#[test]
fn a_state_dropped_before_its_end_still_leaves_the_drain() {
    // As when a hook chain is dropped with its runtime.
    let (config, state) = one_started();
    drop(state);
    assert_eq!(config.drain.in_flight.len(), 0);
}

#[test]
fn a_state_is_alone_only_while_nothing_else_holds_it() {
    // No event of the layer's: a subscriber another test installs
    // could want one.
    let mut config = Config::default();
    config.log_level = None;
    let config = Arc::new(config);
    let state = start(&config, None);
    assert!(Shared::alone(&state));
    assert!(Shared::unobserved(&state), "no hook, no on_complete");
    let handle = state.clone();
    assert!(!Shared::alone(&state));
    assert!(
        !Shared::unobserved(&state),
        "the handle can register a hook"
    );
    handle.register(Hook::Sync(Box::new(|_| {})));
    drop(handle);
    assert!(Shared::alone(&state));
    assert!(!Shared::unobserved(&state), "a hook was registered");
    assert!(super::end_unobserved(state, &End::handler()).is_err());
}
