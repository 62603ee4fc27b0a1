//! Ignore-abort, continued work (spawn, after_response), the max_detached bound and the drain.

use super::*;
use crate::common::logic::leave_after_first_frame;
use crate::common::{logs, COUNTED_WARNINGS};

#[tokio::test]
async fn ignore_abort_returns_the_previous_value_and_starts_from_the_layer() {
    for default in [false, true] {
        let (tx, rx) = std::sync::mpsc::channel();
        let layer = LifecycleLayer::new().ignore_abort(default);
        let svc = layered(layer, move |req: Request<()>| {
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
    let g = gate.clone();
    let mut svc = layered(seen.layer().ignore_abort(true), move |_req: Request<()>| {
        let gate = g.clone();
        async move {
            gate.wait().await; // counts the handler past its last await
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
    assert_eq!(gate.passed(), 1, "the handler finished");
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
    assert_eq!(ended(&c), (ConnectionStatus::ABORTED, Phase::Handler));
    assert!(!c.continued() && !c.detach_refused());
}

#[tokio::test]
async fn with_ignore_abort_a_dropped_body_is_drained_so_its_producer_finishes() {
    let seen = Seen::default();
    // The client leaves mid-body.
    let (mut tx, first) = leave_after_first_frame(seen.layer().ignore_abort(true), "first").await;
    assert_eq!(first, "first");
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
    let _counting = COUNTED_WARNINGS.lock().await;
    logs();
    let seen = Seen::default();
    let gate = Gate::new();
    let running = Arc::new(AtomicUsize::new(0));
    let (g, r) = (gate.clone(), running.clone());
    let layer = seen.layer().ignore_abort(true).max_detached(2);
    let mut svc = layered(layer, move |_req: Request<()>| {
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
    let mut svc = layered(seen.layer().ignore_abort(true), |_req: Request<()>| async {
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
    let mut fut = Box::pin(svc.ready().await.unwrap().call(get("/pending")));
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
    run_to_end(svc, Request::new(())).await;
    tokio::task::yield_now().await;
    assert_eq!(
        seen.all().len(),
        1,
        "the second lifecycle waits for its work"
    );
    gate.open();
    seen.wait_for(2).await;
    let c = seen.all()[1].clone();
    assert_eq!(ended(&c), (ConnectionStatus::NORMAL, Phase::Continued));
}

#[tokio::test]
async fn after_response_starts_when_the_body_is_done_and_the_hooks_wait_for_it() {
    let log = Log::default();
    let l = log.clone();
    let layer = LifecycleLayer::new()
        .on_complete(move |c| l.push(format!("hooks:{}:{}", c.status(), c.phase())));
    let work_log = log.clone();
    let svc = layered(layer, move |req: Request<()>| {
        let lifecycle = lifecycle_of(&req);
        let log = work_log.clone();
        lifecycle.after_response(async move {
            log.push("work started");
            tokio::task::yield_now().await;
            log.push("work done");
        });
        std::future::ready(Ok::<_, Infallible>(Response::new(Chunks::new(&["a", "b"]))))
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
    let svc = layered(layer, move |req: Request<()>| {
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
        run_to_end(svc.clone(), get(uri)).await;
    }
    assert_eq!(drain.in_flight(), 2);
    let mut shutdown = Box::pin(drain.shutdown(Duration::from_millis(300)));
    assert!(
        futures_poll(&mut shutdown).is_pending(),
        "both are in flight"
    );
    gate.open();
    let report = tokio::time::timeout(WAIT, shutdown).await.unwrap();
    assert_eq!(
        (report.finished(), report.cancelled(), report.remaining()),
        (1, 1, 0)
    );
    // A second shutdown reports its own work only: none.
    let again = tokio::time::timeout(WAIT, drain.shutdown(Duration::from_millis(300)))
        .await
        .unwrap();
    assert_eq!(
        (again.finished(), again.cancelled(), again.remaining()),
        (0, 0, 0)
    );
    let debug = format!("{drain:?}");
    assert!(
        debug.contains("in_flight: 0") && debug.contains("cancelled: true"),
        "{debug}"
    );
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
    for detachable in [true, false] {
        let log = Log::default();
        let l = log.clone();
        let layer = LifecycleLayer::new()
            .max_detached(if detachable { 1 } else { 0 })
            .on_complete(move |c| l.push(format!("hooks:{}", c.phase())));
        let l = log.clone();
        let mut svc = layered(layer, move |req: Request<()>| {
            let log = l.clone();
            async move {
                let guard = LogOnDrop(log.clone(), "handler dropped");
                if req.uri() == "/pending" {
                    std::future::pending::<()>().await;
                }
                drop(guard);
                // A body that never yields, and says so when dropped.
                let guard = LogOnDrop(log, "body dropped");
                let body = PollFnBody::new(move || {
                    let _held = &guard;
                    Poll::Pending
                });
                Ok::<_, Infallible>(Response::new(body))
            }
        });
        let mut fut = Box::pin(svc.ready().await.unwrap().call(get("/pending")));
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
    run_to_end(svc, Request::new(())).await;
    let c = seen.wait_one().await;
    assert!(c.panicked());
    assert_eq!(ended(&c), (ConnectionStatus::NORMAL, Phase::Continued));
}

#[tokio::test]
async fn shutdown_is_bounded_even_when_a_hook_never_ends() {
    let layer = LifecycleLayer::new();
    let drain = layer.drain();
    let svc = layered(layer, |req: Request<()>| {
        lifecycle_of(&req).on_shutdown_async(|_| std::future::pending());
        std::future::ready(Ok::<_, Infallible>(full("x")))
    });
    run_to_end(svc, Request::new(())).await;
    assert_eq!(drain.in_flight(), 1);
    let report = tokio::time::timeout(WAIT, drain.shutdown(Duration::from_millis(50)))
        .await
        .expect("shutdown returns");
    assert_eq!(
        (report.finished(), report.cancelled(), report.remaining()),
        (0, 0, 1)
    );
}

#[tokio::test]
async fn an_exact_size_body_is_not_drained_it_has_no_producer() {
    let seen = Seen::default();
    let svc = layered(seen.layer().ignore_abort(true), |_req: Request<()>| async {
        Ok::<_, Infallible>(full("hello"))
    });
    let body = svc.oneshot(Request::new(())).await.unwrap().into_body();
    drop(body); // never polled: the client left before the body was written
    let c = seen.only();
    assert_eq!(ended(&c), (ConnectionStatus::ABORTED, Phase::Body));
    assert!(!c.continued(), "nothing to continue");
}

#[tokio::test]
async fn max_detached_zero_turns_continuing_off_without_a_refusal() {
    // With nothing that could continue, ignore-abort is not "refused": the
    // abort simply cancels, as documented for `max_detached(0)`.
    let seen = Seen::default();
    let layer = seen.layer().ignore_abort(true).max_detached(0);
    let mut svc = layered(layer, |_req: Request<()>| async {
        std::future::pending::<()>().await;
        Ok::<_, Infallible>(full("never"))
    });
    let mut fut = Box::pin(svc.call(Request::new(())));
    assert!(futures_poll(&mut fut).is_pending());
    drop(fut);
    let c = seen.wait_one().await;
    assert!(c.status().is_aborted(), "{c:?}");
    assert!(!c.detach_refused(), "{c:?}");
    assert!(!c.continued(), "{c:?}");
}

#[tokio::test]
async fn max_detached_zero_keeps_an_open_body_inline_and_refuses_nothing() {
    let seen = Seen::default();
    let layer = seen.layer().ignore_abort(true).max_detached(0);
    let svc = layered(layer, |_req: Request<()>| {
        std::future::ready(Ok::<_, Infallible>(Response::new(Chunks::new(&["a", "b"]))))
    });
    let mut body = svc.oneshot(Request::new(())).await.unwrap().into_body();
    assert!(matches!(poll_once(&mut body), Poll::Ready(Some(Ok(_)))));
    drop(body); // mid-body, with nothing the layer could continue
    let c = seen.wait_one().await;
    assert!(c.status().is_aborted(), "{c:?}");
    assert!(!c.detach_refused(), "{c:?}");
    assert!(!c.continued(), "{c:?}");
}
