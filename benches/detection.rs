//! Run with: cargo bench --bench detection
//!
//! (`DETECTION_N=5000 cargo bench --bench detection` for more aborts per
//! scenario; the default is 1000.)
//!
//! Abort detection latency over real loopback connections: the time from
//! the client's close or stream reset to the layer's `on_complete` hook
//! running, for four ways of leaving:
//!
//! 1. HTTP/1.1, before the head: a raw `TcpStream` sends a request whose
//!    handler never answers, then the socket is dropped (FIN).
//! 2. HTTP/1.1, mid-body: a raw `TcpStream` reads the first chunk of a
//!    streamed body (an `http_body_util` channel the handler keeps open),
//!    then the socket is dropped.
//! 3. HTTP/2, before the head: the hyper HTTP/2 client's request future is
//!    dropped while the handler is pending (RST_STREAM).
//! 4. HTTP/2, mid-body: the client reads one data frame, then drops the
//!    body (RST_STREAM). Both HTTP/2 scenarios share one connection.
//!
//! The server (a hyper-util auto server on a 2-worker multi-threaded
//! runtime) and the client (a current-thread runtime on the main thread)
//! run in the same process, so both timestamps come from the same
//! monotonic clock. Each request carries an id in an `x-bench-id` header;
//! the handler registers an `on_shutdown` hook that leaves the id in a
//! thread-local, and the layer's `on_complete` (which runs right after the
//! request's hooks, on the same thread) reads `Instant::now()` first, then
//! takes the id. The client reads `Instant::now()` just before it drops the
//! socket, the request future or the body.
//!
//! Every wait is bounded: a step that takes longer than two seconds counts
//! as a miss and the iteration is skipped; a scenario with too many misses
//! is abandoned. The scenarios are interleaved (one abort of each per
//! round), so background load spreads over all of them alike.

#[path = "../tests/common/mod.rs"]
mod common;

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::channel::Channel;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tower::ServiceBuilder;
use tower_lifecycle::{ConnectionStatus, Lifecycle, LifecycleLayer, Phase};

/// Aborts per scenario unless `DETECTION_N` says otherwise.
const DEFAULT_N: usize = 1000;
/// Uncounted rounds before the measured ones.
const WARMUP: usize = 50;
/// The longest any single step may take before the iteration is a miss.
const STEP: Duration = Duration::from_secs(2);
/// A scenario is abandoned after this many misses.
const MAX_MISSES: usize = 20;
/// The goal the p99 is reported against.
const GOAL: Duration = Duration::from_millis(2);
/// How long the handler keeps a streamed body open at most.
const BODY_OPEN: Duration = Duration::from_secs(10);

/// The header carrying a request's id.
const ID_HEADER: &str = "x-bench-id";
/// Never answers.
const PENDING: &str = "/pending";
/// Answers with a streamed body: [`FIRST`], then nothing until the client
/// leaves.
const STREAM: &str = "/stream";
/// The first (and only) chunk of a streamed body.
const FIRST: &[u8] = b"first-chunk-of-the-streamed-body";

thread_local! {
    /// The id of the request whose hooks are running on this thread, left
    /// by its `on_shutdown` hook for the layer's `on_complete`.
    static CURRENT: Cell<Option<u64>> = const { Cell::new(None) };
}

/// What `on_complete` reports.
#[derive(Debug)]
struct Hooked {
    at: Instant,
    id: Option<u64>,
    status: ConnectionStatus,
    phase: Phase,
}

/// The server's lines to the client side.
#[derive(Clone)]
struct Probe {
    /// The ids of handlers that started.
    running: mpsc::UnboundedSender<u64>,
}

/// The handler: registers the id-keeping hook, reports it runs, then
/// answers according to the path.
async fn handle(
    probe: Probe,
    req: Request<Incoming>,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let id = req
        .headers()
        .get(ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let lifecycle = req
        .extensions()
        .get::<Lifecycle>()
        .expect("the layer inserts a Lifecycle")
        .clone();
    lifecycle.on_shutdown(move |_| CURRENT.with(|c| c.set(id)));
    if let Some(id) = id {
        let _ = probe.running.send(id);
    }
    let body = match req.uri().path() {
        PENDING => std::future::pending().await,
        STREAM => {
            let (mut tx, body) = Channel::<Bytes, Infallible>::new(1);
            let aborted = lifecycle.aborted();
            tokio::spawn(async move {
                if tx.send_data(Bytes::from_static(FIRST)).await.is_ok() {
                    // Keep the body open (pending) until the client left,
                    // bounded so nothing outlives a broken run.
                    let _ = tokio::time::timeout(BODY_OPEN, aborted).await;
                }
                drop(tx);
            });
            body.boxed()
        }
        _ => Full::from("hello").boxed(),
    };
    Ok(Response::new(body))
}

/// Starts the server on `rt`: the layer with an `on_complete` that reports
/// into `hooked`, served by hyper-util's auto builder on 127.0.0.1:0.
fn start_server(
    rt: &tokio::runtime::Runtime,
    probe: Probe,
    hooked: mpsc::UnboundedSender<Hooked>,
) -> SocketAddr {
    let layer = LifecycleLayer::new().on_complete(move |done| {
        let at = Instant::now();
        let id = CURRENT.with(|c| c.take());
        let _ = hooked.send(Hooked {
            at,
            id,
            status: done.status(),
            phase: done.phase(),
        });
    });
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |req| handle(probe.clone(), req));
    rt.block_on(async move { common::serve(svc).await })
}

/// The four ways of leaving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Http1BeforeHead,
    Http1MidBody,
    Http2BeforeHead,
    Http2MidBody,
}

const SCENARIOS: [Scenario; 4] = [
    Scenario::Http1BeforeHead,
    Scenario::Http1MidBody,
    Scenario::Http2BeforeHead,
    Scenario::Http2MidBody,
];

impl Scenario {
    fn label(self) -> &'static str {
        match self {
            Scenario::Http1BeforeHead => "HTTP/1.1 close before the head",
            Scenario::Http1MidBody => "HTTP/1.1 close mid-body",
            Scenario::Http2BeforeHead => "HTTP/2 reset before the head",
            Scenario::Http2MidBody => "HTTP/2 reset mid-body",
        }
    }

    /// The phase the hook must report.
    fn phase(self) -> Phase {
        match self {
            Scenario::Http1BeforeHead | Scenario::Http2BeforeHead => Phase::Handler,
            Scenario::Http1MidBody | Scenario::Http2MidBody => Phase::Body,
        }
    }
}

/// One scenario's results.
#[derive(Default)]
struct Results {
    samples: Vec<Duration>,
    /// Iterations where a step timed out or failed.
    misses: usize,
    /// Hooks that reported another status or phase than expected.
    wrong: usize,
    /// Why the last miss happened.
    last_miss: Option<String>,
}

/// Why an iteration produced no sample.
type Miss = String;

/// Awaits `fut` for at most [`STEP`].
async fn step<T>(what: &str, fut: impl Future<Output = T>) -> Result<T, Miss> {
    tokio::time::timeout(STEP, fut)
        .await
        .map_err(|_| format!("timed out waiting for {what}"))
}

/// The client side: the receiving ends of the probe and the hook, and the
/// shared HTTP/2 connection.
struct Client {
    addr: SocketAddr,
    running: mpsc::UnboundedReceiver<u64>,
    hooked: mpsc::UnboundedReceiver<Hooked>,
    h2: Option<SendRequest<Empty<Bytes>>>,
    next_id: u64,
}

impl Client {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Waits until the handler of request `id` runs (skipping stale ids).
    async fn handler_running(&mut self, id: u64) -> Result<(), Miss> {
        step("the handler to run", async {
            while let Some(got) = self.running.recv().await {
                if got == id {
                    return Ok(());
                }
            }
            Err("the server is gone".to_string())
        })
        .await?
    }

    /// Waits for the hook of request `id` (skipping stale reports).
    async fn hook(&mut self, id: u64) -> Result<Hooked, Miss> {
        step("the hook", async {
            while let Some(h) = self.hooked.recv().await {
                if h.id == Some(id) {
                    return Ok(h);
                }
            }
            Err("the server is gone".to_string())
        })
        .await?
    }

    /// The shared HTTP/2 connection, opened on first use (or after a miss).
    async fn h2(&mut self) -> Result<&mut SendRequest<Empty<Bytes>>, Miss> {
        if self.h2.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = step("the connection", TcpStream::connect(self.addr))
                .await?
                .map_err(|e| format!("connect: {e}"))?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            let (send, conn) = step(
                "the HTTP/2 handshake",
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)),
            )
            .await?
            .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            self.h2 = Some(send);
        }
        let send = self.h2.as_mut().expect("just set");
        step("the HTTP/2 connection to be ready", send.ready())
            .await?
            .map_err(|e| format!("not ready: {e}"))?;
        Ok(send)
    }

    /// Opens a raw HTTP/1.1 connection and writes a GET for `path`.
    async fn h1_request(&mut self, path: &str, id: u64) -> Result<TcpStream, Miss> {
        let mut stream = step("the connection", TcpStream::connect(self.addr))
            .await?
            .map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let head = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{ID_HEADER}: {id}\r\n\r\n");
        step(
            "the request to be written",
            stream.write_all(head.as_bytes()),
        )
        .await?
        .map_err(|e| format!("write: {e}"))?;
        Ok(stream)
    }

    /// Runs one abort of `scenario`; returns when the client left and the
    /// hook ran.
    async fn run(&mut self, scenario: Scenario) -> Result<(Instant, Hooked), Miss> {
        let id = self.id();
        let left = match scenario {
            Scenario::Http1BeforeHead => {
                let stream = self.h1_request(PENDING, id).await?;
                self.handler_running(id).await?;
                let left = Instant::now();
                drop(stream);
                left
            }
            Scenario::Http1MidBody => {
                let mut stream = self.h1_request(STREAM, id).await?;
                let mut got = Vec::with_capacity(1024);
                step("the first chunk", async {
                    let mut buf = [0u8; 1024];
                    while !got.windows(FIRST.len()).any(|w| w == FIRST) {
                        match stream.read(&mut buf).await {
                            Ok(0) => return Err("the server closed".to_string()),
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                            Err(e) => return Err(format!("read: {e}")),
                        }
                    }
                    Ok(())
                })
                .await??;
                let left = Instant::now();
                drop(stream);
                left
            }
            Scenario::Http2BeforeHead => {
                let req = request(PENDING, id);
                let send = self.h2().await?;
                // Boxed, so that dropping it below really drops the future.
                let mut response = Box::pin(send.send_request(req));
                let running = step("the handler to run", async {
                    tokio::select! {
                        res = &mut response => Err(format!("the pending handler answered: {res:?}")),
                        id_ok = async {
                            while let Some(got) = self.running.recv().await {
                                if got == id {
                                    return Ok(());
                                }
                            }
                            Err("the server is gone".to_string())
                        } => id_ok,
                    }
                })
                .await;
                running??;
                let left = Instant::now();
                drop(response);
                left
            }
            Scenario::Http2MidBody => {
                let req = request(STREAM, id);
                let send = self.h2().await?;
                let res = step("the response head", send.send_request(req))
                    .await?
                    .map_err(|e| format!("request: {e}"))?;
                let mut body = res.into_body();
                loop {
                    let frame = step("a body frame", body.frame())
                        .await?
                        .ok_or("the body ended")?
                        .map_err(|e| format!("body: {e}"))?;
                    if frame.is_data() {
                        break;
                    }
                }
                let left = Instant::now();
                drop(body);
                left
            }
        };
        let hooked = self.hook(id).await?;
        Ok((left, hooked))
    }
}

/// A GET with an id, for the HTTP/2 client.
fn request(path: &str, id: u64) -> Request<Empty<Bytes>> {
    Request::get(format!("http://127.0.0.1{path}"))
        .header(ID_HEADER, id)
        .body(Empty::new())
        .expect("valid request")
}

/// The nearest-rank percentile `p` (0..=100) of sorted `samples`.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn micros(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn main() {
    let n = match std::env::var("DETECTION_N") {
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or_else(|| panic!("DETECTION_N must be a positive integer, got {v:?}")),
        Err(_) => DEFAULT_N,
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("server runtime");
    let (running_tx, running) = mpsc::unbounded_channel();
    let (hooked_tx, hooked) = mpsc::unbounded_channel();
    let addr = start_server(
        &server_rt,
        Probe {
            running: running_tx,
        },
        hooked_tx,
    );

    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let mut client = Client {
        addr,
        running,
        hooked,
        h2: None,
        next_id: 0,
    };
    let mut results: Vec<Results> = SCENARIOS.iter().map(|_| Results::default()).collect();

    eprintln!(
        "detection: {n} aborts per scenario (+{WARMUP} warm-up), {cores} cores, \
         server on a 2-worker runtime, client on the main thread"
    );
    let started = Instant::now();
    client_rt.block_on(async {
        for round in 0..WARMUP + n {
            for (scenario, results) in SCENARIOS.iter().zip(results.iter_mut()) {
                if results.misses >= MAX_MISSES {
                    continue;
                }
                match client.run(*scenario).await {
                    Ok((left, hooked)) => {
                        if hooked.status != ConnectionStatus::ABORTED
                            || hooked.phase != scenario.phase()
                        {
                            results.wrong += 1;
                        }
                        if round >= WARMUP {
                            results
                                .samples
                                .push(hooked.at.saturating_duration_since(left));
                        }
                    }
                    Err(miss) => {
                        results.misses += 1;
                        results.last_miss = Some(miss);
                        // Start the HTTP/2 scenarios afresh after a miss.
                        client.h2 = None;
                    }
                }
            }
        }
    });
    let took = started.elapsed();
    drop(client);
    server_rt.shutdown_timeout(Duration::from_secs(1));

    println!();
    println!(
        "Abort detection latency: client close / stream reset -> `on_complete` running \
         ({n} aborts per scenario after {WARMUP} warm-up rounds, {cores} cores, {:.1} s)",
        took.as_secs_f64()
    );
    println!();
    println!(
        "| scenario | samples | misses | wrong status/phase | p50 (µs) | p99 (µs) | max (µs) | > 2 ms | p99 ≤ 2 ms |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |");
    let mut all_ok = true;
    for (scenario, results) in SCENARIOS.iter().zip(results.iter_mut()) {
        results.samples.sort();
        let s = &results.samples;
        let (p50, p99, max, ok) = if s.is_empty() {
            ("-".into(), "-".into(), "-".into(), false)
        } else {
            let p99 = percentile(s, 99.0);
            (
                micros(percentile(s, 50.0)),
                micros(p99),
                micros(*s.last().expect("not empty")),
                p99 <= GOAL,
            )
        };
        all_ok &= ok && results.misses == 0 && results.wrong == 0;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            scenario.label(),
            s.len(),
            results.misses,
            results.wrong,
            p50,
            p99,
            max,
            s.iter().filter(|&&d| d > GOAL).count(),
            if ok { "yes" } else { "no" },
        );
    }
    println!();
    for (scenario, results) in SCENARIOS.iter().zip(results.iter()) {
        if let Some(miss) = &results.last_miss {
            println!(
                "- {}: {} misses, the last: {miss}",
                scenario.label(),
                results.misses
            );
        }
    }
    println!(
        "Goal p99 ≤ {} ms: {}",
        GOAL.as_millis(),
        if all_ok { "met" } else { "NOT met" }
    );
}
