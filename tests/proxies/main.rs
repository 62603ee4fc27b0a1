//! The layer behind the reverse proxies people deploy: Debian's nginx,
//! HAProxy and Caddy, each started by the test on free loopback ports from
//! the config beside this file (`nginx.conf`, `haproxy.cfg`, `Caddyfile`),
//! in front of an axum server with the layer (`backend.rs`), and stopped by
//! its pid at the end. Through each one:
//!
//! - a normal request is `normal`;
//! - a client leaving before the head, and mid-stream, is `aborted` (the
//!   delay from the client's close to the server's hook is printed);
//! - streamed frames and Server-Sent Events arrive one by one (each before
//!   the next is produced);
//! - a time limit's 503 reaches the client;
//! - keep-alive (two requests on one connection) and `Connection: close`
//!   work;
//! - through nginx, gRPC (`grpc_pass` to an h2c upstream): a client's cancel
//!   is `aborted`, a deadline gives the client `DEADLINE_EXCEEDED`.
//!
//! A proxy whose binary is missing is reported `ignored`, with a note on
//! stderr saying what to install; when `CI` is set it fails instead. Run
//! with `cargo test --test proxies -- --nocapture` to see the table the
//! README's "Behind a proxy" section comes from.

mod backend;
mod grpc;
mod proxy;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_lifecycle::{ConnectionStatus, Phase};

use backend::{Backend, FRAMES};
use proxy::{Kind, Proxy};

/// How long the test waits for anything.
const WAIT: Duration = Duration::from_secs(10);

fn main() {
    let args = Arguments::from_args();
    let ci = std::env::var_os("CI").is_some();
    let trials = Kind::ALL
        .into_iter()
        .map(|kind| {
            let missing = !Path::new(kind.binary()).exists();
            if missing && !ci && !args.list {
                eprintln!(
                    "{}_in_front is ignored: {} not found; install Debian's `{}` package to run it",
                    kind.name(),
                    kind.binary(),
                    kind.package()
                );
            }
            Trial::test(format!("{}_in_front", kind.name()), move || run(kind))
                .with_ignored_flag(missing && !ci)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

fn run(kind: Kind) -> Result<(), Failed> {
    if !Path::new(kind.binary()).exists() {
        return Err(format!(
            "{} not found: install Debian's `{}` package",
            kind.binary(),
            kind.package()
        )
        .into());
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("a tokio runtime: {e}"))?
        .block_on(in_front(kind));
    Ok(())
}

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

/// Sends a GET for `path` (with `extra` header lines) on a new connection.
async fn get(addr: SocketAddr, path: &str, extra: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    send(&mut stream, path, extra).await;
    stream
}

async fn send(stream: &mut TcpStream, path: &str, extra: &str) {
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\n{extra}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
}

/// Reads one response with a `content-length` (or to the end of the
/// connection without one): its status, its body, whether the connection
/// was closed after it.
async fn response(stream: &mut TcpStream) -> (u16, String, bool) {
    within("a response", async {
        let mut got = Vec::new();
        let mut buf = [0; 4096];
        let mut closed = false;
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse::<usize>().unwrap());
                if let Some(length) = length {
                    if got.len() >= end + 4 + length {
                        let status = head[9..12].parse().unwrap();
                        let body = String::from_utf8_lossy(&got[end + 4..end + 4 + length]);
                        return (status, body.into_owned(), closed);
                    }
                } else if closed {
                    let status = head[9..12].parse().unwrap();
                    let body = String::from_utf8_lossy(&got[end + 4..]);
                    return (status, body.into_owned(), closed);
                }
            }
            assert!(
                !closed,
                "the connection closed mid-response: {:?}",
                String::from_utf8_lossy(&got)
            );
            let n = stream.read(&mut buf).await.unwrap_or(0);
            closed = n == 0;
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
}

/// Whether the proxy closed the connection (reads to its end).
async fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0; 256];
    matches!(
        tokio::time::timeout(WAIT, stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Reads a stream until `frame {last}` arrived; returns when each frame's
/// text first arrived.
async fn frames(stream: &mut TcpStream, last: usize) -> Vec<Instant> {
    within("the streamed frames", async {
        let mut got = String::new();
        let mut seen = Vec::new();
        let mut buf = [0; 4096];
        while seen.len() <= last {
            let n = stream.read(&mut buf).await.unwrap();
            assert_ne!(n, 0, "the stream ended early: {got:?}");
            let now = Instant::now();
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
            while seen.len() <= last && got.contains(&format!("frame {}\n", seen.len())) {
                seen.push(now);
            }
        }
        seen
    })
    .await
}

/// Whether every frame arrived before the next one was produced.
fn one_by_one(arrived: &[Instant], produced: &[Instant]) -> bool {
    arrived
        .iter()
        .zip(produced.iter().skip(1))
        .all(|(got, next)| got < next)
}

/// How long after the client's close the server's hook said `aborted`, if
/// it did within `bound`.
async fn abort_seen(
    backend: &mut Backend,
    route: &str,
    phase: Phase,
    left: Instant,
    bound: Duration,
) -> Option<Duration> {
    let (done, at) = tokio::time::timeout(bound, backend.ended(route))
        .await
        .ok()?;
    assert_eq!(
        (done.status(), done.phase()),
        (ConnectionStatus::ABORTED, phase),
        "{route}: {done:?}"
    );
    Some(at - left)
}

fn shown(delay: Option<Duration>, bound: Duration) -> String {
    match delay {
        Some(d) => format!("`aborted` after {:.1} ms", d.as_secs_f64() * 1e3),
        None => format!("not seen within {} s", bound.as_secs()),
    }
}

async fn in_front(kind: Kind) {
    // HAProxy without its two options is measured, not held to the rest.
    let strict = kind != Kind::HaproxyDefaults;
    let mut backend = Backend::start().await;
    let grpc = grpc::Backend::start().await;
    let proxy = Proxy::start(kind, backend.addr, grpc.addr);
    let name = kind.name();
    let addr = proxy.addr;

    // A normal request, then a second on the same connection (keep-alive).
    let mut stream = get(addr, "/hello", "").await;
    assert_eq!(
        response(&mut stream).await,
        (200, "hello".into(), false),
        "{name}"
    );
    let (done, _) = backend.ended("hello").await;
    assert_eq!(done.status(), ConnectionStatus::NORMAL, "{name}");
    send(&mut stream, "/hello", "").await;
    assert_eq!(response(&mut stream).await.0, 200, "{name}: keep-alive");
    backend.ended("hello").await;
    // `Connection: close`: answered, then closed.
    let mut stream = get(addr, "/hello", "connection: close\r\n").await;
    let (status, body, _) = response(&mut stream).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "hello"),
        "{name}: connection: close"
    );
    assert!(
        closed(&mut stream).await,
        "{name}: the proxy closes after `connection: close`"
    );
    backend.ended("hello").await;

    // The time limit's 503 reaches the client.
    let mut stream = get(addr, "/limited", "").await;
    assert_eq!(
        response(&mut stream).await.0,
        503,
        "{name}: the time limit's answer"
    );
    let (done, _) = backend.ended("limited").await;
    assert_eq!(done.status(), ConnectionStatus::TIMEOUT, "{name}");

    // Frames, and events, one by one.
    let mut one_by_one_for = async |path: &'static str| {
        let mut stream = get(addr, path, "").await;
        let arrived = frames(&mut stream, FRAMES - 1).await;
        drop(stream);
        backend.ended(&path[1..]).await;
        one_by_one(&arrived, &backend.produced())
    };
    let frames_ok = one_by_one_for("/stream").await;
    let sse_ok = one_by_one_for("/sse").await;
    if strict {
        assert!(
            frames_ok && sse_ok,
            "{name}: frames one by one {frames_ok}, events one by one {sse_ok}"
        );
    }

    // The client leaves before the head...
    let before_bound = if strict { WAIT } else { Duration::from_secs(2) };
    let stream = get(addr, "/slow", "").await;
    backend.started().await;
    let left = Instant::now();
    drop(stream);
    let before_head = abort_seen(&mut backend, "slow", Phase::Handler, left, before_bound).await;
    // ... and mid-stream.
    let mut stream = get(addr, "/sse", "").await;
    frames(&mut stream, 2).await;
    let left = Instant::now();
    drop(stream);
    let mid_stream = abort_seen(&mut backend, "sse", Phase::Body, left, WAIT).await;
    if strict {
        assert!(
            before_head.is_some() && mid_stream.is_some(),
            "{name}: both aborts seen"
        );
    }

    let yes = |ok: bool| if ok { "yes" } else { "no" };
    println!(
        "| {}{} | {} | {} | {} | {} | 503 | yes |",
        kind.version(),
        if strict { "" } else { " (defaults)" },
        yes(frames_ok),
        yes(sse_ok),
        shown(before_head, before_bound),
        shown(mid_stream, WAIT),
    );

    if let Some(grpc_addr) = proxy.grpc_addr {
        grpc::through(grpc, grpc_addr).await;
        println!(
            "| {} gRPC (`grpc_pass`, h2c upstream) | cancel: `aborted`; deadline: `DEADLINE_EXCEEDED` |",
            kind.version()
        );
    }
    drop(proxy);
}
