//! Run with: cargo run --example progress
//!
//! Live progress over one connection, the crate's main demo: open
//! http://127.0.0.1:3000, start a job and watch its progress bar fed by one
//! streamed response. Cancel it and the outcomes panel says `aborted` with
//! the steps it did; tick "keep running if I leave" and cancel, and it says
//! `aborted` with every step done (ignore-abort kept the job going); set a
//! time limit shorter than the job and it says `timeout`.
//!
//! Without a browser:
//!
//! ```text
//! curl -N 'http://127.0.0.1:3000/job?steps=10&step_ms=200'                  # 1/10 ... 10/10, normal
//! curl -N -m 1 'http://127.0.0.1:3000/job?steps=10&step_ms=200'             # leaves: aborted, ~4 steps
//! curl -N -m 1 'http://127.0.0.1:3000/job?steps=10&step_ms=200&keep=true'   # leaves: aborted, 10 steps
//! curl -N 'http://127.0.0.1:3000/job?steps=10&step_ms=200&limit_ms=700'     # cut: timeout
//! curl http://127.0.0.1:3000/outcomes
//! ```

mod app;

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
    tracing::info!("open http://127.0.0.1:3000");
    axum::serve(listener, app::router(app::Demo::default()))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .expect("server error");
}
