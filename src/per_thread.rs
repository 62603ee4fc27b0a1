//! What each thread keeps of a layer: a copy of its settings, and spare
//! per-request states to start the next requests with.
//!
//! Both keep requests on different threads from writing the same memory:
//! a request counts a reference on its thread's copy of the settings, not
//! on one `Arc` every worker shares; and a request whose end nobody can
//! observe hands its state back to the thread it ended on, so that the next
//! request there reuses it instead of allocating one.

use std::cell::RefCell;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::config::Config;
use crate::state::{current_span, End, Shared};

/// How many spare states a thread keeps, of all layers: enough for the
/// requests a worker finishes between two it starts, few enough that what
/// they hold on to (the settings they were made with) is soon let go.
const SPARE_MAX: usize = 16;

/// One layer, as one thread knows it.
struct Local {
    /// The layer's own settings, which this entry outlives only while the
    /// copy is in use.
    layer: Weak<Config>,
    /// This thread's copy.
    copy: Arc<Config>,
}

thread_local! {
    static LOCAL: RefCell<Vec<Local>> = const { RefCell::new(Vec::new()) };
    /// Per-request states nobody holds any more, ready for reuse, each
    /// with the settings it was made with.
    static SPARE: RefCell<Vec<Arc<Shared>>> = const { RefCell::new(Vec::new()) };
}

/// The address that identifies a layer: its own settings', for the layer's
/// `Arc` and for every copy of it.
fn key(config: &Arc<Config>) -> *const Config {
    match &config.origin {
        Some(layer) => layer.as_ptr(),
        None => Arc::as_ptr(config),
    }
}

/// This thread's copy of `config`'s layer settings, made on the thread's
/// first use of the layer: what a clone of the service made on this thread
/// holds, and so what its requests count on.
pub(crate) fn settings(config: &Arc<Config>) -> Arc<Config> {
    LOCAL
        .try_with(|local| {
            let mut local = local.try_borrow_mut().ok()?;
            // The layer's own settings and every copy of them share a key.
            let key = key(config);
            if let Some(found) = local.iter().find(|l| l.layer.as_ptr() == key) {
                return Some(found.copy.clone());
            }
            // A miss: let go of the spare states (which hold the settings
            // they were made with), then forget the layers that are gone
            // and whose copy nothing else holds.
            drop(SPARE.try_with(|spare| spare.take()));
            local.retain(|l| l.layer.strong_count() > 0 || Arc::strong_count(&l.copy) > 1);
            let layer = config
                .origin
                .clone()
                .unwrap_or_else(|| Arc::downgrade(config));
            let copy = Arc::new(config.copy_for_thread(layer.clone()));
            local.push(Local {
                layer,
                copy: copy.clone(),
            });
            Some(copy)
        })
        .ok()
        .flatten()
        .unwrap_or_else(|| config.clone())
}

/// The state of a request that starts now on this thread with `config`: a
/// spare one made with the same settings, reset, or a new one.
pub(crate) fn start(config: &Arc<Config>, grpc_cap: Option<Duration>) -> Arc<Shared> {
    let spare = SPARE
        .try_with(|spare| {
            let mut spare = spare.try_borrow_mut().ok()?;
            let at = spare
                .iter()
                .rposition(|shared| Arc::ptr_eq(&shared.config, config))?;
            Some(spare.swap_remove(at))
        })
        .ok()
        .flatten();
    if let Some(mut shared) = spare {
        // Only states nothing else holds are kept, and nothing can reach
        // one while it is kept: it is alone, without a locked instruction
        // to prove it.
        debug_assert!(Shared::alone(&shared));
        match current_span() {
            None if shared.restart(grpc_cap) => return shared,
            span => {
                if let Some(state) = Arc::get_mut(&mut shared) {
                    state.restart_with(span, grpc_cap);
                    return shared;
                }
            }
        }
    }
    Arc::new(Shared::new(config.clone(), grpc_cap))
}

/// Ends the lifecycle at once if nothing can observe its end (see
/// [`Shared::end_unobserved`]), and keeps its state for this thread's next
/// request; gives the state back otherwise.
pub(crate) fn end_unobserved(mut shared: Arc<Shared>, end: &End) -> Result<(), Arc<Shared>> {
    if !Shared::alone(&shared) {
        return Err(shared);
    }
    // Most requests: a state never locked ends without a locked
    // instruction; one that was locked is checked through `&mut`.
    let ended = if shared.pristine() {
        shared.end_pristine(end)
    } else {
        Arc::get_mut(&mut shared).is_some_and(|state| state.end_unobserved(end))
    };
    if !ended {
        return Err(shared);
    }
    keep(shared);
    Ok(())
}

/// Keeps the state of a lifecycle that ended (its hooks ran, it left the
/// drain) for this thread's next request, if nothing else holds it.
pub(crate) fn recycle(mut shared: Arc<Shared>) {
    if let Some(state) = Arc::get_mut(&mut shared) {
        state.release();
        keep(shared);
    }
}

/// Keeps an ended state that nothing else holds as a spare on this thread,
/// when the thread has room; drops it otherwise.
fn keep(shared: Arc<Shared>) {
    let mut shared = Some(shared);
    let _ = SPARE.try_with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut() {
            if spare.len() < SPARE_MAX {
                spare.extend(shared.take());
            }
        }
    });
    // Dropped here if not kept, outside the thread's storage.
    drop(shared);
}

#[cfg(test)]
mod tests;
