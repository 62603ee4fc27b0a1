//! No descriptor outlives its connection: 10,000 watched connections
//! opened and closed (half of them with a request in flight whose client
//! leaves), every request's lifecycle and watch kept alive, then the process holds
//! as many descriptors as before. A process
//! of its own, since every other test opens descriptors too.

#[path = "common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tower::ServiceBuilder;
use tower_lifecycle::watch::{ConnectionWatch, Leaving};
use tower_lifecycle::{ConnectionStatus, Lifecycle, LifecycleLayer};

const CONNECTIONS: usize = 10_000;
const AT_ONCE: usize = 16;
/// Clients of the last connections that keep their socket open after the
/// server closed theirs.
const HELD: usize = 200;

/// The descriptors this process holds now.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd lists this process's descriptors")
        .count()
}

/// What one request leaves behind: its lifecycle and its connection's watch.
type Handles = (Option<Lifecycle>, Option<ConnectionWatch>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(target_os = "linux"), ignore = "counts /proc/self/fd")]
async fn ten_thousand_watched_connections_leave_no_descriptor_behind() {
    let (tx, mut completions) = tokio::sync::mpsc::unbounded_channel();
    let layer = LifecycleLayer::new().on_complete(move |c| {
        let _ = tx.send(c.status());
    });
    // Every request's lifecycle and its connection's watch are kept to the
    // end of the test: a handle must not keep a socket open.
    let kept: Arc<Mutex<Vec<Handles>>> = Arc::default();
    let keep = kept.clone();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |req: Request<Incoming>| {
            let extensions = req.extensions();
            keep.lock().unwrap().push((
                extensions.get::<Lifecycle>().cloned(),
                extensions.get::<ConnectionWatch>().cloned(),
            ));
            async move {
                let body = if req.uri().path() == "/wait" {
                    // A head, then a body that never comes.
                    StreamBody::new(futures_util::stream::pending()).boxed()
                } else {
                    Full::new(Bytes::from_static(b"ok")).boxed()
                };
                Ok::<_, Infallible>(Response::new(body))
            }
        });
    let addr = common::serve_watched(svc, Leaving::FinOrReset).await;
    // One connection first, so that lazily made runtime descriptors exist.
    let mut warm = TcpStream::connect(addr).await.unwrap();
    warm.write_all(b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    warm.read_to_end(&mut sink).await.unwrap();
    drop(warm);
    assert_eq!(completions.recv().await, Some(ConnectionStatus::NORMAL));
    let before = open_fds();

    let mut set = JoinSet::new();
    for worker in 0..AT_ONCE {
        set.spawn(async move {
            let mut held = Vec::new();
            for i in (worker..CONNECTIONS).step_by(AT_ONCE) {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                if i % 2 == 0 {
                    stream
                        .write_all(b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                        .await
                        .unwrap();
                    let mut got = Vec::new();
                    stream.read_to_end(&mut got).await.unwrap();
                    assert!(got.ends_with(b"ok"));
                    if i >= CONNECTIONS - HELD {
                        // The server closed; this client does not yet.
                        held.push(stream);
                    }
                } else {
                    // Leaves once the head arrived, the body still to come.
                    stream
                        .write_all(b"GET /wait HTTP/1.1\r\nhost: x\r\n\r\n")
                        .await
                        .unwrap();
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        let mut byte = [0];
                        assert_eq!(stream.read(&mut byte).await.unwrap(), 1);
                        head.push(byte[0]);
                    }
                }
            }
            held
        });
    }
    let held: Vec<TcpStream> = common::within("the clients", async {
        let mut held = Vec::new();
        while let Some(done) = set.join_next().await {
            held.extend(done.unwrap());
        }
        held
    })
    .await;
    assert!(!held.is_empty());
    let (mut normal, mut aborted) = (0, 0);
    tokio::time::timeout(Duration::from_secs(30), async {
        while normal + aborted < CONNECTIONS {
            match completions.recv().await {
                Some(ConnectionStatus::NORMAL) => normal += 1,
                Some(ConnectionStatus::ABORTED) => aborted += 1,
                other => panic!("unexpected completion {other:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{normal} normal and {aborted} aborted completions only"));
    assert_eq!((normal, aborted), (CONNECTIONS / 2, CONNECTIONS / 2));

    // The watchers close their duplicates as their connections end, even
    // where the client has not closed yet: wait for the count to come back
    // to what it was, plus the clients' own held sockets.
    let expected = before + held.len();
    let after = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let now = open_fds();
            if now <= expected {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "descriptors: {before} before, {} after, {} of them held by clients",
            open_fds(),
            held.len()
        )
    });
    eprintln!(
        "descriptors: {before} before, {after} after {CONNECTIONS} connections ({} held by clients)",
        held.len()
    );
    assert!(after <= expected);
    assert_eq!(
        kept.lock().unwrap().len(),
        CONNECTIONS + 1,
        "every lifecycle kept"
    );
}
