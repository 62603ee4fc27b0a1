//! Run with: cargo run --example sse
//!
//! Server-Sent Events and shutdown: open http://127.0.0.1:3000 (or
//! `curl -N http://127.0.0.1:3000/events`) and see a tick every second.
//! Press Ctrl-C: readiness (`/ready`) answers 503 at once, the stream ends
//! cleanly a second later (curl exits 0; the page's `EventSource` goes to
//! `connecting`), the server stops, and each stream's hook logs
//! `shutdown=true`. Start the example again and the page reconnects by
//! itself.
//!
//! The steps, in order: the signal; readiness 503 for `UNREADY_FOR` (a
//! load balancer stops sending); the shutdown begins (streams end, the
//! server stops accepting); what is left gets `GRACE`, then is cut.

mod app;

use std::time::Duration;

use tower_lifecycle::LifecycleLayer;

const UNREADY_FOR: Duration = Duration::from_secs(1);
const GRACE: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_lifecycle=debug".into()),
        )
        .init();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000")
        .await
        .expect("bind 127.0.0.1:3000");
    let layer = LifecycleLayer::new();
    let drain = layer.drain();
    let app = app::router(layer, &drain, 3000, Duration::from_secs(1));
    let stop = drain
        .on_signal(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("stopping: /ready answers 503");
        })
        .unready_for(UNREADY_FOR)
        .grace(GRACE)
        .spawn();
    tracing::info!("open http://127.0.0.1:3000");
    axum::serve(listener, app)
        .with_graceful_shutdown(drain.begun())
        .await
        .expect("server error");
    let report = stop.await.expect("the stop task");
    tracing::info!(
        finished = report.finished(),
        cut = report.cancelled(),
        remaining = report.remaining(),
        "stopped"
    );
}
