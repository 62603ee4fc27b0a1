//! Ignore-abort over real loopback connections, HTTP/1.1 and HTTP/2: with
//! the policy on when the client leaves, the handler runs to its end or the
//! body is drained to its end, and the hooks run once after that work, with
//! the request marked as continued; with the policy off (the default, or
//! turned off again by the handler) the request is cancelled as before; and
//! `max_detached` bounds how many aborted requests continue at once.
//!
//! Every job handler reports a [`Job`] to the test before it does its work:
//! its `Lifecycle`, the key to a gate it waits on, and a channel on which
//! the handler, the body's producer and the request's hook report what
//! happened, in the order it happened. A test leaves only once the handler
//! is running, and opens the gate only after it saw the abort and checked
//! that no completion came yet.

use crate::common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use tower::{ServiceBuilder, ServiceExt};
use tower_lifecycle::{Completion, ConnectionStatus, Lifecycle, LifecycleLayer, Phase};

use common::probe::{DropGuard, Gate, Probe};
use common::server::{lifecycle_of, Reply};
use common::{within, BodySender, InFlight, Proto, BOTH};

/// Any path that is not a job answers at once with [`HELLO`].
const NORMAL: &str = "/";
const HELLO: &str = "hello";

/// What the body's producer sends before the client leaves; the test reads
/// all of it.
const HEAD: [&str; 2] = ["first chunk,", " second chunk"];
/// How many chunks the producer sends once the gate is open: more than the
/// body channel holds, so only a body that is read takes them all.
const TAIL: usize = 8;

/// The `max_detached` of the burst test, and the burst's size.
const MAX_DETACHED: usize = 2;
const BURST: usize = 10 * MAX_DETACHED;

/// What the layer logs when it refuses to continue a request.
const REFUSED_WARNING: &str = "max_detached requests are already continuing";

/// What a job reports to the test, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// The handler saw the abort and keeps running.
    Continuing,
    /// The handler ran to its end.
    Finished,
    /// The handler's future was dropped before it finished.
    Dropped,
    /// The body's producer is done: how many chunks the body accepted
    /// before the first failed send.
    Produced(usize),
    /// The request's `on_shutdown` hook ran with this completion.
    Hook(Completion),
}

type Events = common::probe::Events<Event>;
/// The test's end of one job.
type Job = common::probe::Job<Event>;
/// A server whose handlers report a [`Job`].
type Server = common::server::Server<Job>;

/// What a job does.
#[derive(Clone, Copy, Debug)]
enum Work {
    /// The handler waits on its gate, then answers.
    Hold,
    /// The handler answers at once with a body a task produces: [`HEAD`],
    /// then, once the gate is open, [`TAIL`] more chunks.
    Stream,
}

/// What a job's handler does with the ignore-abort policy before it waits.
#[derive(Clone, Copy, Debug)]
enum Policy {
    /// Leaves the layer's default.
    Layer,
    /// Turns it on.
    On,
    /// Turns it on, then off again.
    OnThenOff,
}

impl Policy {
    const ALL: [Policy; 3] = [Policy::Layer, Policy::On, Policy::OnThenOff];

    fn name(self) -> &'static str {
        match self {
            Policy::Layer => "layer",
            Policy::On => "on",
            Policy::OnThenOff => "on-then-off",
        }
    }

    fn apply(self, lifecycle: &Lifecycle) {
        match self {
            Policy::Layer => {}
            Policy::On => {
                lifecycle.ignore_abort(true);
            }
            Policy::OnThenOff => {
                lifecycle.ignore_abort(true);
                lifecycle.ignore_abort(false);
            }
        }
    }
}

impl Work {
    fn name(self) -> &'static str {
        match self {
            Work::Hold => "hold",
            Work::Stream => "stream",
        }
    }

    /// The path of this job with `policy`.
    fn path(self, policy: Policy) -> String {
        format!("/{}/{}", self.name(), policy.name())
    }

    /// The job a path asks for, if any.
    fn parse(path: &str) -> Option<(Work, Policy)> {
        let (work, policy) = path.strip_prefix('/')?.split_once('/')?;
        let work = [Work::Hold, Work::Stream]
            .into_iter()
            .find(|w| w.name() == work)?;
        let policy = Policy::ALL.into_iter().find(|p| p.name() == policy)?;
        Some((work, policy))
    }
}

/// How many handlers are in their continued part (after the abort) now,
/// and the most there ever were at once.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    fn enter(&self) -> Inside<'_> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        Inside(self)
    }

    fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

/// One handler inside the [`Gauge`].
struct Inside<'a>(&'a Gauge);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The events of a job whose handler was dropped: `Dropped` and one `Hook`,
/// in either order (the hooks run as the response future is dropped, the
/// handler's future with it). Returns the hook's completion.
fn hook_of_dropped(events: Vec<Event>) -> Completion {
    match <[Event; 2]>::try_from(events) {
        Ok([Event::Dropped, Event::Hook(done)] | [Event::Hook(done), Event::Dropped]) => done,
        other => panic!("expected the handler dropped and its hook run once, got {other:?}"),
    }
}

/// How an aborted request ended.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    /// Its work continued to its end.
    Continued,
    /// It was cancelled, in this phase.
    Cancelled(Phase),
    /// Ignore-abort was on but `max_detached` requests were continuing.
    Refused,
}

impl Outcome {
    fn check(self, done: &Completion) {
        let (phase, continued, refused) = match self {
            Outcome::Continued => (Phase::Continued, true, false),
            Outcome::Cancelled(phase) => (phase, false, false),
            Outcome::Refused => (Phase::Handler, false, true),
        };
        assert_eq!(
            done.status(),
            ConnectionStatus::ABORTED,
            "{self:?}: {done:?}"
        );
        assert_eq!(done.phase(), phase, "{self:?}: {done:?}");
        assert_eq!(done.continued(), continued, "{self:?}: {done:?}");
        assert_eq!(done.detach_refused(), refused, "{self:?}: {done:?}");
        assert!(!done.panicked(), "{self:?}: {done:?}");
    }
}

/// The handler: a job for `/{work}/{policy}`, [`HELLO`] for anything else.
/// A handler that continues counts itself in `gauge`.
async fn handle(probe: Probe<Job>, gauge: Arc<Gauge>, req: Request<Incoming>) -> Reply {
    let Some((work, policy)) = Work::parse(req.uri().path()) else {
        return Ok(Response::new(Full::from(HELLO).boxed()));
    };
    let lifecycle = lifecycle_of(&req);
    policy.apply(&lifecycle);
    let (events, gate) = probe.job(&lifecycle, Event::Hook);
    let body = match work {
        Work::Hold => {
            hold(&lifecycle, &gauge, &events, gate).await;
            Full::from(HELLO).boxed()
        }
        Work::Stream => produce(events, gate).boxed(),
    };
    Ok(Response::new(body))
}

/// Waits on the gate. Once the client left (the handler keeps running only
/// if the request continues), it counts itself in the gauge while it waits.
async fn hold(lifecycle: &Lifecycle, gauge: &Gauge, events: &Events, mut gate: Gate) {
    let guard = DropGuard::new(events, Event::Dropped);
    let opened = tokio::select! {
        biased;
        _ = &mut gate => true,
        () = lifecycle.aborted() => false,
    };
    if !opened {
        let _inside = gauge.enter();
        let _ = events.send(Event::Continuing);
        let _ = gate.await;
    }
    guard.disarm();
    let _ = events.send(Event::Finished);
}

/// A body fed by a task: [`HEAD`], then, once the gate is open, [`TAIL`]
/// more chunks, stopping at the first failed send. The task reports how
/// many chunks were accepted, then ends the body.
fn produce(events: Events, gate: Gate) -> Channel<Bytes, Infallible> {
    let (mut tx, body) = Channel::new(1);
    tokio::spawn(async move {
        let head = HEAD.map(|chunk| Bytes::from_static(chunk.as_bytes()));
        let mut sent = send_all(&mut tx, head).await;
        if sent == HEAD.len() {
            let _ = gate.await;
            let tail = (0..TAIL).map(|i| Bytes::from(format!(" tail chunk {i}")));
            sent += send_all(&mut tx, tail).await;
        }
        let _ = events.send(Event::Produced(sent));
        // Ends the body, after the report.
        drop(tx);
    });
    body
}

/// Sends `chunks` until one fails; returns how many were accepted.
async fn send_all(tx: &mut BodySender, chunks: impl IntoIterator<Item = Bytes>) -> usize {
    let mut sent = 0;
    for chunk in chunks {
        if tx.send_data(chunk).await.is_err() {
            break;
        }
        sent += 1;
    }
    sent
}

impl Server {
    /// Serves [`handle`] behind the layer, set up by `configure`.
    async fn jobs(configure: impl FnOnce(LifecycleLayer) -> LifecycleLayer) -> Server {
        Server::counting(configure, Arc::default()).await
    }

    /// Like [`Server::jobs`]; the handlers that continue count themselves
    /// in `gauge`.
    async fn counting(
        configure: impl FnOnce(LifecycleLayer) -> LifecycleLayer,
        gauge: Arc<Gauge>,
    ) -> Server {
        Server::start(configure, move |probe, req| {
            handle(probe, gauge.clone(), req)
        })
        .await
    }

    /// The next job to report it is running, its request not aborted.
    async fn job(&mut self) -> Job {
        let job = self.report().await;
        assert!(!job.lifecycle.is_aborted());
        job
    }

    /// Starts a [`Work::Hold`] job and leaves once its handler runs, before
    /// the response head.
    async fn leave_before_head(&mut self, proto: Proto, policy: Policy) -> Job {
        let visit = self.visit(proto, &Work::Hold.path(policy)).await;
        let job = self.job().await;
        visit.leave();
        job
    }

    /// Starts a [`Work::Stream`] job, reads [`HEAD`], then leaves: drops the
    /// body and closes the connection.
    async fn leave_mid_body(&mut self, proto: Proto, policy: Policy) -> Job {
        let (_client, conn, res) = self.request(proto, &Work::Stream.path(policy)).await;
        let job = self.job().await;
        let mut body = res.into_body();
        common::read_exactly(&mut body, &HEAD.concat()).await;
        drop(body);
        conn.abort();
        job
    }

    /// A normal request on a new connection is answered, and its completion
    /// is the next and only one.
    async fn expect_normal(&mut self, proto: Proto) {
        let (_client, _conn, res) = self.request(proto, NORMAL).await;
        assert_eq!(common::read_all(res).await, HELLO);
        let done = self.done.next().await;
        assert_eq!(done.status(), ConnectionStatus::NORMAL, "{done:?}");
        assert_eq!(done.phase(), Phase::Body, "{done:?}");
        assert!(!done.continued() && !done.detach_refused(), "{done:?}");
        self.done.assert_none();
    }

    /// The client leaves before the head with ignore-abort on: the handler
    /// keeps running, and only once it finished do the hooks run, once.
    async fn continues_before_head(&mut self, proto: Proto, policy: Policy) {
        let mut job = self.leave_before_head(proto, policy).await;
        assert_eq!(
            job.events.next().await,
            Event::Continuing,
            "{proto:?} {policy:?}"
        );
        assert!(job.lifecycle.is_aborted());
        self.done.assert_none();
        job.gate.open();
        let done = self.done.next().await;
        Outcome::Continued.check(&done);
        assert_eq!(done.bytes_sent(), 0, "{done:?}");
        assert_eq!(
            job.events.rest().await,
            [Event::Finished, Event::Hook(done)]
        );
        self.expect_normal(proto).await;
    }

    /// The client leaves before the head with ignore-abort off: the
    /// handler's future is dropped and the hooks run at once.
    async fn cancelled_before_head(&mut self, proto: Proto, policy: Policy) {
        let mut job = self.leave_before_head(proto, policy).await;
        let done = self.done.next().await;
        Outcome::Cancelled(Phase::Handler).check(&done);
        assert_eq!(hook_of_dropped(job.events.rest().await), done);
        self.expect_normal(proto).await;
    }

    /// The client leaves mid-body with ignore-abort on: the body is drained,
    /// so the producer's every send succeeds, and only once it ended the
    /// body do the hooks run, once.
    async fn drained_mid_body(&mut self, proto: Proto, policy: Policy) {
        let mut job = self.leave_mid_body(proto, policy).await;
        within("the abort", job.lifecycle.aborted()).await;
        self.done.assert_none();
        job.gate.open();
        let done = self.done.next().await;
        Outcome::Continued.check(&done);
        assert_body_head(&done);
        assert_eq!(
            job.events.rest().await,
            [Event::Produced(HEAD.len() + TAIL), Event::Hook(done)],
            "{proto:?} {policy:?}"
        );
        self.expect_normal(proto).await;
    }

    /// The client leaves mid-body with ignore-abort off: the hooks run at
    /// once and the producer's next send fails.
    async fn cancelled_mid_body(&mut self, proto: Proto, policy: Policy) {
        let mut job = self.leave_mid_body(proto, policy).await;
        let done = self.done.next().await;
        Outcome::Cancelled(Phase::Body).check(&done);
        assert_body_head(&done);
        // The hooks run inside the body's drop, just before the inner body
        // goes; on this single-threaded runtime that drop is over before the
        // test runs again, so the producer's next send finds no receiver.
        job.gate.open();
        assert_eq!(
            job.events.rest().await,
            [Event::Hook(done), Event::Produced(HEAD.len())],
            "{proto:?} {policy:?}"
        );
        self.expect_normal(proto).await;
    }
}

/// The completion of a streamed job left after [`HEAD`] counts only what
/// reached the server.
fn assert_body_head(done: &Completion) {
    assert_eq!(done.bytes_sent(), HEAD.concat().len() as u64, "{done:?}");
    assert_eq!(done.response_status(), Some(StatusCode::OK), "{done:?}");
}

/// How many times the layer warned that it refused to continue a request,
/// in this test binary so far (hold [`common::COUNTED_WARNINGS`]).
fn refusal_warnings() -> usize {
    common::logs().matches(REFUSED_WARNING).count()
}

/// 1a. Ignore-abort on by the layer's default: the client leaves before the
/// head, the handler runs to its end, the hooks run after it.
#[tokio::test]
async fn layer_default_on_handler_runs_to_its_end() {
    let mut server = Server::jobs(|layer| layer.ignore_abort(true)).await;
    for proto in BOTH {
        server.continues_before_head(proto, Policy::Layer).await;
    }
}

/// 1b. Ignore-abort turned on by the handler before the client leaves.
#[tokio::test]
async fn handler_turned_on_handler_runs_to_its_end() {
    let mut server = Server::jobs(|layer| layer).await;
    for proto in BOTH {
        server.continues_before_head(proto, Policy::On).await;
    }
}

/// 2. The client leaves mid-body with ignore-abort on (the layer's default,
/// or turned on by the handler): the producer keeps succeeding to the end.
#[tokio::test]
async fn body_is_drained_to_its_end() {
    for (layer_on, policy) in [(true, Policy::Layer), (false, Policy::On)] {
        let mut server = Server::jobs(|layer| layer.ignore_abort(layer_on)).await;
        for proto in BOTH {
            server.drained_mid_body(proto, policy).await;
        }
    }
}

/// 3a. Ignore-abort off (the default; on then off again by the handler;
/// the layer's default turned off by the handler): the handler's future is
/// dropped when the client leaves before the head.
#[tokio::test]
async fn off_handler_is_cancelled() {
    for (layer_on, policy) in [
        (false, Policy::Layer),
        (false, Policy::OnThenOff),
        (true, Policy::OnThenOff),
    ] {
        let mut server = Server::jobs(|layer| layer.ignore_abort(layer_on)).await;
        for proto in BOTH {
            server.cancelled_before_head(proto, policy).await;
        }
    }
}

/// 3b. Ignore-abort off: the body is dropped when the client leaves
/// mid-body, and the producer's next send fails.
#[tokio::test]
async fn off_body_is_cancelled() {
    for policy in [Policy::Layer, Policy::OnThenOff] {
        let mut server = Server::jobs(|layer| layer).await;
        for proto in BOTH {
            server.cancelled_mid_body(proto, policy).await;
        }
    }
}

/// 4. `Lifecycle::ignore_abort` returns the previous value, starting from
/// the layer's default, and each request starts from that default again.
#[tokio::test]
async fn ignore_abort_returns_the_previous_value() {
    const SET: [bool; 5] = [true, true, false, false, true];
    for (layer_on, previous) in [
        (false, [false, true, true, false, false]),
        (true, [true, true, true, false, false]),
    ] {
        let svc = ServiceBuilder::new()
            .layer(LifecycleLayer::new().ignore_abort(layer_on))
            .service_fn(|req: Request<()>| async move {
                let lifecycle = req.extensions().get::<Lifecycle>().unwrap();
                let seen = SET.map(|on| lifecycle.ignore_abort(on));
                let mut res = Response::new(Empty::<Bytes>::new());
                res.extensions_mut().insert(seen);
                Ok::<_, Infallible>(res)
            });
        for _ in 0..2 {
            let res = svc.clone().oneshot(Request::new(())).await.unwrap();
            assert_eq!(
                res.extensions().get::<[bool; 5]>(),
                Some(&previous),
                "layer default {layer_on}"
            );
        }
    }
}

/// 5. A burst of clients start a slow ignore-abort job and leave: exactly
/// `max_detached` continue, never more at once, the rest are refused with a
/// warning, a normal request is still answered meanwhile, and every request
/// completes once. The second protocol's burst runs on the same server, so
/// the first burst's slots must have been given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_detached_bounds_continuing_requests() {
    let _counting = common::COUNTED_WARNINGS.lock().await;
    let gauge = Arc::new(Gauge::default());
    let configure = |layer: LifecycleLayer| layer.ignore_abort(true).max_detached(MAX_DETACHED);
    let mut server = Server::counting(configure, gauge.clone()).await;
    for proto in BOTH {
        let warned = refusal_warnings();
        let mut visits = Vec::new();
        for _ in 0..BURST {
            visits.push(server.visit(proto, &Work::Hold.path(Policy::Layer)).await);
        }
        let mut jobs = Vec::new();
        for _ in 0..BURST {
            jobs.push(server.job().await);
        }
        visits.into_iter().for_each(InFlight::leave);

        // A job continues if its handler saw the abort; a refused one was
        // dropped, its hook run.
        let mut continuing = Vec::new();
        for mut job in jobs {
            match job.events.next().await {
                Event::Continuing => continuing.push(job),
                first => {
                    let mut events = vec![first];
                    events.extend(job.events.rest().await);
                    Outcome::Refused.check(&hook_of_dropped(events));
                }
            }
        }
        assert_eq!(continuing.len(), MAX_DETACHED, "{proto:?}");
        for _ in MAX_DETACHED..BURST {
            Outcome::Refused.check(&server.done.next().await);
        }
        assert_eq!(refusal_warnings() - warned, BURST - MAX_DETACHED);
        assert_eq!(gauge.now(), MAX_DETACHED);
        assert!(gauge.max() <= MAX_DETACHED, "{proto:?}");

        // The continuing jobs hold their slots; a normal request is served.
        server.expect_normal(proto).await;

        continuing.iter_mut().for_each(|job| job.gate.open());
        for _ in 0..MAX_DETACHED {
            Outcome::Continued.check(&server.done.next().await);
        }
        for mut job in continuing {
            match job.events.rest().await.as_slice() {
                [Event::Finished, Event::Hook(done)] => Outcome::Continued.check(done),
                other => panic!("{proto:?}: expected the job finished, then its hook: {other:?}"),
            }
        }
        server.done.assert_none();
        assert_eq!(gauge.now(), 0);
        assert!(gauge.max() <= MAX_DETACHED, "{proto:?}");
    }
}
