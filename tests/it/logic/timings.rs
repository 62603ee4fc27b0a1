//! What a completion says for logs and metrics, on a paused clock: the time
//! to the head and to the end of the body, and the access-log status.

use super::*;

use http_body_util::channel::Channel;

/// A handler that takes `head` to answer, then a body whose one frame comes
/// `body` later; returns the body to read.
async fn timed(
    seen: &Seen,
    head: Duration,
    body: Duration,
) -> Response<impl Body<Data = Bytes, Error: std::fmt::Debug>> {
    let svc = layered(seen.layer(), move |_req: Request<()>| async move {
        tokio::time::sleep(head).await;
        let (mut tx, rx) = Channel::<Bytes, Infallible>::new(1);
        tokio::spawn(async move {
            tokio::time::sleep(body).await;
            tx.send_data(Bytes::from_static(b"late")).await.unwrap();
        });
        Ok::<_, Infallible>(Response::new(rx))
    });
    svc.oneshot(Request::new(())).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_head_and_the_end_of_the_body_are_timed_from_the_layer() {
    let seen = Seen::default();
    let res = timed(&seen, Duration::from_secs(2), Duration::from_secs(3)).await;
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "late");
    let c = seen.wait_for(1).await[0].clone();
    assert_eq!(c.time_to_head(), Some(Duration::from_secs(2)));
    assert_eq!(c.time_to_body_end(), Some(Duration::from_secs(5)));
    assert_eq!(c.elapsed(), Duration::from_secs(5));
    assert_eq!(c.log_status(), 200);
}

#[tokio::test(start_paused = true)]
async fn work_after_the_response_is_outside_the_body_time() {
    let seen = Seen::default();
    let svc = layered(seen.layer(), |req: Request<()>| {
        let lifecycle = lifecycle_of(&req);
        async move {
            lifecycle.after_response(tokio::time::sleep(Duration::from_secs(3)));
            Ok::<_, Infallible>(full("ok"))
        }
    });
    assert_eq!(run_to_end(svc, Request::new(())).await, "ok");
    let c = &seen.wait_for(1).await[0];
    assert_eq!(c.time_to_head(), Some(Duration::ZERO));
    assert_eq!(c.time_to_body_end(), Some(Duration::ZERO));
    assert_eq!(
        (c.elapsed(), c.phase()),
        (Duration::from_secs(3), Phase::Continued)
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_without_a_head_has_no_head_time_and_logs_499_or_500() {
    // The client leaves while the handler runs.
    let seen = Seen::default();
    let svc = layered(seen.layer(), |_req: Request<()>| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, Infallible>(full("never"))
    });
    let call = svc.oneshot(Request::new(()));
    assert!(tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .is_err());
    let c = seen.wait_for(1).await[0].clone();
    assert_eq!((c.time_to_head(), c.time_to_body_end()), (None, None));
    assert_eq!(c.log_status(), 499);

    // The handler panics: no response, 500.
    let seen = Seen::default();
    let svc = layered(seen.layer(), |_req: Request<()>| async {
        panic!("boom");
        #[allow(unreachable_code)]
        Ok::<_, Infallible>(full("never"))
    });
    let call = tokio::spawn(svc.oneshot(Request::new(())));
    assert!(call.await.is_err(), "the panic went through");
    let c = seen.wait_for(1).await[0].clone();
    assert!(c.panicked());
    assert_eq!((c.time_to_head(), c.log_status()), (None, 500));
}

#[tokio::test(start_paused = true)]
async fn a_body_cut_by_the_time_limit_logs_the_timeout_answer() {
    for (status, logged) in [(None, 503), (Some(StatusCode::GATEWAY_TIMEOUT), 504)] {
        let seen = Seen::default();
        let mut layer = seen.layer().time_limit(Duration::from_secs(2));
        if let Some(status) = status {
            layer = layer.timeout_status(status);
        }
        let svc = layered(layer, |_req: Request<()>| async {
            let (_tx, rx) = Channel::<Bytes, Infallible>::new(1);
            // The sender is dropped when the body is: it never sends.
            tokio::spawn(async move {
                let _kept = _tx;
                std::future::pending::<()>().await;
            });
            Ok::<_, Infallible>(Response::new(rx))
        });
        let res = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "the head went out");
        assert!(res.into_body().collect().await.is_err(), "the body was cut");
        let c = seen.wait_for(1).await[0].clone();
        assert_eq!(c.status(), ConnectionStatus::TIMEOUT);
        assert_eq!(c.response_status(), Some(StatusCode::OK));
        assert_eq!(c.log_status(), logged);
        assert_eq!(c.time_to_head(), Some(Duration::ZERO));
        assert_eq!(c.time_to_body_end(), Some(Duration::from_secs(2)));
    }
}

#[tokio::test(start_paused = true)]
async fn the_layers_own_timeout_answer_logs_as_itself() {
    let seen = Seen::default();
    let layer = seen
        .layer()
        .time_limit(Duration::from_secs(1))
        .timeout_status(StatusCode::GATEWAY_TIMEOUT);
    let svc = layered(layer, |_req: Request<()>| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, Infallible>(full("late"))
    });
    let res = svc.oneshot(Request::new(())).await.unwrap();
    drop(res);
    let c = seen.wait_for(1).await[0].clone();
    assert_eq!(c.log_status(), 504);
    assert_eq!(c.time_to_head(), Some(Duration::from_secs(1)));
}
