//! Run with: cargo run --example metrics
//!
//! Prometheus metrics from every request's end, with the `metrics` crate
//! and `metrics-exporter-prometheus` (the example's dependencies, not the
//! library's): one `on_complete` hook records
//!
//! - `http_requests_total{status, phase, log_status}`: a counter per outcome
//!   (`status` is the lifecycle's word: normal, aborted, timeout);
//! - `http_request_duration_seconds` and `http_time_to_head_seconds`:
//!   histograms of `Completion::elapsed` and `Completion::time_to_head`;
//!
//! and `/metrics` adds `tower_lifecycle_in_flight`, a gauge read from
//! `Drain::in_flight` when scraped. Try:
//!
//! ```text
//! curl http://127.0.0.1:3000/hello                 # normal
//! curl -m 1 http://127.0.0.1:3000/slow             # leaves after 1 s: aborted, 499
//! curl http://127.0.0.1:3000/limited               # cut at 100 ms: timeout, 503
//! curl http://127.0.0.1:3000/metrics
//! ```
//!
//! Why `metrics` rather than OpenTelemetry here: it is the smaller
//! dependency for a server that only exports Prometheus, its macros cost a
//! lookup when no recorder is installed, and the same `on_complete` hook
//! works with the OpenTelemetry SDK's meters unchanged in shape.

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower_lifecycle::{Completion, Drain, Lifecycle, LifecycleLayer};

/// The histogram buckets, in seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the Prometheus recorder for the process; the handle renders
/// the scrape.
pub fn install() -> PrometheusHandle {
    PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .expect("valid buckets")
        .install_recorder()
        .expect("no other metrics recorder is installed")
}

/// Records one request's end.
fn record(done: &Completion) {
    metrics::counter!(
        "http_requests_total",
        "status" => done.status().to_string(),
        "phase" => done.phase().to_string(),
        "log_status" => done.log_status().to_string(),
    )
    .increment(1);
    metrics::histogram!("http_request_duration_seconds").record(done.elapsed().as_secs_f64());
    if let Some(head) = done.time_to_head() {
        metrics::histogram!("http_time_to_head_seconds").record(head.as_secs_f64());
    }
}

/// The app: `/hello`, `/slow` (2 s), `/limited` (a 100 ms limit on a 2 s
/// handler) through the layer, `/metrics` outside it.
pub fn app(handle: PrometheusHandle) -> Router {
    let layer = LifecycleLayer::new().on_complete(record);
    let drain = layer.drain();
    let scrape = move || {
        let handle = handle.clone();
        let drain: Drain = drain.clone();
        async move {
            metrics::gauge!("tower_lifecycle_in_flight").set(drain.in_flight() as f64);
            handle.render()
        }
    };
    Router::new()
        .route("/hello", get(|| async { "hello\n" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                "slow\n"
            }),
        )
        .route(
            "/limited",
            get(|lifecycle: Lifecycle| async move {
                lifecycle.set_time_limit(Some(Duration::from_millis(100)));
                tokio::time::sleep(Duration::from_secs(2)).await;
                "too late\n"
            }),
        )
        .layer(layer)
        .route("/metrics", get(scrape))
}

#[allow(dead_code)]
#[tokio::main]
async fn main() {
    let handle = install();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000")
        .await
        .expect("bind 127.0.0.1:3000");
    println!("listening on http://127.0.0.1:3000 (try /hello, /slow, /limited, /metrics)");
    axum::serve(listener, app(handle))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .expect("server error");
}
