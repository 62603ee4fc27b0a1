//! The status and phase of each way a request ends.

use super::*;

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

#[test]
fn status_bits_only_add() {
    let aborted = ConnectionStatus::ABORTED;
    assert_eq!(aborted | aborted, aborted, "a bit set twice stays set");
    let mut status = ConnectionStatus::TIMEOUT;
    status |= aborted;
    status |= aborted;
    assert_eq!(status.bits(), 3);
}
