//! Promises of the per-request state that no loopback test reached, driven
//! in-process with `ServiceBuilder` + `oneshot` on a paused clock: a changed
//! time limit reaches continued work at once, a gRPC client's deadline stays
//! a cap, and spawned work continues under ignore-abort whatever the body.

use crate::common;

use std::convert::Infallible;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_lifecycle::{ConnectionStatus, Lifecycle, LifecycleLayer, Phase};

use crate::logic::PollFnBody;
use common::{layer, within};

/// A service whose handler spawns work that never ends by itself, answers
/// "x", and hands its `Lifecycle` to the test once the work is running (and
/// so already waiting on the deadline it had).
async fn request_with_endless_work(layer: LifecycleLayer) -> Lifecycle {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |req: Request<()>| {
            let lifecycle = req.extensions().get::<Lifecycle>().unwrap().clone();
            let (started_tx, started_rx) = oneshot::channel();
            lifecycle.spawn(async move {
                let _ = started_tx.send(());
                std::future::pending::<()>().await;
            });
            tx.send((lifecycle, started_rx)).unwrap();
            std::future::ready(Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("x"))))
        });
    let res = svc.oneshot(Request::new(())).await.unwrap();
    res.into_body().collect().await.unwrap();
    let (lifecycle, started) = rx.recv().await.unwrap();
    within("the work to start", started).await.unwrap();
    lifecycle
}

#[tokio::test(start_paused = true)]
async fn a_limit_set_after_the_response_reaches_continued_work_at_once() {
    // No limit at first: the work waits for a change of the deadline.
    let (plain, mut done) = layer();
    let lifecycle = request_with_endless_work(plain).await;
    lifecycle.set_time_limit(Some(Duration::from_millis(10)));
    let set = Instant::now();
    let c = done.next().await;
    assert_eq!(c.status(), ConnectionStatus::TIMEOUT);
    assert_eq!(c.phase(), Phase::Continued);
    assert_eq!(
        set.elapsed(),
        Duration::from_millis(10),
        "the new limit, from the call"
    );

    // A long limit shortened: the work must not wait for the old deadline.
    let (long, mut done) = layer();
    let lifecycle = request_with_endless_work(long.time_limit(Duration::from_secs(3600))).await;
    lifecycle.set_time_limit(Some(Duration::from_millis(10)));
    let set = Instant::now();
    let c = done.next().await;
    assert_eq!(c.status(), ConnectionStatus::TIMEOUT);
    assert_eq!(set.elapsed(), Duration::from_millis(10));
}

#[tokio::test(start_paused = true)]
async fn set_time_limit_cannot_lift_a_grpc_clients_deadline() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let svc = ServiceBuilder::new()
        .layer(LifecycleLayer::new())
        .service_fn(move |req: Request<()>| {
            let lifecycle = req.extensions().get::<Lifecycle>().unwrap().clone();
            let mut seen = vec![lifecycle.deadline()];
            lifecycle.set_time_limit(None);
            seen.push(lifecycle.deadline());
            lifecycle.set_time_limit(Some(Duration::from_secs(3600)));
            seen.push(lifecycle.deadline());
            lifecycle.set_time_limit(Some(Duration::from_millis(1)));
            seen.push(lifecycle.deadline());
            tx.send(seen).unwrap();
            std::future::ready(Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("x"))))
        });
    let req = Request::post("/svc/Method")
        .header("content-type", "application/grpc")
        .header("grpc-timeout", "100m")
        .body(())
        .unwrap();
    let start = Instant::now();
    drop(svc.oneshot(req).await.unwrap());
    let seen = rx.recv().await.unwrap();
    let cap = start + Duration::from_millis(100);
    for (i, deadline) in seen.iter().take(3).enumerate() {
        let deadline = deadline.unwrap_or_else(|| panic!("call {i}: the cap was lifted"));
        assert!(
            deadline <= cap,
            "call {i}: {deadline:?} is past the cap {cap:?}"
        );
        assert!(
            deadline > start,
            "call {i}: the cap is the client's deadline"
        );
    }
    assert_eq!(
        seen[3],
        Some(start + Duration::from_millis(1)),
        "a shorter limit applies"
    );
}

/// A body with an exact length that never yields: the layer keeps it
/// inline (nothing to drain), and dropping it is an abort.
fn stuck() -> impl Body<Data = Bytes, Error = Infallible> {
    PollFnBody::new(|| Poll::Pending).exact(10)
}

#[tokio::test]
async fn spawned_work_continues_under_ignore_abort_when_the_body_is_inline() {
    let (layer, mut done) = layer();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let (finished_tx, finished_rx) = oneshot::channel();
    let mut work = Some((release_rx, finished_tx));
    let svc = ServiceBuilder::new()
        .layer(layer.ignore_abort(true))
        .service_fn(move |req: Request<()>| {
            let lifecycle = req.extensions().get::<Lifecycle>().unwrap().clone();
            let (release, finished) = work.take().expect("one request");
            lifecycle.spawn(async move {
                let _ = release.await;
                let _ = finished.send(());
            });
            std::future::ready(Ok::<_, Infallible>(Response::new(stuck())))
        });
    let res = svc.oneshot(Request::new(())).await.unwrap();
    drop(res); // the client left mid-body

    release_tx
        .send(())
        .expect("the spawned work was cancelled by the abort");
    within("the spawned work's end", finished_rx).await.unwrap();
    let c = done.next().await;
    assert_eq!(c.status(), ConnectionStatus::ABORTED);
    assert!(c.continued(), "{c:?}");
    assert_eq!(c.phase(), Phase::Continued);
}

/// A body that panics inside its first poll and catches the panic itself,
/// then ends.
fn catches_its_own_panic() -> impl Body<Data = Bytes, Error = Infallible> {
    let mut polled = false;
    PollFnBody::new(move || {
        if std::mem::replace(&mut polled, true) {
            return Poll::Ready(None);
        }
        let caught = std::panic::catch_unwind(|| panic!("caught inside the body"));
        assert!(caught.is_err());
        Poll::Ready(Some(Frame::data(Bytes::from_static(b"ok"))))
    })
}

#[tokio::test]
async fn a_panic_caught_inside_the_call_or_the_body_is_recorded() {
    // In the inner service's `call`: CatchPanicLayer catches it there too.
    let (lifecycle, mut done) = layer();
    let svc = ServiceBuilder::new()
        .layer(lifecycle)
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .service_fn(
            |_: Request<()>| -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
                panic!("in call")
            },
        );
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
    res.into_body().collect().await.unwrap();
    assert!(done.next().await.panicked(), "a panic caught in call");

    // In the body's `poll_frame`.
    let (lifecycle, mut done) = layer();
    let svc = ServiceBuilder::new()
        .layer(lifecycle)
        .service_fn(|_: Request<()>| {
            std::future::ready(Ok::<_, Infallible>(Response::new(catches_its_own_panic())))
        });
    let res = svc.oneshot(Request::new(())).await.unwrap();
    res.into_body().collect().await.unwrap();
    let c = done.next().await;
    assert!(c.panicked(), "a panic caught in the body");
    assert_eq!(c.status(), ConnectionStatus::NORMAL);

    // And none: not marked.
    let (lifecycle, mut done) = layer();
    let svc = ServiceBuilder::new()
        .layer(lifecycle)
        .service_fn(|_: Request<()>| {
            std::future::ready(Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("x"))))
        });
    svc.oneshot(Request::new(()))
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    assert!(!done.next().await.panicked());
}
