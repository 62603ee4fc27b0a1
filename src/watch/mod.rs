//! See the client leave when hyper can't: a watch on the connection.
//!
//! hyper learns that a client left only when it reads from or writes to the
//! connection. Over HTTP/1.1 it does neither while a handler runs without
//! reading the request body, while a response waits for a slow client to
//! read, or while a pipelined request is buffered; with
//! `http1().half_close(true)` it does not take a FIN for a goodbye at all.
//! A client that leaves then is noticed only when the handler ends, and a
//! response to a client that stopped reading hangs past its time limit.
//!
//! [`Watched`] wraps the connection's socket before hyper gets it and keeps
//! a second registration of the same socket in tokio's reactor that never
//! reads: it sees the client's FIN or reset within a fraction of a
//! millisecond (on loopback) whatever hyper is doing. [`Watched::watch`]
//! gives a cheap [`ConnectionWatch`] handle; put it in every request's
//! extensions and [`LifecycleLayer`](crate::LifecycleLayer) uses it:
//!
//! - **The client left** while the request is in flight: the request is
//!   aborted exactly as if hyper had dropped it
//!   ([`ABORTED`](crate::ConnectionStatus::ABORTED), `aborted()` resolves,
//!   the handler is dropped or, under ignore-abort, continued), and the
//!   socket is shut down so that hyper lets the connection go.
//! - **The time limit passes while hyper is not polling the body** (the
//!   client stopped reading, HTTP/1.1): the layer shuts the socket down at
//!   the limit, as nginx's `send_timeout` does, so the request ends
//!   [`TIMEOUT`](crate::ConnectionStatus::TIMEOUT) at the limit instead of
//!   whenever the client finally leaves.
//! - **A live client is not taken for a gone one**: the layer's future
//!   dropped by a layer outside it (tower-http's `TimeoutLayer`, a
//!   `select!`) while the connection is open is not an abort; the
//!   completion says [`cancelled`](crate::Completion::cancelled).
//!
//! HTTP/2 needs none of this (hyper reads an HTTP/2 connection all the
//! time), but a watch there is harmless: a client that closes the
//! connection is seen by both.
//!
//! # With hyper-util
//!
//! ```no_run
//! # #[cfg(unix)]
//! # async fn run() -> std::io::Result<()> {
//! use hyper_util::rt::{TokioExecutor, TokioIo};
//! use hyper_util::server::conn::auto;
//! use hyper_util::service::TowerToHyperService;
//! use tower::ServiceBuilder;
//! use tower_lifecycle::watch::Watched;
//! use tower_lifecycle::LifecycleLayer;
//! # async fn handler(_: http::Request<hyper::body::Incoming>)
//! #     -> Result<http::Response<String>, std::convert::Infallible> { unimplemented!() }
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! loop {
//!     let (stream, _) = listener.accept().await?;
//!     let Ok(stream) = Watched::new(stream) else { continue };
//!     let svc = ServiceBuilder::new()
//!         .layer(stream.watch().layer())
//!         .layer(LifecycleLayer::new())
//!         .service_fn(handler);
//!     tokio::spawn(async move {
//!         let _ = auto::Builder::new(TokioExecutor::new())
//!             .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
//!             .await;
//!     });
//! }
//! # }
//! ```
//!
//! Make the watch before TLS wraps the stream (`Watched` is the TLS
//! acceptor's IO then): the watch looks at the TCP socket only.
//!
//! # Behind a proxy
//!
//! The watch sees the connection the server has: behind a reverse proxy
//! that is the proxy's connection, which says that the client left only if
//! the proxy closes its upstream connection when its client leaves (nginx,
//! HAProxy and Caddy do, by default).
//!
//! # Platforms
//!
//! [`Watched`] exists on Unix (Linux's epoll and the BSDs' kqueue both
//! report a peer's close). [`ConnectionWatch`] exists everywhere; on other
//! platforms nothing makes one that fires.
//!
//! # Cost
//!
//! Per connection: a duplicated descriptor (`dup`, `getpeername`, `close`).
//! The watcher itself (a task and a second registration in the reactor,
//! two more system calls) starts only when something first waits on the
//! connection: a request whose handler or body is not ready at once,
//! [`ConnectionWatch::closed`], [`ConnectionWatch::close`]. A connection
//! whose requests are all answered at once never starts it. Per request
//! that carries a watch: a clone of the handle, and one small allocation
//! for the wait while the request is in flight. The watcher wakes once per burst of incoming data (about every
//! 64 KiB of a large upload) and never reads. `BENCHMARKS.md` has the
//! figures.

#[cfg(all(unix, feature = "axum-serve"))]
mod axum;
mod connection;
mod layer;
mod shared;
mod verdict;
#[cfg(unix)]
mod watched;

#[cfg(all(unix, feature = "axum-serve"))]
#[cfg_attr(docsrs, doc(cfg(feature = "axum-serve")))]
pub use self::axum::{make_service, Connection, Listener, MakeFuture, MakeService};
pub use connection::{Closed, ConnectionWatch};
pub use layer::{WatchLayer, WatchService};
#[cfg(unix)]
pub use shared::Leaving;
#[cfg(unix)]
pub use watched::Watched;

pub(crate) use connection::Waiting;
pub(crate) use verdict::{client_left, settle};
