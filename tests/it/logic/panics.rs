//! Panics: in the handler, caught inside, in the inner call, during an unwind.

use super::*;

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

/// Calls a service behind `seen`'s layer whose handler registers a hook
/// that panics, then `then` as a hook, and drops the call's future while
/// the thread unwinds from another panic. Returns what `catch_unwind` gave.
fn drop_during_an_unwind(
    seen: &Seen,
    then: impl FnOnce() + Send + 'static,
) -> std::thread::Result<()> {
    let then = Mutex::new(Some(then));
    let mut svc = seen.service(move |req: Request<()>| {
        let lifecycle = lifecycle_of(&req);
        lifecycle.on_shutdown(|_| panic!("hook panics during an unwind"));
        let then = then.lock().unwrap().take().expect("one request");
        lifecycle.on_shutdown(move |_| then());
        std::future::ready(Ok::<_, Infallible>(full("x")))
    });
    let fut = svc.call(Request::new(()));
    catch_unwind(AssertUnwindSafe(move || {
        let _held = fut;
        panic!("outer panic");
    }))
}

#[tokio::test]
async fn a_handler_panic_propagates_unchanged_and_is_recorded() {
    let seen = Seen::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = seen.wrap(panicking_handler(calls.clone()));
    let err = tokio::spawn(svc.oneshot(get("/panic"))).await.unwrap_err();
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
    let res = svc.clone().oneshot(get("/panic")).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    res.into_body().collect().await.unwrap();
    let c = seen.only();
    assert!(c.panicked());
    assert_eq!(c.status(), ConnectionStatus::NORMAL);
    assert_eq!(c.response_status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // and a request that does not panic is not marked
    run_to_end(svc, Request::new(())).await;
    assert!(!seen.all()[1].panicked());
}

#[test]
fn hooks_started_by_a_drop_during_an_unwind_do_not_abort_the_process() {
    // No runtime at all: the hooks run inline under `catch_unwind`, even
    // the panicking one, while the thread is unwinding.
    let seen = Seen::default();
    let after = Arc::new(AtomicUsize::new(0));
    let a = after.clone();
    let result = drop_during_an_unwind(&seen, move || {
        a.fetch_add(1, Ordering::SeqCst);
    });
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
    let result = drop_during_an_unwind(&seen, move || {
        let _ = tx.send(std::thread::panicking());
    });
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
        move |mut req: Request<()>| -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
            // Taken out, so that no handle is dropped during the unwind:
            // the layer itself must record the panic.
            let lifecycle = req.extensions_mut().remove::<Lifecycle>().unwrap();
            tx.send(lifecycle).unwrap();
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

#[tokio::test]
async fn a_panic_in_a_task_holding_the_handle_is_recorded() {
    // The panic is nowhere near the layer's own polls: only the handle,
    // dropped while that task unwinds, can tell.
    let seen = Seen::default();
    let svc = seen.service(|req: Request<()>| {
        let lifecycle = lifecycle_of(&req);
        async move {
            let task = tokio::spawn(async move {
                let _held = lifecycle;
                panic!("a task of the handler");
            });
            assert!(task.await.is_err());
            Ok::<_, Infallible>(full("x"))
        }
    });
    run_to_end(svc, Request::new(())).await;
    let c = seen.wait_one().await;
    assert!(c.panicked(), "{c:?}");
    assert_eq!(c.status(), ConnectionStatus::NORMAL);
}
