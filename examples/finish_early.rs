//! Run with: cargo run --example finish_early
//!
//! An axum server on 127.0.0.1:3000 that answers `202 Accepted` at once and
//! keeps working after the response, PHP's `fastcgi_finish_request()`:
//! `POST /newsletter` "sends" a newsletter to 20 recipients (250 ms each) in
//! `Lifecycle::after_response`. The request's hook logs the final status
//! once the sending is over. On Ctrl-C the server stops taking requests,
//! then `Drain::shutdown` gives the sending still going on 10 s to finish
//! and cancels what is left (those requests end with status `timeout`).
//!
//! ```text
//! curl -i -X POST http://127.0.0.1:3000/newsletter                  # 202 at once; 5 s of "sent" lines in the log, then status=normal phase=continued
//! curl -i -X POST 'http://127.0.0.1:3000/newsletter?recipients=3'   # a short one
//! curl -i -X POST 'http://127.0.0.1:3000/newsletter?recipients=100' # then Ctrl-C the server: cancelled after 10 s, status=timeout
//! ```

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use tower_lifecycle::{Lifecycle, LifecycleLayer};

/// Time to "send" to one recipient.
const PER_RECIPIENT: Duration = Duration::from_millis(250);

/// How long `Drain::shutdown` lets the sending go on after Ctrl-C.
const GRACE: Duration = Duration::from_secs(10);

async fn newsletter(
    lifecycle: Lifecycle,
    Query(query): Query<HashMap<String, String>>,
) -> (StatusCode, String) {
    // `?recipients=N`, 20 by default.
    let recipients: u32 = query
        .get("recipients")
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    lifecycle.on_shutdown(move |done| {
        tracing::info!(
            status = %done.status(),
            phase = %done.phase(),
            elapsed = ?done.elapsed(),
            recipients,
            "hook: newsletter request ended"
        );
    });
    // Runs once the 202 below has been handed to the server, or the client
    // left; a client leaving does not cancel it.
    lifecycle.after_response(async move {
        tracing::info!(recipients, "the response is out; sending the newsletter");
        for i in 1..=recipients {
            tokio::time::sleep(PER_RECIPIENT).await;
            tracing::info!(recipient = i, of = recipients, "sent");
        }
        tracing::info!(recipients, "newsletter sent to everyone");
    });
    (
        StatusCode::ACCEPTED,
        format!("sending the newsletter to {recipients} recipients\n"),
    )
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_lifecycle=debug".into()),
        )
        .init();

    let layer = LifecycleLayer::new();
    let drain = layer.drain();
    let app = Router::new()
        .route("/newsletter", post(newsletter))
        .layer(layer);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000")
        .await
        .expect("bind 127.0.0.1:3000");
    tracing::info!("listening on http://127.0.0.1:3000 (POST /newsletter); Ctrl-C to stop");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("Ctrl-C: no new requests");
        })
        .await
        .expect("server error");

    // The server has stopped; the newsletters it accepted may still be
    // going out.
    tracing::info!(in_flight = drain.in_flight(), grace = ?GRACE, "draining");
    let report = drain.shutdown(GRACE).await;
    tracing::info!(
        finished = report.finished(),
        cancelled = report.cancelled(),
        "drained; bye"
    );
}
