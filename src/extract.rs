//! The axum extractor (feature `axum`).

use std::convert::Infallible;
use std::fmt;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use http::StatusCode;

use crate::Lifecycle;

/// Extracts the request's [`Lifecycle`].
///
/// Fails with [`MissingLifecycle`] (500) when no
/// [`LifecycleLayer`](crate::LifecycleLayer) wraps the route. Extract
/// `Option<Lifecycle>` for handlers that also run without the layer.
///
/// ```
/// use axum::{routing::get, Router};
/// use tower_lifecycle::{Lifecycle, LifecycleLayer};
///
/// async fn handler(lifecycle: Lifecycle) -> &'static str {
///     lifecycle.on_shutdown(|done| println!("finished: {}", done.status()));
///     "hello"
/// }
///
/// let app: Router = Router::new()
///     .route("/", get(handler))
///     .layer(LifecycleLayer::new());
/// ```
impl<S: Send + Sync> FromRequestParts<S> for Lifecycle {
    type Rejection = MissingLifecycle;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Lifecycle>()
            .cloned()
            .ok_or(MissingLifecycle)
    }
}

/// Extracts `Option<Lifecycle>`: `None` when no
/// [`LifecycleLayer`](crate::LifecycleLayer) wraps the route. Never fails.
impl<S: Send + Sync> OptionalFromRequestParts<S> for Lifecycle {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Lifecycle>().cloned())
    }
}

/// Rejection of the [`Lifecycle`] extractor when the request has no
/// lifecycle: the route is not wrapped by
/// [`LifecycleLayer`](crate::LifecycleLayer).
///
/// Responds `500 Internal Server Error` with a text that says how to fix it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MissingLifecycle;

impl MissingLifecycle {
    const MESSAGE: &'static str = "Missing request extension: `tower_lifecycle::Lifecycle`. \
        Is `LifecycleLayer` added? Wrap the routes that use it, for example \
        `Router::new().route(..).layer(tower_lifecycle::LifecycleLayer::new())`.";
}

impl fmt::Display for MissingLifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::MESSAGE)
    }
}

impl std::error::Error for MissingLifecycle {}

impl IntoResponse for MissingLifecycle {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, Self::MESSAGE).into_response()
    }
}
