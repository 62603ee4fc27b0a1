#![doc = include_str!("../docs/crate.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod chain;
mod completion;
mod config;
mod continuation;
mod deadline;
mod drain;
mod end;
mod events;
#[cfg(feature = "axum")]
mod extract;
mod future;
mod grpc;
mod header;
mod hook;
mod in_flight;
mod layer;
mod lifecycle;
mod panic;
mod per_thread;
mod response_side;
mod rollout;
mod service;
mod shutdown;
mod state;
mod status;
mod streaming;
mod tally;
mod timeout;
pub mod watch;
mod work_guard;

pub use crate::body::LifecycleBody;
pub use crate::completion::{Completion, Phase};
pub use crate::config::DEFAULT_MAX_DETACHED;
pub use crate::drain::{Drain, ShutdownReport};
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use crate::extract::MissingLifecycle;
pub use crate::future::ResponseFuture;
pub use crate::layer::LifecycleLayer;
pub use crate::lifecycle::Lifecycle;
pub use crate::panic::install_panic_hook;
pub use crate::rollout::{OnSignal, Readiness};
pub use crate::service::LifecycleService;
pub use crate::shutdown::{ServerShutdown, ShuttingDown};
pub use crate::status::ConnectionStatus;
pub use crate::streaming::no_buffering;
pub use crate::timeout::TimedOut;

/// The error type of [`LifecycleBody`]: the inner body's error,
/// [`TimedOut`], or [`ServerShutdown`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
