//! The shutdown reaching requests in flight, over real sockets:
//! `axum::serve(..).with_graceful_shutdown(drain.begun())` beside
//! `drain.shutdown(grace)`, HTTP/1.1 and HTTP/2. Server-Sent Events end
//! cleanly when the shutdown begins, a handler awaiting `shutting_down()`
//! answers, slow work finishes within the grace, what is left is cut, serve
//! returns, and every hook runs once saying whether the shutdown ended it.
//! Then the steps of a rolling deploy, and a thousand open streams.

use crate::common;

use std::convert::Infallible;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::Duration;

use axum::response::sse::{Event, Sse};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::stream::{self, Stream, StreamExt};
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tower_lifecycle::{Completion, ConnectionStatus, Drain, Lifecycle, LifecycleLayer, Phase};

use common::{within, Client, Proto, BOTH};

/// Ticks every `every`, for ever.
fn ticks_every(every: Duration) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(0u64, move |n| async move {
        tokio::time::sleep(every).await;
        Some((Ok(Event::default().data(format!("tick {n}"))), n + 1))
    })
}

/// Ticks every 20 ms, for ever.
fn ticks() -> impl Stream<Item = Result<Event, Infallible>> {
    ticks_every(Duration::from_millis(20))
}

/// Reads the next frame of an event stream; checks it is an event.
async fn next_event(body: &mut hyper::body::Incoming) {
    let frame = within("an event", body.frame()).await.unwrap().unwrap();
    assert!(
        frame
            .data_ref()
            .is_some_and(|d| d.starts_with(b"data: tick")),
        "{frame:?}"
    );
}

/// What each route's hook reports: the route and its completion.
type Ended = mpsc::UnboundedSender<(&'static str, Completion)>;
/// Which handler started.
type Started = mpsc::UnboundedSender<&'static str>;

/// Registers a hook that reports `route`'s completion, and says the handler
/// started.
fn report(lifecycle: &Lifecycle, route: &'static str, ended: &Ended, started: &Started) {
    let ended = ended.clone();
    lifecycle.on_shutdown(move |c| {
        let _ = ended.send((route, c.clone()));
    });
    let _ = started.send(route);
}

/// The routes of the big test, each a kind of request in flight when the
/// shutdown begins.
fn app(layer: LifecycleLayer, ended: Ended, started: Started) -> Router {
    let (e, s) = (ended.clone(), started.clone());
    let sse = move |lifecycle: Lifecycle| {
        report(&lifecycle, "sse", &e, &s);
        async move { Sse::new(ticks()) }
    };
    let (e, s) = (ended.clone(), started.clone());
    let long_poll = move |lifecycle: Lifecycle| {
        report(&lifecycle, "long_poll", &e, &s);
        async move {
            lifecycle.shutting_down().await;
            "bye"
        }
    };
    let (e, s) = (ended.clone(), started.clone());
    let slow = move |lifecycle: Lifecycle| {
        report(&lifecycle, "slow", &e, &s);
        async move {
            lifecycle.shutting_down().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            "done"
        }
    };
    let (e, s) = (ended.clone(), started.clone());
    let download = move |lifecycle: Lifecycle| {
        report(&lifecycle, "download", &e, &s);
        async move {
            // One chunk, then nothing: an open-ended body that is not SSE.
            let chunks = stream::once(async { Ok::<_, Infallible>(Bytes::from("part 1")) })
                .chain(stream::pending());
            axum::body::Body::from_stream(chunks)
        }
    };
    let (e, s) = (ended.clone(), started.clone());
    let after = move |lifecycle: Lifecycle| {
        report(&lifecycle, "after", &e, &s);
        let shutting_down = lifecycle.shutting_down();
        lifecycle.after_response(async move {
            shutting_down.await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        });
        async { "accepted" }
    };
    let (e, s) = (ended, started);
    let stuck = move |lifecycle: Lifecycle| {
        report(&lifecycle, "stuck", &e, &s);
        async move {
            std::future::pending::<()>().await;
            "never"
        }
    };
    Router::new()
        .route("/sse", get(sse))
        .route("/long_poll", get(long_poll))
        .route("/slow", get(slow))
        .route("/download", get(download))
        .route("/after", get(after))
        .route("/stuck", get(stuck))
        .layer(layer)
}

/// Serves `app` with `axum::serve`, its graceful shutdown waiting on the
/// drain's beginning.
async fn serve(
    app: Router,
    drain: &Drain,
) -> (SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = axum::serve(listener, app).with_graceful_shutdown(drain.begun());
    (addr, tokio::spawn(server.into_future()))
}

/// Sends a GET on a connection of its own; the response, in a task.
fn request(
    addr: SocketAddr,
    proto: Proto,
    path: &'static str,
) -> tokio::task::JoinHandle<http::Response<hyper::body::Incoming>> {
    tokio::spawn(async move {
        let (mut client, _conn) = Client::connect(addr, proto).await;
        client
            .send(common::get(path))
            .await
            .expect("a response head")
    })
}

#[tokio::test]
async fn the_shutdown_ends_streams_answers_waiters_and_cuts_what_the_grace_leaves() {
    for proto in BOTH {
        let layer = LifecycleLayer::new();
        let drain = layer.drain();
        let (ended_tx, mut ended) = mpsc::unbounded_channel();
        let (started_tx, mut started) = mpsc::unbounded_channel();
        let (addr, server) = serve(app(layer, ended_tx, started_tx), &drain).await;

        let sse = request(addr, proto, "/sse");
        let long_poll = request(addr, proto, "/long_poll");
        let slow = request(addr, proto, "/slow");
        let download = request(addr, proto, "/download");
        let stuck = request(addr, proto, "/stuck");
        let after = within("the after route", request(addr, proto, "/after"))
            .await
            .unwrap();
        assert_eq!(common::read_all(after).await, "accepted");
        for _ in 0..6 {
            within("every handler to start", started.recv())
                .await
                .unwrap();
        }
        let mut sse = within("the SSE head", sse).await.unwrap().into_body();
        let first = within("the first event", sse.frame())
            .await
            .unwrap()
            .unwrap();
        assert!(
            first
                .data_ref()
                .is_some_and(|d| d.starts_with(b"data: tick")),
            "{proto:?}: {first:?}"
        );
        let mut download = within("the download head", download)
            .await
            .unwrap()
            .into_body();
        common::read_exactly(&mut download, "part 1").await;
        assert!(!drain.is_shutting_down());

        // The shutdown begins: the SSE stream ends cleanly (no error) and
        // the long poll is answered, with nothing cut yet.
        drain.begin();
        let rest = within("the SSE stream to end", sse.collect()).await;
        assert!(
            rest.is_ok(),
            "{proto:?}: the SSE stream ended with an error: {rest:?}"
        );
        let bye = within("the long poll", long_poll).await.unwrap();
        assert_eq!(common::read_all(bye).await, "bye", "{proto:?}");
        let mut seen = std::collections::BTreeMap::new();
        let mut hook = async || {
            let (route, c) = within("a hook", ended.recv()).await.unwrap();
            assert!(
                seen.insert(route, c).is_none(),
                "{proto:?}: {route}'s hook ran twice"
            );
        };
        hook().await;
        hook().await;
        assert!(
            !stuck.is_finished(),
            "{proto:?}: nothing is cut when the shutdown begins"
        );

        // The drain: slow work finishes within the grace; past it, the
        // download fails (never a short success) and the stuck handler is
        // answered 503.
        let grace = Duration::from_millis(600);
        let shutdown = tokio::spawn({
            let drain = drain.clone();
            async move { drain.shutdown(grace).await }
        });
        let done = within("the slow request", slow).await.unwrap();
        assert_eq!(common::read_all(done).await, "done", "{proto:?}");
        let cut = within("the download to be cut", download.collect()).await;
        assert!(
            cut.is_err(),
            "{proto:?}: a cut download must fail, got {cut:?}"
        );
        let stuck = within("the stuck request", stuck).await.unwrap();
        assert_eq!(stuck.status(), StatusCode::SERVICE_UNAVAILABLE, "{proto:?}");

        within("axum::serve to return", server)
            .await
            .unwrap()
            .unwrap();
        let report = within("the shutdown report", shutdown).await.unwrap();
        assert_eq!(
            (report.finished(), report.cancelled(), report.remaining()),
            (2, 2, 0),
            "{proto:?}: {report:?} (slow and after finished; download and stuck cut)"
        );
        for _ in 0..4 {
            hook().await;
        }
        let expect = |route: &str, status: ConnectionStatus, phase: Phase, shutdown: bool| {
            let c = &seen[route];
            assert_eq!(
                (c.status(), c.phase(), c.shutdown()),
                (status, phase, shutdown),
                "{proto:?} {route}: {c:?}"
            );
        };
        expect("sse", ConnectionStatus::NORMAL, Phase::Body, true);
        expect("long_poll", ConnectionStatus::NORMAL, Phase::Body, false);
        expect("slow", ConnectionStatus::NORMAL, Phase::Body, false);
        expect("after", ConnectionStatus::NORMAL, Phase::Continued, false);
        expect("download", ConnectionStatus::TIMEOUT, Phase::Body, true);
        expect("stuck", ConnectionStatus::TIMEOUT, Phase::Handler, true);
        assert_eq!(
            seen["stuck"].response_status(),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert!(ended.try_recv().is_err(), "{proto:?}: a hook ran twice");
        assert_eq!(drain.in_flight(), 0);
    }
}

#[tokio::test]
async fn a_rolling_stop_goes_unready_keeps_serving_then_ends_streams_and_refuses() {
    let layer = LifecycleLayer::new();
    let drain = layer.drain();
    let app = Router::new()
        .route("/sse", get(|| async { Sse::new(ticks()) }))
        .route("/hello", get(|| async { "hello" }))
        .layer(layer)
        .route_service("/ready", drain.readiness());
    let (addr, server) = serve(app, &drain).await;
    let ask = |path: &'static str| async move {
        let res = within(path, request(addr, Proto::Http1, path))
            .await
            .unwrap();
        let status = res.status();
        (status, common::read_all(res).await)
    };
    assert_eq!(
        ask("/ready").await,
        (StatusCode::OK, Bytes::from("ready\n"))
    );
    let mut sse = within("the SSE head", request(addr, Proto::Http1, "/sse"))
        .await
        .unwrap()
        .into_body();
    next_event(&mut sse).await;

    let (signal, on) = tokio::sync::oneshot::channel::<()>();
    let steps = drain
        .on_signal(async move {
            let _ = on.await;
        })
        .unready_for(Duration::from_secs(2))
        .grace(Duration::from_secs(1));
    let stop = steps.spawn();
    signal.send(()).unwrap();
    // 1. Readiness says 503 at once; nothing else changed.
    within("readiness to say 503", async {
        while ask("/ready").await.0 != StatusCode::SERVICE_UNAVAILABLE {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // 2. During the delay, requests are still served and streams flow.
    assert_eq!(ask("/hello").await, (StatusCode::OK, Bytes::from("hello")));
    next_event(&mut sse).await;
    assert!(
        !drain.is_shutting_down(),
        "the shutdown began before the delay was over"
    );
    // 3. Then the shutdown begins: the stream ends cleanly...
    let rest = within("the SSE stream to end", sse.collect()).await;
    assert!(rest.is_ok(), "{rest:?}");
    assert!(drain.is_shutting_down());
    // 4. ... the server stops, and new connections are refused.
    within("axum::serve to return", server)
        .await
        .unwrap()
        .unwrap();
    let report = within("the report", stop).await.unwrap();
    assert_eq!(
        (report.cancelled(), report.remaining()),
        (0, 0),
        "{report:?}"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "a stopped server refuses connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_open_event_streams_all_end_and_serve_returns() {
    const CONNECTIONS: usize = 10;
    const PER_CONNECTION: usize = 100;
    let (layer, mut done) = common::layer();
    let drain = layer.drain();
    let app = Router::new()
        .route(
            "/sse",
            get(|| async { Sse::new(ticks_every(Duration::from_millis(200))) }),
        )
        .layer(layer);
    let (addr, server) = serve(app, &drain).await;
    // HTTP/2: a thousand streams on ten connections (a thousand HTTP/1.1
    // connections would need two thousand descriptors in this process).
    let mut streams = Vec::new();
    for _ in 0..CONNECTIONS {
        let (mut client, _conn) = Client::connect(addr, Proto::Http2).await;
        for _ in 0..PER_CONNECTION {
            let res = within("an SSE head", client.send(common::get("/sse")))
                .await
                .unwrap();
            streams.push(res.into_body());
        }
    }
    for stream in &mut streams {
        next_event(stream).await;
    }
    assert_eq!(drain.in_flight(), CONNECTIONS * PER_CONNECTION);

    drain.begin();
    let ends = streams
        .into_iter()
        .map(|body| async move { body.collect().await.is_ok() });
    let clean = within("every stream to end", futures_util::future::join_all(ends)).await;
    assert_eq!(
        clean.iter().filter(|ok| **ok).count(),
        CONNECTIONS * PER_CONNECTION,
        "every stream ends cleanly"
    );
    within("axum::serve to return", server)
        .await
        .unwrap()
        .unwrap();
    for _ in 0..CONNECTIONS * PER_CONNECTION {
        let c = done.next().await;
        assert_eq!(
            (c.status(), c.shutdown()),
            (ConnectionStatus::NORMAL, true),
            "{c:?}"
        );
    }
    done.assert_none();
    assert_eq!(drain.in_flight(), 0);
}
