//! The connection watch with `axum::serve`: [`Listener`] watches every
//! connection it accepts, [`make_service`] puts each connection's watch in
//! its requests.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::extract::ConnectInfo;
use axum::serve::IncomingStream;
use http::Request;
use pin_project_lite::pin_project;
use tokio::net::{TcpListener, TcpStream};
use tower_service::Service;

use super::{ConnectionWatch, Leaving, Watched};

/// A `TcpListener` for `axum::serve` whose connections are [`Watched`].
///
/// Use it with [`make_service`], which hands each connection's watch to
/// its requests:
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// use axum::{routing::get, Router};
/// use tower_lifecycle::{watch, LifecycleLayer};
///
/// let app = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .layer(LifecycleLayer::new());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(watch::Listener::new(listener), watch::make_service(app)).await
/// # }
/// ```
///
/// A connection whose socket cannot be watched (the client already reset
/// it) is dropped, and the next one accepted. Accept errors are handled as
/// axum's own listener does: logged, then retried after a pause.
#[derive(Debug)]
pub struct Listener {
    inner: TcpListener,
    leaving: Leaving,
}

impl Listener {
    /// Watches every connection `listener` accepts, a FIN or a reset
    /// counting as the client leaving.
    pub fn new(listener: TcpListener) -> Self {
        Listener {
            inner: listener,
            leaving: Leaving::default(),
        }
    }

    /// Takes for the client's leaving what `leaving` says.
    pub fn leaving(mut self, leaving: Leaving) -> Self {
        self.leaving = leaving;
        self
    }
}

impl axum::serve::Listener for Listener {
    type Io = Watched<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            match Watched::with_leaving(stream, self.leaving) {
                Ok(watched) => return (watched, addr),
                Err(err) => {
                    tracing::debug!(%addr, %err, "tower_lifecycle: not watching a connection")
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Wraps `app` (a `Router`, or any make-service `axum::serve` takes) so
/// that each connection from a [`Listener`] puts its [`ConnectionWatch`]
/// and its `ConnectInfo<SocketAddr>` in every request.
///
/// So `ConnectInfo<SocketAddr>` extracts as with
/// `into_make_service_with_connect_info::<SocketAddr>()`, which is not
/// needed (nor usable) here: axum implements `Connected` for
/// `SocketAddr` with its own listeners only.
pub fn make_service<M>(app: M) -> MakeService<M> {
    MakeService { inner: app }
}

/// The make-service of [`make_service`].
#[derive(Clone, Debug)]
pub struct MakeService<M> {
    inner: M,
}

impl<'a, M, S> Service<IncomingStream<'a, Listener>> for MakeService<M>
where
    M: Service<IncomingStream<'a, Listener>, Response = S, Error = Infallible>,
{
    type Response = Connection<S>;
    type Error = Infallible;
    type Future = MakeFuture<M::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, stream: IncomingStream<'a, Listener>) -> Self::Future {
        let watch = stream.io().watch();
        let addr = *stream.remote_addr();
        MakeFuture {
            inner: self.inner.call(stream),
            made: Some((watch, addr)),
        }
    }
}

pin_project! {
    /// The future of [`MakeService`].
    #[derive(Debug)]
    pub struct MakeFuture<F> {
        #[pin]
        inner: F,
        made: Option<(ConnectionWatch, SocketAddr)>,
    }
}

impl<F, S, E> Future for MakeFuture<F>
where
    F: Future<Output = Result<S, E>>,
{
    type Output = Result<Connection<S>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let inner = ready!(this.inner.poll(cx))?;
        let (watch, addr) = this
            .made
            .take()
            .expect("MakeFuture polled after it completed");
        Poll::Ready(Ok(Connection { inner, watch, addr }))
    }
}

/// The service [`MakeService`] makes for one connection.
#[derive(Clone, Debug)]
pub struct Connection<S> {
    inner: S,
    watch: ConnectionWatch,
    addr: SocketAddr,
}

impl<S, B> Service<Request<B>> for Connection<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        let extensions = req.extensions_mut();
        extensions.insert(self.watch.clone());
        extensions.insert(ConnectInfo(self.addr));
        self.inner.call(req)
    }
}
