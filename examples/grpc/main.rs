//! Run with: cargo run --example grpc
//!
//! A tonic server on 127.0.0.1:50051 with the lifecycle layer, whose hooks
//! log how each call ended. In another terminal, the same example in client
//! mode shows each outcome:
//!
//! ```text
//! cargo run --example grpc -- client normal     # Run to its end: normal
//! cargo run --example grpc -- client cancel     # Run dropped by the client after 1 s: aborted
//! cargo run --example grpc -- client deadline   # client deadline 700 ms (grpc-timeout): timeout, DEADLINE_EXCEEDED
//! cargo run --example grpc -- client stream     # Watch, cancelled after 3 messages: aborted in the body phase
//! cargo run --example grpc -- client keep       # Run with keep=true, cancelled: the server finishes it anyway
//! ```

mod jobs;
mod watched;

use std::time::Duration;

use tonic::transport::Server;
use tower_lifecycle::LifecycleLayer;

const ADDR: &str = "127.0.0.1:50051";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] | ["server"] => serve().await,
        ["client", what] => client(what).await,
        _ => Err("usage: grpc [server | client normal|cancel|deadline|stream|keep]".into()),
    }
}

async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    let layer = LifecycleLayer::new()
        .time_limit(Duration::from_secs(30))
        .on_complete(|done| {
            tracing::info!(
                status = %done.status(),
                phase = %done.phase(),
                elapsed = ?done.elapsed(),
                grpc_status = ?done.grpc_status(),
                "call ended"
            );
        });
    let drain = layer.drain();
    tracing::info!("gRPC server on {ADDR} (jobs.Jobs/Run, jobs.Jobs/Watch)");
    // Each connection watched (see watched.rs).
    let listener = tokio::net::TcpListener::bind(ADDR).await?;
    Server::builder()
        .layer(watched::layer(layer))
        .add_service(jobs::Jobs::default())
        .serve_with_incoming_shutdown(watched::incoming(listener), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    let report = drain.shutdown(Duration::from_secs(10)).await;
    tracing::info!(?report, "drained");
    Ok(())
}

async fn client(what: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut client = jobs::JobsClient::connect(ADDR.parse()?).await?;
    let job = |steps, keep| jobs::JobRequest {
        steps,
        step_ms: 250,
        keep,
        fail: false,
    };
    match what {
        "normal" => println!("{:?}", client.run(job(4, false)).await),
        "cancel" | "keep" => {
            let call = client.run(job(8, what == "keep"));
            match tokio::time::timeout(Duration::from_secs(1), call).await {
                Ok(reply) => println!("{reply:?}"),
                Err(_) => println!("cancelled the call after 1 s: watch the server log"),
            }
        }
        "deadline" => {
            let mut request = tonic::Request::new(job(8, false));
            request.set_timeout(Duration::from_millis(700));
            println!("{:?}", client.run(request).await.map_err(|s| s.code()));
        }
        "stream" => {
            let mut stream = client.watch(job(10, false)).await?.into_inner();
            for _ in 0..3 {
                println!("{:?}", stream.message().await?);
            }
            println!("dropping the stream after 3 messages: watch the server log");
        }
        other => return Err(format!("unknown client mode {other}").into()),
    }
    Ok(())
}
