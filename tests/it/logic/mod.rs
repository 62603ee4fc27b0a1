//! Logic tests: the layer driven in-process with `ServiceBuilder` and
//! `tower_test`, aborts simulated by dropping the response future or body,
//! time limits on a paused clock. Everything that needs hyper is in the
//! loopback modules beside this one.
//!
//! This module holds the helpers its topic modules share.

mod body;
mod continued;
#[cfg(feature = "axum")]
mod extractor;
mod hooks;
mod outcomes;
mod panics;
mod reuse;
mod shutdown;
mod time_limit;
mod timings;

use std::convert::Infallible;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use tower::util::ServiceFn;
use tower::{Service, ServiceBuilder, ServiceExt};

use tower_lifecycle::{
    Completion, ConnectionStatus, Lifecycle, LifecycleLayer, LifecycleService, Phase,
};

const WAIT: Duration = Duration::from_secs(5);

/// Completions reported by the layer's `on_complete`, in order.
#[derive(Clone, Default)]
struct Seen(Arc<(Mutex<Vec<Completion>>, tokio::sync::Notify)>);

impl Seen {
    fn layer(&self) -> LifecycleLayer {
        let seen = self.clone();
        LifecycleLayer::new().on_complete(move |c| {
            seen.0 .0.lock().unwrap().push(c.clone());
            seen.0 .1.notify_waiters();
        })
    }

    /// Waits until `n` completions arrived (hooks handed to the runtime run
    /// later than the drop that ended the lifecycle), without keeping the
    /// runtime busy, so a paused clock still advances.
    async fn wait_for(&self, n: usize) -> Vec<Completion> {
        tokio::time::timeout(WAIT, async {
            loop {
                let mut notified = std::pin::pin!(self.0 .1.notified());
                notified.as_mut().enable();
                let all = self.all();
                if all.len() >= n {
                    return all;
                }
                notified.await;
            }
        })
        .await
        .expect("the completions within the wait")
    }

    /// `f` as a service behind a layer that reports here.
    fn service<F>(&self, f: F) -> LifecycleService<ServiceFn<F>> {
        layered(self.layer(), f)
    }

    /// `inner` behind a layer that reports here.
    fn wrap<S>(&self, inner: S) -> LifecycleService<S> {
        ServiceBuilder::new().layer(self.layer()).service(inner)
    }

    /// Waits for the first completion (hooks handed to the runtime run
    /// later than the drop that ended the lifecycle).
    async fn wait_one(&self) -> Completion {
        self.wait_for(1).await[0].clone()
    }

    fn all(&self) -> Vec<Completion> {
        self.0 .0.lock().unwrap().clone()
    }

    fn only(&self) -> Completion {
        let all = self.all();
        assert_eq!(all.len(), 1, "expected exactly one completion: {all:?}");
        all[0].clone()
    }
}

/// An ordered log of strings, shared by hooks.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }

    fn get(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// `f` as a service behind `layer`.
fn layered<F>(layer: LifecycleLayer, f: F) -> LifecycleService<ServiceFn<F>> {
    ServiceBuilder::new().layer(layer).service_fn(f)
}

/// Sends `req` through `svc` and reads the response body to its end;
/// returns what it held.
async fn run_to_end<S, B>(svc: S, req: Request<()>) -> Bytes
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let res = svc.oneshot(req).await.unwrap();
    res.into_body().collect().await.unwrap().to_bytes()
}

/// A GET request for `path`.
fn get(path: &str) -> Request<()> {
    Request::get(path).body(()).unwrap()
}

/// The status and phase a request ended with, to compare as a pair.
fn ended(c: &Completion) -> (ConnectionStatus, Phase) {
    (c.status(), c.phase())
}

fn lifecycle_of<B>(req: &Request<B>) -> Lifecycle {
    req.extensions()
        .get::<Lifecycle>()
        .expect("the layer inserts a Lifecycle")
        .clone()
}

fn full(s: &'static str) -> Response<Full<Bytes>> {
    Response::new(Full::from(s))
}

/// A hand-driven body: data chunks, then optional trailers, with an
/// inexact size hint unless told otherwise.
struct Chunks {
    chunks: std::collections::VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    exact: bool,
    fail_after: Option<usize>,
}

impl Chunks {
    fn new(chunks: &[&'static str]) -> Self {
        Chunks {
            chunks: chunks
                .iter()
                .map(|c| Bytes::from_static(c.as_bytes()))
                .collect(),
            trailers: None,
            exact: false,
            fail_after: None,
        }
    }

    fn remaining(&self) -> u64 {
        self.chunks.iter().map(|c| c.len() as u64).sum()
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = &'static str;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(n) = self.fail_after.as_mut() {
            if *n == 0 {
                return Poll::Ready(Some(Err("body failed")));
            }
            *n -= 1;
        }
        if let Some(chunk) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining())
        } else {
            SizeHint::default()
        }
    }
}

/// A body whose every poll `poll` answers, for the odd bodies a single
/// test needs: one that never yields, one that panics inside its poll.
pub(crate) struct PollFnBody<F> {
    poll: F,
    hint: SizeHint,
}

impl<F> PollFnBody<F>
where
    F: FnMut() -> Poll<Option<Frame<Bytes>>> + Unpin,
{
    /// A body of `poll`'s answers, of unknown size.
    pub(crate) fn new(poll: F) -> Self {
        PollFnBody {
            poll,
            hint: SizeHint::default(),
        }
    }

    /// The same body, saying its size is exactly `len`.
    pub(crate) fn exact(self, len: u64) -> Self {
        PollFnBody {
            hint: SizeHint::with_exact(len),
            ..self
        }
    }
}

impl<F> Body for PollFnBody<F>
where
    F: FnMut() -> Poll<Option<Frame<Bytes>>> + Unpin,
{
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        (self.get_mut().poll)().map(|frame| frame.map(Ok))
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

type PolledFrame<B> = Poll<Option<Result<Frame<<B as Body>::Data>, <B as Body>::Error>>>;

fn poll_once<B: Body + Unpin>(body: &mut B) -> PolledFrame<B> {
    let waker = std::task::Waker::noop();
    Pin::new(body).poll_frame(&mut Context::from_waker(waker))
}

fn futures_poll<F: std::future::Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    let waker = std::task::Waker::noop();
    Pin::new(fut).poll(&mut Context::from_waker(waker))
}

/// A gate the test opens; the handler waits on it.
#[derive(Clone)]
struct Gate(Arc<(tokio::sync::Semaphore, AtomicUsize)>);

impl Gate {
    fn new() -> Self {
        Gate(Arc::new((
            tokio::sync::Semaphore::new(0),
            AtomicUsize::new(0),
        )))
    }

    fn open(&self) {
        self.0 .0.add_permits(usize::MAX >> 4);
    }

    /// Waits until the gate is open, then counts one more past it.
    async fn wait(&self) {
        drop(self.0 .0.acquire().await.unwrap());
        self.0 .1.fetch_add(1, Ordering::SeqCst);
    }

    /// How many waiters went past the gate.
    fn passed(&self) -> usize {
        self.0 .1.load(Ordering::SeqCst)
    }
}

fn grpc_request() -> Request<()> {
    Request::post("/pkg.Service/Method")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap()
}
