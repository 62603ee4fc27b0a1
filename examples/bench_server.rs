//! Run with: cargo run --release --example bench_server -- [bare|noop|floor|default|trace|layer|watched] [PORT]
//!
//! The server of the end-to-end benchmark (`scripts/bench-e2e.sh`): an axum
//! hello world (`GET /` answers `hello world`) on 127.0.0.1:PORT (default
//! 3000), served by `axum::serve`, which speaks HTTP/1.1 and HTTP/2 with
//! prior knowledge (h2c) on the same port.
//!
//! - `bare`: the router alone; the handler takes no extractor.
//! - `noop`: the router behind a layer that does nothing (a `map_request`
//!   that hands the request on): what any layer costs in axum, whose
//!   `Router::layer` boxes and clones the route's service per request.
//! - `floor`: the router behind a layer that inserts one `Arc` handle into
//!   the request's extensions: the least a layer that hands the handler a
//!   status must pay.
//! - `default`: the router behind `LifecycleLayer::new()`, the bare
//!   handler: what a layer left on everywhere costs a route that does not
//!   use it.
//! - `trace`: the router behind tower-http's `TraceLayer::new_for_http()`
//!   (no subscriber), for scale: a layer that is commonly left on
//!   everywhere.
//! - `layer` (default): the router with the full layer configuration
//!   (ignore-abort on, a 30 s time limit, a layer-wide `on_complete` hook),
//!   and a handler that takes the `Lifecycle` extractor and registers one
//!   `on_shutdown` hook: what every request pays when the crate is used.
//! - `watched` (Unix): `layer`, each connection watched
//!   (`watch::Listener` and `watch::make_service`).
//!
//! It prints `listening on http://127.0.0.1:PORT` once it accepts
//! connections, and runs until killed.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tower::util::MapRequestLayer;
use tower_lifecycle::{Lifecycle, LifecycleLayer};

/// The answer of every configuration.
const HELLO: &str = "hello world";

/// Which server to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    Bare,
    Noop,
    Floor,
    Default,
    Trace,
    Layer,
    Watched,
}

/// The handler without the layer.
async fn bare() -> &'static str {
    HELLO
}

/// The handler with the layer: takes the extractor and registers a hook.
async fn with_lifecycle(lifecycle: Lifecycle) -> &'static str {
    lifecycle.on_shutdown(|_| {});
    HELLO
}

fn app(config: Config) -> Router {
    match config {
        Config::Bare => Router::new().route("/", get(bare)),
        Config::Noop => Router::new()
            .route("/", get(bare))
            .layer(MapRequestLayer::new(|req: Request| req)),
        Config::Floor => Router::new()
            .route("/", get(bare))
            .layer(MapRequestLayer::new(|mut req: Request| {
                req.extensions_mut().insert(Arc::new(0_u64));
                req
            })),
        Config::Default => Router::new()
            .route("/", get(bare))
            .layer(LifecycleLayer::new()),
        Config::Trace => Router::new()
            .route("/", get(bare))
            .layer(tower_http::trace::TraceLayer::new_for_http()),
        Config::Layer | Config::Watched => Router::new().route("/", get(with_lifecycle)).layer(
            LifecycleLayer::new()
                .ignore_abort(true)
                .time_limit(Duration::from_secs(30))
                .on_complete(|_| {}),
        ),
    }
}

fn usage() -> ! {
    eprintln!("usage: bench_server [bare|noop|floor|default|trace|layer|watched] [PORT]");
    std::process::exit(2);
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "layer".to_owned());
    let config = match name.as_str() {
        "layer" => Config::Layer,
        "bare" => Config::Bare,
        "noop" => Config::Noop,
        "floor" => Config::Floor,
        "default" => Config::Default,
        "trace" => Config::Trace,
        "watched" => Config::Watched,
        _ => usage(),
    };
    let port: u16 = match args.next() {
        None => 3000,
        Some(p) => p.parse().unwrap_or_else(|_| usage()),
    };

    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| {
            eprintln!("bench_server: cannot bind 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        });
    let addr = listener.local_addr().expect("bound address");
    eprintln!("bench_server: {name} configuration");
    println!("listening on http://{addr}");
    let served = if config == Config::Watched {
        use tower_lifecycle::watch;
        axum::serve(
            watch::Listener::new(listener),
            watch::make_service(app(config)),
        )
        .await
    } else {
        axum::serve(listener, app(config)).await
    };
    served.expect("server error");
}
