//! Run with: cargo run --example quickstart
//!
//! An axum server on 127.0.0.1:3000 whose hooks log how each request ended.
//!
//! ```text
//! curl http://127.0.0.1:3000/slow                 # wait 2 s: status=normal phase=body
//! curl -m 1 http://127.0.0.1:3000/slow            # leave after 1 s: status=aborted phase=handler
//! curl -N http://127.0.0.1:3000/stream            # all 10 lines: status=normal phase=body
//! curl -N -m 1 http://127.0.0.1:3000/stream       # leave mid-stream: status=aborted phase=body
//! ```

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::channel::Channel;
use tower_lifecycle::{Lifecycle, LifecycleLayer};

/// Two seconds of "work" before answering. A client that leaves earlier
/// drops the handler at its `.await`: the hook still runs and says so.
async fn slow(lifecycle: Lifecycle) -> &'static str {
    lifecycle.on_shutdown(|done| {
        tracing::info!(route = "/slow", status = %done.status(), phase = %done.phase(), elapsed = ?done.elapsed(), "hook: request ended");
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    "slow work done\n"
}

/// Ten lines, one every 200 ms, through a channel body. The producer learns
/// the client left when its send fails.
async fn stream(lifecycle: Lifecycle) -> Response {
    lifecycle.on_shutdown(|done| {
        tracing::info!(route = "/stream", status = %done.status(), phase = %done.phase(), bytes_sent = done.bytes_sent(), "hook: request ended");
    });
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(1);
    tokio::spawn(async move {
        for i in 1..=10 {
            if tx
                .send_data(Bytes::from(format!("line {i}\n")))
                .await
                .is_err()
            {
                tracing::info!(line = i, "producer: the client is gone, stopping");
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Wait until the last line was taken before dropping the sender:
        // http-body-util's `Channel` can lose a frame queued just before
        // its sender is dropped. An empty trailers frame waits for room.
        let _ = tx.send_trailers(axum::http::HeaderMap::new()).await;
    });
    Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .header("cache-control", "no-cache, no-transform")
        .body(Body::new(body))
        .expect("valid response")
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_lifecycle=debug".into()),
        )
        .init();

    let app = Router::new()
        .route("/slow", get(slow))
        .route("/stream", get(stream))
        .layer(LifecycleLayer::new().on_complete(|done| {
            tracing::info!(
                status = %done.status(),
                bits = done.status().bits(),
                response = ?done.response_status(),
                "on_complete: every request ends here"
            );
        }));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000")
        .await
        .expect("bind 127.0.0.1:3000");
    tracing::info!("listening on http://127.0.0.1:3000 (routes: /slow, /stream)");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .expect("server error");
}
