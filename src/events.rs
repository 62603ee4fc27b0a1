//! The layer's own event for each request that did not end normally: one
//! `tracing` event, target `tower_lifecycle`, with the completion's fields.

use tracing::Level;

use crate::config::Config;
use crate::Completion;

/// Whether a completion is worth an event by default: the request was
/// aborted, timed out, panicked, or the shutdown changed how it ended.
fn eventful(c: &Completion) -> bool {
    !c.status().is_normal() || c.panicked() || c.shutdown()
}

/// Whether a subscriber could want the layer's event now: the layer has a
/// level and the level is enabled (a check of two global levels; with no
/// subscriber, nothing is).
pub(crate) fn could_log(config: &Config) -> bool {
    config.log_level.is_some_and(|level| {
        level <= tracing::level_filters::STATIC_MAX_LEVEL
            && level <= tracing::level_filters::LevelFilter::current()
    })
}

/// Whether a subscriber could want an event for a normal completion.
pub(crate) fn logs_normal(config: &Config) -> bool {
    config.log_normal && could_log(config)
}

/// Emits the request's event at the layer's level, if it has one, the
/// request is worth one, and a subscriber wants it (`enabled!` is asked
/// first, so with no subscriber this costs a check of the level).
pub(crate) fn emit(c: &Completion, config: &Config) {
    let Some(level) = config.log_level else {
        return;
    };
    if !config.log_normal && !eventful(c) {
        return;
    }
    macro_rules! event_at {
        ($level:expr) => {
            if tracing::enabled!(target: "tower_lifecycle", $level) {
                tracing::event!(
                    target: "tower_lifecycle",
                    $level,
                    status = %c.status(),
                    phase = %c.phase(),
                    log_status = c.log_status(),
                    elapsed = ?c.elapsed(),
                    time_to_head = ?c.time_to_head(),
                    bytes_sent = c.bytes_sent(),
                    response_status = c.response_status().map(|s| s.as_u16()),
                    grpc_status = c.grpc_status(),
                    panicked = c.panicked(),
                    continued = c.continued(),
                    shutdown = c.shutdown(),
                    "request ended"
                );
            }
        };
    }
    match level {
        Level::ERROR => event_at!(Level::ERROR),
        Level::WARN => event_at!(Level::WARN),
        Level::INFO => event_at!(Level::INFO),
        Level::DEBUG => event_at!(Level::DEBUG),
        Level::TRACE => event_at!(Level::TRACE),
    }
}
