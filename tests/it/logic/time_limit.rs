//! Time limits on a paused clock: before the head, mid-body, restarts, gRPC caps.

use super::*;

use http_body_util::channel::Channel;
use tower_lifecycle::LifecycleBody;

/// Sends `req` through `seen`'s layer with a time limit of `limit` to a
/// handler that answers at once with a channel body, and returns that body:
/// a producer task sends `first` down it, then holds it open without
/// another frame.
async fn stalling_body(
    seen: &Seen,
    limit: Duration,
    first: &'static str,
    req: Request<()>,
) -> LifecycleBody<Channel<Bytes, Infallible>> {
    let svc = layered(seen.layer().time_limit(limit), move |_req: Request<()>| {
        let (mut tx, body) = Channel::<Bytes, Infallible>::new(1);
        tokio::spawn(async move {
            tx.send_data(Bytes::from_static(first.as_bytes()))
                .await
                .unwrap();
            std::future::pending::<()>().await;
            drop(tx);
        });
        std::future::ready(Ok::<_, Infallible>(Response::new(body)))
    });
    svc.oneshot(req).await.unwrap().into_body()
}

#[tokio::test(start_paused = true)]
async fn a_handler_past_the_limit_is_cancelled_and_answered_with_503() {
    let seen = Seen::default();
    let log = Log::default();
    let l = log.clone();
    let layer = seen.layer().time_limit(Duration::from_secs(2));
    let svc = layered(layer, move |req: Request<()>| {
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
            lifecycle.on_shutdown(move |c| l.push(format!("hook:{}:{}", c.status(), c.phase())));
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
    let layer = LifecycleLayer::new()
        .time_limit(Duration::from_secs(1))
        .timeout_status(StatusCode::GATEWAY_TIMEOUT);
    let svc = layered(layer, |_req: Request<()>| async {
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
        layered(layer, move |req: Request<()>| {
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
    let limit = Duration::from_secs(5);
    let mut body = stalling_body(&seen, limit, "first", Request::new(())).await;
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    let err = body.frame().await.unwrap().unwrap_err();
    assert!(
        err.downcast_ref::<tower_lifecycle::TimedOut>().is_some(),
        "{err}"
    );
    assert!(body.frame().await.is_none(), "nothing after the error");
    let c = seen.only();
    assert_eq!(ended(&c), (ConnectionStatus::TIMEOUT, Phase::Body));
    assert_eq!(c.bytes_sent(), 5);
    assert!(!c.body_error(), "a timeout is not the body's own error");
}

#[tokio::test(start_paused = true)]
async fn set_time_limit_restarts_the_clock_and_none_removes_it() {
    let seen = Seen::default();
    let layer = seen.layer().time_limit(Duration::from_secs(1));
    let svc = layered(layer, |req: Request<()>| {
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
    let res = svc.oneshot(get("/none")).await.unwrap();
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
    let svc = layered(seen.layer().time_limit(Duration::MAX), |req: Request<()>| {
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
    let res = svc.oneshot(get("/zero")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let all = seen.all();
    assert_eq!(all[1].status(), ConnectionStatus::TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn continued_work_past_the_limit_is_cancelled_with_aborted_and_timeout() {
    let seen = Seen::default();
    let layer = seen
        .layer()
        .ignore_abort(true)
        .time_limit(Duration::from_secs(2));
    let svc = layered(layer, |req: Request<()>| {
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
        run_to_end(svc.clone(), get(uri)).await;
    }
    seen.wait_for(3).await;
    for c in &seen.all()[1..] {
        assert_eq!(ended(c), (ConnectionStatus::TIMEOUT, Phase::Continued));
    }
}

#[tokio::test(start_paused = true)]
async fn an_always_ready_body_cannot_outrun_the_limit() {
    let seen = Seen::default();
    let layer = seen.layer().time_limit(Duration::from_secs(1));
    let svc = layered(layer, |_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Chunks::new(&["a", "b", "c"])))
    });
    let mut body = svc.oneshot(Request::new(())).await.unwrap().into_body();
    assert!(matches!(poll_once(&mut body), Poll::Ready(Some(Ok(_)))));
    tokio::time::advance(Duration::from_secs(2)).await;
    match poll_once(&mut body) {
        Poll::Ready(Some(Err(err))) => assert!(err.is::<tower_lifecycle::TimedOut>(), "{err}"),
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
    let limit = Duration::from_secs(1);
    let body = stalling_body(&seen, limit, "message", grpc_request()).await;
    let collected = body.collect().await.expect("ends cleanly, with trailers");
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "4");
    assert_eq!(collected.to_bytes(), "message");
    let c = seen.only();
    assert_eq!(ended(&c), (ConnectionStatus::TIMEOUT, Phase::Body));
    assert_eq!(c.grpc_status(), Some(4));
}
