//! The time limit over real loopback connections, HTTP/1.1 and HTTP/2:
//! a handler still running at the limit is cancelled and answered with the
//! timeout status (or a trailers-only gRPC `DEADLINE_EXCEEDED`), a body
//! still streaming at the limit is cut with an error the client sees,
//! `grpc-timeout` caps the limit, `Lifecycle::set_time_limit` restarts or
//! removes it, and continued work (ignore-abort, `after_response`,
//! `spawn`) is cancelled at the limit like the rest of the request.
//!
//! Every handler other than the plain one reports a [`Job`] to the test
//! before it does its work: its `Lifecycle`, the deadline it saw when it
//! started, the key to a gate it may wait on, and a channel on which the
//! handler, its body's producer, its continued work and the request's hook
//! report what happened, in the order it happened. Gates are opened only
//! after the outcome under test was seen, so a gate never decides it.

use crate::common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TE};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::channel::Channel;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower_lifecycle::{Completion, ConnectionStatus, LifecycleLayer, Phase};

use common::probe::{DropGuard, Gate, Probe};
use common::server::{lifecycle_of, send, try_send, Reply};
use common::{within, BodySender, Client, Proto, BOTH};

/// The time limit of most tests.
const LIMIT: Duration = Duration::from_millis(200);
/// The layer's limit in the `set_time_limit` test: the handler restarts
/// the clock with it again before it expires.
const RESTART_LIMIT: Duration = Duration::from_millis(300);
/// When the handler of that test restarts the clock.
const RESTART_AFTER: Duration = Duration::from_millis(150);
/// How far past the original deadline work runs once the limit was
/// restarted or removed.
const PAST: Duration = Duration::from_millis(50);
/// Far longer than any test waits: a limit that must not apply.
const FAR: Duration = Duration::from_secs(30);

/// What the plain path answers.
const HELLO: &str = "hello";
/// What a streamed body carries: the first chunk, and a second one.
const FIRST: &str = "first chunk";
const SECOND: &str = ", second chunk";

/// What the handlers do, by path. Any other path answers [`HELLO`] at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// Waits on its gate, then answers [`HELLO`].
    Pending,
    /// Answers at once with a body whose producer sends [`FIRST`], waits
    /// on the gate, then tries [`SECOND`].
    Stream,
    /// Works [`RESTART_AFTER`], restarts the clock with [`RESTART_LIMIT`],
    /// works until [`PAST`] after the original deadline, then answers.
    Restart,
    /// Removes the limit, then answers with a body whose producer sends
    /// [`FIRST`], waits until [`PAST`] after the original deadline, sends
    /// [`SECOND`] and ends the body.
    Unlimited,
    /// Waits for the client to leave, then on its gate.
    Continue,
    /// Registers `after_response` work that waits on the gate; answers
    /// [`HELLO`] at once.
    AfterResponse,
    /// Spawns work with `Lifecycle::spawn` that waits on the gate; answers
    /// [`HELLO`] at once.
    Spawn,
    /// Works [`LIMIT`], then answers [`HELLO`] as `application/grpc`.
    Slow,
}

impl Route {
    const ALL: [Route; 8] = [
        Route::Pending,
        Route::Stream,
        Route::Restart,
        Route::Unlimited,
        Route::Continue,
        Route::AfterResponse,
        Route::Spawn,
        Route::Slow,
    ];

    fn path(self) -> &'static str {
        match self {
            Route::Pending => "/pending",
            Route::Stream => "/stream",
            Route::Restart => "/restart",
            Route::Unlimited => "/unlimited",
            Route::Continue => "/continue",
            Route::AfterResponse => "/after-response",
            Route::Spawn => "/spawn",
            Route::Slow => "/slow",
        }
    }

    fn parse(path: &str) -> Option<Route> {
        Route::ALL.into_iter().find(|route| route.path() == path)
    }
}

/// What a job reports to the test, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// The handler saw its client leave and keeps running.
    Continuing,
    /// Continued work (`after_response`, `spawn`) started.
    Started,
    /// The handler or the continued work was dropped before it finished.
    Dropped,
    /// The handler restarted the clock: the deadline before and after.
    Restarted { original: Instant, renewed: Instant },
    /// The handler removed the limit; the deadline it saw then.
    Removed(Option<Instant>),
    /// The body's producer is done: how many chunks the body accepted.
    Produced(usize),
    /// The request's `on_shutdown` hook ran with this completion.
    Hook(Completion),
}

type Events = common::probe::Events<Event>;
type ResBody = BoxBody<Bytes, Infallible>;
/// The test's end of one job.
type Job = common::probe::Job<Event>;
/// A server whose handlers report a [`Job`].
type Server = common::server::Server<Job>;

impl Job {
    /// Asserts that the deadline the handler saw when it started was at
    /// most `limit` away (and not one further off).
    fn assert_deadline_within(&self, limit: Duration) {
        let deadline = self.deadline.expect("the request has a deadline");
        assert!(
            deadline <= self.entered + limit,
            "the deadline is {:?} after the handler started, more than {limit:?}",
            deadline - self.entered
        );
    }
}

fn hello() -> Response<ResBody> {
    Response::new(Full::from(HELLO).boxed())
}

/// The handler: a job for a [`Route`], [`HELLO`] for anything else.
async fn handle(probe: Probe<Job>, req: Request<Incoming>) -> Reply {
    let Some(route) = Route::parse(req.uri().path()) else {
        return Ok(hello());
    };
    let lifecycle = lifecycle_of(&req);
    let (events, gate) = probe.job(&lifecycle, Event::Hook);
    let response = match route {
        Route::Pending => {
            let guard = DropGuard::new(&events, Event::Dropped);
            let _ = gate.await;
            guard.disarm();
            hello()
        }
        Route::Stream => Response::new(produce_until_gate(events, gate).boxed()),
        Route::Restart => {
            tokio::time::sleep(RESTART_AFTER).await;
            let original = lifecycle.deadline().expect("the layer's limit");
            lifecycle.set_time_limit(Some(RESTART_LIMIT));
            let renewed = lifecycle.deadline().expect("the restarted limit");
            let _ = events.send(Event::Restarted { original, renewed });
            tokio::time::sleep_until(original + PAST).await;
            hello()
        }
        Route::Unlimited => {
            let original = lifecycle.deadline().expect("the layer's limit");
            lifecycle.set_time_limit(None);
            let _ = events.send(Event::Removed(lifecycle.deadline()));
            Response::new(produce_past(events, original + PAST).boxed())
        }
        Route::Continue => {
            let guard = DropGuard::new(&events, Event::Dropped);
            lifecycle.aborted().await;
            let _ = events.send(Event::Continuing);
            let _ = gate.await;
            guard.disarm();
            hello()
        }
        Route::AfterResponse => {
            lifecycle.after_response(wait_on_gate(events, gate));
            hello()
        }
        Route::Spawn => {
            lifecycle.spawn(wait_on_gate(events, gate));
            hello()
        }
        Route::Slow => {
            tokio::time::sleep(LIMIT).await;
            Response::builder()
                .header(CONTENT_TYPE, "application/grpc")
                .body(Full::from(HELLO).boxed())
                .unwrap()
        }
    };
    Ok(response)
}

/// Continued work: reports it started, then waits on the gate.
async fn wait_on_gate(events: Events, gate: Gate) {
    let guard = DropGuard::new(&events, Event::Dropped);
    let _ = events.send(Event::Started);
    let _ = gate.await;
    guard.disarm();
}

/// A body fed by a task: [`FIRST`], then, once the gate is open,
/// [`SECOND`]. The task reports how many chunks were accepted, then ends
/// the body.
fn produce_until_gate(events: Events, gate: Gate) -> Channel<Bytes, Infallible> {
    let (mut tx, body) = Channel::new(1);
    tokio::spawn(async move {
        let mut accepted = send_chunk(&mut tx, FIRST).await;
        if accepted == 1 {
            let _ = gate.await;
            accepted += send_chunk(&mut tx, SECOND).await;
        }
        let _ = events.send(Event::Produced(accepted));
        drop(tx);
    });
    body
}

/// A body fed by a task: [`FIRST`], then, once `until` has passed,
/// [`SECOND`]. The task reports how many chunks were accepted, then ends
/// the body.
fn produce_past(events: Events, until: Instant) -> Channel<Bytes, Infallible> {
    let (mut tx, body) = Channel::new(1);
    tokio::spawn(async move {
        let mut accepted = send_chunk(&mut tx, FIRST).await;
        if accepted == 1 {
            tokio::time::sleep_until(until).await;
            accepted += send_chunk(&mut tx, SECOND).await;
        }
        let _ = events.send(Event::Produced(accepted));
        drop(tx);
    });
    body
}

/// Sends one chunk; 1 if the body accepted it, 0 if it is gone.
async fn send_chunk(tx: &mut BodySender, chunk: &'static str) -> usize {
    usize::from(try_send(tx, chunk).await)
}

impl Server {
    /// Serves [`handle`] behind a layer with the time limit `limit`.
    async fn limited(limit: Duration) -> Server {
        Server::start(|layer| layer.time_limit(limit), handle).await
    }

    /// A normal request on `client` is answered, and its completion is the
    /// next and only one.
    async fn expect_normal(&mut self, client: &mut Client) {
        let res = send(client, common::get("/")).await;
        assert_eq!(common::read_all(res).await, HELLO);
        let done = self.done.next().await;
        assert_eq!(done.status(), ConnectionStatus::NORMAL, "{done:?}");
        assert_eq!(done.phase(), Phase::Body, "{done:?}");
        self.done.assert_none();
    }
}

/// Asserts a request ended by its time limit alone, in `phase`, no sooner
/// than `limit` after it started.
fn assert_timed_out(done: &Completion, phase: Phase, limit: Duration) {
    assert_eq!(done.status(), ConnectionStatus::TIMEOUT, "{done:?}");
    assert_eq!(done.phase(), phase, "{done:?}");
    assert!(done.elapsed() >= limit, "ended before the limit: {done:?}");
    assert!(
        !done.panicked()
            && !done.body_error()
            && !done.service_error()
            && !done.continued()
            && !done.detach_refused(),
        "{done:?}"
    );
}

/// Asserts the events of a job whose handler or continued work the limit
/// cancelled: dropped, then the hook, once, with `done`.
async fn assert_dropped_then_hook(job: &mut Job, done: &Completion) {
    assert_eq!(
        job.events.rest().await,
        [Event::Dropped, Event::Hook(done.clone())],
        "the work must be dropped before the hook runs, and the hook run once"
    );
}

/// Reads the rest of `body`: the data that came, and how it ended.
async fn read_rest(body: &mut Incoming) -> (BytesMut, Result<(), hyper::Error>) {
    let mut got = BytesMut::new();
    let end = within("the rest of the body", async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                got.extend_from_slice(&data);
            }
        }
        Ok(())
    })
    .await;
    (got, end)
}

/// 1. A handler still pending at the limit is dropped, then the hooks run
///    once with TIMEOUT in the handler phase, and the client gets the
///    timeout status with an empty, complete body; the connection serves
///    the next request.
#[tokio::test]
async fn a_handler_past_the_limit_is_cancelled_and_answered_with_the_timeout_status() {
    let cases = [
        (None, StatusCode::SERVICE_UNAVAILABLE),
        (
            Some(StatusCode::GATEWAY_TIMEOUT),
            StatusCode::GATEWAY_TIMEOUT,
        ),
    ];
    for (configured, expected) in cases {
        let configure = |layer: LifecycleLayer| {
            let layer = layer.time_limit(LIMIT);
            match configured {
                Some(status) => layer.timeout_status(status),
                None => layer,
            }
        };
        let mut server = Server::start(configure, handle).await;
        for proto in BOTH {
            let (mut client, _conn, res) = server.request(proto, Route::Pending.path()).await;
            let mut job = server.report().await;
            assert_eq!(res.status(), expected, "{proto:?}");
            assert_eq!(res.headers()[CONTENT_LENGTH], "0", "{proto:?}");
            assert!(res.body().is_end_stream(), "{proto:?}");
            assert_eq!(common::read_all(res).await, "", "{proto:?}");

            let done = server.done.next().await;
            assert_timed_out(&done, Phase::Handler, LIMIT);
            assert_eq!(done.response_status(), Some(expected), "{done:?}");
            assert_eq!(done.bytes_sent(), 0, "{done:?}");
            assert_eq!(job.lifecycle.status(), ConnectionStatus::TIMEOUT);
            assert_dropped_then_hook(&mut job, &done).await;
            server.expect_normal(&mut client).await;
        }
    }
}

/// A gRPC request for `route`, with `grpc-timeout` if given.
fn grpc(route: Route, timeout: Option<&str>) -> Request<Empty<Bytes>> {
    let mut req = Request::post(format!("http://127.0.0.1{}", route.path()))
        .header(CONTENT_TYPE, "application/grpc")
        .header(TE, "trailers");
    if let Some(timeout) = timeout {
        req = req.header("grpc-timeout", timeout);
    }
    req.body(Empty::new()).unwrap()
}

/// `grpc-timeout` for `d`, in milliseconds.
fn grpc_millis(d: Duration) -> String {
    format!("{}m", d.as_millis())
}

/// Sends a pending gRPC request over HTTP/2 and asserts it was answered
/// with a trailers-only `DEADLINE_EXCEEDED` once the limit expired: HTTP
/// 200, `grpc-status: 4` among the response headers, the stream ended with
/// them. Returns the job, its events checked.
async fn expect_deadline_exceeded(server: &mut Server, timeout: Option<&str>) -> Job {
    let mut client = server.connect(Proto::Http2).await;
    let res = send(&mut client, grpc(Route::Pending, timeout)).await;
    let mut job = server.report().await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "4", "{:?}", res.headers());
    assert!(res.headers().contains_key("grpc-message"));
    assert_eq!(res.headers()[CONTENT_TYPE], "application/grpc");
    assert!(
        res.body().is_end_stream(),
        "trailers-only: the stream ends with the headers"
    );
    let mut body = res.into_body();
    assert!(
        within("the end of the stream", body.frame())
            .await
            .is_none(),
        "nothing follows the headers"
    );

    let done = server.done.next().await;
    // A `grpc-timeout` is applied up to a tenth early, so that the layer's
    // answer reaches the client before the client gives up.
    assert_timed_out(&done, Phase::Handler, LIMIT - LIMIT / 10);
    assert_eq!(done.response_status(), Some(StatusCode::OK), "{done:?}");
    assert_dropped_then_hook(&mut job, &done).await;
    server.expect_normal(&mut client).await;
    job
}

/// 2a. gRPC, the layer's limit shorter than the handler: trailers-only
///     `DEADLINE_EXCEEDED`.
#[tokio::test]
async fn grpc_past_the_layer_limit_gets_deadline_exceeded() {
    let mut server = Server::limited(LIMIT).await;
    let job = expect_deadline_exceeded(&mut server, None).await;
    job.assert_deadline_within(LIMIT);
}

/// 2b. gRPC, no layer limit: `grpc-timeout` sets one.
#[tokio::test]
async fn grpc_timeout_sets_a_limit_without_a_layer_limit() {
    let mut server = Server::start(|layer| layer, handle).await;
    let job = expect_deadline_exceeded(&mut server, Some(&grpc_millis(LIMIT))).await;
    job.assert_deadline_within(LIMIT);
}

/// 2c. `grpc-timeout` only caps: a longer one leaves the layer's shorter
///     limit in force, and a shorter one wins over a longer layer limit.
#[tokio::test]
async fn grpc_timeout_caps_the_layer_limit() {
    let mut server = Server::limited(LIMIT).await;
    let job = expect_deadline_exceeded(&mut server, Some(&grpc_millis(FAR))).await;
    job.assert_deadline_within(LIMIT);

    let mut server = Server::limited(FAR).await;
    let job = expect_deadline_exceeded(&mut server, Some(&grpc_millis(LIMIT))).await;
    job.assert_deadline_within(LIMIT);
}

/// 2d. A malformed `grpc-timeout` is ignored: no deadline, and a handler
///     that works as long as [`LIMIT`] answers normally.
#[tokio::test]
async fn a_malformed_grpc_timeout_is_ignored() {
    let mut server = Server::start(|layer| layer, handle).await;
    let mut client = server.connect(Proto::Http2).await;
    for timeout in ["abc", "200", "1.5S", "-1S", "123456789m", "20x"] {
        let res = send(&mut client, grpc(Route::Slow, Some(timeout))).await;
        let mut job = server.report().await;
        assert_eq!(job.deadline, None, "{timeout}");
        assert_eq!(res.status(), StatusCode::OK, "{timeout}");
        assert!(!res.headers().contains_key("grpc-status"), "{timeout}");
        assert_eq!(common::read_all(res).await, HELLO, "{timeout}");

        let done = server.done.next().await;
        assert_eq!(
            done.status(),
            ConnectionStatus::NORMAL,
            "{timeout}: {done:?}"
        );
        assert_eq!(done.phase(), Phase::Body, "{timeout}: {done:?}");
        assert_eq!(job.events.rest().await, [Event::Hook(done)], "{timeout}");
    }
    server.done.assert_none();
}

/// 2e. On the wire: the `DEADLINE_EXCEEDED` answer is a single HEADERS
///     frame carrying END_STREAM, with no DATA frame and no trailers after
///     it.
#[tokio::test]
async fn grpc_deadline_exceeded_is_one_headers_frame_with_end_stream() {
    let mut server = Server::limited(LIMIT).await;
    let frames = within("the raw exchange", raw_h2::pending_grpc(server.addr)).await;
    let mut job = server.report().await;
    let kinds: Vec<_> = frames.iter().map(|f| (f.kind, f.flags)).collect();
    assert_eq!(
        kinds,
        [(raw_h2::HEADERS, raw_h2::END_STREAM | raw_h2::END_HEADERS)],
        "the response's frames (type, flags)"
    );
    let done = server.done.next().await;
    assert_timed_out(&done, Phase::Handler, LIMIT);
    assert_dropped_then_hook(&mut job, &done).await;
}

/// 3. The limit expires while the body streams: the client reads the first
///    chunk, then the body fails (a reset stream over HTTP/2, a closed
///    connection and an unterminated chunked body over HTTP/1.1) rather
///    than ending cleanly; TIMEOUT in the body phase, the inner body
///    dropped.
#[tokio::test]
async fn the_limit_reached_mid_body_cuts_the_body_with_an_error() {
    let mut server = Server::limited(LIMIT).await;
    for proto in BOTH {
        let (mut client, conn, res) = server.request(proto, Route::Stream.path()).await;
        assert_eq!(res.status(), StatusCode::OK, "{proto:?}");
        let mut job = server.report().await;
        let mut body = res.into_body();
        common::read_exactly(&mut body, FIRST).await;
        let (more, end) = read_rest(&mut body).await;
        assert!(more.is_empty(), "{proto:?}: data after the first chunk");
        end.expect_err("the cut body ended cleanly, as if complete");

        let done = server.done.next().await;
        assert_timed_out(&done, Phase::Body, LIMIT);
        assert_eq!(done.bytes_sent(), FIRST.len() as u64, "{done:?}");
        assert_eq!(done.response_status(), Some(StatusCode::OK), "{done:?}");
        // The body was dropped before the hooks ran: the producer's next
        // send fails.
        job.gate.open();
        assert_eq!(
            job.events.rest().await,
            [Event::Hook(done), Event::Produced(1)],
            "{proto:?}"
        );
        if proto == Proto::Http1 {
            within("the server to close the connection", conn)
                .await
                .unwrap();
            client = server.connect(proto).await;
        }
        // Over HTTP/2 only the stream was reset: the same connection
        // serves the next request.
        server.expect_normal(&mut client).await;
    }
}

/// 4a. `set_time_limit` restarts the clock: the handler restarts it before
///     the layer's limit expires and answers after the original deadline,
///     and the request ends normally.
#[tokio::test]
async fn set_time_limit_restarts_the_clock() {
    let mut server = Server::limited(RESTART_LIMIT).await;
    for proto in BOTH {
        let (_client, _conn, res) = server.request(proto, Route::Restart.path()).await;
        assert_eq!(res.status(), StatusCode::OK, "{proto:?}");
        assert_eq!(common::read_all(res).await, HELLO, "{proto:?}");
        let mut job = server.report().await;
        job.assert_deadline_within(RESTART_LIMIT);

        let done = server.done.next().await;
        assert_eq!(done.status(), ConnectionStatus::NORMAL, "{done:?}");
        assert_eq!(done.phase(), Phase::Body, "{done:?}");
        assert_eq!(done.response_status(), Some(StatusCode::OK), "{done:?}");
        assert!(
            done.elapsed() >= RESTART_LIMIT + PAST,
            "it should have outlived the original deadline: {done:?}"
        );
        match job.events.rest().await.as_slice() {
            [Event::Restarted { original, renewed }, Event::Hook(hooked)] => {
                assert_eq!(Some(*original), job.deadline, "{proto:?}");
                assert!(renewed > original, "{proto:?}");
                assert_eq!(hooked, &done, "{proto:?}");
            }
            other => panic!("{proto:?}: expected the restart, then the hook: {other:?}"),
        }
        server.done.assert_none();
    }
}

/// 4b. `set_time_limit(None)` removes the limit: a body still streaming
///     past the layer's limit finishes, and the request ends normally.
#[tokio::test]
async fn set_time_limit_none_lets_a_stream_outlive_the_layer_limit() {
    let mut server = Server::limited(LIMIT).await;
    for proto in BOTH {
        let (_client, _conn, res) = server.request(proto, Route::Unlimited.path()).await;
        assert_eq!(res.status(), StatusCode::OK, "{proto:?}");
        let mut job = server.report().await;
        job.assert_deadline_within(LIMIT);
        let (got, end) = read_rest(&mut res.into_body()).await;
        end.unwrap_or_else(|err| panic!("{proto:?}: the body failed: {err:?}"));
        assert_eq!(got, [FIRST, SECOND].concat().as_bytes(), "{proto:?}");

        let done = server.done.next().await;
        assert_eq!(done.status(), ConnectionStatus::NORMAL, "{done:?}");
        assert_eq!(done.phase(), Phase::Body, "{done:?}");
        assert_eq!(
            done.bytes_sent(),
            (FIRST.len() + SECOND.len()) as u64,
            "{done:?}"
        );
        assert!(done.elapsed() >= LIMIT + PAST, "{done:?}");
        assert_eq!(
            job.events.rest().await,
            [Event::Removed(None), Event::Produced(2), Event::Hook(done)],
            "{proto:?}"
        );
        server.done.assert_none();
    }
}

/// 5. Ignore-abort on, the client leaves before the head, and the handler
///    continues past the limit: it is dropped at the limit, and the hooks
///    run once with ABORTED and TIMEOUT, in the continued phase.
#[tokio::test]
async fn a_continued_handler_past_the_limit_is_cancelled_aborted_and_timed_out() {
    let mut server = Server::start(
        |layer| layer.ignore_abort(true).time_limit(RESTART_LIMIT),
        handle,
    )
    .await;
    for proto in BOTH {
        let visit = server.visit(proto, Route::Continue.path()).await;
        let mut job = server.report().await;
        visit.leave();
        assert_eq!(job.events.next().await, Event::Continuing, "{proto:?}");
        assert!(job.lifecycle.is_aborted());

        let done = server.done.next().await;
        assert_eq!(done.status().bits(), 3, "{done:?}");
        assert_eq!(
            done.status(),
            ConnectionStatus::ABORTED | ConnectionStatus::TIMEOUT
        );
        assert_eq!(done.status().to_string(), "aborted|timeout");
        assert_eq!(done.phase(), Phase::Continued, "{done:?}");
        assert!(done.continued(), "{done:?}");
        assert_eq!(done.response_status(), None, "{done:?}");
        assert!(done.elapsed() >= RESTART_LIMIT, "{done:?}");
        assert_eq!(job.lifecycle.status(), done.status());
        assert_dropped_then_hook(&mut job, &done).await;

        let mut client = server.connect(proto).await;
        server.expect_normal(&mut client).await;
    }
}

/// 6. Work from `after_response` and from `spawn` that runs past the limit
///    is dropped at the limit: TIMEOUT in the continued phase, while the
///    response itself was a complete 200.
#[tokio::test]
async fn continued_work_past_the_limit_is_cancelled() {
    let mut server = Server::limited(LIMIT).await;
    for route in [Route::AfterResponse, Route::Spawn] {
        for proto in BOTH {
            let (mut client, _conn, res) = server.request(proto, route.path()).await;
            assert_eq!(res.status(), StatusCode::OK, "{route:?} {proto:?}");
            assert_eq!(common::read_all(res).await, HELLO, "{route:?} {proto:?}");
            let mut job = server.report().await;
            assert_eq!(
                job.events.next().await,
                Event::Started,
                "{route:?} {proto:?}"
            );

            let done = server.done.next().await;
            assert_timed_out(&done, Phase::Continued, LIMIT);
            assert_eq!(done.response_status(), Some(StatusCode::OK), "{done:?}");
            assert_eq!(done.bytes_sent(), HELLO.len() as u64, "{done:?}");
            assert_dropped_then_hook(&mut job, &done).await;
            server.expect_normal(&mut client).await;
        }
    }
}

/// A hand-written HTTP/2 client, just enough to see which frames the
/// server sends for one request.
mod raw_h2 {
    use super::*;

    pub(crate) const DATA: u8 = 0x0;
    pub(crate) const HEADERS: u8 = 0x1;
    pub(crate) const RST_STREAM: u8 = 0x3;
    pub(crate) const SETTINGS: u8 = 0x4;
    pub(crate) const GOAWAY: u8 = 0x7;
    pub(crate) const END_STREAM: u8 = 0x1;
    pub(crate) const END_HEADERS: u8 = 0x4;
    const ACK: u8 = 0x1;
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// One frame the server sent.
    #[derive(Debug)]
    pub(crate) struct RawFrame {
        pub(crate) kind: u8,
        pub(crate) flags: u8,
        pub(crate) stream: u32,
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut out = vec![len[1], len[2], len[3], kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// An HPACK literal header field without indexing: the name from the
    /// static table at `index`, or given in full when `index` is 0.
    fn literal(block: &mut Vec<u8>, index: u8, name: &str, value: &str) {
        assert!(index < 15 && name.len() < 127 && value.len() < 127);
        block.push(index);
        if index == 0 {
            block.push(name.len() as u8);
            block.extend_from_slice(name.as_bytes());
        }
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }

    async fn read_frame(io: &mut TcpStream) -> RawFrame {
        let mut head = [0; 9];
        io.read_exact(&mut head)
            .await
            .expect("the server closed the connection");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0; len];
        io.read_exact(&mut payload)
            .await
            .expect("the server closed the connection");
        RawFrame {
            kind: head[3],
            flags: head[4],
            stream,
        }
    }

    /// Sends a gRPC request for [`Route::Pending`] on stream 1 and returns
    /// the frames the server sent on that stream, up to its end.
    pub(crate) async fn pending_grpc(addr: SocketAddr) -> Vec<RawFrame> {
        let mut io = TcpStream::connect(addr).await.unwrap();
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
        literal(&mut block, 4, ":path", Route::Pending.path());
        literal(&mut block, 1, ":authority", "127.0.0.1");
        literal(&mut block, 0, "content-type", "application/grpc");
        literal(&mut block, 0, "te", "trailers");
        let mut out = PREFACE.to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        out.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, &block));
        io.write_all(&out).await.unwrap();

        let mut frames = Vec::new();
        loop {
            let f = read_frame(&mut io).await;
            match (f.kind, f.stream) {
                (GOAWAY, _) => panic!("the server sent GOAWAY: {f:?}"),
                (SETTINGS, 0) if f.flags & ACK == 0 => {
                    io.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
                }
                (kind, 1) => {
                    let end = kind == RST_STREAM
                        || (matches!(kind, HEADERS | DATA) && f.flags & END_STREAM != 0);
                    frames.push(f);
                    if end {
                        return frames;
                    }
                }
                _ => {}
            }
        }
    }
}
