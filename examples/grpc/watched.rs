//! The connection watch with tonic's `serve_with_incoming`: each accepted
//! stream is `Watched`, and tells tonic its peer and its watch; a layer
//! hands the watch on to `LifecycleLayer` (and the peer to
//! `Request::remote_addr`, which looks for `TcpConnectInfo`).
//!
//! ```ignore
//! Server::builder()
//!     .layer(watched::layer(LifecycleLayer::new()))
//!     .add_service(jobs)
//!     .serve_with_incoming(watched::incoming(listener))
//! ```
//!
//! gRPC runs over HTTP/2, which hyper reads all the time: it sees a client
//! leave by itself. The watch still earns its place for what it shares
//! with HTTP/1.1 servers (one accept loop, one `ConnectionWatch` for
//! handlers to wait on).
#![allow(unreachable_pub)]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tower::layer::util::Stack;
use tower::util::MapRequestLayer;
use tower_lifecycle::watch::{ConnectionWatch, Watched};
use tower_lifecycle::LifecycleLayer;

/// A watched connection, as tonic takes it.
pub struct Conn(Watched<TcpStream>);

/// What a [`Conn`] tells tonic: its peer and its watch.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub tcp: TcpConnectInfo,
    pub watch: ConnectionWatch,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            tcp: self.0.get_ref().connect_info(),
            watch: self.0.watch(),
        }
    }
}

/// The connections `listener` accepts, each watched; one that cannot be
/// watched (its client already reset it) is skipped.
pub fn incoming(listener: TcpListener) -> impl Stream<Item = io::Result<Conn>> {
    TcpListenerStream::new(listener).filter_map(|accepted| match accepted {
        Ok(stream) => Watched::new(stream).ok().map(|watched| Ok(Conn(watched))),
        Err(err) => Some(Err(err)),
    })
}

/// Puts the connection's watch and `TcpConnectInfo` in the request, for
/// the layer and for `Request::remote_addr`.
fn lift(mut req: http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> {
    if let Some(info) = req.extensions().get::<ConnInfo>().cloned() {
        req.extensions_mut().insert(info.watch);
        req.extensions_mut().insert(info.tcp);
    }
    req
}

type Lift = fn(http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body>;

/// `lifecycle` behind the layer that hands it the watch.
pub fn layer(lifecycle: LifecycleLayer) -> Stack<LifecycleLayer, MapRequestLayer<Lift>> {
    Stack::new(lifecycle, MapRequestLayer::new(lift as Lift))
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
