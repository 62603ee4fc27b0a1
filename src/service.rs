//! [`LifecycleService`]: creates the per-request state.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use crate::config::Config;
use crate::continuation::detach_handler;
use crate::grpc;
use crate::layer::LifecycleLayer;
use crate::panic;
use crate::per_thread;
use crate::response_side::ResponseSide;
use crate::tally::Bodiless;
use crate::watch::{ConnectionWatch, Waiting};
use crate::{Lifecycle, LifecycleBody, ResponseFuture};

/// Middleware that tracks every request's connection lifecycle.
///
/// Built by [`LifecycleLayer`]. For each request it inserts a
/// [`Lifecycle`] into the request's extensions, calls the inner service,
/// and wraps the response future ([`ResponseFuture`]) and body
/// ([`LifecycleBody`]) to learn how the request ended.
///
/// The inner service's future and response body must be `Send + 'static`
/// (as hyper, axum and tonic servers require anyway): ignore-abort moves
/// them into a task when the client leaves.
pub struct LifecycleService<S> {
    inner: S,
    config: Arc<Config>,
}

/// A clone made on a thread holds that thread's copy of the layer's
/// settings: servers clone the service for every connection or request
/// (axum's router does), and clones on different threads then never write
/// one reference count.
impl<S: Clone> Clone for LifecycleService<S> {
    fn clone(&self) -> Self {
        LifecycleService {
            inner: self.inner.clone(),
            config: per_thread::settings(&self.config),
        }
    }
}

impl<S> LifecycleService<S> {
    /// Wraps `inner` with the default settings; the same as
    /// `LifecycleLayer::new().layer(inner)`.
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&LifecycleLayer::new(), inner)
    }

    pub(crate) fn from_config(inner: S, config: Arc<Config>) -> Self {
        LifecycleService { inner, config }
    }

    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for LifecycleService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Error: Into<crate::BoxError>,
{
    type Response = Response<LifecycleBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let grpc = grpc::is_grpc(req.headers());
        let grpc_cap = if grpc {
            grpc::deadline_cap(req.headers())
        } else {
            None
        };
        let shared = per_thread::start(&self.config, grpc_cap);
        let bodiless = Bodiless::of(req.method());
        let connection = req
            .extensions()
            .get::<ConnectionWatch>()
            .map(|watch| Waiting::new(watch.clone(), req.version() < http::Version::HTTP_2));
        req.extensions_mut().insert(Lifecycle {
            shared: shared.clone(),
        });
        // Ends the lifecycle (panicked) should the inner `call` panic.
        let side = ResponseSide::open(shared);
        let panics = panic::count();
        // Boxed whatever the settings (see `ResponseFuture`): the box made
        // first, so that the future is written straight into it rather
        // than built on the stack and copied there.
        let slot = Box::new_uninit();
        let future = Box::into_pin(Box::write(slot, self.inner.call(req)));
        if panic::count() != panics {
            // A panic caught inside the inner `call` (CatchPanicLayer).
            if let Some(shared) = side.shared() {
                shared.panicked();
            }
        }
        ResponseFuture::new(
            future,
            side,
            detach_handler::<S::Future, ResBody, S::Error>,
            bodiless,
            grpc,
            connection,
        )
    }
}

impl<S: fmt::Debug> fmt::Debug for LifecycleService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LifecycleService")
            .field("inner", &self.inner)
            .field("on_complete", &self.config.on_complete.is_some())
            .finish()
    }
}
