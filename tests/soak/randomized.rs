//! `randomized_soak`: 20,000 seeded requests from 64 clients.

use super::*;

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
    live: Arc<Gauge>,
}

impl Handler for Soak {
    async fn handle(self: Arc<Self>, begun: Begun) -> Response<Body> {
        let Begun {
            id,
            lifecycle,
            wiring,
            running: _running,
        } = begun;
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
                    return res;
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
        Response::new(body)
    }
}

impl Soak {
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
        let proto = if index.is_multiple_of(2) {
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
    let live = Arc::new(Gauge::default());
    let layer = recorder.layer().max_detached(CLIENTS);
    let drain = layer.drain();
    let soak = Arc::new(Soak {
        seed,
        recorder: recorder.clone(),
        live: live.clone(),
    });
    let addr = serve(layer, recorder.clone(), live.clone(), soak).await;

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
