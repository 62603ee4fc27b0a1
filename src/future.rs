//! [`ResponseFuture`]: the handler phase.
//!
//! ABORTED is set here when the future is dropped before the inner service
//! produced the response head: hyper drops the future when the client left.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use crate::body::Bodiless;
use crate::lifecycle::{End, Shared};
use crate::LifecycleBody;

pin_project! {
    /// Response future of [`LifecycleService`](crate::LifecycleService).
    ///
    /// Dropped before it resolved, it ends the request's lifecycle with
    /// [`ABORTED`](crate::ConnectionStatus::ABORTED) in the
    /// [`Handler`](crate::Phase::Handler) phase, unless the drop comes from
    /// a panic in the handler (then [`Completion::panicked`](crate::Completion::panicked)
    /// is set instead). Once it resolves, the response body takes over.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        shared: Option<Arc<Shared>>,
        bodiless: Bodiless,
        // Set while the inner future is being polled: still set in `drop`
        // means its `poll` panicked.
        polling: bool,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(shared) = this.shared.take() {
                let panicked = *this.polling || std::thread::panicking();
                shared.end(End {
                    aborted: !panicked,
                    panicked,
                    ..End::handler()
                });
            }
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("done", &self.shared.is_none())
            .field("bodiless", &self.bodiless)
            .finish_non_exhaustive()
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, shared: Arc<Shared>, bodiless: Bodiless) -> Self {
        ResponseFuture {
            inner,
            shared: Some(shared),
            bodiless,
            polling: false,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
{
    type Output = Result<Response<LifecycleBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        *this.polling = true;
        let result = this.inner.poll(cx);
        *this.polling = false;
        let result = ready!(result);
        let shared = this
            .shared
            .take()
            .expect("ResponseFuture polled after it completed");
        match result {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                let body = LifecycleBody::new(body, shared, *this.bodiless, &parts);
                Poll::Ready(Ok(Response::from_parts(parts, body)))
            }
            Err(err) => {
                shared.end(End {
                    service_error: true,
                    ..End::handler()
                });
                Poll::Ready(Err(err))
            }
        }
    }
}
