//! Clients that leave, over real loopback connections: before the response
//! head (the handler's future is dropped) and in the middle of a streamed
//! body (the body is dropped), over HTTP/1.1 and HTTP/2, with the layer
//! around a bare `service_fn`, inside `Router::layer`, and around a whole
//! `Router` served by `axum::serve`.
//!
//! Every request's handler reports through a [`Probe`] that it is running,
//! having registered a per-request hook (counted) and spawned a task that
//! waits on `Lifecycle::aborted()`, so a test leaves only once the handler
//! is inside its work and can check what the handler side saw.

use crate::common;

use std::convert::Infallible;
use std::future::{Future, IntoFuture};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::channel::Channel;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tower::ServiceBuilder;
use tower_lifecycle::{
    Completion, ConnectionStatus, Lifecycle, LifecycleBody, LifecycleLayer, Phase,
};

use common::{within, BodySender, Client, Completions, InFlight, Proto, BOTH, CHUNKS};

/// Answers at once with [`HELLO`].
const NORMAL: &str = "/";
/// Never answers.
const PENDING: &str = "/pending";
/// Answers with a body the test feeds through a channel.
const STREAM: &str = "/stream";

const HELLO: &str = "hello";
/// What a handler reports once it is running.
struct Running {
    lifecycle: Lifecycle,
    /// How many times the hook the handler registered has run.
    hook_runs: Arc<AtomicUsize>,
    /// Fires when the task the handler spawned saw `aborted()` resolve.
    saw_abort: oneshot::Receiver<()>,
}

impl Running {
    fn hook_runs(&self) -> usize {
        self.hook_runs.load(Ordering::SeqCst)
    }
}

/// The handler side's line to the test.
#[derive(Clone)]
struct Probe {
    running: mpsc::UnboundedSender<Running>,
    bodies: mpsc::UnboundedSender<BodySender>,
}

impl Probe {
    /// Registers a counting hook and a task waiting on `aborted()`, then
    /// tells the test the handler is running.
    fn enter(&self, lifecycle: &Lifecycle) {
        let hook_runs = Arc::new(AtomicUsize::new(0));
        let runs = hook_runs.clone();
        lifecycle.on_shutdown(move |_| {
            runs.fetch_add(1, Ordering::SeqCst);
        });
        let (abort_seen, saw_abort) = oneshot::channel();
        let aborted = lifecycle.aborted();
        tokio::spawn(async move {
            aborted.await;
            let _ = abort_seen.send(());
        });
        let _ = self.running.send(Running {
            lifecycle: lifecycle.clone(),
            hook_runs,
            saw_abort,
        });
    }

    /// A body fed by the test: hands the sending half over.
    fn channel_body(&self) -> Channel<Bytes, Infallible> {
        let (tx, body) = Channel::new(1);
        let _ = self.bodies.send(tx);
        body
    }
}

/// A server under test and the test's ends of its probe and layer.
struct Server {
    addr: SocketAddr,
    running: mpsc::UnboundedReceiver<Running>,
    bodies: mpsc::UnboundedReceiver<BodySender>,
    done: Completions,
}

/// Where the layer sits in an axum app.
#[derive(Clone, Copy, Debug)]
enum Placement {
    /// `Router::layer`, served by `axum::serve`.
    RouterLayer,
    /// Around the whole `Router`, served by `axum::serve`.
    AroundRouter,
}

impl Server {
    /// Starts a server with `start`, which gets the probe and the layer and
    /// returns the address it listens on.
    async fn start<F, Fut>(start: F) -> Server
    where
        F: FnOnce(Probe, LifecycleLayer) -> Fut,
        Fut: Future<Output = SocketAddr>,
    {
        let (layer, done) = common::layer();
        let (running_tx, running) = mpsc::unbounded_channel();
        let (bodies_tx, bodies) = mpsc::unbounded_channel();
        let probe = Probe {
            running: running_tx,
            bodies: bodies_tx,
        };
        let addr = start(probe, layer).await;
        Server {
            addr,
            running,
            bodies,
            done,
        }
    }

    /// The layer around a bare `service_fn`, served by hyper-util.
    async fn service_fn() -> Server {
        Server::start(|probe, layer| {
            common::serve(
                ServiceBuilder::new()
                    .layer(layer)
                    .service_fn(move |req| handle(probe.clone(), req)),
            )
        })
        .await
    }

    /// An axum app with the layer at `placement`.
    async fn axum(placement: Placement) -> Server {
        Server::start(|probe, layer| async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let routes = Router::new()
                .route(NORMAL, get(hello))
                .route(PENDING, get(pending))
                .with_state(probe);
            match placement {
                Placement::RouterLayer => {
                    tokio::spawn(axum::serve(listener, routes.layer(layer)).into_future());
                }
                Placement::AroundRouter => {
                    let app = ServiceBuilder::new()
                        .map_response(|res: Response<LifecycleBody<axum::body::Body>>| {
                            res.map(axum::body::Body::new)
                        })
                        .layer(layer)
                        .service(routes);
                    let app = axum::ServiceExt::<axum::extract::Request>::into_make_service(app);
                    tokio::spawn(axum::serve(listener, app).into_future());
                }
            }
            addr
        })
        .await
    }

    async fn connect(&self, proto: Proto) -> Client {
        Client::connect(self.addr, proto).await.0
    }

    /// The next handler to report it is running, its request not aborted.
    async fn running(&mut self) -> Running {
        let running = within("the handler to run", self.running.recv())
            .await
            .expect("probe dropped");
        assert!(!running.lifecycle.is_aborted());
        running
    }

    /// The sending half of the next streamed body.
    async fn body_sender(&mut self) -> BodySender {
        within("a streamed body", self.bodies.recv())
            .await
            .expect("probe dropped")
    }

    /// The next completion, which must be `running`'s: its hook ran once,
    /// its handle shows the same status, and its `aborted()` resolved in the
    /// handler's task exactly when the status is ABORTED.
    async fn completion(&mut self, running: &mut Running) -> Completion {
        let done = self.done.next().await;
        assert_eq!(
            running.lifecycle.status(),
            done.status(),
            "not this request's completion: {done:?}"
        );
        assert_eq!(running.hook_runs(), 1, "the request's hook runs once");
        if done.status().is_aborted() {
            within("aborted() in the handler's task", &mut running.saw_abort)
                .await
                .expect("the handler's task ended without seeing the abort");
        } else {
            assert_eq!(
                running.saw_abort.try_recv(),
                Err(oneshot::error::TryRecvError::Empty),
                "aborted() resolved for a normal request"
            );
        }
        done
    }

    /// Asserts that the next completion is `running`'s, ABORTED in `phase`.
    async fn expect_aborted(&mut self, running: &mut Running, phase: Phase) -> Completion {
        let done = self.completion(running).await;
        assert_eq!(done.status(), ConnectionStatus::ABORTED, "{done:?}");
        assert_eq!(done.phase(), phase, "{done:?}");
        done
    }

    /// Asserts that the next completion is `running`'s, ABORTED before the
    /// response head.
    async fn expect_aborted_before_head(&mut self, running: &mut Running) {
        let done = self.expect_aborted(running, Phase::Handler).await;
        assert_eq!(done.bytes_sent(), 0, "{done:?}");
        assert_eq!(done.response_status(), None, "{done:?}");
    }

    /// Makes a normal request on `client` and asserts it is the next and
    /// only completion, and that the earlier request's hook did not run
    /// again.
    async fn expect_normal(&mut self, client: &mut Client, earlier: &Running) {
        let res = within("a normal response", client.send(common::get(NORMAL)))
            .await
            .expect("normal request failed");
        assert_eq!(common::read_all(res).await, HELLO);
        let mut running = self.running().await;
        let done = self.completion(&mut running).await;
        assert_eq!(done.status(), ConnectionStatus::NORMAL, "{done:?}");
        assert_eq!(done.phase(), Phase::Body, "{done:?}");
        assert_eq!(done.bytes_sent(), HELLO.len() as u64, "{done:?}");
        assert_eq!(done.response_status(), Some(StatusCode::OK), "{done:?}");
        assert_eq!(
            earlier.hook_runs(),
            1,
            "the earlier request's hook ran again"
        );
        self.done.assert_none();
    }

    /// Starts a request for `path` on a new connection, in a task.
    async fn start_request(&self, proto: Proto, path: &'static str) -> InFlight {
        InFlight::start(self.addr, proto, path).await
    }

    /// Leaves a pending request before the head (dropping the request and
    /// its connection), then checks the abort and a normal request on a new
    /// connection.
    async fn leave_before_head(&mut self, proto: Proto) {
        let in_flight = self.start_request(proto, PENDING).await;
        let mut running = self.running().await;
        in_flight.leave();
        self.expect_aborted_before_head(&mut running).await;
        let mut client = self.connect(proto).await;
        self.expect_normal(&mut client, &running).await;
    }
}

/// The `service_fn` handler.
async fn handle(
    probe: Probe,
    req: Request<Incoming>,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let lifecycle = req
        .extensions()
        .get::<Lifecycle>()
        .expect("the layer inserts a Lifecycle");
    probe.enter(lifecycle);
    let body = match req.uri().path() {
        PENDING => std::future::pending().await,
        STREAM => probe.channel_body().boxed(),
        _ => Full::from(HELLO).boxed(),
    };
    Ok(Response::new(body))
}

/// The axum handler of [`NORMAL`].
async fn hello(State(probe): State<Probe>, lifecycle: Lifecycle) -> &'static str {
    probe.enter(&lifecycle);
    HELLO
}

/// The axum handler of [`PENDING`].
async fn pending(State(probe): State<Probe>, lifecycle: Lifecycle) -> &'static str {
    probe.enter(&lifecycle);
    std::future::pending().await
}

/// An HTTP/2 client and a second handle on its socket: shutting that down
/// closes the connection at once, without a frame from hyper.
async fn http2_with_socket(addr: SocketAddr) -> (Client, std::net::TcpStream) {
    let socket = TcpStream::connect(addr).await.unwrap().into_std().unwrap();
    let handle = socket.try_clone().unwrap();
    let io = TokioIo::new(TcpStream::from_std(socket).unwrap());
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    (Client::Http2(send), handle)
}

/// 1a. HTTP/1.1: the client writes a request by hand and closes the socket
/// while the handler is pending.
#[tokio::test]
async fn http1_socket_closed_before_head() {
    let mut server = Server::service_fn().await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    socket
        .write_all(b"GET /pending HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut running = server.running().await;
    drop(socket);
    server.expect_aborted_before_head(&mut running).await;
    let mut client = server.connect(Proto::Http1).await;
    server.expect_normal(&mut client, &running).await;
}

/// 1b. HTTP/2: dropping the in-flight request resets its stream; the
/// connection stays open and serves the next request.
#[tokio::test]
async fn http2_stream_reset_before_head() {
    let mut server = Server::service_fn().await;
    let mut client = server.connect(Proto::Http2).await;
    let mut running = {
        let request = client.send(common::get(PENDING));
        tokio::select! {
            running = server.running() => running,
            res = request => panic!("the pending handler answered: {res:?}"),
        }
        // The request future is dropped here: RST_STREAM.
    };
    server.expect_aborted_before_head(&mut running).await;
    server.expect_normal(&mut client, &running).await;
}

/// 1c. HTTP/2: the whole connection closes while the handler is pending.
#[tokio::test]
async fn http2_connection_closed_before_head() {
    let mut server = Server::service_fn().await;
    let (mut client, socket) = http2_with_socket(server.addr).await;
    let request = tokio::spawn(async move { client.send(common::get(PENDING)).await });
    let mut running = server.running().await;
    socket.shutdown(Shutdown::Both).unwrap();
    server.expect_aborted_before_head(&mut running).await;
    within("the client to see the close", request)
        .await
        .unwrap()
        .expect_err("the request succeeded on a closed connection");
    let mut client = server.connect(Proto::Http2).await;
    server.expect_normal(&mut client, &running).await;
}

/// 2. The client reads part of a streamed body, then leaves: over HTTP/1.1
/// it closes the connection, over HTTP/2 it drops the body (RST_STREAM) and
/// keeps using the connection.
#[tokio::test]
async fn client_leaves_mid_body() {
    let mut server = Server::service_fn().await;
    for proto in BOTH {
        let (mut client, conn) = Client::connect(server.addr, proto).await;
        let res = within("the response head", client.send(common::get(STREAM)))
            .await
            .unwrap();
        let mut running = server.running().await;
        let mut tx = server.body_sender().await;
        let mut body = res.into_body();
        for chunk in CHUNKS {
            tx.send_data(Bytes::from_static(chunk.as_bytes()))
                .await
                .unwrap();
            common::read_exactly(&mut body, chunk).await;
        }
        assert!(!running.lifecycle.is_aborted());
        drop(body);
        if proto == Proto::Http1 {
            conn.abort();
            client = server.connect(proto).await;
        }
        let done = server.expect_aborted(&mut running, Phase::Body).await;
        let yielded: usize = CHUNKS.iter().map(|c| c.len()).sum();
        assert_eq!(done.bytes_sent(), yielded as u64, "{proto:?}");
        assert_eq!(done.response_status(), Some(StatusCode::OK), "{proto:?}");
        assert!(
            tx.send_data(Bytes::from_static(b"too late")).await.is_err(),
            "{proto:?}: the body outlived its abort"
        );
        server.expect_normal(&mut client, &running).await;
    }
}

/// 3a. The layer around a bare `service_fn` served by hyper-util: a client
/// leaving before the head over both protocols, via the hyper client.
#[tokio::test]
async fn service_fn_both_protocols() {
    let mut server = Server::service_fn().await;
    for proto in BOTH {
        server.leave_before_head(proto).await;
    }
}

/// 3b. `Router::layer`, with the `Lifecycle` extractor.
#[tokio::test]
async fn axum_router_layer() {
    let mut server = Server::axum(Placement::RouterLayer).await;
    for proto in BOTH {
        server.leave_before_head(proto).await;
    }
}

/// 3c. The layer around a whole `Router` served by `axum::serve`.
#[tokio::test]
async fn axum_serve_around_router() {
    let mut server = Server::axum(Placement::AroundRouter).await;
    for proto in BOTH {
        server.leave_before_head(proto).await;
    }
}
