//! What the layer hands every request: its settings ([`Config`]) and the
//! layer-wide hook ([`OnComplete`]).

use std::cell::RefCell;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::StatusCode;

use crate::drain::DrainState;
use crate::Completion;

/// The layer-wide hook, run after every request's own hooks.
pub(crate) type OnComplete = Arc<dyn Fn(&Completion) + Send + Sync + 'static>;

/// How many aborted requests may keep running at once by default: see
/// [`LifecycleLayer::max_detached`](crate::LifecycleLayer::max_detached).
pub const DEFAULT_MAX_DETACHED: usize = 256;

/// Layer-wide settings, shared by every request.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) on_complete: Option<OnComplete>,
    pub(crate) ignore_abort: bool,
    pub(crate) max_detached: usize,
    pub(crate) time_limit: Option<Duration>,
    pub(crate) timeout_status: StatusCode,
    pub(crate) record_caught_panics: bool,
    /// The level of the layer's event per request; `None`: no event.
    pub(crate) log_level: Option<tracing::Level>,
    /// An event for normal completions too.
    pub(crate) log_normal: bool,
    pub(crate) drain: Arc<DrainState>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            on_complete: None,
            ignore_abort: false,
            max_detached: DEFAULT_MAX_DETACHED,
            time_limit: None,
            timeout_status: StatusCode::SERVICE_UNAVAILABLE,
            record_caught_panics: true,
            log_level: Some(tracing::Level::DEBUG),
            log_normal: false,
            drain: Arc::default(),
        }
    }
}

thread_local! {
    /// Per thread, a copy of each layer's settings in use on it, beside a
    /// weak reference to the layer's own (which keeps its address from
    /// being reused while the entry exists).
    static LOCAL: RefCell<Vec<(Weak<Config>, Arc<Config>)>> = const { RefCell::new(Vec::new()) };
}

impl Config {
    /// The settings for a request that starts on this thread: a reference
    /// to this thread's copy of `config`, made on the thread's first
    /// request with it. Requests on different threads then never write
    /// the same reference count (the layer's own `Arc` is written only
    /// once per thread); the copy shares the drain and `on_complete`.
    /// Copies of layers that are gone are dropped at the next miss.
    pub(crate) fn local(config: &Arc<Config>) -> Arc<Config> {
        LOCAL
            .try_with(|local| {
                let Ok(mut local) = local.try_borrow_mut() else {
                    return config.clone();
                };
                let found = local
                    .iter()
                    .find(|(layer, _)| Weak::as_ptr(layer) == Arc::as_ptr(config));
                if let Some((_, copy)) = found {
                    return copy.clone();
                }
                local.retain(|(layer, _)| layer.strong_count() > 0);
                let copy = Arc::new(Config::clone(config));
                local.push((Arc::downgrade(config), copy.clone()));
                copy
            })
            .unwrap_or_else(|_| config.clone())
    }

    /// Whether a request can continue after its client left at all, which
    /// decides whether the handler's future and an open-ended body are
    /// boxed (movable into a task).
    pub(crate) fn detachable(&self) -> bool {
        self.max_detached > 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{Config, LOCAL};

    #[test]
    fn each_thread_has_its_own_copy_dropped_once_the_layer_is_gone() {
        let config = Arc::new(Config::default());
        let a = Config::local(&config);
        let b = Config::local(&config);
        assert!(Arc::ptr_eq(&a, &b), "one copy per thread");
        assert!(!Arc::ptr_eq(&a, &config));
        assert!(Arc::ptr_eq(&a.drain, &config.drain), "the drain is shared");
        let other = {
            let config = config.clone();
            std::thread::spawn(move || Config::local(&config))
                .join()
                .unwrap()
        };
        assert!(!Arc::ptr_eq(&a, &other), "another thread has its own");
        // A miss (another layer) keeps the copies of layers still alive.
        let second = Arc::new(Config::default());
        let _ = Config::local(&second);
        assert!(
            Arc::ptr_eq(&Config::local(&config), &a),
            "still this thread's copy"
        );
        drop(second);
        let copy = Arc::downgrade(&a);
        drop((a, b, other));
        assert!(copy.upgrade().is_some(), "kept while the layer lives");
        drop(config);
        // The next miss on this thread drops copies of layers that are gone.
        let _ = Config::local(&Arc::new(Config::default()));
        assert!(copy.upgrade().is_none());
        LOCAL.with(|local| assert_eq!(local.borrow().len(), 1, "the second layer's copy went too"));
    }
}
