//! Shared harness for the loopback tests: a hyper-util server on
//! 127.0.0.1:0 speaking HTTP/1.1 and HTTP/2, hyper clients, and a collector
//! of the completions the layer reports.
#![allow(dead_code, unreachable_pub)]

pub mod logic;
pub mod probe;
pub mod scripted_body;
pub mod server;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tower_lifecycle::watch::{Leaving, Watched};
use tower_lifecycle::{Completion, LifecycleLayer};

/// How long any test waits for an event before failing.
pub const WAIT: Duration = Duration::from_secs(5);

/// Awaits `fut`, failing the test after [`WAIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

/// Receives the completions reported by a layer's `on_complete`.
pub struct Completions(mpsc::UnboundedReceiver<Completion>);

impl Completions {
    /// The next completion, failing the test if none comes within [`WAIT`].
    pub async fn next(&mut self) -> Completion {
        within("a completion", self.0.recv())
            .await
            .expect("layer dropped")
    }

    /// Asserts no further completion arrived (call after the events that
    /// could have produced one were awaited).
    pub fn assert_none(&mut self) {
        if let Ok(c) = self.0.try_recv() {
            panic!("unexpected extra completion: {c:?}");
        }
    }
}

/// A layer whose `on_complete` reports into the returned receiver.
pub fn layer() -> (LifecycleLayer, Completions) {
    let (tx, rx) = mpsc::unbounded_channel();
    let layer = LifecycleLayer::new().on_complete(move |c| {
        let _ = tx.send(c.clone());
    });
    (layer, Completions(rx))
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A service the harness can serve: what hyper-util takes.
pub trait Served<B>:
    tower::Service<
        Request<hyper::body::Incoming>,
        Response = Response<B>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> Served<B> for S where
    S: tower::Service<
            Request<hyper::body::Incoming>,
            Response = Response<B>,
            Error: Into<BoxError>,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// A response body the harness can serve.
pub trait ServedBody:
    http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> ServedBody for B where
    B: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static
{
}

/// Serves `svc` on 127.0.0.1:0 with hyper-util's auto builder (HTTP/1.1
/// and HTTP/2 prior knowledge). The accept loop ends with the test's
/// runtime.
pub async fn serve<S: Served<B>, B: ServedBody>(svc: S) -> SocketAddr {
    serve_with(svc, None).await
}

/// Serves `svc` as [`serve`] does, each connection's stream watched as
/// `leaving` says and its watch put in every request (HTTP/1.1 with
/// `half_close(true)` for [`Leaving::ResetOnly`]).
pub async fn serve_watched<S: Served<B>, B: ServedBody>(svc: S, leaving: Leaving) -> SocketAddr {
    serve_with(svc, Some(leaving)).await
}

async fn serve_with<S: Served<B>, B: ServedBody>(svc: S, watch: Option<Leaving>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let mut builder = auto::Builder::new(TokioExecutor::new());
            let Some(leaving) = watch else {
                let svc = TowerToHyperService::new(svc.clone());
                tokio::spawn(async move {
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                });
                continue;
            };
            let Ok(stream) = Watched::with_leaving(stream, leaving) else {
                continue;
            };
            builder.http1().half_close(leaving == Leaving::ResetOnly);
            let svc = tower::ServiceBuilder::new()
                .layer(stream.watch().layer())
                .service(svc.clone());
            let svc = TowerToHyperService::new(svc);
            tokio::spawn(async move {
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

/// The HTTP version a test speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

pub const BOTH: [Proto; 2] = [Proto::Http1, Proto::Http2];

/// A hyper client connection to `addr`.
pub enum Client {
    Http1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Client {
    /// Connects; the connection task runs until the connection closes.
    /// Aborting the returned task closes an HTTP/1.1 connection; an HTTP/2
    /// connection stays open while a request on it is in flight (hyper
    /// drives it from a task of its own).
    pub async fn connect(addr: SocketAddr, proto: Proto) -> (Client, tokio::task::JoinHandle<()>) {
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        match proto {
            Proto::Http1 => {
                let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                let task = tokio::spawn(async move {
                    let _ = conn.await;
                });
                (Client::Http1(send), task)
            }
            Proto::Http2 => {
                let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
                let task = tokio::spawn(async move {
                    let _ = conn.await;
                });
                (Client::Http2(send), task)
            }
        }
    }

    /// Sends a request with an empty body and returns the response head
    /// with its streaming body.
    pub async fn send(
        &mut self,
        req: Request<Empty<Bytes>>,
    ) -> hyper::Result<Response<hyper::body::Incoming>> {
        match self {
            Client::Http1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Client::Http2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }
}

/// A GET request for `path` suited to `proto`.
pub fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://127.0.0.1{path}"))
        .body(Empty::new())
        .unwrap()
}

/// Reads a whole response body.
pub async fn read_all(res: Response<hyper::body::Incoming>) -> Bytes {
    within("the whole body", res.into_body().collect())
        .await
        .expect("body error")
        .to_bytes()
}

/// Reads exactly `expected` off `body`, however the frames split it.
pub async fn read_exactly(body: &mut hyper::body::Incoming, expected: &str) {
    let mut got = bytes::BytesMut::new();
    while got.len() < expected.len() {
        let frame = within("a body frame", body.frame())
            .await
            .expect("the body ended early")
            .expect("body error");
        if let Ok(data) = frame.into_data() {
            got.extend_from_slice(&data);
        }
    }
    assert_eq!(got, expected.as_bytes());
}

/// `tracing` output at WARN and above of this test binary so far: see
/// [`logs_at`].
pub fn logs() -> String {
    logs_at(tracing::Level::WARN)
}

/// `tracing` output at `level` and above of this test binary so far; the
/// first call installs the global subscriber that collects it, at its
/// level (one per process). Global, because a thread-local subscriber misses
/// events when other tests register the same callsites concurrently.
pub fn logs_at(level: tracing::Level) -> String {
    use std::sync::{Arc, Mutex, OnceLock};

    #[derive(Clone)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    static LOGS: OnceLock<Sink> = OnceLock::new();
    let sink = LOGS.get_or_init(|| {
        let sink = Sink(Arc::default());
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("only common::logs_at sets a global subscriber");
        sink
    });
    String::from_utf8_lossy(&sink.0.lock().unwrap()).into_owned()
}

/// Held by the tests that count a warning in [`logs`] while they cause it,
/// so that no other test of the binary emits the same warning meanwhile.
pub static COUNTED_WARNINGS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A request in flight on a client connection of its own, sent from a task.
pub struct InFlight {
    request: tokio::task::JoinHandle<()>,
    conn: tokio::task::JoinHandle<()>,
}

impl InFlight {
    /// Connects to `addr` and sends a GET for `path`, in a task.
    pub async fn start(addr: SocketAddr, proto: Proto, path: &str) -> InFlight {
        let (mut client, conn) = Client::connect(addr, proto).await;
        let req = get(path);
        let request = tokio::spawn(async move {
            let _ = client.send(req).await;
        });
        InFlight { request, conn }
    }

    /// Drops the request and the client connection: the server sees the
    /// socket close (HTTP/1.1) or the stream reset, then the connection
    /// close (HTTP/2).
    pub fn leave(self) {
        self.request.abort();
        self.conn.abort();
    }
}

/// What a test reads of one request's events, in the order they happened.
pub struct EventReader<E>(pub mpsc::UnboundedReceiver<E>);

impl<E> EventReader<E> {
    /// The next event, failing the test if none comes within [`WAIT`].
    pub async fn next(&mut self) -> E {
        within("the request's next event", self.0.recv())
            .await
            .expect("the request ended without another event")
    }

    /// The events left, once every sender is gone (the handler, its
    /// producer, its continued work and its hook).
    pub async fn rest(&mut self) -> Vec<E> {
        within("the request's events to end", async {
            let mut events = Vec::new();
            while let Some(event) = self.0.recv().await {
                events.push(event);
            }
            events
        })
        .await
    }
}

/// The test's end of a gate a handler (or its producer, or its continued
/// work) waits at; it opens once.
pub struct Opener(pub Option<tokio::sync::oneshot::Sender<()>>);

impl Opener {
    /// Lets whoever waits past the gate.
    pub fn open(&mut self) {
        if let Some(gate) = self.0.take() {
            let _ = gate.send(());
        }
    }
}

/// What the tests feed a streamed body, one chunk at a time.
pub const CHUNKS: [&str; 3] = ["first chunk,", " the second,", " and the third"];

/// The test's end of a streamed body: an `http_body_util` channel, one data
/// frame per send; sending fails once the body is dropped.
pub type BodySender = http_body_util::channel::Sender<Bytes, Infallible>;
