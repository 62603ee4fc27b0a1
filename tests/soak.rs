//! Soak tests over real loopback connections, HTTP/1.1 and HTTP/2.
//!
//! `randomized_soak` sends 20,000 requests from 64 concurrent clients, each
//! client owning one connection (half speak HTTP/1.1, half HTTP/2). Every
//! request draws from a seeded PRNG where its client leaves (never, before
//! the response head, or after a few body frames), whether its handler
//! turns ignore-abort on, whether it sets a time limit of a few
//! milliseconds, and what the handler does (answer at once, wait a little,
//! stream a few frames, through `http_body_util::channel::Channel` or a
//! `StreamBody` over a tokio mpsc channel; `Feed` says why a `Channel` body
//! ends with trailers). Afterwards every request the server saw must have
//! ended exactly once, with the status its story allows, and nothing may be
//! left running.
//!
//! `abort_storm_is_bounded` starts 80 slow ignore-abort jobs whose clients
//! leave at once, with `max_detached(8)`: exactly 8 continue, never more at
//! once, the rest are refused, and normal requests are still answered.
//!
//! # Replaying a seed
//!
//! `randomized_soak` prints its seed first (`cargo test --test soak --
//! --nocapture` shows it; a failing test shows it anyway, and every failure
//! message repeats it). Run it again with that seed:
//!
//! ```text
//! SOAK_SEED=1234567890 cargo test --test soak randomized_soak -- --nocapture
//! ```
//!
//! The seed fixes what every request does (the plan of request `id` is drawn
//! from the seed and the id alone, whichever client sends it); the timing
//! between clients, and so which connection carries which request, is up to
//! the scheduler. Without `SOAK_SEED` the seed comes from the clock.
//!
//! # How completions are told apart
//!
//! A `Completion` does not say which request it belongs to. Every request
//! carries its id in an `x-id` header; the service registers, before the
//! handler's future exists, a sync `on_shutdown` hook that puts the id in a
//! thread-local slot, and the layer's `on_complete` takes it from there.
//! Sync hooks and `on_complete` run one after the other on the same thread
//! (the crate's documented order), so the id always reaches the right
//! completion; a completion that finds no id, or a hook whose id was never
//! taken, is reported as a stray and fails the test.

mod common;

use std::cell::Cell;
use std::collections::BTreeSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::channel::{self, Channel};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tower::ServiceBuilder;
use tower_lifecycle::{Completion, ConnectionStatus, Lifecycle, LifecycleLayer, Phase};

use common::{within, Client, Proto};

// ---------------------------------------------------------------------------
// A tiny seeded PRNG (splitmix64): no dependency, same numbers everywhere.

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `percent` in 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn millis(&mut self, max: u64) -> Duration {
        Duration::from_millis(self.below(max + 1))
    }
}

/// The seed: `SOAK_SEED` if set, else the clock.
fn seed() -> u64 {
    match std::env::var("SOAK_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("SOAK_SEED must be a decimal u64, got {text:?}")),
        Err(_) => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            // Mixed, so that runs started close together differ a lot.
            Rng::new(now.as_nanos() as u64).next()
        }
    }
}

// ---------------------------------------------------------------------------
// Shared instruments.

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts the tasks and futures the test starts on the server side
/// (handlers, whether they run inline or were moved into a task by the
/// layer, and body producers): one more while a [`Running`] lives.
#[derive(Default)]
struct Live {
    count: AtomicUsize,
    idle: Notify,
}

/// One entry of [`Live`], given back when dropped.
struct Running(Arc<Live>);

impl Live {
    fn enter(self: &Arc<Self>) -> Running {
        self.count.fetch_add(1, Ordering::SeqCst);
        Running(self.clone())
    }

    fn now(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Resolves once nothing is counted.
    async fn idle(&self) {
        loop {
            let mut idle = pin!(self.idle.notified());
            idle.as_mut().enable();
            if self.now() == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// How many handlers are in their continued part now, and the most there
/// ever were at once.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

/// One handler inside the [`Gauge`].
struct Inside(Arc<Gauge>);

impl Gauge {
    fn enter(self: &Arc<Self>) -> Inside {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        Inside(self.clone())
    }

    fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Awaits `fut` for at most `limit`, failing the test with `what` after.
async fn bounded<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?} waiting for {what}"))
}

/// Waits for every task of `set`, re-raising the first panic.
async fn join_all<T: 'static>(what: &str, limit: Duration, mut set: JoinSet<T>) -> Vec<T> {
    bounded(what, limit, async {
        let mut out = Vec::new();
        while let Some(result) = set.join_next().await {
            match result {
                Ok(value) => out.push(value),
                Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                Err(err) => panic!("{what}: a task was cancelled: {err}"),
            }
        }
        out
    })
    .await
}

// ---------------------------------------------------------------------------
// The recorder: per request id, what the server saw and how it ended.

thread_local! {
    /// The id of the request whose hooks are running on this thread, from
    /// its `on_shutdown` hook to the layer's `on_complete`.
    static ENDING: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The test's lines to one request's handler and completion.
#[derive(Default)]
struct Wiring {
    /// The handler sends its `Lifecycle` here once it runs.
    started: Option<oneshot::Sender<Lifecycle>>,
    /// The handler (or its body's producer) waits until the test drops the
    /// sender of this.
    gate: Option<oneshot::Receiver<()>>,
    /// `on_complete` sends the completion here.
    done: Option<oneshot::Sender<Completion>>,
}

/// What the client of a request saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Saw {
    /// The whole response, as expected.
    Full,
    /// The layer's timeout response (503) instead of the handler's.
    TimeoutHead,
    /// The head, then a body that failed (the time limit cut it).
    BodyError,
    /// No response at all: the request failed. The time limit cut the body
    /// before hyper had flushed the head (HTTP/1.1 closes the connection,
    /// HTTP/2 resets the stream).
    Failed,
    /// The client left before the head.
    LeftBeforeHead,
    /// The client left after reading what it meant to read of the body.
    LeftMidBody,
}

#[derive(Default)]
struct Slot {
    /// How many times the service was called with this id.
    seen: AtomicUsize,
    /// Runs of the request's `on_shutdown` hook.
    hook_runs: AtomicUsize,
    /// Runs of the layer's `on_complete` for this id.
    completions: AtomicUsize,
    /// The first completion.
    completion: Mutex<Option<Completion>>,
    wiring: Mutex<Wiring>,
    saw: Mutex<Option<Saw>>,
}

/// Everything the layer and the handlers report, by request id.
struct Recorder {
    slots: Vec<Slot>,
    /// What cannot be attributed to a request id, or happened out of order.
    strays: Mutex<Vec<String>>,
    /// Every attributed completion, in order.
    events: mpsc::UnboundedSender<(usize, Completion)>,
}

impl Recorder {
    fn new(ids: usize) -> (Arc<Self>, mpsc::UnboundedReceiver<(usize, Completion)>) {
        let (events, rx) = mpsc::unbounded_channel();
        let recorder = Recorder {
            slots: (0..ids).map(|_| Slot::default()).collect(),
            strays: Mutex::default(),
            events,
        };
        (Arc::new(recorder), rx)
    }

    fn slot(&self, id: usize) -> &Slot {
        &self.slots[id]
    }

    /// A layer whose `on_complete` reports to this recorder.
    fn layer(self: &Arc<Self>) -> LifecycleLayer {
        let recorder = self.clone();
        LifecycleLayer::new().on_complete(move |done| recorder.complete(done))
    }

    fn stray(&self, note: String) {
        lock(&self.strays).push(note);
    }

    /// The service's first step, before the handler's future exists: finds
    /// the request's id, registers the hook that hands the id to
    /// `on_complete`, and takes the handler's wiring.
    fn begin(self: &Arc<Self>, req: &Request<Incoming>) -> Option<(usize, Lifecycle, Wiring)> {
        let Some(lifecycle) = req.extensions().get::<Lifecycle>().cloned() else {
            self.stray("a request without a Lifecycle".into());
            return None;
        };
        let header = req.headers().get("x-id");
        let id = header
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&id| id < self.slots.len());
        let Some(id) = id else {
            self.stray(format!("a request with x-id {header:?}"));
            return None;
        };
        let slot = self.slot(id);
        slot.seen.fetch_add(1, Ordering::SeqCst);
        let recorder = self.clone();
        lifecycle.on_shutdown(move |_| {
            recorder.slot(id).hook_runs.fetch_add(1, Ordering::SeqCst);
            if let Some(before) = ENDING.with(|ending| ending.replace(Some(id))) {
                recorder.stray(format!(
                    "request {before}'s hook ran but no on_complete followed before request {id}'s"
                ));
            }
        });
        let wiring = {
            let mut wiring = lock(&slot.wiring);
            Wiring {
                started: wiring.started.take(),
                gate: wiring.gate.take(),
                done: None,
            }
        };
        Some((id, lifecycle, wiring))
    }

    /// The layer's `on_complete`.
    fn complete(&self, done: &Completion) {
        let Some(id) = ENDING.with(Cell::take) else {
            self.stray(format!("a completion without a request id: {done:?}"));
            return;
        };
        let slot = self.slot(id);
        slot.completions.fetch_add(1, Ordering::SeqCst);
        lock(&slot.completion).get_or_insert_with(|| done.clone());
        if let Some(tx) = lock(&slot.wiring).done.take() {
            let _ = tx.send(done.clone());
        }
        let _ = self.events.send((id, done.clone()));
    }

    /// Wires request `id` before it is sent; returns the test's ends.
    fn wire(&self, id: usize) -> Wires {
        let (started_tx, started) = oneshot::channel();
        let (gate, gate_rx) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        *lock(&self.slot(id).wiring) = Wiring {
            started: Some(started_tx),
            gate: Some(gate_rx),
            done: Some(done_tx),
        };
        Wires {
            started,
            gate,
            done,
        }
    }

    fn strays(&self) -> Vec<String> {
        lock(&self.strays).clone()
    }

    /// Asserts request `id` was seen once, and its hook and `on_complete`
    /// ran once each; returns its completion.
    fn ended_once(&self, id: usize, context: &str) -> Completion {
        let slot = self.slot(id);
        let seen = slot.seen.load(Ordering::SeqCst);
        let hooks = slot.hook_runs.load(Ordering::SeqCst);
        let completions = slot.completions.load(Ordering::SeqCst);
        assert_eq!(
            (seen, hooks, completions),
            (1, 1, 1),
            "{context}: (service calls, hook runs, on_complete runs) must be (1, 1, 1); \
             completion {:?}",
            lock(&slot.completion)
        );
        lock(&slot.completion).clone().expect("counted above")
    }
}

/// The test's ends of one request's [`Wiring`].
struct Wires {
    started: oneshot::Receiver<Lifecycle>,
    /// Dropping it opens the gate.
    gate: oneshot::Sender<()>,
    done: oneshot::Receiver<Completion>,
}

type Body = BoxBody<Bytes, Infallible>;

fn full(text: String) -> Body {
    Full::new(Bytes::from(text)).boxed()
}

fn request(id: usize) -> Request<Empty<Bytes>> {
    let mut req = common::get("/");
    req.headers_mut().insert("x-id", HeaderValue::from(id));
    req
}

fn closed(client: &Client) -> bool {
    match client {
        Client::Http1(send) => send.is_closed(),
        Client::Http2(send) => send.is_closed(),
    }
}

// ---------------------------------------------------------------------------
// randomized_soak

const REQUESTS: usize = 20_000;
const CLIENTS: usize = 64;
/// The whole client phase must be over within this.
const SOAK_LIMIT: Duration = Duration::from_secs(120);

/// Every frame, and the answer of a handler that does not stream, is this
/// long: `format!("{id:>10}:{i:>4};")` or `format!("{id:>10}:done;")`.
const FRAME_LEN: usize = 16;

fn frame(id: usize, i: usize) -> String {
    format!("{id:>10}:{i:>4};")
}

fn answer(id: usize) -> String {
    format!("{id:>10}:done;")
}

/// Where the client leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leave {
    Never,
    BeforeHead,
    /// After reading this many body frames.
    AfterFrames(usize),
}

/// What the handler does.
#[derive(Clone, Copy, Debug)]
enum Work {
    /// Answers at once.
    Now,
    /// Waits, then answers.
    Later(Duration),
    /// Answers at once with a body a task streams: `frames` frames, each
    /// after `pause`.
    Stream { frames: usize, pause: Duration },
    /// Waits on its gate, then answers. The client leaves before the head,
    /// and opens the gate only once the abort (or the time limit) was seen,
    /// so the handler never finishes first.
    Held,
    /// Answers at once with a body a task streams: `before` frames, then,
    /// once the gate is open, `after` more. The client leaves after at most
    /// `before` frames, before it opens the gate.
    HeldStream {
        before: usize,
        pause: Duration,
        after: usize,
    },
}

/// How a streamed body is fed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pipe {
    /// `http_body_util::channel::Channel`, ended with empty trailers (see
    /// [`Feed`]).
    Channel,
    /// `StreamBody` over a tokio mpsc channel, ended by dropping the
    /// sender: the body ends by returning `None`.
    Mpsc,
}

/// What request `id` does, drawn from the seed and the id.
#[derive(Clone, Copy, Debug)]
struct Plan {
    leave: Leave,
    work: Work,
    pipe: Pipe,
    ignore_abort: bool,
    limit: Option<Duration>,
}

impl Plan {
    fn draw(seed: u64, id: usize) -> Plan {
        let mut rng = Rng::new(seed ^ (id as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        let ignore_abort = rng.chance(50);
        let limit = rng
            .chance(25)
            .then(|| Duration::from_millis(1 + rng.below(5)));
        let (leave, work) = match rng.below(10) {
            0..=5 => {
                let work = match rng.below(3) {
                    0 => Work::Now,
                    1 => Work::Later(rng.millis(4)),
                    _ => Work::Stream {
                        frames: 1 + rng.below(4) as usize,
                        pause: rng.millis(2),
                    },
                };
                (Leave::Never, work)
            }
            6 | 7 => (Leave::BeforeHead, Work::Held),
            _ => {
                let k = rng.below(3) as usize;
                let work = Work::HeldStream {
                    before: k + rng.below(3) as usize,
                    pause: rng.millis(1),
                    after: 1 + rng.below(3) as usize,
                };
                (Leave::AfterFrames(k), work)
            }
        };
        let pipe = if rng.chance(50) {
            Pipe::Channel
        } else {
            Pipe::Mpsc
        };
        Plan {
            leave,
            work,
            pipe,
            ignore_abort,
            limit,
        }
    }

    /// Every byte the handler means to send.
    fn total_bytes(&self) -> u64 {
        let frames = match self.work {
            Work::Now | Work::Later(_) | Work::Held => 1,
            Work::Stream { frames, .. } => frames,
            Work::HeldStream { before, after, .. } => before + after,
        };
        (frames * FRAME_LEN) as u64
    }

    /// What a client that reads the whole response gets.
    fn expected_body(&self, id: usize) -> String {
        match self.work {
            Work::Stream { frames, .. } => (0..frames).map(|i| frame(id, i)).collect(),
            _ => answer(id),
        }
    }
}

/// The server side of the soak.
struct Soak {
    seed: u64,
    recorder: Arc<Recorder>,
    live: Arc<Live>,
}

impl Soak {
    async fn handle(
        self: Arc<Self>,
        begun: Option<(usize, Lifecycle, Wiring)>,
        running: Running,
    ) -> Result<Response<Body>, Infallible> {
        let _running = running;
        let Some((id, lifecycle, wiring)) = begun else {
            let mut res = Response::new(full("no id".into()));
            *res.status_mut() = StatusCode::BAD_REQUEST;
            return Ok(res);
        };
        let plan = Plan::draw(self.seed, id);
        if plan.ignore_abort {
            lifecycle.ignore_abort(true);
        }
        if let Some(limit) = plan.limit {
            lifecycle.set_time_limit(Some(limit));
        }
        let body = match plan.work {
            Work::Now => full(answer(id)),
            Work::Later(wait) => {
                tokio::time::sleep(wait).await;
                full(answer(id))
            }
            Work::Stream { frames, pause } => self.stream(plan.pipe, id, 0..frames, pause, None, 0),
            Work::Held | Work::HeldStream { .. } => {
                let (Some(started), Some(gate)) = (wiring.started, wiring.gate) else {
                    self.recorder
                        .stray(format!("request {id} ({plan:?}) was not wired"));
                    let mut res = Response::new(full("not wired".into()));
                    *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    return Ok(res);
                };
                let _ = started.send(lifecycle.clone());
                match plan.work {
                    Work::HeldStream {
                        before,
                        pause,
                        after,
                    } => self.stream(plan.pipe, id, 0..before, pause, Some(gate), after),
                    _ => {
                        let _ = gate.await;
                        full(answer(id))
                    }
                }
            }
        };
        Ok(Response::new(body))
    }

    /// A body fed by a task: the `first` frames, each after `pause`, then,
    /// once `gate` is open (if any), `after` more; it stops at the first
    /// send that fails, and ends the body when done.
    fn stream(
        &self,
        pipe: Pipe,
        id: usize,
        first: std::ops::Range<usize>,
        pause: Duration,
        gate: Option<oneshot::Receiver<()>>,
        after: usize,
    ) -> Body {
        let (mut feed, body) = Feed::new(pipe);
        let running = self.live.enter();
        tokio::spawn(async move {
            let _running = running;
            let end = first.end;
            for i in first {
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                if !feed.send(frame(id, i)).await {
                    return;
                }
            }
            if let Some(gate) = gate {
                let _ = gate.await;
                for i in end..end + after {
                    if !feed.send(frame(id, i)).await {
                        return;
                    }
                }
            }
            feed.end().await;
        });
        body
    }
}

/// The sending end of a streamed body.
///
/// A [`Pipe::Channel`] body is ended with an empty trailers frame before
/// the sender is dropped. `Channel::poll_frame` looks at its frame queue,
/// then at whether the sender is gone, and ends the body if it is without
/// looking at the queue again: a frame sent, and the sender dropped, between
/// those two looks is lost and the body ends cleanly, short. With a channel
/// of one, sending the trailers waits until the last data frame was taken,
/// so only the (empty) trailers can be lost that way. hyper sends no
/// trailers over HTTP/1.1 unless the request asked for them.
enum Feed {
    Channel(channel::Sender<Bytes, Infallible>),
    Mpsc(mpsc::Sender<Result<Frame<Bytes>, Infallible>>),
}

impl Feed {
    fn new(pipe: Pipe) -> (Feed, Body) {
        match pipe {
            Pipe::Channel => {
                let (tx, body) = Channel::new(1);
                (Feed::Channel(tx), body.boxed())
            }
            Pipe::Mpsc => {
                let (tx, rx) = mpsc::channel(1);
                let body = StreamBody::new(ReceiverStream::new(rx));
                (Feed::Mpsc(tx), body.boxed())
            }
        }
    }

    /// Sends one data frame; false once the body is gone.
    async fn send(&mut self, data: String) -> bool {
        let data = Bytes::from(data);
        match self {
            Feed::Channel(tx) => tx.send_data(data).await.is_ok(),
            Feed::Mpsc(tx) => tx.send(Ok(Frame::data(data))).await.is_ok(),
        }
    }

    /// Ends the body.
    async fn end(self) {
        if let Feed::Channel(mut tx) = self {
            let _ = tx.send_trailers(http::HeaderMap::new()).await;
        }
    }
}

/// Reads at least `n` bytes off `body`; `Err` when it fails or ends first.
async fn read_bytes(body: &mut Incoming, n: usize, context: &str) -> Result<BytesMut, String> {
    let mut got = BytesMut::new();
    while got.len() < n {
        match within(&format!("{context}: a body frame"), body.frame()).await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    got.extend_from_slice(&data);
                }
            }
            Some(Err(err)) => return Err(err.to_string()),
            None => return Err(format!("the body ended after {} bytes", got.len())),
        }
    }
    Ok(got)
}

/// The client side of the soak.
struct Clients {
    seed: u64,
    addr: std::net::SocketAddr,
    recorder: Arc<Recorder>,
    next: AtomicUsize,
}

/// What one client did.
#[derive(Default, Debug)]
struct ClientStats {
    requests: usize,
    connections: usize,
}

/// One client connection.
struct Conn {
    client: Client,
    task: JoinHandle<()>,
}

impl Conn {
    /// Closes the connection (HTTP/1.1: the server sees the client leave).
    fn close(self) {
        self.task.abort();
    }
}

impl Clients {
    /// One client: takes request ids until none is left, one request at a
    /// time on its connection, reconnecting when the connection was closed.
    async fn run(self: Arc<Self>, index: usize) -> ClientStats {
        let proto = if index % 2 == 0 {
            Proto::Http1
        } else {
            Proto::Http2
        };
        let mut stats = ClientStats::default();
        let mut conn: Option<Conn> = None;
        loop {
            let id = self.next.fetch_add(1, Ordering::SeqCst);
            if id >= REQUESTS {
                break;
            }
            let mut current = match conn.take() {
                Some(c) if !closed(&c.client) => c,
                old => {
                    if let Some(old) = old {
                        old.close();
                    }
                    stats.connections += 1;
                    let (client, task) = within(
                        &format!("seed {}: a connection", self.seed),
                        Client::connect(self.addr, proto),
                    )
                    .await;
                    Conn { client, task }
                }
            };
            let plan = Plan::draw(self.seed, id);
            let context = format!("seed {}, request {id}, {proto:?}, {plan:?}", self.seed);
            let saw = match plan.leave {
                Leave::Never => self.read_all(&mut current, id, &plan, &context).await,
                Leave::BeforeHead => self.leave_before_head(&mut current, id, &context).await,
                Leave::AfterFrames(k) => {
                    let limited = plan.limit.is_some();
                    self.leave_mid_body(&mut current, id, k, limited, &context)
                        .await
                }
            };
            *lock(&self.recorder.slot(id).saw) = Some(saw);
            stats.requests += 1;
            // An HTTP/1.1 connection whose response was not read to its end
            // is gone (the client closed it, or the server cut the body).
            let keep = proto == Proto::Http2 || matches!(saw, Saw::Full | Saw::TimeoutHead);
            if keep {
                conn = Some(current);
            } else {
                current.close();
            }
        }
        if let Some(conn) = conn {
            conn.close();
        }
        stats
    }

    async fn read_all(&self, conn: &mut Conn, id: usize, plan: &Plan, context: &str) -> Saw {
        let res = match within(
            &format!("{context}: the response head"),
            conn.client.send(request(id)),
        )
        .await
        {
            Ok(res) => res,
            Err(_) if plan.limit.is_some() => return Saw::Failed,
            Err(err) => panic!("{context}: the request failed: {err}"),
        };
        let status = res.status();
        let body = within(
            &format!("{context}: the whole body"),
            res.into_body().collect(),
        )
        .await;
        match (status, body) {
            (StatusCode::OK, Ok(body)) => {
                assert_eq!(
                    body.to_bytes(),
                    plan.expected_body(id).as_bytes(),
                    "{context}: the body"
                );
                Saw::Full
            }
            (StatusCode::OK, Err(_)) => Saw::BodyError,
            (StatusCode::SERVICE_UNAVAILABLE, Ok(_)) => Saw::TimeoutHead,
            (status, body) => panic!("{context}: unexpected answer {status}: {body:?}"),
        }
    }

    /// Sends the request, waits for its handler to run, and leaves: drops
    /// the response future (HTTP/2 resets the stream), and closes an
    /// HTTP/1.1 connection. Opens the handler's gate once the server saw the
    /// abort (or the time limit ended the request first).
    async fn leave_before_head(&self, conn: &mut Conn, id: usize, context: &str) -> Saw {
        let mut wires = self.recorder.wire(id);
        let lifecycle = {
            let mut call = pin!(conn.client.send(request(id)));
            within(&format!("{context}: the handler to start"), async {
                tokio::select! {
                    biased;
                    started = &mut wires.started => started
                        .unwrap_or_else(|_| panic!("{context}: the handler never started")),
                    res = &mut call => panic!("{context}: answered before its handler ran: {res:?}"),
                }
            })
            .await
            // The client leaves: the response future is dropped here.
        };
        if let Client::Http1(_) = conn.client {
            conn.task.abort();
        }
        self.settle(lifecycle, wires, context).await;
        Saw::LeftBeforeHead
    }

    /// Reads the head and `k` frames, then leaves: drops the body (HTTP/2
    /// resets the stream), and closes an HTTP/1.1 connection.
    async fn leave_mid_body(
        &self,
        conn: &mut Conn,
        id: usize,
        k: usize,
        limited: bool,
        context: &str,
    ) -> Saw {
        let mut wires = self.recorder.wire(id);
        let sent = within(
            &format!("{context}: the response head"),
            conn.client.send(request(id)),
        )
        .await;
        let early = match &sent {
            Ok(res) if res.status() == StatusCode::SERVICE_UNAVAILABLE => Some(Saw::TimeoutHead),
            Ok(_) => None,
            Err(_) if limited => Some(Saw::Failed),
            Err(err) => panic!("{context}: the request failed: {err}"),
        };
        if let Some(saw) = early {
            // The time limit ended the request: nothing to leave.
            drop(wires.gate);
            within(&format!("{context}: the completion"), wires.done)
                .await
                .unwrap_or_else(|_| panic!("{context}: no completion"));
            return saw;
        }
        let res = sent.expect("checked above");
        assert_eq!(res.status(), StatusCode::OK, "{context}");
        let lifecycle = within(
            &format!("{context}: the handler to start"),
            &mut wires.started,
        )
        .await
        .unwrap_or_else(|_| panic!("{context}: the handler never started"));
        let mut body = res.into_body();
        let saw = match read_bytes(&mut body, k * FRAME_LEN, context).await {
            Ok(got) => {
                let expected: String = (0..k).map(|i| frame(id, i)).collect();
                assert_eq!(&got[..], expected.as_bytes(), "{context}: the first frames");
                Saw::LeftMidBody
            }
            Err(_) => Saw::BodyError,
        };
        drop(body);
        if let Client::Http1(_) = conn.client {
            conn.task.abort();
        }
        self.settle(lifecycle, wires, context).await;
        saw
    }

    /// After the client left: waits until the server saw the abort, or the
    /// request ended first (its time limit), then opens the gate and waits
    /// for the completion. Waiting for it keeps at most one continued
    /// request per client, so `max_detached(CLIENTS)` never refuses one
    /// unless a slot leaked.
    async fn settle(&self, lifecycle: Lifecycle, wires: Wires, context: &str) {
        let Wires {
            started: _,
            gate,
            mut done,
        } = wires;
        let ended_first = within(&format!("{context}: the abort to be seen"), async {
            tokio::select! {
                () = lifecycle.aborted() => false,
                _ = &mut done => true,
            }
        })
        .await;
        drop(gate);
        if !ended_first {
            within(&format!("{context}: the completion"), done)
                .await
                .unwrap_or_else(|_| panic!("{context}: no completion"));
        }
    }
}

/// Checks request `id`'s completion against its plan and what its client
/// saw.
fn check_soak(recorder: &Recorder, seed: u64, id: usize) -> Completion {
    let plan = Plan::draw(seed, id);
    let saw = lock(&recorder.slot(id).saw).expect("every request was sent");
    let context = format!("seed {seed}, request {id}, {plan:?}, client saw {saw:?}");
    let done = recorder.ended_once(id, &context);
    let context = format!("{context}: {done:?}");
    let status = done.status();

    assert!(!done.panicked(), "{context}");
    assert!(!done.body_error(), "{context}");
    assert!(!done.service_error(), "{context}");
    assert!(
        !done.detach_refused(),
        "{context}: refused with at most one continued request per client"
    );
    assert!(
        plan.limit.is_some() || !status.is_timeout(),
        "{context}: TIMEOUT without a time limit"
    );
    assert!(done.bytes_sent() <= plan.total_bytes(), "{context}");
    // Work continues exactly when the client left with ignore-abort on.
    assert_eq!(
        done.continued(),
        plan.ignore_abort && status.is_aborted(),
        "{context}: continued"
    );

    match plan.leave {
        Leave::Never => {
            // The client stayed: nothing aborted; what the client saw tells
            // how the request ended (with a limit, the limit may have cut it).
            let (want, phase, code) = match saw {
                Saw::Full => (ConnectionStatus::NORMAL, Phase::Body, StatusCode::OK),
                Saw::TimeoutHead => (
                    ConnectionStatus::TIMEOUT,
                    Phase::Handler,
                    StatusCode::SERVICE_UNAVAILABLE,
                ),
                Saw::BodyError | Saw::Failed => {
                    (ConnectionStatus::TIMEOUT, Phase::Body, StatusCode::OK)
                }
                other => unreachable!("{other:?}"),
            };
            assert!(
                plan.limit.is_some() || saw == Saw::Full,
                "{context}: a request without a limit was not answered in full"
            );
            assert_eq!((status, done.phase()), (want, phase), "{context}");
            assert_eq!(done.response_status(), Some(code), "{context}");
            if saw == Saw::Full {
                assert_eq!(done.bytes_sent(), plan.total_bytes(), "{context}");
            }
        }
        Leave::BeforeHead | Leave::AfterFrames(_) => {
            if plan.limit.is_none() {
                // The handler (or the producer) waits for a gate the client
                // opens only after the server saw the abort: it cannot have
                // finished first.
                assert_eq!(status, ConnectionStatus::ABORTED, "{context}");
            } else {
                // The limit may expire before the client leaves, or while
                // the continued work waits for its gate.
                assert!(status.is_aborted() || status.is_timeout(), "{context}");
            }
            let phase = if done.continued() {
                Phase::Continued
            } else if plan.leave == Leave::BeforeHead || saw == Saw::TimeoutHead {
                Phase::Handler
            } else {
                Phase::Body
            };
            assert_eq!(done.phase(), phase, "{context}");
            if let (Leave::AfterFrames(k), Work::HeldStream { before, .. }) =
                (plan.leave, plan.work)
            {
                if saw == Saw::LeftMidBody {
                    let sent = done.bytes_sent();
                    assert!(
                        (k * FRAME_LEN) as u64 <= sent && sent <= (before * FRAME_LEN) as u64,
                        "{context}: bytes sent before the gate"
                    );
                }
            }
        }
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn randomized_soak() {
    let seed = seed();
    println!(
        "randomized_soak: seed {seed} (replay: SOAK_SEED={seed} cargo test --test soak randomized_soak)"
    );
    let started = Instant::now();

    let (recorder, events) = Recorder::new(REQUESTS);
    drop(events);
    let live = Arc::new(Live::default());
    let layer = recorder.layer().max_detached(CLIENTS);
    let drain = layer.drain();
    let soak = Arc::new(Soak {
        seed,
        recorder: recorder.clone(),
        live: live.clone(),
    });
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |req: Request<Incoming>| {
            let begun = soak.recorder.begin(&req);
            let running = soak.live.enter();
            soak.clone().handle(begun, running)
        });
    let addr = common::serve(svc).await;

    let clients = Arc::new(Clients {
        seed,
        addr,
        recorder: recorder.clone(),
        next: AtomicUsize::new(0),
    });
    let mut set = JoinSet::new();
    for index in 0..CLIENTS {
        set.spawn(clients.clone().run(index));
    }
    let stats = join_all("the clients", SOAK_LIMIT, set).await;
    let sent: usize = stats.iter().map(|s| s.requests).sum();
    let connections: usize = stats.iter().map(|s| s.connections).sum();
    let client_time = started.elapsed();
    assert_eq!(sent, REQUESTS, "seed {seed}");

    // Nothing is left: every lifecycle ended, every handler and producer
    // is gone.
    within(&format!("seed {seed}: the drain"), drain.wait()).await;
    assert_eq!(drain.in_flight(), 0, "seed {seed}");
    within(
        &format!("seed {seed}: the handlers and producers to end"),
        live.idle(),
    )
    .await;
    assert_eq!(live.now(), 0, "seed {seed}");

    let strays = recorder.strays();
    assert!(strays.is_empty(), "seed {seed}: strays: {strays:#?}");
    let mut tally = std::collections::BTreeMap::<String, usize>::new();
    for id in 0..REQUESTS {
        let done = check_soak(&recorder, seed, id);
        let plan = Plan::draw(seed, id);
        let leave = match plan.leave {
            Leave::Never => "never",
            Leave::BeforeHead => "before head",
            Leave::AfterFrames(_) => "mid body",
        };
        let saw = lock(&recorder.slot(id).saw).expect("checked");
        *tally
            .entry(format!(
                "left {leave}, client saw {saw:?}: {}, {}",
                done.status(),
                done.phase()
            ))
            .or_default() += 1;
    }
    let rate = REQUESTS as f64 / client_time.as_secs_f64();
    println!(
        "randomized_soak: seed {seed}: {REQUESTS} requests on {connections} connections in \
         {client_time:.2?} ({rate:.0} requests/s), checked in {:.2?}",
        started.elapsed()
    );
    for (outcome, count) in tally {
        println!("  {count:>6}  {outcome}");
    }
}

// ---------------------------------------------------------------------------
// abort_storm_is_bounded

const MAX_DETACHED: usize = 8;
const JOBS: usize = 10 * MAX_DETACHED;
/// Ids of normal requests start here.
const FIRST_NORMAL: usize = JOBS;
/// At most this many normal requests.
const NORMALS: usize = 2_000;
/// Normal requests made while the continued jobs are held, all at once.
const NORMAL_BURST: usize = 16;
/// How long a normal request may take during the storm.
const NORMAL_LIMIT: Duration = Duration::from_secs(2);
const HELLO: &str = "hello";

/// The server side of the storm.
struct Storm {
    recorder: Arc<Recorder>,
    live: Arc<Live>,
    gauge: Arc<Gauge>,
    /// The test holds it closed until the end.
    gate: Arc<Semaphore>,
    /// Ids of the jobs whose handler runs on after its client left.
    continuing: mpsc::UnboundedSender<usize>,
}

impl Storm {
    async fn handle(
        self: Arc<Self>,
        begun: Option<(usize, Lifecycle, Wiring)>,
        running: Running,
    ) -> Result<Response<Body>, Infallible> {
        let _running = running;
        let Some((id, lifecycle, wiring)) = begun else {
            let mut res = Response::new(full("no id".into()));
            *res.status_mut() = StatusCode::BAD_REQUEST;
            return Ok(res);
        };
        if id < JOBS {
            lifecycle.ignore_abort(true);
            if let Some(started) = wiring.started {
                let _ = started.send(lifecycle.clone());
            }
            lifecycle.aborted().await;
            // Still polled after the abort: this request continues. A
            // refused one was dropped at the abort.
            let _inside = self.gauge.enter();
            let _ = self.continuing.send(id);
            drop(self.gate.acquire().await);
        }
        Ok(Response::new(full(HELLO.into())))
    }
}

/// Normal requests, one at a time, on one HTTP/1.1 and one HTTP/2
/// connection in turn, until `stop` turns true (or the recorder's room for
/// them is used up); each must be answered within [`NORMAL_LIMIT`]. Returns
/// how many were made.
async fn normals_meanwhile(
    addr: std::net::SocketAddr,
    next: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) -> usize {
    let mut conns = Vec::new();
    for proto in [Proto::Http1, Proto::Http2] {
        conns.push(within("a connection", Client::connect(addr, proto)).await);
    }
    let mut made = 0;
    // Leaves room in the recorder for the burst.
    while !*stop.borrow_and_update() && made < NORMALS - NORMAL_BURST {
        let id = next.fetch_add(1, Ordering::SeqCst);
        let (client, _) = &mut conns[made % 2];
        normal(client, id).await;
        made += 1;
    }
    made
}

/// One normal request, answered in full within [`NORMAL_LIMIT`].
async fn normal(client: &mut Client, id: usize) {
    bounded(
        &format!("normal request {id} during the storm"),
        NORMAL_LIMIT,
        async {
            let res = client
                .send(request(id))
                .await
                .unwrap_or_else(|err| panic!("normal request {id} failed: {err}"));
            assert_eq!(res.status(), StatusCode::OK, "normal request {id}");
            let body = res.into_body().collect().await.expect("a normal body");
            assert_eq!(body.to_bytes(), HELLO, "normal request {id}");
        },
    )
    .await;
}

fn assert_normal(id: usize, done: &Completion) {
    assert_eq!(
        (done.status(), done.phase()),
        (ConnectionStatus::NORMAL, Phase::Body),
        "normal request {id}: {done:?}"
    );
    assert!(
        !done.continued() && !done.detach_refused(),
        "normal request {id}: {done:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_storm_is_bounded() {
    let (recorder, mut events) = Recorder::new(FIRST_NORMAL + NORMALS);
    let live = Arc::new(Live::default());
    let gauge = Arc::new(Gauge::default());
    let gate = Arc::new(Semaphore::new(0));
    let (continuing_tx, mut continuing_rx) = mpsc::unbounded_channel();
    let layer = recorder.layer().max_detached(MAX_DETACHED);
    let drain = layer.drain();
    let storm = Arc::new(Storm {
        recorder: recorder.clone(),
        live: live.clone(),
        gauge: gauge.clone(),
        gate: gate.clone(),
        continuing: continuing_tx,
    });
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |req: Request<Incoming>| {
            let begun = storm.recorder.begin(&req);
            let running = storm.live.enter();
            storm.clone().handle(begun, running)
        });
    let addr = common::serve(svc).await;

    // Normal requests keep going through the whole storm.
    let next_normal = Arc::new(AtomicUsize::new(FIRST_NORMAL));
    let (stop, stopped) = watch::channel(false);
    let meanwhile = tokio::spawn(normals_meanwhile(addr, next_normal.clone(), stopped));

    // The storm: every client starts a job and leaves once its handler runs.
    let mut set = JoinSet::new();
    for id in 0..JOBS {
        let recorder = recorder.clone();
        set.spawn(async move {
            let proto = if id % 2 == 0 {
                Proto::Http1
            } else {
                Proto::Http2
            };
            let (mut client, conn) = within("a connection", Client::connect(addr, proto)).await;
            let mut wires = recorder.wire(id);
            let lifecycle = {
                let mut call = pin!(client.send(request(id)));
                within("the job's handler to start", async {
                    tokio::select! {
                        biased;
                        started = &mut wires.started => started.expect("the handler started"),
                        res = &mut call => panic!("job {id} was answered: {res:?}"),
                    }
                })
                .await
            };
            // Gone at once: the response future is dropped above, the
            // connection closed here.
            conn.abort();
            drop(client);
            (id, lifecycle)
        });
    }
    let lifecycles = join_all("the storm's clients", common::WAIT, set).await;
    assert_eq!(lifecycles.len(), JOBS);

    // Every job either continues or is refused (its completion comes at
    // once); none completes otherwise while the gate is held.
    let mut refused = BTreeSet::new();
    let mut continuing = BTreeSet::new();
    let mut normal_done = 0;
    within("every job to continue or be refused", async {
        while refused.len() + continuing.len() < JOBS {
            tokio::select! {
                Some((id, done)) = events.recv() => {
                    if id >= FIRST_NORMAL {
                        assert_normal(id, &done);
                        normal_done += 1;
                        continue;
                    }
                    assert!(
                        done.detach_refused(),
                        "job {id} completed while the gate is held without being refused: {done:?}"
                    );
                    assert_eq!(
                        (done.status(), done.phase(), done.continued()),
                        (ConnectionStatus::ABORTED, Phase::Handler, false),
                        "refused job {id}: {done:?}"
                    );
                    assert!(refused.insert(id), "job {id} completed twice");
                }
                Some(id) = continuing_rx.recv() => {
                    assert!(continuing.insert(id), "job {id} continued twice");
                }
            }
        }
    })
    .await;
    assert_eq!(
        (continuing.len(), refused.len()),
        (MAX_DETACHED, JOBS - MAX_DETACHED),
        "(continuing, refused); continuing: {continuing:?}"
    );
    assert!(refused.is_disjoint(&continuing));
    for (id, lifecycle) in &lifecycles {
        assert!(lifecycle.is_aborted(), "job {id}");
    }
    assert_eq!(gauge.now(), MAX_DETACHED);
    assert!(gauge.max() <= MAX_DETACHED, "max {}", gauge.max());

    // The continued jobs hold their slots: a burst of normal requests on
    // fresh connections is still answered, each within the limit.
    let mut set = JoinSet::new();
    for i in 0..NORMAL_BURST {
        let id = next_normal.fetch_add(1, Ordering::SeqCst);
        let proto = if i % 2 == 0 {
            Proto::Http1
        } else {
            Proto::Http2
        };
        set.spawn(async move {
            let (mut client, _conn) = within("a connection", Client::connect(addr, proto)).await;
            normal(&mut client, id).await;
        });
    }
    join_all("the burst of normal requests", common::WAIT, set).await;
    stop.send(true).unwrap();
    let made = bounded("the normal requests to stop", common::WAIT, meanwhile)
        .await
        .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()));
    assert!(made > 0, "no normal request was made during the storm");
    assert_eq!(gauge.now(), MAX_DETACHED, "the held jobs still hold");
    assert!(gauge.max() <= MAX_DETACHED, "max {}", gauge.max());

    // Let the continued jobs finish: each completes once, continued.
    gate.add_permits(JOBS);
    let normals = next_normal.load(Ordering::SeqCst) - FIRST_NORMAL;
    let mut finished = BTreeSet::new();
    within(
        "the continued jobs and normal requests to complete",
        async {
            while finished.len() < MAX_DETACHED || normal_done < normals {
                let (id, done) = events.recv().await.expect("the recorder is alive");
                if id >= FIRST_NORMAL {
                    assert_normal(id, &done);
                    normal_done += 1;
                    continue;
                }
                assert!(
                    continuing.contains(&id),
                    "job {id} completed again: {done:?}"
                );
                assert_eq!(
                    (done.status(), done.phase()),
                    (ConnectionStatus::ABORTED, Phase::Continued),
                    "continued job {id}: {done:?}"
                );
                assert!(
                    done.continued() && !done.detach_refused(),
                    "job {id}: {done:?}"
                );
                assert!(finished.insert(id), "job {id} completed twice");
            }
        },
    )
    .await;

    within("the drain", drain.wait()).await;
    assert_eq!(drain.in_flight(), 0);
    within("the handlers to end", live.idle()).await;
    assert_eq!(gauge.now(), 0);
    assert!(gauge.max() <= MAX_DETACHED, "max {}", gauge.max());
    for id in (0..JOBS).chain(FIRST_NORMAL..FIRST_NORMAL + normals) {
        recorder.ended_once(id, &format!("request {id}"));
    }
    for id in FIRST_NORMAL + normals..FIRST_NORMAL + NORMALS {
        assert_eq!(recorder.slot(id).seen.load(Ordering::SeqCst), 0);
    }
    if let Ok((id, done)) = events.try_recv() {
        panic!("an extra completion for request {id}: {done:?}");
    }
    let strays = recorder.strays();
    assert!(strays.is_empty(), "strays: {strays:#?}");
    println!(
        "abort_storm_is_bounded: {JOBS} jobs, {MAX_DETACHED} continued, {} refused, \
         {normals} normal requests meanwhile",
        refused.len()
    );
}
