//! Work that outlives the response, over real loopback connections
//! (HTTP/1.1 and HTTP/2): `Lifecycle::after_response`, `Lifecycle::spawn`
//! and the layer's `Drain` (with `axum::serve` and its graceful shutdown),
//! plus one test of an abort without a tokio runtime.
//!
//! Every handler reports a [`Running`] to the test once it has set up its
//! request: a hook that logs `hook` and keeps the completion it saw, and
//! work gated by the test that logs `<name> started`, `<name> ended`, or
//! `<name> dropped` when it is cancelled. All of a request's events go to one
//! [`Log`], so orders (work, then hooks, then the drain) are read off it, and
//! every "not yet" is checked after the event it must follow.

use crate::common;

use std::convert::Infallible;
use std::future::{Future, IntoFuture};
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder};
use tower_lifecycle::{Completion, ConnectionStatus, Lifecycle, LifecycleLayer, Phase};

use common::probe::{probe, Probe};
use common::server::{lifecycle_of, send, try_send, Reply};
use common::{within, Client, Proto, BOTH, CHUNKS};

/// A server whose handlers report a [`Running`].
type Server = common::server::Server<Running>;

/// `after_response` work, then a body the test feeds through a channel.
const AFTER_STREAM: &str = "/after/stream";
/// `after_response` work, then never answers.
const AFTER_PENDING: &str = "/after/pending";
/// `after_response` work, then `202 Accepted` at once.
const AFTER: &str = "/after";
/// Spawned work, then never answers.
const SPAWN_PENDING: &str = "/spawn/pending";
/// Ignore-abort on, spawned work, then answers once the client left.
const SPAWN_IGNORE: &str = "/spawn/ignore";
/// Spawned work and an ungated `after_response` marker, then answers.
const SPAWN: &str = "/spawn";
/// `after_response` and spawned work that never end on their own, then
/// answers.
const STRAGGLER: &str = "/straggler";
/// The axum route of the drain test.
const NEWSLETTER: &str = "/newsletter";

const ACCEPTED: &str = "accepted";
const OK: &str = "ok";
/// The log of gated work that ran to its end before the hooks.
const WORK_THEN_HOOK: [&str; 3] = ["work started", "work ended", "hook"];
/// The events of one request, in the order they happened.
#[derive(Clone)]
struct Log(Arc<watch::Sender<Vec<String>>>);

impl Log {
    fn new() -> Self {
        Log(Arc::new(watch::channel(Vec::new()).0))
    }

    fn push(&self, event: impl Into<String>) {
        let event = event.into();
        self.0.send_modify(|events| events.push(event));
    }

    fn events(&self) -> Vec<String> {
        self.0.borrow().clone()
    }

    /// Waits until `event` is in the log.
    async fn wait_for(&self, event: &str) {
        let mut rx = self.0.subscribe();
        within(
            &format!("{event:?} in the log"),
            rx.wait_for(|events| events.iter().any(|e| e == event)),
        )
        .await
        .expect("the log is alive while we hold it");
    }
}

/// Logs its event when dropped, unless disarmed first.
struct DropLog {
    log: Log,
    event: Option<String>,
}

impl DropLog {
    fn disarm(mut self) {
        self.event = None;
    }
}

impl Drop for DropLog {
    fn drop(&mut self) {
        if let Some(event) = self.event.take() {
            self.log.push(event);
        }
    }
}

/// Work that logs `<name> started`, waits for `gate`, then logs
/// `<name> ended`; dropped before that (even before it first ran), it logs
/// `<name> dropped`.
fn gated(
    log: &Log,
    name: &'static str,
    gate: oneshot::Receiver<()>,
) -> impl Future<Output = ()> + Send + 'static {
    let log = log.clone();
    let guard = DropLog {
        log: log.clone(),
        event: Some(format!("{name} dropped")),
    };
    async move {
        let guard = guard;
        log.push(format!("{name} started"));
        let _ = gate.await;
        log.push(format!("{name} ended"));
        guard.disarm();
    }
}

/// Work that logs `<name> started` and never ends on its own; it logs
/// `<name> dropped` when cancelled.
fn forever(log: &Log, name: &'static str) -> impl Future<Output = ()> + Send + 'static {
    let (gate, wait) = oneshot::channel();
    // The gate never opens: the sender lives inside the work itself.
    let work = gated(log, name, wait);
    async move {
        let _gate = gate;
        work.await;
        unreachable!("the gate of work that never ends opened");
    }
}

/// What a handler hands the test once its request is set up.
struct Running {
    lifecycle: Lifecycle,
    log: Log,
    /// The completions the request's own hook was called with.
    hooks: Arc<Mutex<Vec<Completion>>>,
    /// Opens the gate of the request's work.
    gate: Option<oneshot::Sender<()>>,
    /// Opens the gate of the request's async hook, if it has one.
    hook_gate: Option<oneshot::Sender<()>>,
}

impl Running {
    /// Sets up a request: a log, a hook that logs `hook` and keeps its
    /// completion, and a gate for its work (the receiving end is returned).
    /// Report the result once the work is registered.
    fn enter(lifecycle: &Lifecycle) -> (Running, oneshot::Receiver<()>) {
        let log = Log::new();
        let hooks = Arc::new(Mutex::new(Vec::new()));
        let (hook_log, seen) = (log.clone(), hooks.clone());
        lifecycle.on_shutdown(move |done| {
            hook_log.push("hook");
            seen.lock().unwrap().push(done.clone());
        });
        let (gate, gate_rx) = oneshot::channel();
        let running = Running {
            lifecycle: lifecycle.clone(),
            log,
            hooks,
            gate: Some(gate),
            hook_gate: None,
        };
        (running, gate_rx)
    }

    fn events(&self) -> Vec<String> {
        self.log.events()
    }

    fn hook_runs(&self) -> usize {
        self.hooks.lock().unwrap().len()
    }

    /// The completion the request's hook saw; it must have run once.
    fn hook_completion(&self) -> Completion {
        let hooks = self.hooks.lock().unwrap();
        assert_eq!(hooks.len(), 1, "the request's hook runs once: {hooks:?}");
        hooks[0].clone()
    }

    fn open_gate(&mut self) {
        let _ = self.gate.take().expect("the gate opens once").send(());
    }
}

/// The `service_fn` handler: what it starts depends on the path.
async fn handle(probe: Probe<Running>, req: Request<Incoming>) -> Reply {
    let lifecycle = lifecycle_of(&req);
    let (running, gate) = Running::enter(&lifecycle);
    let log = running.log.clone();
    let response = match req.uri().path() {
        AFTER_STREAM => {
            lifecycle.after_response(gated(&log, "work", gate));
            let body = probe.channel_body();
            probe.report(running);
            Response::new(body.boxed())
        }
        AFTER_PENDING => {
            lifecycle.after_response(gated(&log, "work", gate));
            probe.report(running);
            std::future::pending().await
        }
        AFTER => {
            lifecycle.after_response(gated(&log, "work", gate));
            probe.report(running);
            let mut response = Response::new(Full::from(ACCEPTED).boxed());
            *response.status_mut() = StatusCode::ACCEPTED;
            response
        }
        SPAWN_PENDING => {
            lifecycle.spawn(gated(&log, "work", gate));
            probe.report(running);
            std::future::pending().await
        }
        SPAWN_IGNORE => {
            lifecycle.ignore_abort(true);
            lifecycle.spawn(gated(&log, "work", gate));
            probe.report(running);
            lifecycle.aborted().await;
            log.push("handler saw the abort");
            Response::new(Full::from("too late").boxed())
        }
        SPAWN => {
            lifecycle.spawn(gated(&log, "work", gate));
            let marker = log.clone();
            lifecycle.after_response(async move { marker.push("response done") });
            probe.report(running);
            Response::new(Full::from(OK).boxed())
        }
        STRAGGLER => {
            lifecycle.after_response(forever(&log, "after_response"));
            lifecycle.spawn(forever(&log, "spawn"));
            probe.report(running);
            Response::new(Full::from(OK).boxed())
        }
        other => panic!("no route for {other}"),
    };
    Ok(response)
}

impl Server {
    /// The next completion, which must be `running`'s: its hook ran once
    /// and saw the same completion as the layer's `on_complete`.
    async fn completion(&mut self, running: &Running) -> Completion {
        let done = self.done.next().await;
        assert_eq!(
            running.hook_completion(),
            done,
            "not this request's completion"
        );
        done
    }

    /// Checks that `running`'s hooks have not run and no completion came
    /// while its work waits at its gate, then opens the gate and returns the
    /// request's completion.
    async fn release(&mut self, running: &mut Running, proto: Proto) -> Completion {
        assert_eq!(running.hook_runs(), 0, "{proto:?}: hooks before the work");
        self.done.assert_none();
        running.open_gate();
        self.completion(running).await
    }
}

/// Polls `fut` once, with the calling task's waker.
async fn poll_once<F: Future>(mut fut: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
}

fn events(list: &[&str]) -> Vec<String> {
    list.iter().map(|e| e.to_string()).collect()
}

/// `after_response` work starts only once the streamed body returned
/// `None`: not while the client has read part of it, nor once every byte
/// was read but the producer had not yet finished. The hooks run after the
/// work ended: NORMAL, phase Continued.
#[tokio::test]
async fn after_response_starts_once_the_body_is_complete() {
    let mut server = Server::start(|layer| layer, handle).await;
    for proto in BOTH {
        let mut stream = server.stream(proto, AFTER_STREAM).await;
        let mut running = server.report().await;
        for chunk in CHUNKS {
            stream.pass(chunk).await;
            assert!(
                running.events().is_empty(),
                "{proto:?}: the work started mid-body: {:?}",
                running.events()
            );
        }
        // Every byte was read, but the producer has not finished the body.
        assert!(running.events().is_empty(), "{proto:?}");
        drop(stream.tx);
        // HTTP/2 may end the stream with an empty DATA frame.
        let rest = within("the end of the body", stream.body.collect())
            .await
            .expect("body error")
            .to_bytes();
        assert!(rest.is_empty(), "{proto:?}: more data: {rest:?}");

        running.log.wait_for("work started").await;
        assert_eq!(running.lifecycle.status(), ConnectionStatus::NORMAL);
        let done = server.release(&mut running, proto).await;
        assert_eq!(done.status(), ConnectionStatus::NORMAL, "{done:?}");
        assert_eq!(done.phase(), Phase::Continued, "{done:?}");
        assert!(!done.continued(), "{done:?}");
        let total: usize = CHUNKS.iter().map(|c| c.len()).sum();
        assert_eq!(done.bytes_sent(), total as u64, "{done:?}");
        assert_eq!(done.response_status(), Some(StatusCode::OK), "{done:?}");
        assert_eq!(running.events(), events(&WORK_THEN_HOOK), "{proto:?}");
        server.done.assert_none();
    }
}

/// The client leaves before the head (ignore-abort off): the handler
/// is cancelled, but the `after_response` work starts, sees ABORTED, and
/// runs to its end; the hooks run once after it.
#[tokio::test]
async fn after_response_runs_when_the_client_left_before_the_head() {
    let mut server = Server::start(|layer| layer, handle).await;
    for proto in BOTH {
        let in_flight = server.visit(proto, AFTER_PENDING).await;
        let mut running = server.report().await;
        assert!(running.events().is_empty(), "{proto:?}: started too early");
        in_flight.leave();

        running.log.wait_for("work started").await;
        assert!(running.lifecycle.is_aborted(), "{proto:?}");
        let done = server.release(&mut running, proto).await;
        assert_eq!(done.status(), ConnectionStatus::ABORTED, "{done:?}");
        assert_eq!(done.phase(), Phase::Continued, "{done:?}");
        assert_eq!(done.response_status(), None, "{done:?}");
        assert!(!done.continued(), "{done:?}");
        assert_eq!(running.events(), events(&WORK_THEN_HOOK), "{proto:?}");
        server.done.assert_none();
    }
}

/// The client leaves mid-body (ignore-abort off): the body is dropped
/// (its producer's sends fail), and the `after_response` work still runs
/// to its end before the hooks.
#[tokio::test]
async fn after_response_runs_when_the_client_left_mid_body() {
    let mut server = Server::start(|layer| layer, handle).await;
    for proto in BOTH {
        let mut stream = server.stream(proto, AFTER_STREAM).await;
        let mut running = server.report().await;
        stream.pass(CHUNKS[0]).await;
        assert!(running.events().is_empty(), "{proto:?}: started mid-body");
        drop(stream.body);
        drop(stream.client);
        stream.conn.abort();

        running.log.wait_for("work started").await;
        assert!(running.lifecycle.is_aborted(), "{proto:?}");
        assert!(
            !try_send(&mut stream.tx, "too late").await,
            "{proto:?}: the body outlived its abort"
        );
        let done = server.release(&mut running, proto).await;
        assert_eq!(done.status(), ConnectionStatus::ABORTED, "{done:?}");
        assert_eq!(done.phase(), Phase::Continued, "{done:?}");
        assert_eq!(done.bytes_sent(), CHUNKS[0].len() as u64, "{done:?}");
        assert_eq!(done.response_status(), Some(StatusCode::OK), "{done:?}");
        assert_eq!(running.events(), events(&WORK_THEN_HOOK), "{proto:?}");
        server.done.assert_none();
    }
}

/// Spawned work with ignore-abort off: the client leaving cancels it
/// (its drop guard fires) and the hooks run once, after that.
#[tokio::test]
async fn spawned_work_is_cancelled_when_the_client_leaves() {
    let mut server = Server::start(|layer| layer, handle).await;
    for proto in BOTH {
        let in_flight = server.visit(proto, SPAWN_PENDING).await;
        let running = server.report().await;
        running.log.wait_for("work started").await;
        assert_eq!(running.hook_runs(), 0, "{proto:?}");
        in_flight.leave();

        let done = server.completion(&running).await;
        assert_eq!(done.status(), ConnectionStatus::ABORTED, "{done:?}");
        assert!(!done.continued(), "{done:?}");
        assert!(!done.detach_refused(), "{done:?}");
        assert_eq!(
            done.phase(),
            Phase::Handler,
            "cancelled work is not continued work"
        );
        assert_eq!(
            running.events(),
            events(&["work started", "work dropped", "hook"]),
            "{proto:?}"
        );
        server.done.assert_none();
    }
}

/// Spawned work with a normal end: the response is over (an
/// `after_response` marker ran) but the hooks wait for the spawned work;
/// they run once it ended, phase Continued.
#[tokio::test]
async fn hooks_wait_for_spawned_work() {
    let mut server = Server::start(|layer| layer, handle).await;
    for proto in BOTH {
        let (_client, _conn, res) = server.request(proto, SPAWN).await;
        assert_eq!(common::read_all(res).await, OK);
        let mut running = server.report().await;
        running.log.wait_for("work started").await;
        running.log.wait_for("response done").await;
        let done = server.release(&mut running, proto).await;
        assert_eq!(done.status(), ConnectionStatus::NORMAL, "{done:?}");
        assert_eq!(done.phase(), Phase::Continued, "{done:?}");
        assert_eq!(done.response_status(), Some(StatusCode::OK), "{done:?}");
        assert!(!done.continued(), "{done:?}");
        let log = running.events();
        assert_eq!(log.len(), 4, "{proto:?}: {log:?}");
        assert_eq!(log[2..], events(&["work ended", "hook"]), "{proto:?}");
        server.done.assert_none();
    }
}

/// Spawned work with ignore-abort on (set by the handler): the client
/// leaving does not cancel it; the hooks run once it ended, ABORTED and
/// continued.
#[tokio::test]
async fn spawned_work_continues_under_ignore_abort() {
    let mut server = Server::start(|layer| layer, handle).await;
    for proto in BOTH {
        let in_flight = server.visit(proto, SPAWN_IGNORE).await;
        let mut running = server.report().await;
        running.log.wait_for("work started").await;
        in_flight.leave();

        // The handler continued and saw the abort: the decision to keep
        // the request's work is behind us.
        running.log.wait_for("handler saw the abort").await;
        let done = server.release(&mut running, proto).await;
        assert_eq!(done.status(), ConnectionStatus::ABORTED, "{done:?}");
        assert_eq!(done.phase(), Phase::Continued, "{done:?}");
        assert!(done.continued(), "{done:?}");
        assert_eq!(
            running.events(),
            events(&[
                "work started",
                "handler saw the abort",
                "work ended",
                "hook"
            ]),
            "{proto:?}"
        );
        server.done.assert_none();
    }
}

/// The axum handler of the drain test: answers 202 at once and keeps
/// working in `after_response`; an async hook (gated too) follows.
async fn newsletter(
    State(probe): State<Probe<Running>>,
    lifecycle: Lifecycle,
) -> (StatusCode, &'static str) {
    let (mut running, gate) = Running::enter(&lifecycle);
    lifecycle.after_response(gated(&running.log, "work", gate));
    let (hook_gate, hook_wait) = oneshot::channel::<()>();
    running.hook_gate = Some(hook_gate);
    let log = running.log.clone();
    lifecycle.on_shutdown_async(move |_| async move {
        log.push("async hook started");
        let _ = hook_wait.await;
        log.push("async hook ended");
    });
    probe.report(running);
    (StatusCode::ACCEPTED, ACCEPTED)
}

fn post_request(path: &str) -> Request<Empty<Bytes>> {
    Request::post(format!("http://127.0.0.1{path}"))
        .body(Empty::new())
        .unwrap()
}

/// `axum::serve` with graceful shutdown: the server stops once its
/// connection closed, while the request's `after_response` work still
/// runs. `Drain` counts that request until its work and its async hook are
/// done; `wait()` stays pending through both and resolves after them.
#[tokio::test]
async fn drain_waits_for_work_and_async_hooks_after_axum_stopped() {
    for proto in BOTH {
        let (layer, mut done) = common::layer();
        let drain = layer.drain();
        let (probe, mut reports) = probe();
        let app = Router::new()
            .route(NEWSLETTER, post(newsletter))
            .with_state(probe)
            .layer(layer);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.await;
                })
                .into_future(),
        );

        let (mut client, _conn) = Client::connect(addr, proto).await;
        let res = send(&mut client, post_request(NEWSLETTER)).await;
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        assert_eq!(common::read_all(res).await, ACCEPTED);
        let mut running = reports.next().await;
        running.log.wait_for("work started").await;
        assert_eq!(drain.in_flight(), 1, "{proto:?}");

        stop.send(()).unwrap();
        within("the server to stop", server)
            .await
            .unwrap()
            .expect("serve failed");
        // The server is gone; the request's work is not.
        assert_eq!(drain.in_flight(), 1, "{proto:?}");
        let mut wait = pin!(drain.wait());
        assert!(
            poll_once(wait.as_mut()).await.is_pending(),
            "{proto:?}: wait() resolved while the work was gated"
        );

        running.open_gate();
        running.log.wait_for("async hook started").await;
        assert_eq!(
            drain.in_flight(),
            1,
            "{proto:?}: left during the async hook"
        );
        assert!(
            poll_once(wait.as_mut()).await.is_pending(),
            "{proto:?}: wait() resolved while an async hook was running"
        );

        let _ = running.hook_gate.take().unwrap().send(());
        within("drain.wait()", wait).await;
        assert_eq!(drain.in_flight(), 0, "{proto:?}");
        assert_eq!(
            running.events(),
            events(&[
                "work started",
                "work ended",
                "hook",
                "async hook started",
                "async hook ended"
            ]),
            "{proto:?}"
        );
        let completion = done.next().await;
        assert_eq!(running.hook_completion(), completion);
        assert_eq!(completion.status(), ConnectionStatus::NORMAL);
        assert_eq!(completion.phase(), Phase::Continued);
        assert_eq!(completion.response_status(), Some(StatusCode::ACCEPTED));
        done.assert_none();
        within("wait() with nothing in flight", drain.wait()).await;
    }
}

/// `shutdown(grace)` with one request whose work finishes in time and a
/// straggler whose `after_response` and spawned work never end: after the
/// grace period the straggler's work is cancelled, its hooks run once with
/// TIMEOUT, and the report counts one finished and one cancelled lifecycle.
#[tokio::test]
async fn shutdown_cancels_a_straggler_after_the_grace_period() {
    let grace = Duration::from_millis(200);
    for proto in BOTH {
        let mut server = Server::start(|layer| layer, handle).await;
        let mut client = server.connect(proto).await;

        let res = send(&mut client, common::get(AFTER)).await;
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        assert_eq!(common::read_all(res).await, ACCEPTED);
        let mut in_time = server.report().await;
        in_time.log.wait_for("work started").await;

        let res = send(&mut client, common::get(STRAGGLER)).await;
        assert_eq!(common::read_all(res).await, OK);
        let straggler = server.report().await;
        straggler.log.wait_for("after_response started").await;
        straggler.log.wait_for("spawn started").await;
        assert_eq!(server.drain.in_flight(), 2, "{proto:?}");

        let start = Instant::now();
        let drain = server.drain.clone();
        let mut shutdown = pin!(drain.shutdown(grace));
        // Polled once, the shutdown has counted what is in flight; then the
        // first request's work may finish, within the grace period.
        assert!(poll_once(shutdown.as_mut()).await.is_pending());
        in_time.open_gate();
        let report = within("the shutdown", shutdown).await;
        assert!(
            start.elapsed() >= grace,
            "{proto:?}: shut down before the grace"
        );
        assert_eq!(report.cancelled(), 1, "{proto:?}: {report:?}");
        assert_eq!(report.finished(), 1, "{proto:?}: {report:?}");
        assert_eq!(server.drain.in_flight(), 0, "{proto:?}");

        let first = server.completion(&in_time).await;
        assert_eq!(first.status(), ConnectionStatus::NORMAL, "{first:?}");
        assert_eq!(first.phase(), Phase::Continued, "{first:?}");
        assert_eq!(in_time.events(), events(&WORK_THEN_HOOK), "{proto:?}");

        let last = server.completion(&straggler).await;
        assert!(
            last.status().contains(ConnectionStatus::TIMEOUT),
            "{last:?}"
        );
        assert!(!last.status().is_aborted(), "{last:?}");
        assert_eq!(last.phase(), Phase::Continued, "{last:?}");
        let log = straggler.events();
        assert_eq!(log.len(), 5, "{proto:?}: {log:?}");
        for event in [
            "after_response started",
            "spawn started",
            "after_response dropped",
            "spawn dropped",
        ] {
            assert!(
                log.iter().any(|e| e == event),
                "{proto:?}: {event:?} missing: {log:?}"
            );
        }
        assert_eq!(log[4], "hook", "{proto:?}: the hook runs last: {log:?}");

        server.done.assert_none();
        assert_eq!(in_time.hook_runs(), 1, "{proto:?}");
        assert_eq!(straggler.hook_runs(), 1, "{proto:?}");
    }
}

/// No tokio runtime when the client leaves: the layer is called through
/// `tower::Service::call` on a plain thread, with ignore-abort on, and the
/// response future is dropped. The request cannot continue without a
/// runtime, so it is cancelled: ABORTED, `detach_refused`, the spawned and
/// `after_response` work dropped unrun, and the hooks run once, inline.
#[test]
fn abort_without_a_runtime_is_refused_and_runs_the_hooks_once() {
    assert!(tokio::runtime::Handle::try_current().is_err());
    let (tx, completions) = std::sync::mpsc::channel();
    let layer = LifecycleLayer::new()
        .ignore_abort(true)
        .on_complete(move |done| {
            let _ = tx.send(done.clone());
        });
    let drain = layer.drain();
    let (probe, mut reports) = probe();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |req: Request<()>| {
            let probe = probe.clone();
            async move {
                let lifecycle = lifecycle_of(&req);
                let (running, gate) = Running::enter(&lifecycle);
                let (_, spawn_gate) = oneshot::channel();
                lifecycle.spawn(gated(&running.log, "spawned", spawn_gate));
                lifecycle.after_response(gated(&running.log, "after_response", gate));
                probe.report(running);
                std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>().await
            }
        });

    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut future = Box::pin(svc.call(Request::new(())));
    assert!(future.as_mut().poll(&mut cx).is_pending());
    let running = reports.try_next().expect("the handler ran");
    assert!(!running.lifecycle.is_aborted());
    assert_eq!(drain.in_flight(), 1);

    drop(future);

    let done = running.hook_completion();
    assert_eq!(completions.try_recv().as_ref(), Ok(&done));
    assert!(completions.try_recv().is_err(), "on_complete ran twice");
    assert_eq!(done.status(), ConnectionStatus::ABORTED, "{done:?}");
    assert_eq!(done.phase(), Phase::Handler, "{done:?}");
    assert!(done.detach_refused(), "{done:?}");
    assert!(!done.continued(), "{done:?}");
    assert_eq!(
        running.events(),
        events(&["spawned dropped", "after_response dropped", "hook"])
    );
    assert_eq!(drain.in_flight(), 0);
}
