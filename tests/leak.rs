//! Leak check: 100,000 aborted requests of every kind (before the head,
//! mid-body, continued under ignore-abort, with sync and async hooks) in a
//! loop. Under a counting global allocator, the live allocations after the
//! loop return to what they were before it; resident memory is reported
//! (`cargo test --test leak -- --nocapture`) and must stay within a small
//! margin.

use std::alloc::System;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::channel::Channel;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_lifecycle::{Lifecycle, LifecycleLayer};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const REQUESTS: usize = 100_000;
const WAIT: Duration = Duration::from_secs(30);

/// Live heap: (allocations, bytes) not yet freed.
fn live() -> (isize, isize) {
    let s = GLOBAL.stats();
    (
        s.allocations as isize - s.deallocations as isize,
        s.bytes_allocated as isize - s.bytes_deallocated as isize + s.bytes_reallocated,
    )
}

fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Polls a future once with a no-op waker.
fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    Pin::new(fut).poll(&mut Context::from_waker(std::task::Waker::noop()))
}

type Svc = tower_lifecycle::LifecycleService<
    tower::util::BoxCloneSyncService<Request<()>, Response<Channel<Bytes, Infallible>>, Infallible>,
>;

fn service(completions: Arc<AtomicUsize>) -> (Svc, tower_lifecycle::Drain) {
    let layer = LifecycleLayer::new().on_complete(move |_| {
        completions.fetch_add(1, Ordering::Relaxed);
    });
    let drain = layer.drain();
    let handler = tower::service_fn(|req: Request<()>| async move {
        let lifecycle = req.extensions().get::<Lifecycle>().unwrap().clone();
        lifecycle.on_shutdown(|_| {});
        lifecycle.on_shutdown_async(|_| async {});
        let kind = req.uri().path().to_owned();
        if kind == "/keep" {
            lifecycle.ignore_abort(true);
        }
        // Wait once, so the request can be aborted before the head.
        tokio::task::yield_now().await;
        let (mut tx, body) = Channel::<Bytes, Infallible>::new(1);
        tokio::spawn(async move {
            for _ in 0..3 {
                if tx.send_data(Bytes::from_static(b"chunk")).await.is_err() {
                    return;
                }
            }
        });
        Ok::<_, Infallible>(Response::new(body))
    });
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(tower::util::BoxCloneSyncService::new(handler));
    (svc, drain)
}

/// One aborted request of kind `i % 3`: before the head, mid-body, or
/// before the head under ignore-abort (the handler runs on in a task).
async fn aborted_request(svc: &mut Svc, i: usize) {
    let path = ["/head", "/body", "/keep"][i % 3];
    let req = Request::get(path).body(()).unwrap();
    let mut fut = Box::pin(svc.ready().await.unwrap().call(req));
    if path == "/body" {
        let response = fut.await.unwrap();
        let mut body = Box::pin(response.into_body());
        // One frame, then the client is gone.
        let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await;
        assert!(frame.is_some());
        drop(body);
    } else {
        assert!(poll_once(&mut fut).is_pending());
        drop(fut);
    }
}

async fn settle(completions: &AtomicUsize, target: usize, drain: &tower_lifecycle::Drain) {
    tokio::time::timeout(WAIT, async {
        while completions.load(Ordering::Relaxed) < target || drain.in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("every lifecycle ends");
}

#[test]
fn aborted_requests_leave_nothing_behind() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let completions = Arc::new(AtomicUsize::new(0));
        let (mut svc, drain) = service(completions.clone());

        // Warm up: lazily built statics, the runtime's buffers.
        for i in 0..3_000 {
            aborted_request(&mut svc, i).await;
        }
        settle(&completions, 3_000, &drain).await;
        let (allocs_before, bytes_before) = live();
        let rss_before = rss_bytes();

        for i in 0..REQUESTS {
            aborted_request(&mut svc, i).await;
        }
        settle(&completions, 3_000 + REQUESTS, &drain).await;
        // Let the tasks that ran the last hooks and producers finish.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }

        let (allocs_after, bytes_after) = live();
        let rss_after = rss_bytes();
        assert_eq!(completions.load(Ordering::Relaxed), 3_000 + REQUESTS, "one completion each");
        println!(
            "after {REQUESTS} aborted requests: live allocations {allocs_before} -> {allocs_after}, \
             live bytes {bytes_before} -> {bytes_after}"
        );
        if let (Some(before), Some(after)) = (rss_before, rss_after) {
            println!(
                "resident memory {} KiB -> {} KiB ({:+} KiB)",
                before / 1024,
                after / 1024,
                (after as i64 - before as i64) / 1024
            );
            assert!(
                after <= before + 4 * 1024 * 1024,
                "resident memory grew by more than 4 MiB: {before} -> {after}"
            );
        }
        // A few allocations may be left in buffers the runtime grew and
        // keeps; nothing may grow with the number of requests.
        assert!(
            allocs_after - allocs_before <= 64,
            "live allocations grew: {allocs_before} -> {allocs_after}"
        );
        assert!(
            bytes_after - bytes_before <= 64 * 1024,
            "live bytes grew: {bytes_before} -> {bytes_after}"
        );
    });
}
