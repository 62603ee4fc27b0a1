//! Memory held per in-flight request with `LifecycleLayer`, against no
//! layer: 10,000 requests whose handlers are parked on a future that never
//! resolves (each response future polled once, then kept in a `Vec`).
//!
//! Two figures per configuration: resident memory (`VmRSS` from
//! `/proc/self/status`) and live heap bytes (a counting global allocator,
//! `stats_alloc`), both before and after creating the requests. Each
//! configuration runs in a fresh process (this binary re-executes itself
//! with `--child NAME`) so that no configuration reuses memory another one
//! freed; each is run three times and the median is reported.
//!
//! Run with (Linux):
//!
//! ```text
//! cargo bench --bench memory
//! ```

use std::alloc::System;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::process::Command;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{Service, ServiceBuilder};
use tower_http::on_early_drop::OnEarlyDropLayer;
use tower_http::timeout::TimeoutLayer;
use tower_lifecycle::LifecycleLayer;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const IN_FLIGHT: usize = 10_000;
const RUNS: usize = 3;
const LIMIT: Duration = Duration::from_secs(30);

const CONFIGS: [&str; 5] = [
    "bare",
    "lifecycle_default",
    "lifecycle_no_detach",
    "lifecycle_time_limit",
    "tower_http_early_drop_plus_timeout",
];

/// A handler that holds its request and never answers.
async fn parked(req: Request<()>) -> Result<Response<Full<Bytes>>, Infallible> {
    let _req = req;
    std::future::pending().await
}

/// Resident memory now, in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<usize>()
                .ok()
        })
        .expect("a VmRSS line");
    kb * 1024
}

/// Bytes currently allocated on the heap.
fn heap() -> usize {
    let stats = GLOBAL.stats();
    // Reallocations are counted in both as they grow or shrink a block.
    stats.bytes_allocated - stats.bytes_deallocated
}

/// Starts `IN_FLIGHT` requests on `svc`, polls each once, keeps them all;
/// returns the growth of (RSS, live heap) in bytes.
fn hold<S>(mut svc: S) -> (usize, usize)
where
    S: Service<Request<()>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = rt.enter();
    let mut cx = Context::from_waker(Waker::noop());
    let mut held: Vec<Pin<Box<S::Future>>> = Vec::with_capacity(IN_FLIGHT);
    let mut start = |svc: &mut S| {
        assert!(svc.poll_ready(&mut cx).is_ready());
        let mut future = Box::pin(svc.call(Request::new(())));
        assert!(matches!(future.as_mut().poll(&mut cx), Poll::Pending));
        future
    };
    // Warm up: first-use allocations (tracing callsites, the timer wheel).
    drop(start(&mut svc));
    let (rss_before, heap_before) = (rss(), heap());
    for _ in 0..IN_FLIGHT {
        held.push(start(&mut svc));
    }
    let grown = (rss() - rss_before, heap() - heap_before);
    // Leave without dropping 10,000 lifecycles one by one.
    std::mem::forget(held);
    grown
}

fn child(name: &str) -> (usize, usize) {
    let svc = ServiceBuilder::new();
    match name {
        "bare" => hold(svc.service_fn(parked)),
        "lifecycle_default" => hold(svc.layer(LifecycleLayer::new()).service_fn(parked)),
        "lifecycle_no_detach" => hold(
            svc.layer(LifecycleLayer::new().max_detached(0))
                .service_fn(parked),
        ),
        "lifecycle_time_limit" => hold(
            svc.layer(LifecycleLayer::new().time_limit(LIMIT))
                .service_fn(parked),
        ),
        "tower_http_early_drop_plus_timeout" => hold(
            svc.layer(OnEarlyDropLayer::builder().on_future_drop(|_: &Request<()>| || {}))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    LIMIT,
                ))
                .service_fn(parked),
        ),
        other => panic!("unknown configuration {other}"),
    }
}

fn median(mut values: Vec<usize>) -> usize {
    values.sort_unstable();
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|arg| arg == "--child") {
        let (rss, heap) = child(&args[i + 1]);
        println!("{rss} {heap}");
        return;
    }

    let exe = std::env::current_exe().expect("the path of this binary");
    let measure = |name: &str| {
        let (mut rss, mut heap) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let out = Command::new(&exe)
                .args(["--child", name])
                .output()
                .expect("re-executing this binary");
            assert!(out.status.success(), "{name}: {out:?}");
            let out = String::from_utf8(out.stdout).unwrap();
            let mut fields = out.split_whitespace().map(|f| f.parse::<usize>().unwrap());
            rss.push(fields.next().unwrap());
            heap.push(fields.next().unwrap());
        }
        (median(rss), median(heap))
    };
    let rows: Vec<(&str, usize, usize)> = CONFIGS
        .iter()
        .map(|&name| {
            let (rss, heap) = measure(name);
            (name, rss, heap)
        })
        .collect();

    let per = |bytes: usize| bytes as f64 / IN_FLIGHT as f64;
    let (_, bare_rss, bare_heap) = rows[0];
    println!(
        "## Memory per in-flight request ({IN_FLIGHT} parked requests, median of {RUNS} processes)\n"
    );
    println!(
        "| config | RSS bytes/request | heap bytes/request | RSS over bare | heap over bare |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, rss, heap) in rows {
        println!(
            "| {name} | {:.0} | {:.0} | {:+.0} | {:+.0} |",
            per(rss),
            per(heap),
            per(rss) - per(bare_rss),
            per(heap) - per(bare_heap),
        );
    }
}
