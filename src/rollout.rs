//! The steps of a stop in a fleet: a readiness probe that turns 503
//! ([`Readiness`]), then a delay, then the shutdown ([`OnSignal`]).

use std::convert::Infallible;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Request, Response, StatusCode};

use crate::{Drain, ShutdownReport};

/// A readiness probe, from [`Drain::readiness`]: a tower service that
/// answers `200 ready` until the stop starts and `503 shutting down` after
/// (`text/plain`, `cache-control: no-store`), whatever the request.
///
/// It is `Clone` and its future is ready at once; in axum,
/// `Router::route_service("/ready", drain.readiness())`. Put it outside
/// the layer (or on a router the layer does not wrap) if probes should not
/// count as requests in flight.
#[derive(Clone)]
pub struct Readiness {
    drain: Drain,
}

/// The rolling-deploy steps of a [`Drain`].
impl Drain {
    /// The steps of a stop, started by `signal`: readiness answers 503, a
    /// delay (none by default) lets load balancers notice, then
    /// [`shutdown`](Self::shutdown) with a grace (30 s by default). Run it
    /// beside the server ([`OnSignal::spawn`], or await it: it is
    /// [`IntoFuture`](std::future::IntoFuture)), whose graceful shutdown
    /// waits on [`begun`](Self::begun).
    pub fn on_signal<F: Future>(&self, signal: F) -> OnSignal<F> {
        OnSignal {
            drain: self.clone(),
            signal,
            unready_for: Duration::ZERO,
            grace: Duration::from_secs(30),
        }
    }

    /// A tower service for readiness probes (Kubernetes `readinessProbe`,
    /// a load balancer's health check): `200 ready` until the stop starts
    /// ([`set_unready`](Self::set_unready), [`begin`](Self::begin)), `503
    /// shutting down` after. In axum: `.route_service("/ready",
    /// drain.readiness())`.
    pub fn readiness(&self) -> Readiness {
        Readiness {
            drain: self.clone(),
        }
    }
}

impl Readiness {
    fn answer(&self) -> Response<String> {
        let (status, text) = if !self.drain.is_ready() {
            (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
        } else {
            (StatusCode::OK, "ready\n")
        };
        let mut response = Response::new(text.to_owned());
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readiness")
            .field("ready", &self.drain.is_ready())
            .finish()
    }
}

impl<B> tower_service::Service<Request<B>> for Readiness {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        std::future::ready(Ok(self.answer()))
    }
}

/// The steps of a stop, from [`Drain::on_signal`]; await it (it is
/// [`IntoFuture`]) beside the server.
///
/// Run it with [`spawn`](Self::spawn), or await it beside the server.
///
/// 1. wait for the signal;
/// 2. readiness answers 503 ([`Drain::set_unready`]); requests are still
///    served as usual for [`unready_for`](Self::unready_for), so that load
///    balancers that poll it stop sending new ones;
/// 3. the shutdown begins ([`Drain::begin`]): Server-Sent Events and gRPC
///    streams end, handlers awaiting `shutting_down()` wake, and a server
///    whose graceful shutdown waits on [`Drain::begun`] stops accepting;
/// 4. the drain: what is left gets [`grace`](Self::grace), then is cut
///    ([`Drain::shutdown`]). Resolves to its report.
///
/// # With Kubernetes
///
/// The kubelet sends SIGTERM when a pod is to stop, and removes the pod
/// from its Service's endpoints at about the same time, but the endpoints
/// reach every node and ingress only a moment later. So: a readiness probe
/// on [`Drain::readiness`], a short `unready_for` (or a `preStop` sleep)
/// so traffic stops before the server does, and a
/// `terminationGracePeriodSeconds` longer than `unready_for` + `grace`:
///
/// ```yaml
/// spec:
///   terminationGracePeriodSeconds: 45     # > preStop + unready_for + grace
///   containers:
///     - name: app
///       readinessProbe:
///         httpGet: { path: /ready, port: 3000 }
///         periodSeconds: 2
///         failureThreshold: 1
///       lifecycle:
///         preStop:                        # optional: the kubelet waits this
///           exec:                         # long before SIGTERM, the pod
///             command: ["sleep", "3"]     # already leaving the endpoints
/// ```
///
/// The `preStop` sleep and `unready_for` do the same job from two sides
/// (the first before the signal, the second after it, with `/ready`
/// saying 503 so that balancers that probe also stop); one of them is
/// enough for most clusters. An image without `sleep` uses `unready_for`.
///
/// ```no_run
/// # use std::time::Duration;
/// # async fn run(drain: tower_lifecycle::Drain) {
/// # let sigterm = std::future::pending::<()>();
/// let stop = drain
///     .on_signal(sigterm)
///     .unready_for(Duration::from_secs(5))  // a few probe periods
///     .grace(Duration::from_secs(30));
/// let report = stop.await;
/// # }
/// ```
#[must_use = "the steps run only when awaited"]
pub struct OnSignal<F> {
    drain: Drain,
    signal: F,
    unready_for: Duration,
    grace: Duration,
}

impl<F> OnSignal<F> {
    /// How long readiness answers 503 while requests are still served,
    /// before the shutdown begins (none by default).
    pub fn unready_for(mut self, delay: Duration) -> Self {
        self.unready_for = delay;
        self
    }

    /// How long what is left after the shutdown began gets to finish before
    /// it is cut (30 s by default).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Runs the steps in a task of their own on the current tokio runtime
    /// (they must run beside the server); the handle resolves to the
    /// report.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub fn spawn(self) -> tokio::task::JoinHandle<ShutdownReport>
    where
        F: Future + Send + 'static,
    {
        tokio::spawn(self.into_future())
    }
}

impl<F> fmt::Debug for OnSignal<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnSignal")
            .field("unready_for", &self.unready_for)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

impl<F> IntoFuture for OnSignal<F>
where
    F: Future + Send + 'static,
{
    type Output = ShutdownReport;
    type IntoFuture = Pin<Box<dyn Future<Output = ShutdownReport> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            self.signal.await;
            self.drain.set_unready();
            tracing::debug!(
                delay = ?self.unready_for,
                "tower_lifecycle: not ready; the shutdown begins after the delay"
            );
            tokio::time::sleep(self.unready_for).await;
            self.drain.shutdown(self.grace).await
        })
    }
}
