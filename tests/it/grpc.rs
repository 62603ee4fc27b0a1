//! The layer in a tonic server, called by a real tonic client over
//! loopback: `Server::builder().layer(LifecycleLayer::new())`, a unary and a
//! server-streaming method (hand-written, no protoc), cancels, error
//! statuses, deadlines from the client and from the layer, and ignore-abort.

use crate::common;

#[path = "../../examples/grpc/jobs.rs"]
mod jobs;
#[path = "../../examples/grpc/watched.rs"]
mod watched;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::TcpConnectInfo;
use tonic::Code;
use tower_lifecycle::watch::ConnectionWatch;
use tower_lifecycle::{ConnectionStatus, Drain, LifecycleLayer, Phase};

use common::{within, Completions};
use jobs::{Event, JobRequest, Jobs, JobsClient, Progress};

/// A tonic server with the layer, the completions it reports, and the
/// events of its handlers.
struct Server {
    addr: SocketAddr,
    done: Completions,
    events: mpsc::UnboundedReceiver<Event>,
    /// The layer's drain; tonic's graceful shutdown waits on its beginning.
    drain: Drain,
    served: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Server {
    async fn start(configure: impl FnOnce(LifecycleLayer) -> LifecycleLayer) -> Self {
        let (layer, done) = common::layer();
        let layer = configure(layer);
        let drain = layer.drain();
        let (tx, events) = mpsc::unbounded_channel();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = tonic::transport::Server::builder()
            .layer(layer)
            .add_service(Jobs::with_events(tx));
        let served = tokio::spawn(
            router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), drain.begun()),
        );
        Server {
            addr,
            done,
            events,
            drain,
            served,
        }
    }

    async fn client(&self) -> JobsClient {
        within("connecting", JobsClient::connect(self.addr))
            .await
            .unwrap()
    }

    async fn event(&mut self) -> Event {
        within("a handler event", self.events.recv()).await.unwrap()
    }

    /// Waits for the handler to start; checks it reached its lifecycle.
    async fn started(&mut self) -> tower_lifecycle::Lifecycle {
        match self.event().await {
            Event::Started(lifecycle) => lifecycle,
            other => panic!("expected the handler to start, got {other:?}"),
        }
    }

    /// Waits for `Step(n)`, skipping earlier steps.
    async fn step(&mut self, n: u32) {
        loop {
            match self.event().await {
                Event::Step(s) if s >= n => return,
                Event::Step(_) => {}
                other => panic!("expected step {n}, got {other:?}"),
            }
        }
    }

    /// Waits for the handler's work to end; returns the steps it did.
    async fn finished(&mut self) -> u32 {
        loop {
            if let Event::Finished(n) = self.event().await {
                return n;
            }
        }
    }
}

/// Opens a server-streaming `Watch` call and returns its message stream.
async fn open_stream(client: &mut JobsClient, request: JobRequest) -> tonic::Streaming<Progress> {
    within("the stream", client.watch(request))
        .await
        .unwrap()
        .into_inner()
}

/// Starts a unary `Run` call, waits for its handler's first step, then
/// cancels the call (tonic sends RST_STREAM) and waits for `aborted()`.
async fn cancel_after_first_step(server: &mut Server, request: JobRequest) {
    let mut client = server.client().await;
    let call = tokio::spawn(async move { client.run(request).await });
    let lifecycle = server.started().await;
    server.step(1).await;
    call.abort();
    within("aborted()", lifecycle.aborted()).await;
}

fn job(steps: u32, step_ms: u64) -> JobRequest {
    JobRequest {
        steps,
        step_ms,
        keep: false,
        fail: false,
    }
}

#[tokio::test]
async fn a_unary_call_to_its_end_is_normal_and_the_handler_sees_its_lifecycle() {
    let mut server = Server::start(|l| l).await;
    let mut client = server.client().await;
    let reply = within("the reply", client.run(job(2, 10))).await.unwrap();
    assert_eq!(reply.get_ref().steps_done, 2);
    let lifecycle = server.started().await;
    let done = server.done.next().await;
    assert_eq!(done.status(), ConnectionStatus::NORMAL);
    assert_eq!(done.phase(), Phase::Body);
    assert_eq!(done.grpc_status(), Some(0));
    assert_eq!(lifecycle.status(), ConnectionStatus::NORMAL);
    server.done.assert_none();
}

#[tokio::test]
async fn a_unary_call_the_client_drops_is_aborted_once() {
    let mut server = Server::start(|l| l).await;
    cancel_after_first_step(&mut server, job(100, 50)).await;
    let done = server.done.next().await;
    assert_eq!(done.status(), ConnectionStatus::ABORTED);
    assert_eq!(done.phase(), Phase::Handler);
    assert!(server.finished().await < 100);
    server.done.assert_none();
}

#[tokio::test]
async fn a_stream_cancelled_mid_way_is_aborted_in_the_body_phase() {
    let mut server = Server::start(|l| l).await;
    let mut client = server.client().await;
    let mut stream = open_stream(&mut client, job(100, 20)).await;
    for expected in 1..=3 {
        let progress = within("a message", stream.message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(progress.step, expected);
    }
    drop(stream);
    let done = server.done.next().await;
    assert_eq!(done.status(), ConnectionStatus::ABORTED);
    assert_eq!(done.phase(), Phase::Body);
    assert_eq!(
        done.grpc_status(),
        None,
        "the stream never reached its trailers"
    );
    assert!(server.finished().await < 100, "the producer stopped");
}

#[tokio::test]
async fn a_stream_read_to_the_end_is_normal_and_its_status_trailer_arrives() {
    let mut server = Server::start(|l| l).await;
    let mut client = server.client().await;
    let mut stream = open_stream(&mut client, job(4, 5)).await;
    let mut steps = Vec::new();
    // `Ok(None)` is tonic's word that the `grpc-status: 0` trailer arrived;
    // a missing or changed trailer is an error here.
    while let Some(progress) = within("a message", stream.message()).await.unwrap() {
        steps.push(progress.step);
    }
    assert_eq!(steps, [1, 2, 3, 4]);
    let done = server.done.next().await;
    assert_eq!(done.status(), ConnectionStatus::NORMAL);
    assert_eq!(done.phase(), Phase::Body);
    assert_eq!(done.grpc_status(), Some(0));
}

#[tokio::test]
async fn an_error_status_is_an_answer_not_an_abort() {
    let mut server = Server::start(|l| l).await;
    let mut client = server.client().await;
    let mut request = job(1, 1);
    request.fail = true;
    let unary = within("the reply", client.run(request.clone())).await;
    // the same for a streaming method
    let streaming = within("the reply", client.watch(request)).await;
    for status in [unary.unwrap_err(), streaming.unwrap_err()] {
        assert_eq!(status.code(), Code::InvalidArgument);
        let done = server.done.next().await;
        assert_eq!(done.status(), ConnectionStatus::NORMAL);
        assert_eq!(done.grpc_status(), Some(Code::InvalidArgument as i32));
    }
    server.done.assert_none();
}

#[tokio::test]
async fn a_client_deadline_shorter_than_the_handler_is_a_server_timeout() {
    let mut server = Server::start(|l| l).await;
    let mut client = server.client().await;
    let mut request = tonic::Request::new(job(100, 50));
    request.set_timeout(Duration::from_millis(300));
    let status = within("the reply", client.run(request)).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let done = server.done.next().await;
    assert_eq!(done.status(), ConnectionStatus::TIMEOUT);
    assert_eq!(done.phase(), Phase::Handler);
    assert_eq!(done.grpc_status(), Some(4));
    assert!(server.finished().await < 100, "the handler was cancelled");
}

#[tokio::test]
async fn the_layers_own_limit_gives_the_client_deadline_exceeded_too() {
    let mut server = Server::start(|l| l.time_limit(Duration::from_millis(200))).await;
    let mut client = server.client().await;
    let status = within("the reply", client.run(job(100, 50)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let done = server.done.next().await;
    assert_eq!(done.status(), ConnectionStatus::TIMEOUT);
    assert_eq!(done.phase(), Phase::Handler);

    // mid-stream: the stream ends with a DEADLINE_EXCEEDED status
    let mut stream = open_stream(&mut client, job(100, 20)).await;
    let first = within("a message", stream.message()).await.unwrap();
    assert!(first.is_some());
    let status = loop {
        match within("the end", stream.message()).await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended as if complete"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let done = server.done.next().await;
    assert_eq!(done.status(), ConnectionStatus::TIMEOUT);
    assert_eq!(done.phase(), Phase::Body);
}

#[tokio::test]
async fn ignore_abort_keeps_a_grpc_handler_working_after_the_client_cancels() {
    let mut server = Server::start(|l| l).await;
    let mut request = job(6, 30);
    request.keep = true;
    cancel_after_first_step(&mut server, request).await;
    assert_eq!(server.finished().await, 6, "the work ran to its end");
    let done = server.done.next().await;
    assert_eq!(done.status(), ConnectionStatus::ABORTED);
    assert_eq!(done.phase(), Phase::Continued);
    assert!(done.continued());
}

#[tokio::test]
async fn a_watched_tonic_server_hands_each_call_its_watch_and_its_peer() {
    let (layer, done) = common::layer();
    let (tx, events) = mpsc::unbounded_channel();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // What the layer's inner service finds in each request.
    let probe = move |req: http::Request<tonic::body::Body>| {
        let extensions = req.extensions();
        let _ = seen_tx.send((
            extensions.get::<ConnectionWatch>().is_some(),
            extensions
                .get::<TcpConnectInfo>()
                .and_then(|info| info.remote_addr),
        ));
        req
    };
    let drain = layer.drain();
    let router = tonic::transport::Server::builder()
        .layer(watched::layer(layer))
        .layer(tower::util::MapRequestLayer::new(probe))
        .add_service(Jobs::with_events(tx));
    let served = tokio::spawn(
        router.serve_with_incoming_shutdown(watched::incoming(listener), drain.begun()),
    );
    let mut server = Server {
        addr,
        done,
        events,
        drain,
        served,
    };

    let mut client = server.client().await;
    let reply = within("the reply", client.run(job(1, 1))).await.unwrap();
    assert_eq!(reply.get_ref().steps_done, 1);
    let (watched, peer) = within("the probe", seen.recv()).await.unwrap();
    assert!(watched, "the call carries its connection's watch");
    assert!(peer.is_some(), "Request::remote_addr still works");
    server.started().await;
    assert_eq!(server.finished().await, 1);
    let done = server.done.next().await;
    assert_eq!(done.status(), ConnectionStatus::NORMAL);

    cancel_after_first_step(&mut server, job(100, 50)).await;
    let done = server.done.next().await;
    assert_eq!(done.status(), ConnectionStatus::ABORTED);
    assert_eq!(done.phase(), Phase::Handler);
}

#[tokio::test]
async fn a_stream_open_when_the_shutdown_begins_ends_unavailable_and_the_server_stops() {
    let mut server = Server::start(|l| l).await;
    let mut client = server.client().await;
    let mut stream = open_stream(&mut client, job(1000, 20)).await;
    let first = within("a message", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.step, 1);
    server.drain.begin();
    let status = loop {
        match within("the end of the stream", stream.message()).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended OK: the client would not retry"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    drop((stream, client));
    within("tonic to stop", &mut server.served)
        .await
        .unwrap()
        .unwrap();
    let done = server.done.next().await;
    assert_eq!(
        (done.status(), done.phase()),
        (ConnectionStatus::NORMAL, Phase::Body)
    );
    assert_eq!((done.grpc_status(), done.shutdown()), (Some(14), true));
    assert!(server.finished().await < 1000, "the producer stopped");
    server.done.assert_none();
}
