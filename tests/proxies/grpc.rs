//! gRPC through nginx (`grpc_pass` to an h2c upstream): the tonic server of
//! `examples/grpc` with the layer, and a tonic client talking to nginx.

#[path = "../../examples/grpc/jobs.rs"]
mod jobs;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;
use tower_lifecycle::{Completion, ConnectionStatus, LifecycleLayer};

use jobs::{Event, JobRequest, Jobs, JobsClient};

use crate::within;

/// The tonic server: its address, its handlers' events, its completions.
pub(crate) struct Backend {
    pub(crate) addr: SocketAddr,
    events: mpsc::UnboundedReceiver<Event>,
    done: mpsc::UnboundedReceiver<Completion>,
}

impl Backend {
    pub(crate) async fn start() -> Backend {
        let (tx, done) = mpsc::unbounded_channel();
        let layer = LifecycleLayer::new().on_complete(move |c| {
            let _ = tx.send(c.clone());
        });
        let (events_tx, events) = mpsc::unbounded_channel();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = tonic::transport::Server::builder()
            .layer(layer)
            .add_service(Jobs::with_events(events_tx));
        tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
        Backend { addr, events, done }
    }

    async fn started(&mut self) {
        loop {
            if let Event::Started(_) = within("a gRPC handler", self.events.recv()).await.unwrap() {
                return;
            }
        }
    }
}

fn job(steps: u32, step_ms: u64) -> JobRequest {
    JobRequest {
        steps,
        step_ms,
        keep: false,
        fail: false,
    }
}

/// A cancel through nginx is `aborted`; a deadline gives the client
/// `DEADLINE_EXCEEDED`.
pub(crate) async fn through(mut backend: Backend, nginx: SocketAddr) {
    let mut client = within("a gRPC connection to nginx", JobsClient::connect(nginx))
        .await
        .expect("connect to nginx");
    let mut cancelled = client.clone();
    let call = tokio::spawn(async move { cancelled.run(job(100, 50)).await });
    backend.started().await;
    call.abort();
    let done = within("the cancelled call's end", backend.done.recv())
        .await
        .unwrap();
    assert_eq!(
        done.status(),
        ConnectionStatus::ABORTED,
        "nginx gRPC cancel: {done:?}"
    );

    let mut request = tonic::Request::new(job(100, 50));
    request.set_timeout(Duration::from_millis(300));
    let status = within("the reply", client.run(request)).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let done = within("the deadline's end", backend.done.recv())
        .await
        .unwrap();
    assert_eq!(
        done.status(),
        ConnectionStatus::TIMEOUT,
        "nginx gRPC deadline: {done:?}"
    );
}
