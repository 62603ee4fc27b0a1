//! What the overhead and allocation benches share: the handler every
//! configuration serves, and one request through a service.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};
use tower_lifecycle::Lifecycle;

/// The time limit of the configurations that set one.
pub const LIMIT: Duration = Duration::from_secs(30);

/// The handler every configuration serves.
pub async fn hello<B>(_req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::from("hello world")))
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
    S: Service<Request<()>, Response = Response<B>> + Clone,
    S::Error: Debug,
    B: Body,
    B::Error: Debug,
{
    let response = svc.clone().oneshot(Request::new(())).await.unwrap();
    response.into_body().collect().await.unwrap().to_bytes()
}
