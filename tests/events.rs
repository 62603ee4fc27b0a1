//! The layer's `tracing` events, in a process of its own so that its global
//! subscriber can listen at DEBUG: what a body drained after its client left
//! amounted to; one event per request that did not end normally, at the
//! layer's level; and the request's span around everything it does later
//! (hooks, continued work, the layer's event).

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_lifecycle::{ConnectionStatus, Lifecycle, LifecycleLayer};
use tracing::Instrument;

use common::logic::leave_after_first_frame;
use common::{layer, within};

/// The DEBUG-and-above output of this process so far.
fn debug_logs() -> String {
    common::logs_at(tracing::Level::DEBUG)
}

#[tokio::test]
async fn a_drained_body_reports_how_much_it_drained() {
    debug_logs();
    let (layer, mut done) = layer();
    // The client leaves mid-body: the rest is drained.
    let (mut tx, _first) = leave_after_first_frame(layer.ignore_abort(true), "first").await;
    for frame in ["second", "third!"] {
        within(
            "a drained send",
            tx.send_data(Bytes::from_static(frame.as_bytes())),
        )
        .await
        .unwrap();
    }
    drop(tx);
    let c = done.next().await;
    assert_eq!(c.status(), ConnectionStatus::ABORTED);
    assert!(c.continued());
    let logs = debug_logs();
    assert!(
        logs.contains("drained=12") && logs.contains("drained a body to its end"),
        "{logs}"
    );
}

/// The lines of the DEBUG output that were written in span `req{id=ID}`.
fn lines_in(id: u32) -> Vec<String> {
    let tag = format!("req{{id={id}}}");
    debug_logs()
        .lines()
        .filter(|l| l.contains(&tag))
        .map(str::to_owned)
        .collect()
}

/// The layer's events among `lines`.
fn ended(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|l| l.contains("tower_lifecycle: request ended"))
        .collect()
}

fn lifecycle_of<B>(req: &Request<B>) -> Lifecycle {
    req.extensions().get::<Lifecycle>().unwrap().clone()
}

/// Sends one request through `layer` in span `req{id=ID}` to a handler that
/// answers `ok` after `wait`; drops the call after `leave_after` (the client
/// leaves) if given.
async fn call_in_span(
    layer: LifecycleLayer,
    id: u32,
    wait: Duration,
    leave_after: Option<Duration>,
) {
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |_req: Request<()>| async move {
            tokio::time::sleep(wait).await;
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("ok")))
        });
    let call = async move {
        let res = svc.oneshot(Request::new(())).await.unwrap();
        res.into_body().collect().await.unwrap();
    }
    .instrument(tracing::info_span!("req", id));
    match leave_after {
        None => within("the request", call).await,
        Some(after) => assert!(tokio::time::timeout(after, call).await.is_err()),
    }
}

#[tokio::test]
async fn a_request_that_did_not_end_normally_gets_one_event_a_normal_one_none() {
    debug_logs();
    let (layer, mut done) = layer();
    call_in_span(layer.clone(), 101, Duration::ZERO, None).await;
    assert_eq!(done.next().await.status(), ConnectionStatus::NORMAL);
    call_in_span(
        layer,
        102,
        Duration::from_secs(60),
        Some(Duration::from_millis(10)),
    )
    .await;
    assert_eq!(done.next().await.status(), ConnectionStatus::ABORTED);

    assert!(
        ended(&lines_in(101)).is_empty(),
        "a normal request: no event\n{:?}",
        lines_in(101)
    );
    let lines = lines_in(102);
    let events = ended(&lines);
    assert_eq!(events.len(), 1, "{lines:?}");
    let event = events[0];
    assert!(event.contains("DEBUG"), "the default level: {event}");
    for field in [
        "status=aborted",
        "phase=handler",
        "log_status=499",
        "elapsed=",
        "time_to_head=None",
        "bytes_sent=0",
        "shutdown=false",
        "continued=false",
        "panicked=false",
    ] {
        assert!(event.contains(field), "{field} in {event}");
    }
}

#[tokio::test]
async fn the_level_is_the_layers_to_set_and_normal_requests_can_be_logged_too() {
    debug_logs();
    let (layer, mut done) = layer();
    call_in_span(
        layer.clone().log_level(None),
        111,
        Duration::from_secs(60),
        Some(Duration::from_millis(10)),
    )
    .await;
    done.next().await;
    assert!(ended(&lines_in(111)).is_empty(), "None: no event");

    call_in_span(
        layer.clone().log_level(Some(tracing::Level::WARN)),
        112,
        Duration::from_secs(60),
        Some(Duration::from_millis(10)),
    )
    .await;
    done.next().await;
    let lines = lines_in(112);
    assert!(
        ended(&lines).iter().all(|l| l.contains(" WARN ")) && ended(&lines).len() == 1,
        "{lines:?}"
    );

    call_in_span(
        layer
            .clone()
            .log_level(Some(tracing::Level::INFO))
            .log_normal(true),
        113,
        Duration::ZERO,
        None,
    )
    .await;
    done.next().await;
    let lines = lines_in(113);
    let events = ended(&lines);
    assert!(
        events.len() == 1 && events[0].contains(" INFO ") && events[0].contains("log_status=200"),
        "{lines:?}"
    );

    call_in_span(
        layer
            .log_level(Some(tracing::Level::TRACE))
            .log_normal(true),
        114,
        Duration::ZERO,
        None,
    )
    .await;
    done.next().await;
    assert!(
        ended(&lines_in(114)).is_empty(),
        "TRACE is below the subscriber's level: not emitted"
    );
}

#[tokio::test]
async fn everything_a_request_does_later_runs_in_its_span() {
    debug_logs();
    let (tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    let layer = LifecycleLayer::new().on_complete(move |c| {
        tracing::info!("on_complete ran");
        let _ = tx.send(c.clone());
    });
    let (kept_tx, mut kept) = tokio::sync::mpsc::unbounded_channel();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(move |req: Request<()>| {
            let lifecycle = lifecycle_of(&req);
            let _ = kept_tx.send(lifecycle.clone());
            async move {
                lifecycle.on_shutdown(|_| tracing::info!("sync hook ran"));
                lifecycle.on_shutdown_async(|_| async { tracing::info!("async hook ran") });
                lifecycle.spawn(async { tracing::info!("spawned work ran") });
                lifecycle.after_response(async { tracing::info!("after_response work ran") });
                Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("ok")))
            }
        });
    async {
        let res = svc.oneshot(Request::new(())).await.unwrap();
        res.into_body().collect().await.unwrap();
    }
    .instrument(tracing::info_span!("req", id = 121))
    .await;
    within("the completion", done.recv()).await.unwrap();
    // Hooks registered after the end, outside any span, run in the
    // request's span too.
    let lifecycle = kept.recv().await.unwrap();
    let (late_tx, late) = tokio::sync::oneshot::channel();
    lifecycle.on_shutdown(|_| tracing::info!("late sync hook ran"));
    lifecycle.on_shutdown_async(|_| async move {
        tracing::info!("late async hook ran");
        let _ = late_tx.send(());
    });
    within("the late async hook", late).await.unwrap();

    // A handler continued under ignore-abort after its client left.
    let (gate, opened) = tokio::sync::oneshot::channel::<()>();
    let opened = std::sync::Mutex::new(Some(opened));
    let svc = ServiceBuilder::new()
        .layer(layer.ignore_abort(true))
        .service_fn(move |_req: Request<()>| {
            let opened = opened.lock().unwrap().take().expect("one request");
            async move {
                let _ = opened.await;
                tracing::info!("continued handler ran");
                Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("late")))
            }
        });
    let call = svc
        .oneshot(Request::new(()))
        .instrument(tracing::info_span!("req", id = 122));
    assert!(tokio::time::timeout(Duration::from_millis(10), call)
        .await
        .is_err());
    gate.send(()).unwrap();
    let c = within("the continued completion", done.recv())
        .await
        .unwrap();
    assert!(c.continued());

    let lines = lines_in(121);
    for message in [
        "sync hook ran",
        "async hook ran",
        "spawned work ran",
        "after_response work ran",
        "on_complete ran",
        "late sync hook ran",
        "late async hook ran",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(message)),
            "{message} in the request's span: {lines:?}"
        );
    }
    let lines = lines_in(122);
    for message in [
        "continued handler ran",
        "tower_lifecycle: request ended",
        "on_complete ran",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(message)),
            "{message} in the request's span: {lines:?}"
        );
    }
}

#[tokio::test]
async fn a_trace_layers_request_span_is_the_parent_of_the_hooks() {
    debug_logs();
    let (tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    let svc = ServiceBuilder::new()
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(LifecycleLayer::new().on_complete(move |c| {
            let _ = tx.send(c.clone());
        }))
        .service_fn(|req: Request<Full<Bytes>>| {
            let lifecycle = lifecycle_of(&req);
            async move {
                lifecycle.on_shutdown(|_| tracing::info!("hook under TraceLayer ran"));
                Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("ok")))
            }
        });
    let req = Request::get("/traced-by-tower-http")
        .body(Full::<Bytes>::default())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    res.into_body().collect().await.unwrap();
    within("the completion", done.recv()).await.unwrap();
    let logs = debug_logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("uri=/traced-by-tower-http")
                && l.contains("hook under TraceLayer ran")),
        "{logs}"
    );
}

#[tokio::test]
async fn a_request_the_shutdown_ended_or_a_caught_panic_gets_an_event_too() {
    debug_logs();
    let (layer, mut done) = layer();
    let drain = layer.drain();
    // An event stream ended by the shutdown: normal, but the shutdown ended it.
    let (senders, mut sender) = tokio::sync::mpsc::unbounded_channel();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(move |_req: Request<()>| {
            let (tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(1);
            senders.send(tx).unwrap();
            let mut res = Response::new(body);
            res.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("text/event-stream"),
            );
            std::future::ready(Ok::<_, Infallible>(res))
        });
    async {
        let res = svc.oneshot(Request::new(())).await.unwrap();
        let _tx = sender.recv().await.unwrap();
        let mut body = res.into_body();
        drain.begin();
        let begins = || debug_logs().matches("the shutdown begins").count();
        assert_eq!(begins(), 1, "the first begin() logs");
        drain.begin();
        assert_eq!(begins(), 1, "a second begin() does not");
        assert!(body.frame().await.is_none());
    }
    .instrument(tracing::info_span!("req", id = 131))
    .await;
    let c = done.next().await;
    assert!(c.status().is_normal() && c.shutdown() && !c.panicked());
    let lines = lines_in(131);
    let events = ended(&lines);
    assert!(
        events.len() == 1 && events[0].contains("shutdown=true"),
        "{lines:?}"
    );

    // A panic caught inside the layer: normal, but panicked.
    let (layer, mut done) = common::layer();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .service_fn(|_req: Request<()>| async {
            panic!("a handler panics");
            #[allow(unreachable_code)]
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("never")))
        });
    async {
        let res = svc.oneshot(Request::new(())).await.unwrap();
        res.into_body().collect().await.unwrap();
    }
    .instrument(tracing::info_span!("req", id = 132))
    .await;
    let c = done.next().await;
    assert!(
        c.status().is_normal() && c.panicked() && !c.shutdown(),
        "{c:?}"
    );
    let lines = lines_in(132);
    let events = ended(&lines);
    assert!(
        events.len() == 1 && events[0].contains("panicked=true"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_request_only_the_event_observes_still_gets_it_with_its_timings() {
    debug_logs();
    // No hook, no `on_complete`: the event alone could observe the end.
    let layer = LifecycleLayer::new()
        .log_level(Some(tracing::Level::INFO))
        .log_normal(true);
    call_in_span(layer, 141, Duration::ZERO, None).await;
    let lines = lines_in(141);
    let events = ended(&lines);
    assert_eq!(events.len(), 1, "{lines:?}");
    for field in ["status=normal", "log_status=200", "time_to_head=Some("] {
        assert!(events[0].contains(field), "{field} in {}", events[0]);
    }
}

#[tokio::test]
async fn an_aborted_request_only_the_event_observes_still_gets_it() {
    debug_logs();
    // No hook, no `on_complete`, the default level (DEBUG).
    call_in_span(
        LifecycleLayer::new(),
        142,
        Duration::from_secs(60),
        Some(Duration::from_millis(10)),
    )
    .await;
    let lines = lines_in(142);
    let events = ended(&lines);
    assert_eq!(events.len(), 1, "{lines:?}");
    assert!(events[0].contains("status=aborted"), "{}", events[0]);
}
