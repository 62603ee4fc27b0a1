//! The connection watch over real loopback sockets: a client that leaves
//! where hyper cannot see it (an unread upload, a pipelined request, a
//! half-close), a client that stops reading past the time limit, a live
//! client whose request an outer layer drops, and HTTP/2 beside it.

use crate::common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tower::{Service, ServiceBuilder};
use tower_lifecycle::watch::{Leaving, Watched};
use tower_lifecycle::{Completion, ConnectionStatus, Lifecycle, LifecycleLayer, Phase};

use common::{serve_watched, within, Client, Completions, Proto};

type Body = BoxBody<Bytes, Infallible>;

/// What a handler reports.
#[derive(Debug)]
enum Event {
    /// The handler runs, with its request's lifecycle.
    Started(Lifecycle),
    /// Reading the request body failed.
    BodyError,
    /// A handler under ignore-abort ran to its end.
    Finished,
}

/// The handlers, by path:
/// - `/ok`: answers `ok`;
/// - `/pause`: waits 10 ms, answers `paused`;
/// - `/count`: reads the request body, answers its length;
/// - `/stream`: a body of 64 KiB chunks that never ends, always ready;
/// - `/wait`: never answers, never reads the request body;
/// - `/read`: reads the request body (reports a failure), then never
///   answers;
/// - `/keep`: ignore-abort on; once its client left, answers;
/// - `/close`: keeps its lifecycle in a task for good, answers with
///   `Connection: close`.
fn app(
    layer: LifecycleLayer,
) -> (
    impl Service<
            Request<Incoming>,
            Response = Response<tower_lifecycle::LifecycleBody<Body>>,
            Error = Infallible,
            Future = impl Send,
        > + Clone
        + Send
        + 'static,
    mpsc::UnboundedReceiver<Event>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |req: Request<Incoming>| {
            let events = tx.clone();
            async move {
                let lifecycle = req
                    .extensions()
                    .get::<Lifecycle>()
                    .expect("the layer inserts a Lifecycle")
                    .clone();
                let path = req.uri().path().to_owned();
                match path.as_str() {
                    "/ok" => return Ok(Response::new(full("ok"))),
                    "/stream" => {
                        let chunks = stream::repeat_with(|| {
                            Ok(Frame::data(Bytes::from(vec![b'x'; 64 * 1024])))
                        });
                        return Ok(Response::new(StreamBody::new(chunks).boxed()));
                    }
                    "/pause" => {
                        // Waits once (the layer registers its wait on the
                        // connection), then answers.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        return Ok(Response::new(full("paused")));
                    }
                    "/count" => {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        return Ok(Response::new(
                            Full::new(Bytes::from(body.len().to_string())).boxed(),
                        ));
                    }
                    "/close" => {
                        tokio::spawn(async move {
                            let _kept = lifecycle;
                            std::future::pending::<()>().await;
                        });
                        let mut res = Response::new(full("bye"));
                        res.headers_mut()
                            .insert(http::header::CONNECTION, "close".parse().unwrap());
                        return Ok(res);
                    }
                    "/keep" => {
                        lifecycle.ignore_abort(true);
                    }
                    _ => {}
                }
                let _ = events.send(Event::Started(lifecycle.clone()));
                if path == "/read" && req.into_body().collect().await.is_err() {
                    let _ = events.send(Event::BodyError);
                }
                if path == "/keep" {
                    lifecycle.aborted().await;
                    let _ = events.send(Event::Finished);
                    return Ok(Response::new(full("done")));
                }
                std::future::pending().await
            }
        });
    (svc, rx)
}

fn full(text: &'static str) -> Body {
    Full::new(Bytes::from_static(text.as_bytes())).boxed()
}

/// A server with the layer configured by `configure`, watching as
/// `leaving` says.
struct Server {
    addr: SocketAddr,
    done: Completions,
    events: mpsc::UnboundedReceiver<Event>,
}

impl Server {
    async fn start(
        leaving: Leaving,
        configure: impl FnOnce(LifecycleLayer) -> LifecycleLayer,
    ) -> Self {
        let (layer, done) = common::layer();
        let (svc, events) = app(configure(layer));
        let addr = serve_watched(svc, leaving).await;
        Server { addr, done, events }
    }

    async fn event(&mut self) -> Event {
        within("a handler event", self.events.recv())
            .await
            .expect("the server is gone")
    }

    /// Waits for a handler to start.
    async fn started(&mut self) -> Lifecycle {
        match self.event().await {
            Event::Started(lifecycle) => lifecycle,
            other => panic!("expected a handler to start, got {other:?}"),
        }
    }

    /// A raw HTTP/1.1 connection that has sent `head` (and `body`).
    async fn send(&self, head: &str, body: &[u8]) -> TcpStream {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        stream
    }
}

/// The head of a 1 MB POST to `path`.
fn upload(path: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n")
}

/// 100 KB of the upload's body.
fn some_of_the_upload() -> Vec<u8> {
    vec![b'u'; 100_000]
}

/// Reads until the server closes the connection (or resets it); returns
/// what was read.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    within("the server to close the connection", async {
        let mut got = Vec::new();
        let mut buf = vec![0; 64 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
}

fn assert_aborted(done: &Completion, phase: Phase) {
    assert_eq!(done.status(), ConnectionStatus::ABORTED, "{done:?}");
    assert_eq!(done.phase(), phase, "{done:?}");
    assert!(!done.cancelled(), "{done:?}");
}

#[tokio::test]
async fn a_client_that_closes_during_an_unread_upload_is_aborted_at_once() {
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    let stream = server.send(&upload("/wait"), &some_of_the_upload()).await;
    let lifecycle = server.started().await;
    drop(stream); // FIN: nothing was sent to the client
    within("aborted()", lifecycle.aborted()).await;
    assert_aborted(&server.done.next().await, Phase::Handler);
    server.done.assert_none();
}

#[tokio::test]
async fn a_client_that_resets_during_an_unread_upload_is_aborted_at_once() {
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    let stream = server.send(&upload("/wait"), &some_of_the_upload()).await;
    let lifecycle = server.started().await;
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream); // RST
    within("aborted()", lifecycle.aborted()).await;
    assert_aborted(&server.done.next().await, Phase::Handler);
}

#[tokio::test]
async fn a_handler_reading_the_body_when_the_client_closes_is_aborted() {
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    let stream = server.send(&upload("/read"), &some_of_the_upload()).await;
    let lifecycle = server.started().await;
    drop(stream);
    within("aborted()", lifecycle.aborted()).await;
    assert_aborted(&server.done.next().await, Phase::Handler);
}

#[tokio::test]
async fn a_close_behind_a_pipelined_request_is_seen() {
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    let second = "GET /ok HTTP/1.1\r\nhost: x\r\n\r\n";
    let stream = server
        .send("GET /wait HTTP/1.1\r\nhost: x\r\n\r\n", second.as_bytes())
        .await;
    let lifecycle = server.started().await;
    drop(stream);
    within("aborted()", lifecycle.aborted()).await;
    assert_aborted(&server.done.next().await, Phase::Handler);
}

#[tokio::test]
async fn keep_alive_idle_and_a_close_between_requests_is_no_abort() {
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    let (mut client, conn) = Client::connect(server.addr, Proto::Http1).await;
    for _ in 0..3 {
        let res = within("a response", client.send(common::get("/ok")))
            .await
            .unwrap();
        assert_eq!(common::read_all(res).await, "ok");
        let done = server.done.next().await;
        assert_eq!(done.status(), ConnectionStatus::NORMAL, "{done:?}");
    }
    drop(client);
    within("the connection to close", conn).await.unwrap();
    // An abort would have been reported by now: the close was seen (the
    // client's connection task ended) and nothing was in flight.
    let res = Client::connect(server.addr, Proto::Http1)
        .await
        .0
        .send(common::get("/ok"))
        .await;
    assert_eq!(common::read_all(res.unwrap()).await, "ok");
    let done = server.done.next().await;
    assert_eq!(done.status(), ConnectionStatus::NORMAL, "{done:?}");
    server.done.assert_none();
}

/// Reads off `stream` until what was read ends with `end`.
async fn read_until(stream: &mut TcpStream, end: &str) {
    within(end, async {
        let mut got = Vec::new();
        let mut buf = [0; 1024];
        while !got.ends_with(end.as_bytes()) {
            let n = stream.read(&mut buf).await.unwrap();
            assert_ne!(
                n,
                0,
                "closed before {end:?}: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
}

#[tokio::test]
async fn the_watch_stops_between_waits_and_comes_back_for_the_next() {
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    let mut stream = server
        .send("GET /pause HTTP/1.1\r\nhost: x\r\n\r\n", b"")
        .await;
    read_until(&mut stream, "paused").await;
    // Data with nothing waiting: the watcher stops watching.
    stream
        .write_all(b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut stream, "ok").await;
    // The next request that waits brings it back: its client's close is
    // seen while hyper is not reading.
    stream.write_all(upload("/wait").as_bytes()).await.unwrap();
    stream.write_all(&some_of_the_upload()).await.unwrap();
    let lifecycle = server.started().await;
    drop(stream);
    within("aborted()", lifecycle.aborted()).await;
    for _ in 0..2 {
        assert_eq!(server.done.next().await.status(), ConnectionStatus::NORMAL);
    }
    assert_aborted(&server.done.next().await, Phase::Handler);
    server.done.assert_none();
}

#[tokio::test]
async fn a_half_close_is_a_goodbye_by_default() {
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    let mut stream = server
        .send("GET /wait HTTP/1.1\r\nhost: x\r\n\r\n", b"")
        .await;
    let lifecycle = server.started().await;
    stream.shutdown().await.unwrap(); // FIN, still reading
    within("aborted()", lifecycle.aborted()).await;
    assert_aborted(&server.done.next().await, Phase::Handler);
    // Nothing is delivered: the layer shut the connection down.
    assert_eq!(read_to_close(&mut stream).await, b"");
}

#[tokio::test]
async fn reset_only_keeps_a_half_closed_client_and_sees_its_reset() {
    let mut server = Server::start(Leaving::ResetOnly, |l| l).await;
    // A half-closed client still gets its answer.
    let mut stream = server
        .send("GET /keep HTTP/1.1\r\nhost: x\r\n\r\n", b"")
        .await;
    let lifecycle = server.started().await;
    stream.shutdown().await.unwrap();
    // The handler waits for an abort that does not come: the client is
    // reset later, which is then the abort.
    let mut probe = server
        .send(
            "GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            b"",
        )
        .await;
    let answer = read_to_close(&mut probe).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    let done = server.done.next().await;
    assert_eq!(
        done.status(),
        ConnectionStatus::NORMAL,
        "the probe: {done:?}"
    );
    assert!(!lifecycle.is_aborted(), "a half-close is not an abort here");
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream);
    within("aborted()", lifecycle.aborted()).await;
    assert!(matches!(server.event().await, Event::Finished));
    let done = server.done.next().await;
    assert_eq!(done.status(), ConnectionStatus::ABORTED, "{done:?}");
    assert!(done.continued(), "{done:?}");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_at_the_time_limit() {
    let mut server = Server::start(Leaving::FinOrReset, |l| {
        l.time_limit(Duration::from_millis(300))
    })
    .await;
    let mut stream = server
        .send("GET /stream HTTP/1.1\r\nhost: x\r\n\r\n", b"")
        .await;
    // The client reads nothing; the layer cuts the connection at the limit
    // while the client is still there.
    let done = server.done.next().await;
    assert_eq!(done.status(), ConnectionStatus::TIMEOUT, "{done:?}");
    assert_eq!(done.phase(), Phase::Body, "{done:?}");
    assert!(!done.cancelled(), "{done:?}");
    let got = read_to_close(&mut stream).await;
    assert!(got.starts_with(b"HTTP/1.1 200"), "the head was sent");
}

#[tokio::test]
async fn ignore_abort_continues_a_handler_whose_client_left_unseen() {
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    let stream = server.send(&upload("/keep"), &some_of_the_upload()).await;
    let lifecycle = server.started().await;
    drop(stream);
    within("aborted()", lifecycle.aborted()).await;
    assert!(matches!(server.event().await, Event::Finished));
    let done = server.done.next().await;
    assert_eq!(done.status(), ConnectionStatus::ABORTED, "{done:?}");
    assert_eq!(done.phase(), Phase::Continued, "{done:?}");
    assert!(done.continued(), "{done:?}");
}

#[tokio::test]
async fn a_lifecycle_kept_in_a_task_does_not_keep_the_socket_open() {
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    let mut stream = server
        .send("GET /close HTTP/1.1\r\nhost: x\r\n\r\n", b"")
        .await;
    let got = read_to_close(&mut stream).await;
    assert!(got.ends_with(b"bye"), "{:?}", String::from_utf8_lossy(&got));
    let done = server.done.next().await;
    assert_eq!(done.status(), ConnectionStatus::NORMAL, "{done:?}");
}

#[tokio::test]
async fn an_outer_timeout_with_the_client_still_there_is_cancelled_not_aborted() {
    let (layer, mut done) = common::layer();
    let (svc, mut events) = app(layer);
    let svc = ServiceBuilder::new()
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(200),
        ))
        // TimeoutLayer's own answer needs a body with a `Default`.
        .map_response(|res: Response<_>| res.map(BodyExt::boxed_unsync))
        .service(svc);
    let addr = serve_watched(svc, Leaving::FinOrReset).await;
    for proto in common::BOTH {
        let (mut client, _conn) = Client::connect(addr, proto).await;
        let res = within(
            "the outer timeout's answer",
            client.send(common::get("/wait")),
        )
        .await
        .unwrap();
        assert_eq!(res.status(), http::StatusCode::REQUEST_TIMEOUT);
        assert!(matches!(
            within("the handler", events.recv()).await,
            Some(Event::Started(_))
        ));
        let done = done.next().await;
        match proto {
            // The client could only have left by closing the connection,
            // and the watch says it did not.
            Proto::Http1 => {
                assert_eq!(done.status(), ConnectionStatus::NORMAL, "{done:?}");
                assert!(done.cancelled(), "{done:?}");
            }
            // A stream the client cancels looks the same as this: taken
            // for an abort, as without a watch.
            Proto::Http2 => assert_aborted(&done, Phase::Handler),
        }
    }
}

#[tokio::test]
async fn http2_streams_on_a_watched_connection_end_one_by_one() {
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    let (client, conn) = Client::connect(server.addr, Proto::Http2).await;
    let Client::Http2(send) = client else {
        unreachable!()
    };
    // One stream waits; the client cancels it.
    let mut waiting = send.clone();
    let pending = tokio::spawn(async move { waiting.send_request(common::get("/wait")).await });
    let lifecycle = server.started().await;
    // Others complete meanwhile.
    for _ in 0..5 {
        let mut send = send.clone();
        let res = within("a response", send.send_request(common::get("/ok")))
            .await
            .unwrap();
        assert_eq!(common::read_all(res).await, "ok");
        let done = server.done.next().await;
        assert_eq!(done.status(), ConnectionStatus::NORMAL, "{done:?}");
    }
    pending.abort();
    within("aborted()", lifecycle.aborted()).await;
    assert_aborted(&server.done.next().await, Phase::Handler);
    assert!(!conn.is_finished(), "the connection is still open");
    server.done.assert_none();
}

#[tokio::test]
async fn an_http2_client_that_closes_during_an_upload_is_aborted() {
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(4);
    let req = Request::post("http://x/wait").body(body).unwrap();
    let call = tokio::spawn(async move { send.send_request(req).await });
    tx.send_data(Bytes::from(some_of_the_upload()))
        .await
        .unwrap();
    let lifecycle = server.started().await;
    call.abort();
    conn.abort();
    within("aborted()", lifecycle.aborted()).await;
    assert_aborted(&server.done.next().await, Phase::Handler);
}

#[tokio::test]
async fn watching_a_socket_the_client_already_reset_is_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    // Wait until the reset arrived: the accepted socket reads an error.
    within("the reset", accepted.readable()).await.unwrap();
    let err = Watched::new(accepted).expect_err("a reset socket cannot be watched");
    assert_eq!(err.kind(), std::io::ErrorKind::NotConnected, "{err}");
}

#[tokio::test]
async fn axum_serve_with_the_watched_listener_sees_an_unread_upload_abandoned() {
    use axum::extract::ConnectInfo;
    use axum::routing::post;
    use tower_lifecycle::watch;

    let (layer, mut done) = common::layer();
    let (tx, mut started) = mpsc::unbounded_channel();
    let app = axum::Router::new()
        .route(
            "/upload",
            post(
                move |ConnectInfo(peer): ConnectInfo<SocketAddr>, lifecycle: Lifecycle| async move {
                    let _ = tx.send((peer, lifecycle));
                    std::future::pending::<()>().await
                },
            ),
        )
        .layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(watch::Listener::new(listener), watch::make_service(app)).await
    });
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(upload("/upload").as_bytes())
        .await
        .unwrap();
    stream.write_all(&some_of_the_upload()).await.unwrap();
    let (peer, lifecycle) = within("the handler", started.recv()).await.unwrap();
    assert_eq!(
        peer,
        stream.local_addr().unwrap(),
        "ConnectInfo<SocketAddr>"
    );
    drop(stream);
    within("aborted()", lifecycle.aborted()).await;
    assert_aborted(&done.next().await, Phase::Handler);
}

#[tokio::test]
async fn under_tls_the_watch_made_before_the_handshake_sees_the_client_leave() {
    use std::sync::Arc;
    use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let server_config = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server_config));

    let (layer, mut done) = common::layer();
    let (svc, mut events) = app(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        // The watch looks at the TCP socket: made before TLS wraps it.
        let watched = Watched::new(stream).unwrap();
        let watch = watched.watch();
        let tls = acceptor.accept(watched).await.unwrap();
        let svc = ServiceBuilder::new().layer(watch.layer()).service(svc);
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(
                TokioIo::new(tls),
                hyper_util::service::TowerToHyperService::new(svc),
            )
            .await;
    });

    let mut roots = RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client_config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(client_config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(upload("/wait").as_bytes()).await.unwrap();
    tls.write_all(&some_of_the_upload()).await.unwrap();
    let Some(Event::Started(lifecycle)) = within("the handler", events.recv()).await else {
        panic!("expected the handler to start");
    };
    drop(tls); // the TCP connection closes, no TLS close_notify needed
    within("aborted()", lifecycle.aborted()).await;
    assert_aborted(&done.next().await, Phase::Handler);
}

#[tokio::test]
async fn a_large_upload_read_to_its_end_is_no_abort() {
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    const SIZE: usize = 8 * 1024 * 1024;
    let head = format!(
        "POST /count HTTP/1.1\r\nhost: x\r\ncontent-length: {SIZE}\r\nconnection: close\r\n\r\n"
    );
    let mut stream = server.send(&head, &vec![b'u'; SIZE]).await;
    let answer = read_to_close(&mut stream).await;
    assert!(
        answer.ends_with(SIZE.to_string().as_bytes()),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let done = server.done.next().await;
    assert_eq!(done.status(), ConnectionStatus::NORMAL, "{done:?}");
    server.done.assert_none();
}
