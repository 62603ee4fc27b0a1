//! One server under test: the layer around a handler, served on loopback
//! (HTTP/1.1 and HTTP/2), with the test's ends of the handlers' probe and of
//! the layer (its completions and its drain), and the requests the tests
//! make of it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::Empty;
use hyper::body::Incoming;
use tokio::task::JoinHandle;
use tower::ServiceBuilder;
use tower_lifecycle::{Drain, Lifecycle, LifecycleLayer};

use super::probe::{probe, Probe, Reports};
use super::{
    get, layer, read_exactly, serve, within, BodySender, Client, Completions, InFlight, Proto,
};

/// What a handler served by [`Server::start`] returns.
pub type Reply = Result<Response<BoxBody<Bytes, Infallible>>, Infallible>;

/// A server under test whose handlers report an `R` per request.
pub struct Server<R> {
    pub addr: SocketAddr,
    /// The test's end of the handlers' probe.
    pub reports: Reports<R>,
    /// What the layer's `on_complete` reported.
    pub done: Completions,
    /// The layer's drain.
    pub drain: Drain,
}

impl<R: Send + 'static> Server<R> {
    /// Serves `handler` with hyper-util behind a layer from [`layer`], set
    /// up by `configure`; each call gets a clone of the probe.
    pub async fn start<H, F>(
        configure: impl FnOnce(LifecycleLayer) -> LifecycleLayer,
        handler: H,
    ) -> Server<R>
    where
        H: Fn(Probe<R>, Request<Incoming>) -> F + Clone + Send + 'static,
        F: Future<Output = Reply> + Send + 'static,
    {
        Server::start_with(configure, |probe, layer| {
            serve(
                ServiceBuilder::new()
                    .layer(layer)
                    .service_fn(move |req| handler(probe.clone(), req)),
            )
        })
        .await
    }

    /// Like [`Server::start`], but `listen` serves the app: it gets the
    /// probe and the layer and returns the address it listens on.
    pub async fn start_with<S, A>(
        configure: impl FnOnce(LifecycleLayer) -> LifecycleLayer,
        listen: S,
    ) -> Server<R>
    where
        S: FnOnce(Probe<R>, LifecycleLayer) -> A,
        A: Future<Output = SocketAddr>,
    {
        let (layer, done) = layer();
        let layer = configure(layer);
        let drain = layer.drain();
        let (probe, reports) = probe();
        Server {
            addr: listen(probe, layer).await,
            reports,
            done,
            drain,
        }
    }
}

impl<R> Server<R> {
    /// The next handler's report.
    pub async fn report(&mut self) -> R {
        self.reports.next().await
    }

    /// A new client connection; its task runs until the connection closes.
    pub async fn connect(&self, proto: Proto) -> Client {
        Client::connect(self.addr, proto).await.0
    }

    /// Sends a GET for `path` on a new connection and returns the client,
    /// its connection's task and the response head.
    pub async fn request(
        &self,
        proto: Proto,
        path: &str,
    ) -> (Client, JoinHandle<()>, Response<Incoming>) {
        let (mut client, conn) = Client::connect(self.addr, proto).await;
        let res = send(&mut client, get(path)).await;
        (client, conn, res)
    }

    /// Sends a GET for `path` on a new connection, whose handler streams a
    /// body the test feeds; returns once the response head and the body's
    /// sending end came.
    pub async fn stream(&mut self, proto: Proto, path: &str) -> Streamed {
        let (client, conn, res) = self.request(proto, path).await;
        Streamed {
            client,
            conn,
            tx: self.reports.body_sender().await,
            body: res.into_body(),
        }
    }

    /// Starts a GET for `path` on a new connection, in a task.
    pub async fn visit(&self, proto: Proto, path: &str) -> InFlight {
        InFlight::start(self.addr, proto, path).await
    }
}

/// Sends `req` on `client` and returns the response head.
pub async fn send(client: &mut Client, req: Request<Empty<Bytes>>) -> Response<Incoming> {
    within("the response head", client.send(req))
        .await
        .expect("the request failed")
}

/// The `Lifecycle` the layer inserted into `req`.
pub fn lifecycle_of<B>(req: &Request<B>) -> Lifecycle {
    req.extensions()
        .get::<Lifecycle>()
        .expect("the layer inserts a Lifecycle")
        .clone()
}

/// A response whose body the test feeds (`tx`) and reads (`body`), on a
/// client connection of its own.
pub struct Streamed {
    pub client: Client,
    /// The client connection's task: aborting it closes an HTTP/1.1
    /// connection.
    pub conn: JoinHandle<()>,
    pub tx: BodySender,
    pub body: Incoming,
}

impl Streamed {
    /// Sends `chunk` through the body and reads it off at the client.
    pub async fn pass(&mut self, chunk: &'static str) {
        self.tx
            .send_data(Bytes::from_static(chunk.as_bytes()))
            .await
            .unwrap();
        read_exactly(&mut self.body, chunk).await;
    }
}

/// Sends `chunk` through `tx`; whether the body took it (it refuses once
/// the server dropped it).
pub async fn try_send(tx: &mut BodySender, chunk: &'static str) -> bool {
    tx.send_data(Bytes::from_static(chunk.as_bytes()))
        .await
        .is_ok()
}
