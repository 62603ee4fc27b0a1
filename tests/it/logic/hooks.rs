//! Hooks: order, nesting, async hooks, late registration, exactly once on every path, a blocking hook.

use super::*;
use crate::common::{logs, within};

/// A future that sends `value` on, and the receiver it sends it to.
fn sends<T: Send + 'static>(
    value: T,
) -> (
    impl std::future::Future<Output = ()> + Send + 'static,
    tokio::sync::oneshot::Receiver<T>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let send = async move {
        let _ = tx.send(value);
    };
    (send, rx)
}

/// Runs one request to its end through `layer`; its handler hands its
/// lifecycle and `log` to `register`, then answers "x".
async fn one_request_registering<R>(layer: LifecycleLayer, log: &Log, register: R)
where
    R: Fn(&Lifecycle, &Log) + Send + Sync + 'static,
{
    let register = Arc::new(register);
    let log = log.clone();
    let svc = layered(layer, move |req: Request<()>| {
        let lifecycle = lifecycle_of(&req);
        let (log, register) = (log.clone(), register.clone());
        async move {
            register(&lifecycle, &log);
            Ok::<_, Infallible>(full("x"))
        }
    });
    run_to_end(svc, Request::new(())).await;
}

#[tokio::test]
async fn hooks_run_in_order_then_nested_then_on_complete_once() {
    let log = Log::default();
    let layer_log = log.clone();
    let layer =
        LifecycleLayer::new().on_complete(move |c| layer_log.push(format!("layer:{}", c.status())));
    one_request_registering(layer, &log, |lifecycle, log| {
        let inner = lifecycle.clone();
        let l = log.clone();
        lifecycle.on_shutdown(move |_| {
            l.push("first");
            let l2 = l.clone();
            inner.on_shutdown(move |_| l2.push("nested"));
        });
        let l = log.clone();
        lifecycle.on_shutdown(move |c| l.push(format!("second:{}", c.status())));
    })
    .await;
    assert_eq!(
        log.get(),
        ["first", "second:normal", "nested", "layer:normal"]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_panicking_hook_is_logged_and_the_others_still_run() {
    logs(); // install the subscriber
    let log = Log::default();
    let l = log.clone();
    let layer = LifecycleLayer::new().on_complete(move |_| l.push("layer"));
    one_request_registering(layer, &log, |lifecycle, log| {
        lifecycle.on_shutdown(|_| panic!("hook boom"));
        let l = log.clone();
        lifecycle.on_shutdown(move |_| l.push("after panic"));
    })
    .await;
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
    one_request_registering(layer, &log, |lifecycle, log| {
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
    })
    .await;
    tokio::time::timeout(WAIT, done_rx).await.unwrap().unwrap();
    assert_eq!(log.get(), ["sync 1", "async:normal", "sync 2", "layer"]);
}

#[tokio::test]
async fn a_hook_registered_after_the_end_runs_at_once_with_the_final_completion() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Mutex::new(Some(tx));
    let mut svc = layered(LifecycleLayer::new(), move |req: Request<()>| {
        let _ = tx.lock().unwrap().take().unwrap().send(lifecycle_of(&req));
        async { Ok::<_, Infallible>(full("x")) }
    });
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
    assert_eq!(run_to_end(svc.clone(), get("/")).await, "abcdef");
    let c = ran(1, "normal");
    assert_eq!(ended(&c), (ConnectionStatus::NORMAL, Phase::Body));
    assert_eq!(c.bytes_sent(), 6);
    assert!(!c.body_error());

    // dropped after the head, before any frame
    drop(svc.clone().oneshot(get("/")).await.unwrap());
    let c = ran(2, "dropped after the head");
    assert_eq!(ended(&c), (ConnectionStatus::ABORTED, Phase::Body));
    assert_eq!(c.bytes_sent(), 0);
    assert!(!c.body_error());

    // dropped mid-body: after one frame of three
    let mut body = svc.clone().oneshot(get("/")).await.unwrap().into_body();
    assert!(matches!(poll_once(&mut body), Poll::Ready(Some(Ok(_)))));
    assert_eq!(seen.all().len(), 2, "nothing ends while the body is alive");
    drop(body);
    let c = ran(3, "dropped mid-body");
    assert_eq!(ended(&c), (ConnectionStatus::ABORTED, Phase::Body));
    assert_eq!(c.bytes_sent(), 2);
    assert!(!c.body_error());

    // dropped before the head, while the handler waits
    let mut fut = Box::pin(svc.clone().oneshot(get("/pending")));
    assert!(futures_poll(&mut fut).is_pending());
    drop(fut);
    let c = ran(4, "dropped before the head");
    assert_eq!(ended(&c), (ConnectionStatus::ABORTED, Phase::Handler));
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
    assert_eq!(ended(&c), (ConnectionStatus::NORMAL, Phase::Body));
    assert_eq!(c.bytes_sent(), 2);
    assert!(c.body_error());
}

#[tokio::test]
async fn a_lifecycle_used_after_its_request_ended_behaves_as_documented() {
    let seen = Seen::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let svc = seen.service(move |req: Request<()>| {
        tx.send(lifecycle_of(&req)).unwrap();
        std::future::ready(Ok::<_, Infallible>(full("x")))
    });
    run_to_end(svc, Request::new(())).await;
    let lifecycle = rx.recv().unwrap();
    let first = seen.only();

    // Reading works and keeps the final answer.
    assert_eq!(lifecycle.status(), ConnectionStatus::NORMAL);
    assert!(!lifecycle.is_aborted());
    let debug = format!("{lifecycle:?}");
    assert!(
        debug.contains("normal") && debug.contains("ended: true"),
        "{debug}"
    );
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
    let (work, sent) = sends("spawned");
    lifecycle.spawn(work);
    assert_eq!(within("the spawned work", sent).await.unwrap(), "spawned");
    let (work, sent) = sends("after");
    lifecycle.after_response(work);
    assert_eq!(
        within("the work after the response", sent).await.unwrap(),
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
        move || tokio::runtime::Handle::current().block_on(run_to_end(svc, get("/blocking")))
    });
    tokio::time::timeout(WAIT, entered_rx)
        .await
        .expect("the blocking hook starts")
        .unwrap();
    // Another request, in a task of its own: should the blocked hook hold
    // it up too, the wait below fails instead of the test hanging.
    let other = tokio::spawn(run_to_end(svc, Request::new(())));
    let ended = seen.wait_for(1).await;
    assert_eq!(ended.len(), 1, "only the other request ended: {ended:?}");
    assert!(!blocked.is_finished(), "the hook is still blocked");
    tokio::time::timeout(WAIT, other).await.unwrap().unwrap();
    release_tx.send(()).unwrap();
    tokio::time::timeout(WAIT, blocked).await.unwrap().unwrap();
    assert_eq!(seen.wait_for(2).await.len(), 2);
}

#[test]
fn when_the_runtime_shuts_down_the_hooks_after_a_pending_async_hook_still_run() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let seen = Seen::default();
    let log = Log::default();
    let l = log.clone();
    let svc = seen.service(move |req: Request<()>| {
        let lifecycle = lifecycle_of(&req);
        lifecycle.on_shutdown_async(|_| std::future::pending());
        let l = l.clone();
        lifecycle.on_shutdown(move |done| l.push(format!("after:{}", done.status())));
        std::future::ready(Ok::<_, Infallible>(full("x")))
    });
    rt.block_on(run_to_end(svc, Request::new(())));
    assert!(log.get().is_empty(), "the async hook is still pending");
    // The task that carries the rest of the chain is dropped with the
    // runtime: the sync hook and `on_complete` run all the same.
    drop(rt);
    assert_eq!(log.get(), ["after:normal"]);
    assert_eq!(seen.all().len(), 1);
}

#[test]
fn an_async_hook_runs_on_the_runtime_it_was_registered_on_when_the_end_has_none() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let seen = Seen::default();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Mutex::new(Some(tx));
    let svc = seen.service(move |req: Request<()>| {
        let lifecycle = lifecycle_of(&req);
        let tx = tx.lock().unwrap().take().unwrap();
        lifecycle.on_shutdown_async(move |done| async move {
            let _ = tx.send(done.status());
        });
        std::future::ready(Ok::<_, Infallible>(full("x")))
    });
    let body = rt.block_on(async { svc.oneshot(Request::new(())).await.unwrap().into_body() });
    assert!(format!("{:?}", body).contains("ended: false"));
    // The body ends on a thread with no runtime: the hook goes to the
    // runtime it was registered on.
    std::thread::spawn(move || drop(body)).join().unwrap();
    let status = rt.block_on(async { tokio::time::timeout(WAIT, rx).await });
    assert_eq!(status.unwrap().unwrap(), ConnectionStatus::ABORTED);
}
