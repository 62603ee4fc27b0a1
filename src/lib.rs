//! Connection-lifecycle middleware for tower services: know whether the
//! client is still there, and run shutdown hooks exactly once with the
//! outcome.
//!
//! When a client hangs up, hyper silently drops the handler's future (the
//! work stops at whatever `.await` it was on) or the response body (the
//! stream stops mid-way). [`LifecycleLayer`] turns that into something a
//! handler can see and react to, in the words PHP has used since 1998:
//!
//! | PHP | tower-lifecycle |
//! | --- | --- |
//! | `CONNECTION_NORMAL` / `ABORTED` / `TIMEOUT` | [`ConnectionStatus::NORMAL`] / [`ABORTED`](ConnectionStatus::ABORTED) / [`TIMEOUT`](ConnectionStatus::TIMEOUT), same bits |
//! | `connection_status()` | [`Lifecycle::status`] |
//! | `connection_aborted()` | [`Lifecycle::is_aborted`], and the future [`Lifecycle::aborted`] |
//! | `register_shutdown_function()` | [`Lifecycle::on_shutdown`], [`Lifecycle::on_shutdown_async`], and [`LifecycleLayer::on_complete`] for every request |
//! | `ignore_user_abort(bool)` | [`LifecycleLayer::ignore_abort`] (every request's default) and [`Lifecycle::ignore_abort`] (this request, returns the old value) |
//! | `fastcgi_finish_request()` | [`Lifecycle::after_response`]: work that starts once the response is handed over |
//! | `max_execution_time`, `set_time_limit(n)` | [`LifecycleLayer::time_limit`], [`Lifecycle::set_time_limit`] (restarts the clock; `None` = no limit) |
//! | graceful `SIGTERM` handling | [`LifecycleLayer::drain`] and [`Drain::shutdown`]: no hook is lost when the server stops |
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_lifecycle::{ConnectionStatus, Lifecycle, LifecycleLayer, Phase};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (tx, rx) = std::sync::mpsc::channel();
//! let svc = ServiceBuilder::new()
//!     .layer(LifecycleLayer::new().on_complete(move |done| {
//!         tx.send((done.status(), done.phase(), done.bytes_sent())).unwrap();
//!     }))
//!     .service_fn(|req: Request<()>| async move {
//!         let lifecycle = req.extensions().get::<Lifecycle>().unwrap().clone();
//!         lifecycle.on_shutdown(|done| println!("request ended: {}", done.status()));
//!         Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("hello")))
//!     });
//!
//! // Read to the end: NORMAL.
//! let response = svc.clone().oneshot(Request::new(())).await.unwrap();
//! response.into_body().collect().await.unwrap();
//! assert_eq!(rx.recv().unwrap(), (ConnectionStatus::NORMAL, Phase::Body, 5));
//!
//! // The server drops the response future before the head: ABORTED.
//! let mut svc = svc;
//! let future = svc.ready().await.unwrap().call(Request::new(()));
//! drop(future);
//! assert_eq!(rx.recv().unwrap(), (ConnectionStatus::ABORTED, Phase::Handler, 0));
//! # }
//! ```
//!
//! With axum, add the layer to the router and take [`Lifecycle`] as an
//! extractor (feature `axum`):
//!
//! ```
//! # #[cfg(feature = "axum")] {
//! use axum::{routing::get, Router};
//! use tower_lifecycle::{Lifecycle, LifecycleLayer};
//!
//! async fn slow(lifecycle: Lifecycle) -> &'static str {
//!     lifecycle.on_shutdown(|done| tracing::info!(status = %done.status(), "slow done"));
//!     tokio::time::sleep(std::time::Duration::from_millis(10)).await;
//!     "done"
//! }
//!
//! let app: Router = Router::new().route("/slow", get(slow)).layer(LifecycleLayer::new());
//! # let _ = app; }
//! ```
//!
//! With tonic, one line: `Server::builder().layer(LifecycleLayer::new())`;
//! a handler finds the [`Lifecycle`] in `request.extensions()` (tonic copies
//! the HTTP request's extensions over). gRPC requests get gRPC answers: a
//! time limit answers `DEADLINE_EXCEEDED`, a `grpc-timeout` caps the limit,
//! and [`Completion::grpc_status`] reports the call's status.
//!
//! # When the hooks are called
//!
//! A request's lifecycle has these phases:
//!
//! - [`Phase::Handler`]: from the request entering the layer until the inner
//!   service's future yields the response head;
//! - [`Phase::Body`]: from then until the response body is done with;
//! - [`Phase::Continued`]: work that outlives the response side: a handler
//!   or body kept running after the client left (ignore-abort), work from
//!   [`Lifecycle::spawn`] or [`Lifecycle::after_response`].
//!
//! The lifecycle is *done* when the response side is finished and all its
//! continued work has finished; [`Completion::phase`] is where the last of
//! them ended. Without continued work, it ends at exactly one of these
//! moments:
//!
//! | the moment | status | phase |
//! | --- | --- | --- |
//! | the response future is dropped before it resolved (the client left; hyper drops it within a millisecond of the close or stream reset) | `aborted` | `Handler` |
//! | (the same, with [`Lifecycle::spawn`] work: it is cancelled, and the lifecycle ends once it stopped) | `aborted` | `Handler` |
//! | the inner service returns an error ([`Completion::service_error`]) | `normal` | `Handler` |
//! | the body returns `None`, or is dropped after it was complete (see [`LifecycleBody`] for what counts as complete) | `normal` | `Body` |
//! | the body yields an error ([`Completion::body_error`]) | `normal` | `Body` |
//! | the body is dropped before it was complete (the client left) | `aborted` | `Body` |
//! | the handler or the body panics while polled ([`Completion::panicked`]) | `normal` | where it was |
//! | the [time limit](LifecycleLayer::time_limit) expires before the head (the layer answers 503, or gRPC `DEADLINE_EXCEEDED`) | `timeout` | `Handler` |
//! | the time limit expires while the body streams (the body ends with [`TimedOut`]) | `timeout` | `Body` |
//!
//! With continued work it ends when the last piece of it finishes
//! (phase `Continued`); a client that left is still `aborted`.
//!
//! Then, exactly once: the request's hooks in registration order (a hook
//! registered while they run runs after them), then the layer's
//! [`on_complete`](LifecycleLayer::on_complete). Sync hooks run inline, on
//! the thread that ended the lifecycle (usually inside hyper's connection
//! task, right after it dropped or finished the body), so they must be
//! quick; an [`on_shutdown_async`](Lifecycle::on_shutdown_async) hook is
//! spawned on the tokio runtime and the hooks after it wait for it.
//!
//! A panicking hook is caught, logged with `tracing::error!`, and the next
//! hook still runs. When the lifecycle ends from a `Drop` during a panic
//! unwind, the hooks are handed to the runtime rather than run inside the
//! unwind. A hook registered after the lifecycle ended runs at once with
//! the final [`Completion`].
//!
//! ## What hyper lets us see
//!
//! ABORTED means hyper dropped something it could no longer deliver, so
//! detection is exactly as good as hyper's: over HTTP/1.1 hyper does not
//! notice a closed connection while a request body is still unread (it
//! stops reading the socket), nor with `http1.half_close(true)`. "Complete"
//! means handed to hyper, not received by the client: a body that fit in
//! hyper's buffers is complete even if the client reads only part of it.
//!
//! # Keep working after the client leaves
//!
//! Some work must finish even when the client leaves: a payment, a
//! newsletter send, an import. Three tools, all part of the request's
//! lifecycle (its hooks wait for them, and so does [`Drain`]):
//!
//! - **ignore-abort** ([`LifecycleLayer::ignore_abort`],
//!   [`Lifecycle::ignore_abort`]): read when the client leaves. If on, a
//!   handler that had not answered yet runs to its end in a task (its
//!   response is discarded), and a body being streamed is drained to its
//!   end, so the task feeding it keeps succeeding. The hooks then see
//!   `aborted`, phase `Continued`, and [`Completion::continued`].
//! - [`Lifecycle::spawn`]: background work of the request, cancelled when
//!   the client leaves unless ignore-abort is on.
//! - [`Lifecycle::after_response`]: work that starts once the response was
//!   handed over, whatever the client does: answer `202 Accepted`, then
//!   carry on.
//!
//! Continued work after an abort is bounded by
//! [`LifecycleLayer::max_detached`] (default [`DEFAULT_MAX_DETACHED`]): a
//! client cannot pile up work by starting jobs and leaving. Over the bound,
//! or without a tokio runtime to continue on, the abort cancels as if
//! ignore-abort were off and [`Completion::detach_refused`] says so.
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_lifecycle::{Lifecycle, LifecycleLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (tx, rx) = tokio::sync::oneshot::channel();
//! let tx = std::sync::Mutex::new(Some(tx));
//! let svc = ServiceBuilder::new()
//!     .layer(LifecycleLayer::new())
//!     .service_fn(move |req: Request<()>| {
//!         let lifecycle = req.extensions().get::<Lifecycle>().unwrap().clone();
//!         let tx = tx.lock().unwrap().take();
//!         lifecycle.after_response(async move {
//!             // send the newsletter...
//!             let _ = tx.map(|tx| tx.send("sent"));
//!         });
//!         lifecycle.on_shutdown(|done| println!("newsletter: {}", done.status()));
//!         async {
//!             let mut res = Response::new(Full::<Bytes>::from("accepted"));
//!             *res.status_mut() = StatusCode::ACCEPTED;
//!             Ok::<_, Infallible>(res)
//!         }
//!     });
//! let res = svc.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::ACCEPTED);
//! drop(res); // handed over: the work starts
//! assert_eq!(rx.await.unwrap(), "sent");
//! # }
//! ```
//!
//! For graceful shutdown, take a [`Drain`] from the layer before serving,
//! and after the server stopped taking requests call
//! [`Drain::shutdown`]: it waits for continued work and async hooks, then
//! cancels stragglers with `TIMEOUT` set, so their hooks still run.
//!
//! # Testing handlers without a server
//!
//! The layer needs no server: call the service with `oneshot`, and simulate
//! a client that leaves by dropping the response future (before the head)
//! or the response body (mid-stream), which is exactly what hyper does.
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_lifecycle::{Lifecycle, LifecycleLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let svc = ServiceBuilder::new()
//!     .layer(LifecycleLayer::new())
//!     .service_fn(move |req: Request<()>| {
//!         let lifecycle = req.extensions().get::<Lifecycle>().unwrap().clone();
//!         let tx = tx.clone();
//!         async move {
//!             let _ = tx.send(lifecycle);
//!             tokio::time::sleep(Duration::from_secs(3600)).await; // slow work
//!             Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("late")))
//!         }
//!     });
//!
//! let mut future = Box::pin(svc.oneshot(Request::new(())));
//! // Drive the handler until it is inside its slow work...
//! let lifecycle = tokio::select! {
//!     lifecycle = rx.recv() => lifecycle.unwrap(),
//!     _ = &mut future => unreachable!(),
//! };
//! assert!(!lifecycle.is_aborted());
//! // ...then leave, like hyper does when the client hangs up.
//! drop(future);
//! assert!(lifecycle.is_aborted());
//! lifecycle.aborted().await; // resolves at once
//! # }
//! ```
//!
//! For exact control over readiness and over when the response is produced,
//! use `tower_test::mock`: wrap the mock with the layer, take the request
//! from the handle (its extensions hold the [`Lifecycle`]), and drop the
//! response future before or after `send_response`.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower_lifecycle::{Lifecycle, LifecycleLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (mut svc, mut handle) =
//!     tower_test::mock::spawn_layer::<Request<()>, Response<Full<Bytes>>, _>(LifecycleLayer::new());
//! handle.allow(1);
//! assert!(svc.poll_ready().is_ready());
//!
//! let future = svc.call(Request::new(()));
//! let (request, _respond) = handle.next_request().await.unwrap();
//! let lifecycle = request.extensions().get::<Lifecycle>().unwrap().clone();
//! drop(future); // the client left before the head
//! assert!(lifecycle.is_aborted());
//! # }
//! ```
//!
//! # Differences from tower-http's `on_early_drop`
//!
//! `tower_http::on_early_drop` calls a callback when the response future or
//! body is dropped early. This crate goes further:
//!
//! - it does not mistake bodies that hyper legitimately ends without
//!   polling to `None` for early drops: exact-length bodies (`Full`), a
//!   handler-set `Content-Length`, `HEAD` responses, 204 and 304 (the
//!   README has the side-by-side test results);
//! - the handler can ask at any time ([`Lifecycle::status`],
//!   [`Lifecycle::aborted`]) instead of only being called back;
//! - hooks receive the outcome ([`Completion`]), run in order, exactly once
//!   on every path (normal end included), and are isolated from each
//!   other's panics.
//!
//! # Feature flags
//!
//! - `axum`: [`Lifecycle`] implements axum's `FromRequestParts` and
//!   `OptionalFromRequestParts` (through `axum-core` 0.5, the crate axum 0.8
//!   takes its extractor traits from).

#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod chain;
mod completion;
mod config;
mod continuation;
mod deadline;
mod drain;
#[cfg(feature = "axum")]
mod extract;
mod future;
mod grpc;
mod hook;
mod layer;
mod lifecycle;
mod panic;
mod response_side;
mod service;
mod state;
mod status;
mod streaming;
mod timeout;

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
pub use crate::service::LifecycleService;
pub use crate::status::ConnectionStatus;
pub use crate::streaming::no_buffering;
pub use crate::timeout::TimedOut;

/// The error type of [`LifecycleBody`]: the inner body's error, or
/// [`TimedOut`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
