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
/// - `/late`: lifts its time limit, waits 900 ms, answers `late`;
/// - `/count`: reads the request body, answers its length;
/// - `/stream`: a body of 64 KiB chunks that never ends, always ready;
/// - `/trickle`: answers at once without reading the request body: a body
///   that yields `first` and then waits for good;
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
                    "/trickle" => {
                        let first = stream::iter([Ok(Frame::data(Bytes::from_static(b"first")))]);
                        return Ok(Response::new(
                            StreamBody::new(futures_util::StreamExt::chain(
                                first,
                                stream::pending(),
                            ))
                            .boxed(),
                        ));
                    }
                    "/pause" => {
                        // Waits once (the layer registers its wait on the
                        // connection), then answers.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        return Ok(Response::new(full("paused")));
                    }
                    "/late" => {
                        lifecycle.set_time_limit(None);
                        tokio::time::sleep(Duration::from_millis(900)).await;
                        return Ok(Response::new(full("late")));
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

    /// A raw HTTP/1.1 connection that has sent a GET for `path`.
    async fn get(&self, path: &str) -> TcpStream {
        self.send(&format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n"), b"")
            .await
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

mod leaving;
mod server_side;
