//! Run with: cargo bench --bench watch
//!
//! The connection watch, measured over real loopback connections (server
//! on a 2-worker runtime, client on the main thread's runtime, one process,
//! one monotonic clock):
//!
//! 1. Detection latency where hyper is blind: an HTTP/1.1 POST whose
//!    handler never reads its 1 MB body; the client sends 100 KB and closes
//!    (FIN), or resets (RST). From just before the client's close to the
//!    layer's `on_complete`, p50/p99/max over `WATCH_N` (1000) aborts each,
//!    interleaved. The same server without the watch is asked too: how many
//!    of 50 such closes it reports as aborted within 2 s.
//! 2. Cost per connection: connect, `GET /` with `Connection: close`, read
//!    to the end; connections per second with and without the watch, in
//!    `ROUNDS` (7) interleaved rounds of 2,000 connections each (order
//!    alternating), median of each and of the per-round ratios.
//!
//! The end-to-end cost per request (wrk, keep-alive) is
//! `A=layer B=watched bash scripts/bench-e2e.sh`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tower::ServiceBuilder;
use tower_lifecycle::watch::Leaving;
use tower_lifecycle::{Completion, ConnectionStatus, LifecycleLayer};

const STEP: Duration = Duration::from_secs(2);
const CONNECTIONS_PER_ROUND: usize = 2_000;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A server under measure.
struct Server {
    addr: SocketAddr,
    /// One message per `/wait` handler that started.
    started: mpsc::UnboundedReceiver<()>,
    /// Every completion, with when it was reported.
    done: mpsc::UnboundedReceiver<(Instant, Completion)>,
}

/// Starts a server on the current runtime: `/wait` never answers (nor
/// reads its body), anything else answers `ok`.
async fn server(watched: bool) -> Server {
    let (tx, done) = mpsc::unbounded_channel();
    let layer = LifecycleLayer::new().on_complete(move |c| {
        let _ = tx.send((Instant::now(), c.clone()));
    });
    let (began, started) = mpsc::unbounded_channel();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |req: Request<Incoming>| {
            let began = began.clone();
            async move {
                if req.uri().path() == "/wait" {
                    let _ = began.send(());
                    std::future::pending::<()>().await;
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        });
    let addr = if watched {
        common::serve_watched(svc, Leaving::FinOrReset).await
    } else {
        common::serve(svc).await
    };
    Server {
        addr,
        started,
        done,
    }
}

const UPLOAD: &[u8] = b"POST /wait HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n";

/// Sends the head and 100 KB of an upload, waits until its handler runs,
/// then leaves; returns when.
async fn leave(server: &mut Server, reset: bool) -> Instant {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(UPLOAD).await.unwrap();
    stream.write_all(&[b'u'; 100_000]).await.unwrap();
    tokio::time::timeout(STEP, server.started.recv())
        .await
        .expect("the handler runs")
        .expect("the server runs");
    if reset {
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
    let left = Instant::now();
    drop(stream);
    left
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

async fn detection(n: usize, watched: &mut Server, plain: &mut Server) {
    let mut fin = Vec::with_capacity(n);
    let mut rst = Vec::with_capacity(n);
    let mut misses = 0;
    for i in 0..n * 2 {
        let reset = i % 2 == 1;
        let left = leave(watched, reset).await;
        match tokio::time::timeout(STEP, watched.done.recv()).await {
            Ok(Some((at, c))) if c.status() == ConnectionStatus::ABORTED => {
                let took = at.saturating_duration_since(left);
                if reset {
                    rst.push(took)
                } else {
                    fin.push(took)
                }
            }
            _ => misses += 1,
        }
    }
    println!("## Detection where hyper is blind: an unread upload, then the client leaves\n");
    println!("{n} aborts of each, interleaved; from the client's close to `on_complete`.\n");
    println!("| how the client leaves | p50 (µs) | p99 (µs) | max (µs) |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, mut v) in [("FIN (close)", fin), ("RST (linger 0)", rst)] {
        v.sort();
        println!(
            "| {name}, watched | {} | {} | {} |",
            us(percentile(&v, 0.5)),
            us(percentile(&v, 0.99)),
            us(*v.last().unwrap())
        );
    }
    println!("\nMisses (no aborted completion within {STEP:?}): {misses}.");

    let mut seen = 0;
    for _ in 0..50 {
        leave(plain, false).await;
    }
    // Anything reported within the step counts.
    let deadline = tokio::time::Instant::now() + STEP;
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, plain.done.recv()).await {
        seen += 1;
    }
    println!("Without the watch: {seen} of 50 such closes reported at all within {STEP:?} (hyper is not reading).\n");
}

async fn connections(addr: SocketAddr, n: usize) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        assert!(got.ends_with(b"ok"));
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn per_connection(rounds: usize, watched: &Server, plain: &Server) {
    let (plain, watched) = (plain.addr, watched.addr);
    connections(plain, 200).await;
    connections(watched, 200).await;
    let (mut a, mut b, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (x, y) = if round % 2 == 0 {
            let x = connections(plain, CONNECTIONS_PER_ROUND).await;
            (x, connections(watched, CONNECTIONS_PER_ROUND).await)
        } else {
            let y = connections(watched, CONNECTIONS_PER_ROUND).await;
            (connections(plain, CONNECTIONS_PER_ROUND).await, y)
        };
        a.push(x);
        b.push(y);
        ratios.push(y / x);
    }
    println!("## Cost per connection: accept, one request, close\n");
    println!("{rounds} interleaved rounds of {CONNECTIONS_PER_ROUND} connections each (debug assertions off, release build).\n");
    println!("| server | connections/s (median) |");
    println!("| --- | ---: |");
    println!("| without the watch | {:.0} |", median(a));
    println!("| watched | {:.0} |", median(b));
    println!(
        "| watched/without, median of per-round ratios | {:.3} |",
        median(ratios)
    );
}

fn main() {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The servers' tasks run on their own runtime; the client on this
    // thread's.
    let mut watched = server_rt.block_on(server(true));
    let mut plain = server_rt.block_on(server(false));
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let n = env_or("WATCH_N", 1000);
    let rounds = env_or("ROUNDS", 7);
    client_rt.block_on(async {
        detection(n, &mut watched, &mut plain).await;
        per_connection(rounds, &watched, &plain).await;
    });
}
