//! What the overhead and allocation benches share: the configurations they
//! compare (written once, in [`each_config`]), the handler every one serves,
//! one request through a service, and the tower-http layers they compare
//! with.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{response::Parts, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Empty;
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::on_early_drop::{OnBodyDropFn, OnEarlyDropLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tower_lifecycle::{Lifecycle, LifecycleLayer};

/// The time limit of the configurations that set one.
pub const LIMIT: Duration = Duration::from_secs(30);

/// The handler every configuration serves.
pub async fn hello<B>(_req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::from("hello world")))
}

/// The same handler, waiting once first (it yields to the runtime, as a
/// handler that awaits I/O does), so that the layer sees it pending.
pub async fn hello_pending<B>(req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    tokio::task::yield_now().await;
    hello(req).await
}

/// The same handler, asking for the shutdown signal first (and dropping
/// it: what a handler that selects on it pays when it wins the race).
pub fn hello_watching_shutdown(
    req: Request<()>,
) -> impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send {
    drop(
        req.extensions()
            .get::<Lifecycle>()
            .expect("the layer inserts a Lifecycle")
            .shutting_down(),
    );
    hello(req)
}

/// The same handler, registering one shutdown hook first.
pub fn hello_with_hook(
    req: Request<()>,
) -> impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send {
    req.extensions()
        .get::<Lifecycle>()
        .expect("the layer inserts a Lifecycle")
        .on_shutdown(|_| {});
    hello(req)
}

/// One request: `oneshot` on a clone of the service, then the whole body.
pub async fn call<S, B>(svc: &S) -> Bytes
where
    S: Service<Request<()>, Response = Response<B>, Error: Debug> + Clone,
    B: Body<Error: Debug>,
{
    let response = svc.clone().oneshot(Request::new(())).await.unwrap();
    response.into_body().collect().await.unwrap().to_bytes()
}

/// `OnEarlyDropLayer` with a no-op callback in both slots (the future and
/// the body), the cheapest way to use it for what this crate does.
pub type EarlyDrop = OnEarlyDropLayer<
    fn(&Request<()>) -> fn(),
    OnBodyDropFn<fn(&Request<()>) -> fn(&Parts) -> fn()>,
>;

pub fn early_drop() -> EarlyDrop {
    fn noop() {}
    fn future_drop(_: &Request<()>) -> fn() {
        noop
    }
    fn body_drop(_: &Request<()>) -> fn(&Parts) -> fn() {
        |_| noop
    }
    OnEarlyDropLayer::builder()
        .on_future_drop(future_drop as fn(&Request<()>) -> fn())
        .on_body_drop(OnBodyDropFn::new(
            body_drop as fn(&Request<()>) -> fn(&Parts) -> fn(),
        ))
}

/// `TimeoutLayer` answering 503, as `LifecycleLayer::time_limit` does.
pub fn timeout() -> TimeoutLayer {
    TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, LIMIT)
}

/// What a bench does with each configuration: gets its name and a service.
pub trait Configs {
    fn config<S, B>(&mut self, name: &'static str, svc: S)
    where
        S: Benched<B>,
        B: Body<Error: Debug>;
}

/// A service a bench can drive: a configuration with its handler.
pub trait Benched<B>:
    Service<Request<()>, Response = Response<B>, Error: Debug> + Clone + Send + Sync + 'static
{
}

impl<S, B> Benched<B> for S where
    S: Service<Request<()>, Response = Response<B>, Error: Debug> + Clone + Send + Sync + 'static
{
}

/// Hands every configuration to `c`, in table order: no layer first, then
/// the layer's configurations, then the tower-http layers.
pub fn each_config(c: &mut impl Configs) {
    c.config("bare", ServiceBuilder::new().service_fn(hello));
    c.config(
        "lifecycle_default",
        ServiceBuilder::new()
            .layer(LifecycleLayer::new())
            .service_fn(hello),
    );
    c.config(
        "lifecycle_hook",
        ServiceBuilder::new()
            .layer(LifecycleLayer::new())
            .service_fn(hello_with_hook),
    );
    c.config(
        "lifecycle_time_limit",
        ServiceBuilder::new()
            .layer(LifecycleLayer::new().time_limit(LIMIT))
            .service_fn(hello),
    );
    c.config(
        "lifecycle_ignore_abort",
        ServiceBuilder::new()
            .layer(LifecycleLayer::new().ignore_abort(true))
            .service_fn(hello),
    );
    c.config(
        "lifecycle_full",
        ServiceBuilder::new()
            .layer(LifecycleLayer::new().time_limit(LIMIT).ignore_abort(true))
            .service_fn(hello_with_hook),
    );
    c.config(
        "lifecycle_no_detach",
        ServiceBuilder::new()
            .layer(LifecycleLayer::new().max_detached(0))
            .service_fn(hello),
    );
    c.config(
        "lifecycle_on_complete",
        ServiceBuilder::new()
            .layer(LifecycleLayer::new().on_complete(|_| {}))
            .service_fn(hello),
    );
    c.config(
        "lifecycle_shutting_down",
        ServiceBuilder::new()
            .layer(LifecycleLayer::new())
            .service_fn(hello_watching_shutdown),
    );
    c.config(
        "bare_pending",
        ServiceBuilder::new().service_fn(hello_pending),
    );
    c.config(
        "lifecycle_pending",
        ServiceBuilder::new()
            .layer(LifecycleLayer::new())
            .service_fn(hello_pending),
    );
    c.config(
        "tower_http_early_drop",
        ServiceBuilder::new().layer(early_drop()).service_fn(hello),
    );
    c.config(
        "tower_http_timeout",
        ServiceBuilder::new().layer(timeout()).service_fn(hello),
    );
    c.config(
        "tower_http_early_drop_plus_timeout",
        ServiceBuilder::new()
            .layer(early_drop())
            .layer(timeout())
            .service_fn(hello),
    );
    c.config(
        "tower_http_trace",
        ServiceBuilder::new()
            // `TraceLayer` wants a request body that is a `Body`.
            .map_request(|req: Request<()>| req.map(|()| Empty::<Bytes>::new()))
            .layer(TraceLayer::new_for_http())
            .service_fn(hello),
    );
}
