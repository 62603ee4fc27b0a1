//! Logic tests: the layer driven with `ServiceBuilder` / `tower_test`,
//! aborts simulated by dropping the response future or body.

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
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::{Completion, ConnectionStatus, Lifecycle, LifecycleLayer, Phase};

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
    fn service<F>(&self, f: F) -> crate::LifecycleService<tower::util::ServiceFn<F>> {
        ServiceBuilder::new().layer(self.layer()).service_fn(f)
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

type PolledFrame<B> = Poll<Option<Result<Frame<<B as Body>::Data>, <B as Body>::Error>>>;

fn poll_once<B: Body + Unpin>(body: &mut B) -> PolledFrame<B> {
    let waker = std::task::Waker::noop();
    Pin::new(body).poll_frame(&mut Context::from_waker(waker))
}

// ---- status and phase of each way a request ends ----

#[tokio::test]
async fn body_read_to_the_end_is_normal() {
    let seen = Seen::default();
    let svc = seen.service(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Chunks::new(&["ab", "cde"])))
    });
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "abcde");
    let c = seen.only();
    assert_eq!(c.status(), ConnectionStatus::NORMAL);
    assert_eq!(c.phase(), Phase::Body);
    assert_eq!(c.bytes_sent(), 5);
    assert_eq!(c.response_status(), Some(StatusCode::OK));
    assert!(!c.panicked() && !c.body_error() && !c.service_error());
}

#[tokio::test]
async fn dropping_the_future_before_the_head_is_aborted() {
    let seen = Seen::default();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let started_tx = Mutex::new(Some(started_tx));
    let svc = seen.service(move |req: Request<()>| {
        let _ = started_tx
            .lock()
            .unwrap()
            .take()
            .unwrap()
            .send(lifecycle_of(&req));
        async {
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(full("never"))
        }
    });
    let fut = svc.oneshot(Request::new(()));
    let mut fut = Box::pin(fut);
    assert!(futures_poll(&mut fut).is_pending());
    let lifecycle = started_rx.await.unwrap();
    let waiters = [
        tokio::spawn(lifecycle.aborted()),
        tokio::spawn(lifecycle.aborted()),
    ];
    assert!(seen.all().is_empty(), "nothing ends while the handler runs");
    drop(fut);
    for w in waiters {
        tokio::time::timeout(WAIT, w)
            .await
            .expect("aborted() resolves")
            .unwrap();
    }
    assert!(lifecycle.is_aborted());
    lifecycle.aborted().await; // at once when already set
    let c = seen.only();
    assert_eq!(c.status(), ConnectionStatus::ABORTED);
    assert_eq!(c.phase(), Phase::Handler);
    assert_eq!(c.response_status(), None);
    assert!(!c.panicked());
}

fn futures_poll<F: std::future::Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    let waker = std::task::Waker::noop();
    Pin::new(fut).poll(&mut Context::from_waker(waker))
}

#[tokio::test]
async fn dropping_the_body_mid_stream_is_aborted_with_bytes_sent() {
    let seen = Seen::default();
    let svc = seen.service(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Chunks::new(&["abc", "de", "f"])))
    });
    let res = svc.oneshot(Request::new(())).await.unwrap();
    let mut body = res.into_body();
    assert!(matches!(poll_once(&mut body), Poll::Ready(Some(Ok(_)))));
    assert!(matches!(poll_once(&mut body), Poll::Ready(Some(Ok(_)))));
    assert!(seen.all().is_empty());
    drop(body);
    let c = seen.only();
    assert_eq!(c.status(), ConnectionStatus::ABORTED);
    assert_eq!(c.phase(), Phase::Body);
    assert_eq!(c.bytes_sent(), 5);
}

#[tokio::test]
async fn early_drops_of_complete_bodies_are_normal() {
    // Each case: a response that hyper may drop without polling to `None`.
    type Case = (&'static str, fn() -> Response<Chunks>, &'static str, usize);
    let cases: [Case; 8] = [
        (
            "exact size hint",
            || {
                let mut b = Chunks::new(&["abc", "de"]);
                b.exact = true;
                Response::new(b)
            },
            "GET",
            2,
        ),
        (
            "content-length",
            || {
                Response::builder()
                    .header("content-length", "5")
                    .body(Chunks::new(&["abc", "de"]))
                    .unwrap()
            },
            "GET",
            2,
        ),
        ("head", || Response::new(Chunks::new(&["abc"])), "HEAD", 0),
        (
            "connect 200",
            || Response::new(Chunks::new(&["abc"])),
            "CONNECT",
            0,
        ),
        (
            "204",
            || {
                Response::builder()
                    .status(204)
                    .body(Chunks::new(&[]))
                    .unwrap()
            },
            "GET",
            0,
        ),
        (
            "304",
            || {
                Response::builder()
                    .status(304)
                    .body(Chunks::new(&["x"]))
                    .unwrap()
            },
            "GET",
            0,
        ),
        (
            "101",
            || {
                Response::builder()
                    .status(101)
                    .body(Chunks::new(&["x"]))
                    .unwrap()
            },
            "GET",
            0,
        ),
        (
            "trailers",
            || {
                let mut b = Chunks::new(&["abc"]);
                b.trailers = Some(HeaderMap::new());
                Response::new(b)
            },
            "GET",
            2,
        ),
    ];
    for (name, make, method, polls) in cases {
        let seen = Seen::default();
        let svc = ServiceBuilder::new()
            .layer(seen.layer())
            .service_fn(move |_req: Request<()>| async move { Ok::<_, Infallible>(make()) });
        let req = Request::builder().method(method).body(()).unwrap();
        let mut body = svc.oneshot(req).await.unwrap().into_body();
        for _ in 0..polls {
            assert!(
                matches!(poll_once(&mut body), Poll::Ready(Some(Ok(_)))),
                "{name}"
            );
        }
        drop(body);
        let c = seen.only();
        assert_eq!(c.status(), ConnectionStatus::NORMAL, "{name}");
        assert_eq!(c.phase(), Phase::Body, "{name}");
    }
}

#[tokio::test]
async fn empty_and_full_bodies_are_normal_even_unpolled_or_polled_once() {
    let seen = Seen::default();
    let svc = seen.service(|req: Request<()>| async move {
        Ok::<_, Infallible>(if req.uri() == "/empty" {
            Response::new(Empty::<Bytes>::new().boxed())
        } else {
            Response::new(Full::from("hello").boxed())
        })
    });
    let empty = svc
        .clone()
        .oneshot(Request::get("/empty").body(()).unwrap())
        .await
        .unwrap();
    drop(empty);
    let mut full = svc
        .oneshot(Request::get("/full").body(()).unwrap())
        .await
        .unwrap()
        .into_body();
    assert!(matches!(poll_once(&mut full), Poll::Ready(Some(Ok(_)))));
    drop(full);
    let all = seen.all();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|c| c.status().is_normal()), "{all:?}");
    assert_eq!(all[1].bytes_sent(), 5);
}

#[tokio::test]
async fn a_body_error_is_recorded_not_an_abort() {
    let seen = Seen::default();
    let svc = seen.service(|_req: Request<()>| async {
        let mut b = Chunks::new(&["abc", "def"]);
        b.fail_after = Some(1);
        Ok::<_, Infallible>(Response::new(b))
    });
    let res = svc.oneshot(Request::new(())).await.unwrap();
    let err = res.into_body().collect().await.unwrap_err();
    assert_eq!(err.to_string(), "body failed");
    let c = seen.only();
    assert_eq!(c.status(), ConnectionStatus::NORMAL);
    assert!(c.body_error());
    assert_eq!(c.bytes_sent(), 3);
}

#[tokio::test]
async fn a_service_error_is_recorded_not_an_abort() {
    let seen = Seen::default();
    let svc = seen.service(|_req: Request<()>| async { Err::<Response<Full<Bytes>>, _>("nope") });
    assert_eq!(svc.oneshot(Request::new(())).await.unwrap_err(), "nope");
    let c = seen.only();
    assert_eq!(c.status(), ConnectionStatus::NORMAL);
    assert_eq!(c.phase(), Phase::Handler);
    assert!(c.service_error());
}

// ---- hooks ----

#[tokio::test]
async fn hooks_run_in_order_then_nested_then_on_complete_once() {
    let log = Log::default();
    let layer_log = log.clone();
    let layer =
        LifecycleLayer::new().on_complete(move |c| layer_log.push(format!("layer:{}", c.status())));
    let hook_log = log.clone();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |req: Request<()>| {
            let lifecycle = lifecycle_of(&req);
            let log = hook_log.clone();
            async move {
                let inner = lifecycle.clone();
                let l = log.clone();
                lifecycle.on_shutdown(move |_| {
                    l.push("first");
                    let l2 = l.clone();
                    inner.on_shutdown(move |_| l2.push("nested"));
                });
                let l = log.clone();
                lifecycle.on_shutdown(move |c| l.push(format!("second:{}", c.status())));
                Ok::<_, Infallible>(full("x"))
            }
        });
    let res = svc.oneshot(Request::new(())).await.unwrap();
    res.into_body().collect().await.unwrap();
    assert_eq!(
        log.get(),
        ["first", "second:normal", "nested", "layer:normal"]
    );
}

/// `tracing` output of this test binary at WARN and above. A global
/// subscriber, because a thread-local one misses events when other tests
/// register the same callsites concurrently.
fn logs() -> String {
    static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    #[derive(Clone)]
    struct W(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for W {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = W(buf.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("only this test sets it");
        buf
    });
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

#[tokio::test(flavor = "current_thread")]
async fn a_panicking_hook_is_logged_and_the_others_still_run() {
    logs(); // install the subscriber
    let log = Log::default();
    let l = log.clone();
    let layer = LifecycleLayer::new().on_complete(move |_| l.push("layer"));
    let hook_log = log.clone();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |req: Request<()>| {
            let lifecycle = lifecycle_of(&req);
            let log = hook_log.clone();
            async move {
                lifecycle.on_shutdown(|_| panic!("hook boom"));
                let l = log.clone();
                lifecycle.on_shutdown(move |_| l.push("after panic"));
                Ok::<_, Infallible>(full("x"))
            }
        });
    let res = svc.oneshot(Request::new(())).await.unwrap();
    res.into_body().collect().await.unwrap();
    assert_eq!(log.get(), ["after panic", "layer"]);
    let logs = logs();
    let line = logs
        .lines()
        .find(|l| l.contains("hook boom"))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(line.contains("ERROR"), "{line}");
}

#[tokio::test]
async fn async_hooks_are_awaited_in_order() {
    let log = Log::default();
    let l = log.clone();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let done_tx = Mutex::new(Some(done_tx));
    let layer = LifecycleLayer::new().on_complete(move |_| {
        l.push("layer");
        let _ = done_tx.lock().unwrap().take().unwrap().send(());
    });
    let hook_log = log.clone();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |req: Request<()>| {
            let lifecycle = lifecycle_of(&req);
            let log = hook_log.clone();
            async move {
                let l = log.clone();
                lifecycle.on_shutdown(move |_| l.push("sync 1"));
                let l = log.clone();
                lifecycle.on_shutdown_async(move |c| async move {
                    tokio::task::yield_now().await;
                    l.push(format!("async:{}", c.status()));
                });
                lifecycle.on_shutdown_async(|_| async { panic!("async hook boom") });
                let l = log.clone();
                lifecycle.on_shutdown(move |_| l.push("sync 2"));
                Ok::<_, Infallible>(full("x"))
            }
        });
    let res = svc.oneshot(Request::new(())).await.unwrap();
    res.into_body().collect().await.unwrap();
    tokio::time::timeout(WAIT, done_rx).await.unwrap().unwrap();
    assert_eq!(log.get(), ["sync 1", "async:normal", "sync 2", "layer"]);
}

#[tokio::test]
async fn a_hook_registered_after_the_end_runs_at_once_with_the_final_completion() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Mutex::new(Some(tx));
    let svc = ServiceBuilder::new()
        .layer(LifecycleLayer::new())
        .service_fn(move |req: Request<()>| {
            let _ = tx.lock().unwrap().take().unwrap().send(lifecycle_of(&req));
            async { Ok::<_, Infallible>(full("x")) }
        });
    let mut svc = svc;
    let fut = svc.ready().await.unwrap().call(Request::new(()));
    drop(fut); // never polled: aborted before the head
    let lifecycle = rx.await.unwrap();
    let got = Arc::new(Mutex::new(None));
    let g = got.clone();
    lifecycle.on_shutdown(move |c| *g.lock().unwrap() = Some(c.clone()));
    let c = got.lock().unwrap().take().expect("ran at once");
    assert_eq!(c.status(), ConnectionStatus::ABORTED);
    assert_eq!(c.phase(), Phase::Handler);
}

#[tokio::test]
async fn every_path_runs_each_hook_exactly_once() {
    let seen = Seen::default();
    // Every call of the requests' own hook, in order.
    let hooked: Arc<Mutex<Vec<Completion>>> = Arc::default();
    let h = hooked.clone();
    let svc = seen.service(move |req: Request<()>| {
        let lifecycle = lifecycle_of(&req);
        let hooked = h.clone();
        async move {
            lifecycle.on_shutdown(move |c| hooked.lock().unwrap().push(c.clone()));
            // No exact size hint: only `None` (or an error) completes it.
            let mut body = Chunks::new(&["ab", "cd", "ef"]);
            match req.uri().path() {
                "/pending" => std::future::pending().await,
                "/error" => body.fail_after = Some(1),
                _ => {}
            }
            Ok::<_, Infallible>(Response::new(body))
        }
    });
    let get = |path: &str| Request::get(path).body(()).unwrap();
    // Asserts that the hook and `on_complete` each ran exactly `n` times,
    // and returns the completion both saw last.
    let ran = |n: usize, path: &str| {
        let hooks = hooked.lock().unwrap().clone();
        let all = seen.all();
        assert_eq!(
            hooks.len(),
            n,
            "{path}: the request's hook calls: {hooks:?}"
        );
        assert_eq!(all.len(), n, "{path}: on_complete calls: {all:?}");
        assert_eq!(hooks[n - 1], all[n - 1], "{path}: both saw one completion");
        all[n - 1].clone()
    };

    // normal: read to the end
    let res = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "abcdef"
    );
    let c = ran(1, "normal");
    assert_eq!(
        (c.status(), c.phase()),
        (ConnectionStatus::NORMAL, Phase::Body)
    );
    assert_eq!(c.bytes_sent(), 6);
    assert!(!c.body_error());

    // dropped after the head, before any frame
    drop(svc.clone().oneshot(get("/")).await.unwrap());
    let c = ran(2, "dropped after the head");
    assert_eq!(
        (c.status(), c.phase()),
        (ConnectionStatus::ABORTED, Phase::Body)
    );
    assert_eq!(c.bytes_sent(), 0);
    assert!(!c.body_error());

    // dropped mid-body: after one frame of three
    let mut body = svc.clone().oneshot(get("/")).await.unwrap().into_body();
    assert!(matches!(poll_once(&mut body), Poll::Ready(Some(Ok(_)))));
    assert_eq!(seen.all().len(), 2, "nothing ends while the body is alive");
    drop(body);
    let c = ran(3, "dropped mid-body");
    assert_eq!(
        (c.status(), c.phase()),
        (ConnectionStatus::ABORTED, Phase::Body)
    );
    assert_eq!(c.bytes_sent(), 2);
    assert!(!c.body_error());

    // dropped before the head, while the handler waits
    let mut fut = Box::pin(svc.clone().oneshot(get("/pending")));
    assert!(futures_poll(&mut fut).is_pending());
    drop(fut);
    let c = ran(4, "dropped before the head");
    assert_eq!(
        (c.status(), c.phase()),
        (ConnectionStatus::ABORTED, Phase::Handler)
    );
    assert_eq!(c.response_status(), None);

    // a body error after one frame: ends at the error, not at the drop
    let mut body = svc.oneshot(get("/error")).await.unwrap().into_body();
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        "ab"
    );
    let err = body.frame().await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "body failed");
    let c = ran(5, "body error");
    drop(body);
    assert_eq!(ran(5, "body error, then dropped"), c);
    assert_eq!(
        (c.status(), c.phase()),
        (ConnectionStatus::NORMAL, Phase::Body)
    );
    assert_eq!(c.bytes_sent(), 2);
    assert!(c.body_error());
}

// ---- panics ----

/// A service whose handler registers a counting hook, then panics.
fn panicking_handler(
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> + Clone {
    tower::service_fn(move |req: Request<()>| {
        let lifecycle = lifecycle_of(&req);
        let calls = calls.clone();
        async move {
            lifecycle.on_shutdown(move |_| {
                calls.fetch_add(1, Ordering::SeqCst);
            });
            tokio::task::yield_now().await;
            if req.uri() == "/panic" {
                panic!("handler boom");
            }
            Ok::<_, Infallible>(full("fine"))
        }
    })
}

#[tokio::test]
async fn a_handler_panic_propagates_unchanged_and_is_recorded() {
    let seen = Seen::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(seen.layer())
        .service(panicking_handler(calls.clone()));
    let req = Request::get("/panic").body(()).unwrap();
    let err = tokio::spawn(svc.oneshot(req)).await.unwrap_err();
    let payload = err.into_panic();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"handler boom"));
    // The drop happened during the unwind: hooks were handed to the runtime.
    let c = seen.wait_one().await;
    assert!(c.panicked());
    assert_eq!(
        c.status(),
        ConnectionStatus::NORMAL,
        "a panic is not an abort"
    );
    assert_eq!(c.phase(), Phase::Handler);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_panic_caught_by_catch_panic_layer_inside_is_still_recorded() {
    let seen = Seen::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(seen.layer())
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .service(panicking_handler(calls.clone()));
    let req = Request::get("/panic").body(()).unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    res.into_body().collect().await.unwrap();
    let c = seen.only();
    assert!(c.panicked());
    assert_eq!(c.status(), ConnectionStatus::NORMAL);
    assert_eq!(c.response_status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // and a request that does not panic is not marked
    let res = svc.oneshot(Request::new(())).await.unwrap();
    res.into_body().collect().await.unwrap();
    assert!(!seen.all()[1].panicked());
}

#[test]
fn hooks_started_by_a_drop_during_an_unwind_do_not_abort_the_process() {
    // No runtime at all: the hooks run inline under `catch_unwind`, even
    // the panicking one, while the thread is unwinding.
    let seen = Seen::default();
    let after = Arc::new(AtomicUsize::new(0));
    let a = after.clone();
    let mut svc = seen.service(move |req: Request<()>| {
        let lifecycle = lifecycle_of(&req);
        lifecycle.on_shutdown(|_| panic!("hook panics during an unwind"));
        let a = a.clone();
        lifecycle.on_shutdown(move |_| {
            a.fetch_add(1, Ordering::SeqCst);
        });
        std::future::ready(Ok::<_, Infallible>(full("x")))
    });
    let fut = svc.call(Request::new(()));
    let result = catch_unwind(AssertUnwindSafe(move || {
        let _held = fut;
        panic!("outer panic");
    }));
    assert!(result.is_err());
    assert_eq!(after.load(Ordering::SeqCst), 1);
    let c = seen.only();
    assert!(c.panicked(), "dropped while unwinding");
    assert!(!c.status().is_aborted());
}

#[tokio::test]
async fn with_a_runtime_unwind_drops_hand_the_hooks_to_the_runtime() {
    let seen = Seen::default();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Mutex::new(Some(tx));
    let mut svc = seen.service(move |req: Request<()>| {
        let lifecycle = lifecycle_of(&req);
        lifecycle.on_shutdown(|_| panic!("hook panics"));
        let tx = tx.lock().unwrap().take().unwrap();
        lifecycle.on_shutdown(move |_| {
            let _ = tx.send(std::thread::panicking());
        });
        std::future::ready(Ok::<_, Infallible>(full("x")))
    });
    let fut = svc.call(Request::new(()));
    let result = catch_unwind(AssertUnwindSafe(move || {
        let _held = fut;
        panic!("outer panic");
    }));
    assert!(result.is_err());
    assert!(seen.all().is_empty(), "not run inside the unwind");
    let ran_while_panicking = tokio::time::timeout(WAIT, rx).await.unwrap().unwrap();
    assert!(!ran_while_panicking);
    assert!(seen.only().panicked());
}

#[tokio::test]
async fn a_panic_in_the_inner_call_still_ends_the_lifecycle() {
    let seen = Seen::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut svc = ServiceBuilder::new().layer(seen.layer()).service_fn(
        move |req: Request<()>| -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
            tx.send(lifecycle_of(&req)).unwrap();
            panic!("call boom")
        },
    );
    let svc = &mut svc;
    let result = catch_unwind(AssertUnwindSafe(|| {
        drop(svc.call(Request::new(())));
    }));
    assert!(result.is_err());
    let lifecycle = rx.recv().unwrap();
    let c = seen.wait_one().await;
    assert!(c.panicked());
    assert_eq!(lifecycle.status(), ConnectionStatus::NORMAL);
}

// ---- tower_test and the body wrapper ----

#[tokio::test]
async fn with_tower_test_mock_readiness_is_forwarded_and_aborts_are_simulated() {
    let seen = Seen::default();
    let (mut svc, mut handle) =
        tower_test::mock::spawn_layer::<Request<()>, Response<Full<Bytes>>, _>(seen.layer());

    handle.allow(0);
    assert!(
        svc.poll_ready().is_pending(),
        "readiness comes from the inner service"
    );
    handle.allow(2);
    assert!(svc.poll_ready().is_ready());

    // Abort before the head: drop the response future.
    let fut = svc.call(Request::get("/a").body(()).unwrap());
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.uri(), "/a");
    let lifecycle = lifecycle_of(&req);
    drop(fut);
    assert!(lifecycle.is_aborted());
    drop(send);

    // A response the test sends itself, read to the end: normal.
    assert!(svc.poll_ready().is_ready());
    let fut = svc.call(Request::get("/b").body(()).unwrap());
    let (req, send) = handle.next_request().await.unwrap();
    let lifecycle = lifecycle_of(&req);
    send.send_response(full("ok"));
    let res = fut.await.unwrap();
    res.into_body().collect().await.unwrap();
    assert!(!lifecycle.is_aborted());

    let all = seen.all();
    assert_eq!(all.len(), 2);
    assert_eq!(
        (all[0].status(), all[0].phase()),
        (ConnectionStatus::ABORTED, Phase::Handler)
    );
    assert_eq!(
        (all[1].status(), all[1].phase()),
        (ConnectionStatus::NORMAL, Phase::Body)
    );
}

#[tokio::test]
async fn the_body_forwards_size_hint_end_of_stream_and_trailers() {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    let t = trailers.clone();
    let svc = ServiceBuilder::new()
        .layer(LifecycleLayer::new())
        .service_fn(move |req: Request<()>| {
            let t = t.clone();
            async move {
                Ok::<_, Infallible>(if req.uri() == "/full" {
                    Response::new(Full::from("hello").boxed_unsync())
                } else {
                    let mut b = Chunks::new(&["abc"]);
                    b.trailers = Some(t);
                    Response::new(b.map_err(|_| unreachable!()).boxed_unsync())
                })
            }
        });
    let full = svc
        .clone()
        .oneshot(Request::get("/full").body(()).unwrap())
        .await
        .unwrap();
    let body = full.into_body();
    assert_eq!(body.size_hint().exact(), Some(5));
    assert!(!body.is_end_stream());
    let empty = svc
        .clone()
        .oneshot(Request::get("/full").body(()).unwrap())
        .await
        .unwrap();
    let mut body = empty.into_body();
    body.frame().await.unwrap().unwrap();
    assert!(body.is_end_stream());

    let res = svc
        .oneshot(Request::get("/trailers").body(()).unwrap())
        .await
        .unwrap();
    let collected = res.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers(), Some(&trailers));
}

#[test]
fn handle_future_and_body_are_send_and_sync_where_they_should_be() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    fn assert_send_static<T: Send + 'static>(_: &T) {}
    /// The body of the response a service future resolves to is `Send`.
    fn assert_send_body<F, B, E>(_: &F)
    where
        F: std::future::Future<Output = Result<Response<B>, E>>,
        B: Send + 'static,
    {
    }
    send_sync::<Lifecycle>();
    send_sync::<Completion>();
    send_sync::<LifecycleLayer>();
    send_sync::<crate::LifecycleService<()>>();
    send_sync::<crate::LifecycleBody<Full<Bytes>>>();
    // A streaming body that is `Send` but not `Sync`, like axum's.
    type Unsync = http_body_util::combinators::UnsyncBoxBody<Bytes, crate::BoxError>;
    send::<crate::LifecycleBody<Unsync>>();

    // A real service future: an async handler that awaits before it answers
    // with a channel-fed body.
    let mut svc = ServiceBuilder::new()
        .layer(LifecycleLayer::new())
        .service_fn(|_req: Request<()>| async {
            tokio::task::yield_now().await;
            let (_tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(1);
            Ok::<_, Infallible>(Response::new(body))
        });
    let fut: crate::ResponseFuture<_> = svc.call(Request::new(()));
    assert_send_static(&fut);
    assert_send_body(&fut);

    let lifecycle = Lifecycle {
        shared: Arc::new(crate::state::Shared::new(Default::default(), None)),
    };
    assert_send_static(&lifecycle.aborted());
}

#[cfg(feature = "axum")]
mod axum_extractor {
    use super::*;
    use axum::routing::get;
    use axum::Router;

    async fn uses_it(lifecycle: Lifecycle) -> String {
        lifecycle.status().to_string()
    }

    async fn optional(lifecycle: Option<Lifecycle>) -> &'static str {
        if lifecycle.is_some() {
            "some"
        } else {
            "none"
        }
    }

    fn app() -> Router {
        Router::new()
            .route("/", get(uses_it))
            .route("/optional", get(optional))
    }

    async fn text(app: Router, uri: &str) -> (StatusCode, String) {
        let res = app
            .oneshot(Request::get(uri).body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn without_the_layer_the_rejection_says_how_to_fix_it() {
        let (status, body) = text(app(), "/").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("LifecycleLayer"), "{body}");
        assert_eq!(
            text(app(), "/optional").await,
            (StatusCode::OK, "none".into())
        );
    }

    #[tokio::test]
    async fn with_the_layer_the_extractor_works() {
        let app = app().layer(LifecycleLayer::new());
        assert_eq!(
            text(app.clone(), "/").await,
            (StatusCode::OK, "normal".into())
        );
        assert_eq!(
            text(app, "/optional").await,
            (StatusCode::OK, "some".into())
        );
    }
}

// ---- ignore-abort, continued work, drain ----

/// A gate the test opens; the handler waits on it.
#[derive(Clone)]
struct Gate(Arc<tokio::sync::Semaphore>);

impl Gate {
    fn new() -> Self {
        Gate(Arc::new(tokio::sync::Semaphore::new(0)))
    }

    fn open(&self) {
        self.0.add_permits(usize::MAX >> 4);
    }

    async fn wait(&self) {
        drop(self.0.acquire().await.unwrap());
    }
}

#[tokio::test]
async fn ignore_abort_returns_the_previous_value_and_starts_from_the_layer() {
    for default in [false, true] {
        let (tx, rx) = std::sync::mpsc::channel();
        let svc = ServiceBuilder::new()
            .layer(LifecycleLayer::new().ignore_abort(default))
            .service_fn(move |req: Request<()>| {
                let lifecycle = lifecycle_of(&req);
                let seq = [
                    lifecycle.ignore_abort(true),
                    lifecycle.ignore_abort(true),
                    lifecycle.ignore_abort(false),
                    lifecycle.ignore_abort(false),
                ];
                tx.send(seq).unwrap();
                std::future::ready(Ok::<_, Infallible>(full("x")))
            });
        drop(svc.oneshot(Request::new(())).await.unwrap());
        assert_eq!(rx.recv().unwrap(), [default, true, true, false]);
    }
}

#[tokio::test]
async fn with_ignore_abort_the_handler_runs_to_its_end_and_hooks_run_after() {
    let seen = Seen::default();
    let gate = Gate::new();
    let finished = Arc::new(AtomicUsize::new(0));
    let (g, f) = (gate.clone(), finished.clone());
    let mut svc = ServiceBuilder::new()
        .layer(seen.layer().ignore_abort(true))
        .service_fn(move |_req: Request<()>| {
            let (gate, finished) = (g.clone(), f.clone());
            async move {
                gate.wait().await;
                finished.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(full("discarded"))
            }
        });
    let mut fut = Box::pin(svc.ready().await.unwrap().call(Request::new(())));
    assert!(futures_poll(&mut fut).is_pending());
    drop(fut);
    tokio::task::yield_now().await;
    assert!(
        seen.all().is_empty(),
        "hooks wait for the continued handler"
    );
    gate.open();
    let c = seen.wait_one().await;
    assert_eq!(finished.load(Ordering::SeqCst), 1);
    assert_eq!(c.status(), ConnectionStatus::ABORTED);
    assert_eq!(c.phase(), Phase::Continued);
    assert!(c.continued() && !c.detach_refused());
    assert_eq!(c.response_status(), None);
}

#[tokio::test]
async fn ignore_abort_turned_off_again_cancels() {
    let seen = Seen::default();
    let mut svc = seen.service(|req: Request<()>| {
        let lifecycle = lifecycle_of(&req);
        async move {
            assert!(!lifecycle.ignore_abort(true));
            assert!(lifecycle.ignore_abort(false));
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(full("never"))
        }
    });
    let mut fut = Box::pin(svc.ready().await.unwrap().call(Request::new(())));
    assert!(futures_poll(&mut fut).is_pending());
    drop(fut);
    let c = seen.only();
    assert_eq!(
        (c.status(), c.phase()),
        (ConnectionStatus::ABORTED, Phase::Handler)
    );
    assert!(!c.continued() && !c.detach_refused());
}

#[tokio::test]
async fn with_ignore_abort_a_dropped_body_is_drained_so_its_producer_finishes() {
    let seen = Seen::default();
    let (body_tx, mut body_rx) = tokio::sync::mpsc::unbounded_channel();
    let svc = ServiceBuilder::new()
        .layer(seen.layer().ignore_abort(true))
        .service_fn(move |_req: Request<()>| {
            let (tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(1);
            body_tx.send(tx).unwrap();
            std::future::ready(Ok::<_, Infallible>(Response::new(body)))
        });
    let res = svc.oneshot(Request::new(())).await.unwrap();
    let mut tx = body_rx.recv().await.unwrap();
    let mut body = res.into_body();
    tx.send_data(Bytes::from_static(b"first")).await.unwrap();
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        "first"
    );
    drop(body); // the client left mid-body
    for i in 0..10 {
        let sent = tokio::time::timeout(WAIT, tx.send_data(Bytes::from(format!("frame {i}"))));
        sent.await
            .unwrap()
            .expect("the drain keeps the producer succeeding");
    }
    assert!(seen.all().is_empty(), "hooks wait for the drain");
    drop(tx);
    let c = seen.wait_one().await;
    assert_eq!(c.status(), ConnectionStatus::ABORTED);
    assert_eq!(c.phase(), Phase::Continued);
    assert_eq!(c.bytes_sent(), 5, "drained bytes were never sent");
    assert!(c.continued());
}

#[tokio::test]
async fn over_max_detached_an_abort_cancels_and_says_so() {
    logs();
    let seen = Seen::default();
    let gate = Gate::new();
    let running = Arc::new(AtomicUsize::new(0));
    let (g, r) = (gate.clone(), running.clone());
    let mut svc = ServiceBuilder::new()
        .layer(seen.layer().ignore_abort(true).max_detached(2))
        .service_fn(move |_req: Request<()>| {
            let (gate, running) = (g.clone(), r.clone());
            async move {
                running.fetch_add(1, Ordering::SeqCst);
                gate.wait().await;
                Ok::<_, Infallible>(full("x"))
            }
        });
    for _ in 0..5 {
        let mut fut = Box::pin(svc.ready().await.unwrap().call(Request::new(())));
        assert!(futures_poll(&mut fut).is_pending());
        drop(fut);
    }
    let refused = seen.all();
    assert_eq!(
        refused.len(),
        3,
        "two continue, three are refused: {refused:?}"
    );
    for c in &refused {
        assert!(c.detach_refused() && !c.continued() && c.status().is_aborted());
        assert_eq!(c.phase(), Phase::Handler);
    }
    assert!(logs().contains("cannot continue"));
    gate.open();
    seen.wait_for(5).await;
    assert_eq!(seen.all().iter().filter(|c| c.continued()).count(), 2);

    // The slots are free again.
    let mut fut = Box::pin(svc.ready().await.unwrap().call(Request::new(())));
    assert!(futures_poll(&mut fut).is_ready(), "the gate is open");
}

#[test]
fn without_a_runtime_an_abort_cancels_and_says_so() {
    let seen = Seen::default();
    let mut svc = ServiceBuilder::new()
        .layer(seen.layer().ignore_abort(true))
        .service_fn(|_req: Request<()>| async {
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(full("never"))
        });
    let mut fut = Box::pin(svc.call(Request::new(())));
    assert!(futures_poll(&mut fut).is_pending());
    drop(fut);
    let c = seen.only();
    assert!(c.status().is_aborted() && c.detach_refused() && !c.continued());
}

#[tokio::test]
async fn spawned_work_is_cancelled_by_an_abort_and_awaited_otherwise() {
    let seen = Seen::default();
    let gate = Gate::new();
    let dropped = Arc::new(AtomicUsize::new(0));
    let (g, d) = (gate.clone(), dropped.clone());
    let mut svc = seen.service(move |req: Request<()>| {
        let lifecycle = lifecycle_of(&req);
        let (gate, dropped) = (g.clone(), d.clone());
        async move {
            struct OnDrop(Arc<AtomicUsize>);
            impl Drop for OnDrop {
                fn drop(&mut self) {
                    self.0.fetch_add(1, Ordering::SeqCst);
                }
            }
            let guard = OnDrop(dropped);
            lifecycle.spawn(async move {
                let _guard = guard;
                gate.wait().await;
            });
            if req.uri() == "/pending" {
                std::future::pending::<()>().await;
            }
            Ok::<_, Infallible>(full("x"))
        }
    });
    // aborted: the work is cancelled, then the hooks run
    let req = Request::get("/pending").body(()).unwrap();
    let mut fut = Box::pin(svc.ready().await.unwrap().call(req));
    assert!(futures_poll(&mut fut).is_pending());
    drop(fut);
    let c = seen.wait_one().await;
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "the work was cancelled");
    assert_eq!(c.status(), ConnectionStatus::ABORTED);
    assert_eq!(
        c.phase(),
        Phase::Handler,
        "cancelled work is not continued work"
    );

    // normal: the hooks wait for the work
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    res.into_body().collect().await.unwrap();
    tokio::task::yield_now().await;
    assert_eq!(
        seen.all().len(),
        1,
        "the second lifecycle waits for its work"
    );
    gate.open();
    seen.wait_for(2).await;
    let c = seen.all()[1].clone();
    assert_eq!(
        (c.status(), c.phase()),
        (ConnectionStatus::NORMAL, Phase::Continued)
    );
}

#[tokio::test]
async fn after_response_starts_when_the_body_is_done_and_the_hooks_wait_for_it() {
    let log = Log::default();
    let l = log.clone();
    let svc = ServiceBuilder::new()
        .layer(
            LifecycleLayer::new()
                .on_complete(move |c| l.push(format!("hooks:{}:{}", c.status(), c.phase()))),
        )
        .service_fn({
            let log = log.clone();
            move |req: Request<()>| {
                let lifecycle = lifecycle_of(&req);
                let log = log.clone();
                lifecycle.after_response(async move {
                    log.push("work started");
                    tokio::task::yield_now().await;
                    log.push("work done");
                });
                std::future::ready(Ok::<_, Infallible>(Response::new(Chunks::new(&["a", "b"]))))
            }
        });
    let res = svc.oneshot(Request::new(())).await.unwrap();
    let mut body = res.into_body();
    assert!(matches!(poll_once(&mut body), Poll::Ready(Some(Ok(_)))));
    tokio::task::yield_now().await;
    assert!(log.get().is_empty(), "not before the body is done");
    body.collect().await.unwrap();
    tokio::time::timeout(WAIT, async {
        while log.get().len() < 3 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert_eq!(
        log.get(),
        ["work started", "work done", "hooks:normal:continued"]
    );
}

#[tokio::test]
async fn drain_counts_waits_and_cancels_stragglers_with_timeout() {
    let seen = Seen::default();
    let layer = seen.layer();
    let drain = layer.drain();
    let gate = Gate::new();
    let g = gate.clone();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |req: Request<()>| {
            let lifecycle = lifecycle_of(&req);
            let gate = g.clone();
            if req.uri() == "/straggler" {
                lifecycle.after_response(std::future::pending());
            } else {
                lifecycle.after_response(async move { gate.wait().await });
            }
            std::future::ready(Ok::<_, Infallible>(full("x")))
        });
    assert_eq!(drain.in_flight(), 0);
    for uri in ["/gated", "/straggler"] {
        let res = svc
            .clone()
            .oneshot(Request::get(uri).body(()).unwrap())
            .await
            .unwrap();
        res.into_body().collect().await.unwrap();
    }
    assert_eq!(drain.in_flight(), 2);
    let mut shutdown = Box::pin(drain.shutdown(Duration::from_millis(300)));
    assert!(
        futures_poll(&mut shutdown).is_pending(),
        "both are in flight"
    );
    gate.open();
    let report = tokio::time::timeout(WAIT, shutdown).await.unwrap();
    assert_eq!((report.finished(), report.cancelled()), (1, 1));
    assert_eq!(drain.in_flight(), 0);
    let all = seen.all();
    assert_eq!(all.len(), 2);
    assert!(all.iter().any(|c| c.status() == ConnectionStatus::NORMAL));
    assert!(all.iter().any(|c| c.status() == ConnectionStatus::TIMEOUT));
    tokio::time::timeout(WAIT, drain.wait()).await.unwrap();
}

#[tokio::test]
async fn the_handler_and_body_are_dropped_before_the_hooks_run() {
    struct LogOnDrop(Log, &'static str);
    impl Drop for LogOnDrop {
        fn drop(&mut self) {
            self.0.push(self.1);
        }
    }
    impl Body for LogOnDrop {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Pending
        }
    }
    for detachable in [true, false] {
        let log = Log::default();
        let l = log.clone();
        let layer = LifecycleLayer::new()
            .max_detached(if detachable { 1 } else { 0 })
            .on_complete(move |c| l.push(format!("hooks:{}", c.phase())));
        let l = log.clone();
        let mut svc = ServiceBuilder::new()
            .layer(layer)
            .service_fn(move |req: Request<()>| {
                let log = l.clone();
                async move {
                    let guard = LogOnDrop(log.clone(), "handler dropped");
                    if req.uri() == "/pending" {
                        std::future::pending::<()>().await;
                    }
                    drop(guard);
                    Ok::<_, Infallible>(Response::new(LogOnDrop(log, "body dropped")))
                }
            });
        let req = Request::get("/pending").body(()).unwrap();
        let mut fut = Box::pin(svc.ready().await.unwrap().call(req));
        assert!(futures_poll(&mut fut).is_pending());
        drop(fut);
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap();
        drop(res);
        assert_eq!(
            log.get(),
            [
                "handler dropped",
                "hooks:handler",
                "handler dropped",
                "body dropped",
                "hooks:body"
            ],
            "detachable: {detachable}"
        );
    }
}

#[tokio::test]
async fn a_panic_in_continued_work_is_recorded() {
    let seen = Seen::default();
    let svc = seen.service(|req: Request<()>| {
        lifecycle_of(&req).after_response(async { panic!("work boom") });
        std::future::ready(Ok::<_, Infallible>(full("x")))
    });
    let res = svc.oneshot(Request::new(())).await.unwrap();
    res.into_body().collect().await.unwrap();
    let c = seen.wait_one().await;
    assert!(c.panicked());
    assert_eq!(
        (c.status(), c.phase()),
        (ConnectionStatus::NORMAL, Phase::Continued)
    );
}

#[tokio::test]
async fn shutdown_is_bounded_even_when_a_hook_never_ends() {
    let layer = LifecycleLayer::new();
    let drain = layer.drain();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|req: Request<()>| {
            lifecycle_of(&req).on_shutdown_async(|_| std::future::pending());
            std::future::ready(Ok::<_, Infallible>(full("x")))
        });
    let res = svc.oneshot(Request::new(())).await.unwrap();
    res.into_body().collect().await.unwrap();
    assert_eq!(drain.in_flight(), 1);
    let report = tokio::time::timeout(WAIT, drain.shutdown(Duration::from_millis(50)))
        .await
        .expect("shutdown returns");
    assert_eq!(
        (report.finished(), report.cancelled(), report.remaining()),
        (0, 0, 1)
    );
}

// ---- time limit (paused clock) ----

fn grpc_request() -> Request<()> {
    Request::post("/pkg.Service/Method")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_handler_past_the_limit_is_cancelled_and_answered_with_503() {
    let seen = Seen::default();
    let log = Log::default();
    let l = log.clone();
    let svc = ServiceBuilder::new()
        .layer(seen.layer().time_limit(Duration::from_secs(2)))
        .service_fn(move |req: Request<()>| {
            let lifecycle = lifecycle_of(&req);
            let log = l.clone();
            async move {
                struct Guard(Log);
                impl Drop for Guard {
                    fn drop(&mut self) {
                        self.0.push("handler dropped");
                    }
                }
                let _guard = Guard(log.clone());
                let l = log.clone();
                lifecycle
                    .on_shutdown(move |c| l.push(format!("hook:{}:{}", c.status(), c.phase())));
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, Infallible>(full("too late"))
            }
        });
    let start = tokio::time::Instant::now();
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert!(res.body().is_end_stream());
    assert!(res
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .is_empty());
    assert_eq!(log.get(), ["handler dropped", "hook:timeout:handler"]);
    let c = seen.only();
    assert_eq!(c.status(), ConnectionStatus::TIMEOUT);
    assert_eq!(c.response_status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(c.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn the_timeout_status_is_configurable_and_grpc_gets_deadline_exceeded() {
    let svc = ServiceBuilder::new()
        .layer(
            LifecycleLayer::new()
                .time_limit(Duration::from_secs(1))
                .timeout_status(StatusCode::GATEWAY_TIMEOUT),
        )
        .service_fn(|_req: Request<()>| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, Infallible>(full("late"))
        });
    let res = svc.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);

    let res = svc.oneshot(grpc_request()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "4");
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert!(res.headers().contains_key("grpc-message"));
    assert!(
        res.body().is_end_stream(),
        "trailers-only: nothing after the headers"
    );
}

#[tokio::test(start_paused = true)]
async fn grpc_timeout_caps_the_limit_and_a_malformed_one_is_ignored() {
    // A grpc-timeout is applied a tenth early, at most 20 ms: 100m -> 90 ms,
    // 3S -> 2.98 s.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let make = |layer: LifecycleLayer| {
        let tx = tx.clone();
        ServiceBuilder::new()
            .layer(layer)
            .service_fn(move |req: Request<()>| {
                let lifecycle = lifecycle_of(&req);
                tx.send(
                    lifecycle
                        .deadline()
                        .map(|d| d - tokio::time::Instant::now()),
                )
                .unwrap();
                std::future::ready(Ok::<_, Infallible>(full("x")))
            })
    };
    let with = |timeout: &str| {
        let mut req = grpc_request();
        req.headers_mut()
            .insert("grpc-timeout", timeout.parse().unwrap());
        req
    };
    let ten_s = LifecycleLayer::new().time_limit(Duration::from_secs(10));
    let cases = [
        (ten_s.clone(), with("100m"), Some(Duration::from_millis(90))),
        (ten_s.clone(), with("1H"), Some(Duration::from_secs(10))),
        (
            LifecycleLayer::new(),
            with("3S"),
            Some(Duration::from_millis(2980)),
        ),
        (LifecycleLayer::new(), with("abc"), None),
        (
            ten_s.clone(),
            with("9999999999S"),
            Some(Duration::from_secs(10)),
        ),
        (LifecycleLayer::new(), grpc_request(), None),
    ];
    for (layer, req, expected) in cases {
        let res = make(layer).oneshot(req).await.unwrap();
        drop(res);
        assert_eq!(rx.recv().await.unwrap(), expected);
    }
    // Not gRPC: the header means nothing.
    let mut req = Request::new(());
    req.headers_mut()
        .insert("grpc-timeout", "1m".parse().unwrap());
    drop(make(LifecycleLayer::new()).oneshot(req).await.unwrap());
    assert_eq!(rx.recv().await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn a_body_past_the_limit_ends_with_timed_out() {
    let seen = Seen::default();
    let svc = ServiceBuilder::new()
        .layer(seen.layer().time_limit(Duration::from_secs(5)))
        .service_fn(|_req: Request<()>| {
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(1);
            tokio::spawn(async move {
                tx.send_data(Bytes::from_static(b"first")).await.unwrap();
                std::future::pending::<()>().await;
                drop(tx);
            });
            std::future::ready(Ok::<_, Infallible>(Response::new(body)))
        });
    let res = svc.oneshot(Request::new(())).await.unwrap();
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    let err = body.frame().await.unwrap().unwrap_err();
    assert!(err.downcast_ref::<crate::TimedOut>().is_some(), "{err}");
    assert!(body.frame().await.is_none(), "nothing after the error");
    let c = seen.only();
    assert_eq!(
        (c.status(), c.phase()),
        (ConnectionStatus::TIMEOUT, Phase::Body)
    );
    assert_eq!(c.bytes_sent(), 5);
    assert!(!c.body_error(), "a timeout is not the body's own error");
}

#[tokio::test(start_paused = true)]
async fn set_time_limit_restarts_the_clock_and_none_removes_it() {
    let seen = Seen::default();
    let svc = ServiceBuilder::new()
        .layer(seen.layer().time_limit(Duration::from_secs(1)))
        .service_fn(|req: Request<()>| {
            let lifecycle = lifecycle_of(&req);
            async move {
                let step = Duration::from_millis(900);
                tokio::time::sleep(step).await;
                if req.uri() == "/none" {
                    lifecycle.set_time_limit(None);
                    assert_eq!(lifecycle.deadline(), None);
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                } else {
                    lifecycle.set_time_limit(Some(Duration::from_secs(1)));
                    tokio::time::sleep(step).await;
                }
                Ok::<_, Infallible>(full("survived"))
            }
        });
    let start = tokio::time::Instant::now();
    let res = svc.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::from_millis(1800));
    res.into_body().collect().await.unwrap();
    let res = svc
        .oneshot(Request::get("/none").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.into_body().collect().await.unwrap();
    assert!(
        seen.all().iter().all(|c| c.status().is_normal()),
        "{:?}",
        seen.all()
    );
}

#[test]
#[should_panic(expected = "a zero time limit")]
fn a_zero_time_limit_is_refused_when_the_layer_is_built() {
    let _ = LifecycleLayer::new().time_limit(Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn absurd_limits_are_no_limit_or_expire_at_once() {
    let seen = Seen::default();
    let svc = ServiceBuilder::new()
        .layer(seen.layer().time_limit(Duration::MAX))
        .service_fn(|req: Request<()>| {
            let lifecycle = lifecycle_of(&req);
            async move {
                assert_eq!(
                    lifecycle.deadline(),
                    None,
                    "too large to represent: no limit"
                );
                if req.uri() == "/zero" {
                    lifecycle.set_time_limit(Some(Duration::ZERO));
                    std::future::pending::<()>().await;
                }
                Ok::<_, Infallible>(full("x"))
            }
        });
    let res = svc.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    drop(res);
    let res = svc
        .oneshot(Request::get("/zero").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let all = seen.all();
    assert_eq!(all[1].status(), ConnectionStatus::TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn continued_work_past_the_limit_is_cancelled_with_aborted_and_timeout() {
    let seen = Seen::default();
    let svc = ServiceBuilder::new()
        .layer(
            seen.layer()
                .ignore_abort(true)
                .time_limit(Duration::from_secs(2)),
        )
        .service_fn(|req: Request<()>| {
            let lifecycle = lifecycle_of(&req);
            async move {
                match req.uri().path() {
                    "/after" => lifecycle.after_response(std::future::pending()),
                    "/spawn" => lifecycle.spawn(std::future::pending()),
                    _ => std::future::pending().await,
                }
                Ok::<_, Infallible>(full("x"))
            }
        });
    // A continued handler whose client left.
    let mut fut = Box::pin(svc.clone().oneshot(Request::new(())));
    assert!(futures_poll(&mut fut).is_pending());
    drop(fut);
    let c = seen.wait_one().await;
    assert_eq!(c.status().bits(), 3);
    assert_eq!(c.status().to_string(), "aborted|timeout");
    assert_eq!(c.phase(), Phase::Continued);
    assert_eq!(c.elapsed(), Duration::from_secs(2));

    // after_response and spawn work, the client stayed.
    for uri in ["/after", "/spawn"] {
        let res = svc
            .clone()
            .oneshot(Request::get(uri).body(()).unwrap())
            .await
            .unwrap();
        res.into_body().collect().await.unwrap();
    }
    seen.wait_for(3).await;
    for c in &seen.all()[1..] {
        assert_eq!(
            (c.status(), c.phase()),
            (ConnectionStatus::TIMEOUT, Phase::Continued)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_always_ready_body_cannot_outrun_the_limit() {
    let seen = Seen::default();
    let svc = ServiceBuilder::new()
        .layer(seen.layer().time_limit(Duration::from_secs(1)))
        .service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Chunks::new(&["a", "b", "c"])))
        });
    let mut body = svc.oneshot(Request::new(())).await.unwrap().into_body();
    assert!(matches!(poll_once(&mut body), Poll::Ready(Some(Ok(_)))));
    tokio::time::advance(Duration::from_secs(2)).await;
    match poll_once(&mut body) {
        Poll::Ready(Some(Err(err))) => assert!(err.is::<crate::TimedOut>(), "{err}"),
        other => panic!("expected the timeout error, got {other:?}"),
    }
    let c = seen.only();
    assert_eq!(
        (c.status(), c.phase(), c.bytes_sent()),
        (ConnectionStatus::TIMEOUT, Phase::Body, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_grpc_body_past_the_limit_ends_with_deadline_exceeded_trailers() {
    let seen = Seen::default();
    let svc = ServiceBuilder::new()
        .layer(seen.layer().time_limit(Duration::from_secs(1)))
        .service_fn(|_req: Request<()>| {
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(1);
            tokio::spawn(async move {
                tx.send_data(Bytes::from_static(b"message")).await.unwrap();
                std::future::pending::<()>().await;
                drop(tx);
            });
            std::future::ready(Ok::<_, Infallible>(Response::new(body)))
        });
    let res = svc.oneshot(grpc_request()).await.unwrap();
    let collected = res
        .into_body()
        .collect()
        .await
        .expect("ends cleanly, with trailers");
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "4");
    assert_eq!(collected.to_bytes(), "message");
    let c = seen.only();
    assert_eq!(
        (c.status(), c.phase()),
        (ConnectionStatus::TIMEOUT, Phase::Body)
    );
    assert_eq!(c.grpc_status(), Some(4));
}

#[tokio::test]
async fn completion_reads_the_grpc_status_from_trailers_or_head() {
    let seen = Seen::default();
    let svc = seen.service(|req: Request<()>| async move {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let mut body = Chunks::new(&["msg"]);
        body.trailers = Some(trailers);
        let mut res = Response::new(body);
        if req.uri() == "/error" {
            // trailers-only error answer: the status is in the head
            res = Response::new(Chunks::new(&[]));
            res.headers_mut()
                .insert("grpc-status", "3".parse().unwrap());
        }
        Ok::<_, Infallible>(res)
    });
    for (uri, grpc, expected) in [
        ("/ok", true, Some(0)),
        ("/error", true, Some(3)),
        ("/ok", false, None),
    ] {
        let mut req = grpc_request();
        *req.uri_mut() = uri.parse().unwrap();
        if !grpc {
            req.headers_mut().remove("content-type");
        }
        let res = svc.clone().oneshot(req).await.unwrap();
        res.into_body().collect().await.unwrap();
        let c = seen.all().pop().unwrap();
        assert_eq!(c.grpc_status(), expected, "{uri} grpc={grpc}");
        assert!(c.status().is_normal(), "an error status is still an answer");
    }
}

#[tokio::test]
async fn an_exact_size_body_is_not_drained_it_has_no_producer() {
    let seen = Seen::default();
    let svc = ServiceBuilder::new()
        .layer(seen.layer().ignore_abort(true))
        .service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(full("hello")) });
    let body = svc.oneshot(Request::new(())).await.unwrap().into_body();
    drop(body); // never polled: the client left before the body was written
    let c = seen.only();
    assert_eq!(
        (c.status(), c.phase()),
        (ConnectionStatus::ABORTED, Phase::Body)
    );
    assert!(!c.continued(), "nothing to continue");
}

#[tokio::test]
async fn a_lifecycle_used_after_its_request_ended_behaves_as_documented() {
    let seen = Seen::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let svc = seen.service(move |req: Request<()>| {
        tx.send(lifecycle_of(&req)).unwrap();
        std::future::ready(Ok::<_, Infallible>(full("x")))
    });
    let res = svc.oneshot(Request::new(())).await.unwrap();
    res.into_body().collect().await.unwrap();
    let lifecycle = rx.recv().unwrap();
    let first = seen.only();

    // Reading works and keeps the final answer.
    assert_eq!(lifecycle.status(), ConnectionStatus::NORMAL);
    assert!(!lifecycle.is_aborted());
    // A late hook runs at once with the final completion; the layer's hook
    // does not run again.
    let late = Arc::new(Mutex::new(None));
    let l = late.clone();
    lifecycle.on_shutdown(move |c| *l.lock().unwrap() = Some(c.clone()));
    assert_eq!(late.lock().unwrap().take(), Some(first.clone()));
    let (atx, arx) = tokio::sync::oneshot::channel();
    lifecycle.on_shutdown_async(move |c| async move {
        let _ = atx.send(c);
    });
    assert_eq!(
        tokio::time::timeout(WAIT, arx).await.unwrap().unwrap(),
        first
    );
    // Work runs as a plain task, outside the ended lifecycle.
    let (wtx, wrx) = tokio::sync::oneshot::channel();
    lifecycle.spawn(async move {
        let _ = wtx.send("spawned");
    });
    assert_eq!(
        tokio::time::timeout(WAIT, wrx).await.unwrap().unwrap(),
        "spawned"
    );
    let (wtx, wrx) = tokio::sync::oneshot::channel();
    lifecycle.after_response(async move {
        let _ = wtx.send("after");
    });
    assert_eq!(
        tokio::time::timeout(WAIT, wrx).await.unwrap().unwrap(),
        "after"
    );
    // Settings change nothing any more, and never panic.
    assert!(!lifecycle.ignore_abort(true));
    lifecycle.set_time_limit(Some(Duration::ZERO));
    lifecycle.set_time_limit(None);
    assert_eq!(lifecycle.deadline(), None);
    assert_eq!(seen.all().len(), 1, "nothing ended twice");
    assert_eq!(lifecycle.status(), ConnectionStatus::NORMAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_hook_delays_only_its_own_request() {
    let seen = Seen::default();
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
    let entered_tx = Arc::new(Mutex::new(Some(entered_tx)));
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Arc::new(Mutex::new(Some(release_rx)));
    let svc = seen.service(move |req: Request<()>| {
        let lifecycle = lifecycle_of(&req);
        if req.uri() == "/blocking" {
            let entered = entered_tx.lock().unwrap().take().unwrap();
            let release = release_rx.lock().unwrap().take().unwrap();
            // A hook that says it started, then blocks its thread until the
            // test lets it go (bounded, so a failing test does not hang).
            lifecycle.on_shutdown(move |_| {
                let _ = entered.send(());
                let _ = release.recv_timeout(WAIT);
            });
        }
        std::future::ready(Ok::<_, Infallible>(full("x")))
    });
    let blocked = tokio::task::spawn_blocking({
        let svc = svc.clone();
        move || {
            tokio::runtime::Handle::current().block_on(async move {
                let res = svc
                    .oneshot(Request::get("/blocking").body(()).unwrap())
                    .await
                    .unwrap();
                res.into_body().collect().await.unwrap();
            })
        }
    });
    tokio::time::timeout(WAIT, entered_rx)
        .await
        .expect("the blocking hook starts")
        .unwrap();
    // Another request, in a task of its own: should the blocked hook hold
    // it up too, the wait below fails instead of the test hanging.
    let other = tokio::spawn(async move {
        let res = svc.oneshot(Request::new(())).await.unwrap();
        res.into_body().collect().await.unwrap();
    });
    let ended = seen.wait_for(1).await;
    assert_eq!(ended.len(), 1, "only the other request ended: {ended:?}");
    assert!(!blocked.is_finished(), "the hook is still blocked");
    tokio::time::timeout(WAIT, other).await.unwrap().unwrap();
    release_tx.send(()).unwrap();
    tokio::time::timeout(WAIT, blocked).await.unwrap().unwrap();
    assert_eq!(seen.wait_for(2).await.len(), 2);
}
