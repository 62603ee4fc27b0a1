//! The shutdown on a paused clock: what begins it, what each kind of body
//! does then and when the grace runs out, the readiness probe and the steps
//! of `on_signal`.

use super::*;

use std::future::IntoFuture;

use http::header::CONTENT_TYPE;
use http_body_util::channel::Channel;
use tower_lifecycle::{Drain, LifecycleBody, ServerShutdown};

/// A response with a channel body and `content_type`; the test holds the
/// sender.
fn channel_response(
    content_type: &'static str,
) -> (BodySender, Response<Channel<Bytes, Infallible>>) {
    let (tx, body) = Channel::<Bytes, Infallible>::new(4);
    let mut res = Response::new(body);
    res.headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    (tx, res)
}

type BodySender = http_body_util::channel::Sender<Bytes, Infallible>;

/// Sends a request (`content-type: request_type`) through a layer whose
/// drain is returned to a handler answering with a channel body of
/// `content_type`; returns the drain, the body's sender and the body.
async fn streaming(
    seen: &Seen,
    request_type: &'static str,
    content_type: &'static str,
) -> (Drain, BodySender, LifecycleBody<Channel<Bytes, Infallible>>) {
    let layer = seen.layer();
    let drain = layer.drain();
    let (senders, mut sender) = tokio::sync::mpsc::unbounded_channel();
    let svc = layered(layer, move |_req: Request<()>| {
        let (tx, res) = channel_response(content_type);
        senders.send(tx).unwrap();
        std::future::ready(Ok::<_, Infallible>(res))
    });
    let req = Request::builder()
        .header(CONTENT_TYPE, request_type)
        .body(())
        .unwrap();
    let body = svc.oneshot(req).await.unwrap().into_body();
    (drain, sender.recv().await.unwrap(), body)
}

async fn next_data<B: Body<Data = Bytes> + Unpin>(body: &mut B) -> Bytes
where
    B::Error: std::fmt::Debug,
{
    tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("a frame")
        .expect("not the end")
        .expect("not an error")
        .into_data()
        .expect("data")
}

#[tokio::test(start_paused = true)]
async fn begin_wakes_every_waiter_once_and_begun_resolves_at_once_after() {
    let seen = Seen::default();
    let layer = seen.layer();
    let drain = layer.drain();
    let (tx, mut lifecycles) = tokio::sync::mpsc::unbounded_channel();
    let svc = layered(layer, move |req: Request<()>| {
        tx.send(lifecycle_of(&req)).unwrap();
        async { Ok::<_, Infallible>(full("ok")) }
    });
    let _res = svc.oneshot(Request::new(())).await.unwrap();
    let lifecycle = lifecycles.recv().await.unwrap();
    assert!(!lifecycle.is_shutting_down() && !drain.is_shutting_down());
    let waiters: Vec<_> = (0..3)
        .map(|_| tokio::spawn(lifecycle.shutting_down()))
        .collect();
    let begun = tokio::spawn(drain.begun());
    tokio::task::yield_now().await;
    assert!(
        waiters.iter().all(|w| !w.is_finished()),
        "nothing began yet"
    );
    drain.begin();
    drain.begin();
    for w in waiters {
        tokio::time::timeout(WAIT, w).await.expect("woken").unwrap();
    }
    tokio::time::timeout(WAIT, begun)
        .await
        .expect("woken")
        .unwrap();
    assert!(lifecycle.is_shutting_down() && drain.is_shutting_down());
    // Once begun, a new wait resolves at once.
    assert!(futures_util::FutureExt::now_or_never(lifecycle.shutting_down()).is_some());
    assert!(futures_util::FutureExt::now_or_never(drain.begun()).is_some());
    assert!(format!("{drain:?}").contains("shutting_down: true"));
    assert!(format!("{:?}", drain.begun()).starts_with("ShuttingDown"));
}

#[tokio::test(start_paused = true)]
async fn a_grpc_stream_ends_with_unavailable_when_the_shutdown_begins() {
    let seen = Seen::default();
    let (drain, mut tx, mut body) = streaming(&seen, "application/grpc", "application/grpc").await;
    tx.send_data(Bytes::from_static(b"message 1"))
        .await
        .unwrap();
    assert_eq!(next_data(&mut body).await, "message 1");
    let frame = tokio::spawn(async move {
        let frame = body.frame().await;
        (frame, body)
    });
    tokio::task::yield_now().await;
    assert!(
        !frame.is_finished(),
        "the stream waits for its next message"
    );
    drain.begin();
    let (frame, mut body) = tokio::time::timeout(WAIT, frame)
        .await
        .expect("woken")
        .unwrap();
    let trailers = frame.unwrap().unwrap().into_trailers().expect("trailers");
    assert_eq!(trailers["grpc-status"], "14");
    assert!(body.frame().await.is_none());
    let c = &seen.wait_for(1).await[0];
    assert_eq!(
        (c.status(), c.phase()),
        (ConnectionStatus::NORMAL, Phase::Body)
    );
    assert_eq!((c.grpc_status(), c.shutdown()), (Some(14), true));
}

#[tokio::test(start_paused = true)]
async fn an_event_stream_ends_cleanly_even_when_always_ready() {
    let seen = Seen::default();
    let (drain, mut tx, mut body) = streaming(&seen, "text/plain", "text/event-stream").await;
    for n in 0..3 {
        tx.send_data(Bytes::from(format!("data: {n}\n\n")))
            .await
            .unwrap();
    }
    assert_eq!(next_data(&mut body).await, "data: 0\n\n");
    drain.begin();
    // Frames are still queued: the stream ends without waiting for them.
    assert!(
        body.frame().await.is_none(),
        "the event stream ends at once"
    );
    assert!(body.frame().await.is_none());
    assert!(
        tx.send_data(Bytes::from_static(b"late")).await.is_err(),
        "its producer learns"
    );
    let c = &seen.wait_for(1).await[0];
    assert_eq!(
        (c.status(), c.phase(), c.shutdown()),
        (ConnectionStatus::NORMAL, Phase::Body, true)
    );
    assert!(!c.body_error());
}

#[tokio::test(start_paused = true)]
async fn another_body_has_the_grace_then_is_cut_with_an_error() {
    let seen = Seen::default();
    let (drain, mut tx, mut body) =
        streaming(&seen, "text/plain", "application/octet-stream").await;
    let shutdown = tokio::spawn({
        let drain = drain.clone();
        async move { drain.shutdown(Duration::from_secs(10)).await }
    });
    tokio::task::yield_now().await;
    assert!(drain.is_shutting_down());
    // Begun, within the grace: the body goes on.
    tx.send_data(Bytes::from_static(b"part 1")).await.unwrap();
    assert_eq!(next_data(&mut body).await, "part 1");
    let start = tokio::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(60), body.frame())
        .await
        .expect("cut at the end of the grace")
        .expect("an error, not the end")
        .expect_err("an error, not a frame");
    assert!(err.downcast_ref::<ServerShutdown>().is_some(), "{err}");
    assert_eq!(
        err.to_string(),
        "the server shut down before the response was complete"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    let report = shutdown.await.unwrap();
    assert_eq!(
        (report.finished(), report.cancelled(), report.remaining()),
        (0, 1, 0)
    );
    let c = &seen.wait_for(1).await[0];
    assert_eq!(
        (c.status(), c.phase(), c.shutdown()),
        (ConnectionStatus::TIMEOUT, Phase::Body, true)
    );
}

#[tokio::test(start_paused = true)]
async fn a_handler_still_running_when_the_grace_ends_is_answered_for() {
    for (request_type, status, grpc_status) in [
        ("text/plain", StatusCode::SERVICE_UNAVAILABLE, None),
        ("application/grpc", StatusCode::OK, Some(14)),
    ] {
        let seen = Seen::default();
        let layer = seen.layer();
        let drain = layer.drain();
        let svc = layered(layer, |_req: Request<()>| async {
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(full("never"))
        });
        let req = Request::builder()
            .header(CONTENT_TYPE, request_type)
            .body(())
            .unwrap();
        let call = tokio::spawn(svc.oneshot(req));
        tokio::task::yield_now().await;
        let start = tokio::time::Instant::now();
        let report = drain.shutdown(Duration::from_secs(3)).await;
        let res = call.await.unwrap().unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(3), "{request_type}");
        assert_eq!(res.status(), status, "{request_type}");
        let grpc = res
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().parse::<i32>().unwrap());
        assert_eq!(grpc, grpc_status, "{request_type}");
        assert_eq!(report.cancelled(), 1, "{request_type}");
        let c = &seen.wait_for(1).await[0];
        assert_eq!(
            (c.status(), c.phase(), c.shutdown()),
            (ConnectionStatus::TIMEOUT, Phase::Handler, true)
        );
        assert_eq!(
            (c.response_status(), c.grpc_status()),
            (Some(status), grpc_status)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_the_shutdown_did_not_touch_says_so() {
    let seen = Seen::default();
    let layer = seen.layer();
    let drain = layer.drain();
    drain.begin();
    let svc = layered(layer, |_req: Request<()>| async {
        Ok::<_, Infallible>(full("ok"))
    });
    assert_eq!(run_to_end(svc, Request::new(())).await, "ok");
    let c = &seen.wait_for(1).await[0];
    assert_eq!(
        (c.status(), c.shutdown()),
        (ConnectionStatus::NORMAL, false)
    );
}

#[tokio::test]
async fn readiness_answers_200_until_the_stop_and_503_after() {
    let drain = LifecycleLayer::new().drain();
    let probe = |drain: &Drain| {
        let readiness = drain.readiness();
        async move {
            let res = readiness.oneshot(Request::new(())).await.unwrap();
            let status = res.status();
            (status, res.into_body().collect().await.unwrap().to_bytes())
        }
    };
    assert!(drain.is_ready());
    assert!(format!("{:?}", drain.readiness()).contains("ready: true"));
    assert_eq!(
        probe(&drain).await,
        (StatusCode::OK, Bytes::from("ready\n"))
    );
    drain.set_unready();
    assert!(
        !drain.is_ready() && !drain.is_shutting_down(),
        "unready only"
    );
    assert!(format!("{:?}", drain.readiness()).contains("ready: false"));
    assert_eq!(
        probe(&drain).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from("shutting down\n")
        )
    );
    let other = LifecycleLayer::new().drain();
    other.begin();
    assert_eq!(
        probe(&other).await.0,
        StatusCode::SERVICE_UNAVAILABLE,
        "begin() makes it unready too"
    );
}

#[tokio::test(start_paused = true)]
async fn on_signal_goes_unready_then_waits_then_begins_then_drains() {
    let drain = LifecycleLayer::new().drain();
    let (signal, on) = tokio::sync::oneshot::channel::<()>();
    let steps = drain
        .on_signal(async move {
            let _ = on.await;
        })
        .unready_for(Duration::from_secs(5))
        .grace(Duration::from_secs(1));
    assert!(format!("{steps:?}").contains("unready_for: 5s"));
    let stop = tokio::spawn(steps.into_future());
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(drain.is_ready(), "nothing before the signal");
    signal.send(()).unwrap();
    tokio::task::yield_now().await;
    let at = tokio::time::Instant::now();
    assert!(
        !drain.is_ready() && !drain.is_shutting_down(),
        "unready, not begun"
    );
    tokio::time::timeout(WAIT * 2, drain.begun())
        .await
        .expect("begun after the delay");
    assert_eq!(at.elapsed(), Duration::from_secs(5));
    let report = stop.await.unwrap();
    assert_eq!(
        (report.finished(), report.cancelled(), report.remaining()),
        (0, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn begin_on_begins_once_its_signal_resolved() {
    let drain = LifecycleLayer::new().drain();
    let (signal, on) = tokio::sync::oneshot::channel::<()>();
    let begin = tokio::spawn(drain.begin_on(async move {
        let _ = on.await;
    }));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        !drain.is_shutting_down() && drain.is_ready(),
        "nothing before the signal"
    );
    signal.send(()).unwrap();
    tokio::time::timeout(WAIT, begin)
        .await
        .expect("resolves after the signal")
        .unwrap();
    assert!(drain.is_shutting_down() && !drain.is_ready());
}

#[tokio::test(start_paused = true)]
async fn a_body_of_exact_size_is_never_cut_even_after_the_grace() {
    let seen = Seen::default();
    let layer = seen.layer();
    let drain = layer.drain();
    let report = drain.shutdown(Duration::ZERO).await;
    assert_eq!(report.remaining(), 0);
    let svc = layered(layer, |_req: Request<()>| async {
        Ok::<_, Infallible>(full("whole"))
    });
    assert_eq!(run_to_end(svc, Request::new(())).await, "whole");
    let c = &seen.wait_for(1).await[0];
    assert_eq!(
        (c.status(), c.shutdown()),
        (ConnectionStatus::NORMAL, false)
    );
}
