//! The body wrapper and tower_test: readiness, forwarding, Send and Sync.

use super::*;

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
    send_sync::<tower_lifecycle::LifecycleService<()>>();
    send_sync::<tower_lifecycle::LifecycleBody<Full<Bytes>>>();
    // A streaming body that is `Send` but not `Sync`, like axum's.
    type Unsync = http_body_util::combinators::UnsyncBoxBody<Bytes, tower_lifecycle::BoxError>;
    send::<tower_lifecycle::LifecycleBody<Unsync>>();

    // A real service future: an async handler that awaits before it answers
    // with a channel-fed body.
    let mut svc = ServiceBuilder::new()
        .layer(LifecycleLayer::new())
        .service_fn(|_req: Request<()>| async {
            tokio::task::yield_now().await;
            let (_tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(1);
            Ok::<_, Infallible>(Response::new(body))
        });
    let fut: tower_lifecycle::ResponseFuture<_> = svc.call(Request::new(()));
    assert_send_static(&fut);
    assert_send_body(&fut);

    let (tx, rx) = std::sync::mpsc::channel();
    let mut svc = ServiceBuilder::new()
        .layer(LifecycleLayer::new())
        .service_fn(move |req: Request<()>| {
            tx.send(lifecycle_of(&req)).unwrap();
            std::future::ready(Ok::<_, Infallible>(full("x")))
        });
    let fut = svc.call(Request::new(()));
    let lifecycle = rx.recv().unwrap();
    assert_send_static(&lifecycle.aborted());
    assert!(format!("{lifecycle:?}").contains("ended: false"));
    drop(fut);
    let debug = format!("{lifecycle:?}");
    assert!(
        debug.contains("aborted") && debug.contains("ended: true"),
        "{debug}"
    );
}

#[tokio::test]
async fn the_inner_body_is_reachable_until_it_ended_inline_or_boxed() {
    for max_detached in [0, 1] {
        // With continuing off the body lives inline, else it is boxed.
        let svc = ServiceBuilder::new()
            .layer(LifecycleLayer::new().max_detached(max_detached))
            .service_fn(|_req: Request<()>| async {
                Ok::<_, Infallible>(Response::new(Chunks::new(&["a", "b"])))
            });
        let mut body = svc.oneshot(Request::new(())).await.unwrap().into_body();
        assert_eq!(body.get_ref().map(Chunks::remaining), Some(2));
        body.get_mut()
            .expect("not ended")
            .chunks
            .push_back(Bytes::from_static(b"c"));
        let pinned = Pin::new(&mut body).get_pin_mut().expect("not ended");
        assert_eq!(pinned.remaining(), 3, "max_detached({max_detached})");
        let debug = format!("{body:?}");
        assert!(debug.contains("complete: false"), "{debug}");
        assert!(debug.contains("ended: false"), "{debug}");

        while let Poll::Ready(Some(_)) = poll_once(&mut body) {}
        assert!(body.get_ref().is_none(), "dropped at its end");
        assert!(body.get_mut().is_none());
        assert!(Pin::new(&mut body).get_pin_mut().is_none());
        let debug = format!("{body:?}");
        assert!(debug.contains("bytes_sent: 3"), "{debug}");
        assert!(debug.contains("complete: true"), "{debug}");
        assert!(debug.contains("ended: true"), "{debug}");
    }
}

#[tokio::test]
async fn the_response_future_shows_whether_it_is_done() {
    let mut svc = ServiceBuilder::new()
        .layer(LifecycleLayer::new())
        .service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(full("x")) });
    let mut fut = Box::pin(svc.call(Request::head("/").body(()).unwrap()));
    let debug = format!("{fut:?}");
    assert!(
        debug.contains("done: false") && debug.contains("Head"),
        "{debug}"
    );
    let res = fut.as_mut().await.unwrap();
    assert!(format!("{fut:?}").contains("done: true"));
    drop(res);
}

#[tokio::test]
async fn the_body_shows_the_length_it_expects() {
    let res = ServiceBuilder::new()
        .layer(LifecycleLayer::new())
        .service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(full("hello world")) })
        .oneshot(Request::new(()))
        .await
        .unwrap();
    let debug = format!("{:?}", res.body());
    assert!(
        debug.contains("expected: Some(11)") && debug.contains("bytes_sent: 0"),
        "{debug}"
    );
    let res = ServiceBuilder::new()
        .layer(LifecycleLayer::new())
        .service_fn(|_req: Request<()>| async {
            let open = http_body_util::StreamBody::new(futures_util::stream::empty::<
                Result<Frame<Bytes>, Infallible>,
            >());
            Ok::<_, Infallible>(Response::new(open))
        })
        .oneshot(Request::new(()))
        .await
        .unwrap();
    let debug = format!("{:?}", res.body());
    assert!(debug.contains("expected: None"), "{debug}");
}

#[cfg(target_pointer_width = "64")]
#[test]
fn a_body_around_full_stays_small_enough_to_move_without_a_call() {
    // What compilers copy inline, without a call to `memcpy`: a body is
    // moved by every layer and server it passes through.
    let size = std::mem::size_of::<tower_lifecycle::LifecycleBody<Full<Bytes>>>();
    assert!(size <= 128, "{size} bytes");
    let size = std::mem::size_of::<tower_lifecycle::ResponseFuture<std::future::Ready<()>>>();
    assert!(size <= 64, "{size} bytes");
}

#[test]
fn the_layer_and_the_service_show_their_settings() {
    let layer = LifecycleLayer::new()
        .ignore_abort(true)
        .max_detached(3)
        .time_limit(Duration::from_secs(2))
        .record_caught_panics(false)
        .log_level(Some(tracing::Level::WARN))
        .log_normal(true);
    let debug = format!("{layer:?}");
    for part in [
        "on_complete: false",
        "ignore_abort: true",
        "max_detached: 3",
        "time_limit: Some(2s)",
        "timeout_status: 503",
        "record_caught_panics: false",
        "log_level: Some(Level(Warn))",
        "log_normal: true",
    ] {
        assert!(debug.contains(part), "{part} in {debug}");
    }
    let svc = ServiceBuilder::new()
        .layer(layer.on_complete(|_| {}))
        .service(tower::service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(full("x"))
        }));
    let debug = format!("{svc:?}");
    assert!(
        debug.contains("LifecycleService") && debug.contains("on_complete: true"),
        "{debug}"
    );
}

#[test]
fn timed_out_says_what_happened() {
    let err: tower_lifecycle::BoxError = Box::<tower_lifecycle::TimedOut>::default();
    assert_eq!(err.to_string(), "the request's time limit expired");
    assert!(err.downcast_ref::<tower_lifecycle::TimedOut>().is_some());
}
