//! [`WatchLayer`]: puts a connection's watch in each of its requests.

use std::task::{Context, Poll};

use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use super::ConnectionWatch;

impl ConnectionWatch {
    /// A layer that inserts this watch into every request's extensions,
    /// for a service built per connection (a hyper-util accept loop). Put
    /// it outside [`LifecycleLayer`](crate::LifecycleLayer).
    pub fn layer(&self) -> WatchLayer {
        WatchLayer {
            watch: self.clone(),
        }
    }
}

/// Inserts a [`ConnectionWatch`] into every request's extensions. Made by
/// [`ConnectionWatch::layer`].
#[derive(Clone, Debug)]
pub struct WatchLayer {
    watch: ConnectionWatch,
}

impl<S> Layer<S> for WatchLayer {
    type Service = WatchService<S>;

    fn layer(&self, inner: S) -> WatchService<S> {
        WatchService {
            inner,
            watch: self.watch.clone(),
        }
    }
}

/// The service of [`WatchLayer`].
#[derive(Clone, Debug)]
pub struct WatchService<S> {
    inner: S,
    watch: ConnectionWatch,
}

impl<S, B> Service<Request<B>> for WatchService<S>
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
        req.extensions_mut().insert(self.watch.clone());
        self.inner.call(req)
    }
}
