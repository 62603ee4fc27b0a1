//! Clients that leave, over real loopback connections: before the response
//! head (the handler's future is dropped) and in the middle of a streamed
//! body (the body is dropped), over HTTP/1.1 and HTTP/2, with the layer
//! around a bare `service_fn`, inside `Router::layer`, and around a whole
//! `Router` served by `axum::serve`.
//!
//! Every request's handler reports a [`Running`] to the test, having
//! registered a per-request hook (counted) and spawned a task that
//! waits on `Lifecycle::aborted()`, so a test leaves only once the handler
//! is inside its work and can check what the handler side saw.

use crate::common;

use std::future::IntoFuture;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tower::ServiceBuilder;
use tower_lifecycle::{Completion, ConnectionStatus, Lifecycle, LifecycleBody, Phase};

use common::probe::Probe;
use common::server::{lifecycle_of, send, try_send, Reply};
use common::{within, Client, Proto, BOTH, CHUNKS};

/// A server whose handlers report a [`Running`].
type Server = common::server::Server<Running>;

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
    /// Registers a counting hook and a task waiting on `aborted()`; the
    /// result is what the handler reports once it is running.
    fn enter(lifecycle: &Lifecycle) -> Running {
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
        Running {
            lifecycle: lifecycle.clone(),
            hook_runs,
            saw_abort,
        }
    }

    fn hook_runs(&self) -> usize {
        self.hook_runs.load(Ordering::SeqCst)
    }
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
    /// The layer around a bare `service_fn`, served by hyper-util.
    async fn service_fn() -> Server {
        Server::start(|layer| layer, handle).await
    }

    /// An axum app with the layer at `placement`.
    async fn axum(placement: Placement) -> Server {
        Server::start_with(
            |layer| layer,
            |probe, layer| async move {
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
                        let app =
                            axum::ServiceExt::<axum::extract::Request>::into_make_service(app);
                        tokio::spawn(axum::serve(listener, app).into_future());
                    }
                }
                addr
            },
        )
        .await
    }

    /// The next handler to report it is running, its request not aborted.
    async fn running(&mut self) -> Running {
        let running = self.report().await;
        assert!(!running.lifecycle.is_aborted());
        running
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
        let res = send(client, common::get(NORMAL)).await;
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

    /// Leaves a pending request before the head (dropping the request and
    /// its connection), then checks the abort and a normal request on a new
    /// connection.
    async fn leave_before_head(&mut self, proto: Proto) {
        let in_flight = self.visit(proto, PENDING).await;
        let mut running = self.running().await;
        in_flight.leave();
        self.expect_aborted_before_head(&mut running).await;
        let mut client = self.connect(proto).await;
        self.expect_normal(&mut client, &running).await;
    }
}

/// The `service_fn` handler.
async fn handle(probe: Probe<Running>, req: Request<Incoming>) -> Reply {
    probe.report(Running::enter(&lifecycle_of(&req)));
    let body = match req.uri().path() {
        PENDING => std::future::pending().await,
        STREAM => probe.channel_body().boxed(),
        _ => Full::from(HELLO).boxed(),
    };
    Ok(Response::new(body))
}

/// The axum handler of [`NORMAL`].
async fn hello(State(probe): State<Probe<Running>>, lifecycle: Lifecycle) -> &'static str {
    probe.report(Running::enter(&lifecycle));
    HELLO
}

/// The axum handler of [`PENDING`].
async fn pending(State(probe): State<Probe<Running>>, lifecycle: Lifecycle) -> &'static str {
    probe.report(Running::enter(&lifecycle));
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
        let mut stream = server.stream(proto, STREAM).await;
        let mut running = server.running().await;
        for chunk in CHUNKS {
            stream.pass(chunk).await;
        }
        assert!(!running.lifecycle.is_aborted());
        drop(stream.body);
        if proto == Proto::Http1 {
            stream.conn.abort();
            stream.client = server.connect(proto).await;
        }
        let done = server.expect_aborted(&mut running, Phase::Body).await;
        let yielded: usize = CHUNKS.iter().map(|c| c.len()).sum();
        assert_eq!(done.bytes_sent(), yielded as u64, "{proto:?}");
        assert_eq!(done.response_status(), Some(StatusCode::OK), "{proto:?}");
        assert!(
            !try_send(&mut stream.tx, "too late").await,
            "{proto:?}: the body outlived its abort"
        );
        server.expect_normal(&mut stream.client, &running).await;
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
