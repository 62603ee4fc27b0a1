//! Heap allocations per request added by `LifecycleLayer` (count and bytes),
//! next to no layer, tower-http's `OnEarlyDropLayer` and `TimeoutLayer`, and
//! `TraceLayer` for scale; plus the sizes of the layer's per-request types.
//!
//! A counting global allocator (`stats_alloc`, which wraps the system
//! allocator and counts with atomics) sees every allocation. Each
//! configuration serves the same hello-world handler through `oneshot`,
//! body collected, on a current-thread tokio runtime: after a warm-up, the
//! counts are averaged over many requests. Reallocations count as
//! allocations (there are none on these paths).
//!
//! Run with:
//!
//! ```text
//! cargo bench --bench allocations
//! ```

mod support;

use support::{call, each_config, hello, Benched, Configs};

use std::alloc::System;
use std::fmt::Debug;
use std::hint::black_box;
use std::mem::size_of;

use bytes::Bytes;
use http::Request;
use http_body::Body;
use http_body_util::Full;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tokio::runtime::Runtime;
use tower::{Service, ServiceBuilder};
use tower_lifecycle::{Lifecycle, LifecycleBody, LifecycleLayer, ResponseFuture};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const WARM_UP: usize = 1_000;
const REQUESTS: usize = 10_000;

/// Allocations (count, bytes) per request of one configuration.
struct Row {
    name: &'static str,
    allocs: f64,
    bytes: f64,
}

/// Measures each configuration into a row.
struct Rows<'a> {
    rt: &'a Runtime,
    rows: Vec<Row>,
}

impl Configs for Rows<'_> {
    fn config<S, B>(&mut self, name: &'static str, svc: S)
    where
        S: Benched<B>,
        B: Body<Error: Debug>,
    {
        let row = self.rt.block_on(async {
            assert_eq!(call(&svc).await, "hello world", "{name}");
            for _ in 0..WARM_UP {
                black_box(call(&svc).await);
            }
            let region = Region::new(GLOBAL);
            for _ in 0..REQUESTS {
                black_box(call(&svc).await);
            }
            let change = region.change();
            Row {
                name,
                allocs: (change.allocations + change.reallocations) as f64 / REQUESTS as f64,
                bytes: change.bytes_allocated as f64 / REQUESTS as f64,
            }
        });
        self.rows.push(row);
    }
}

fn future_size<S: Service<Request<()>>>(_: &S) -> usize {
    size_of::<S::Future>()
}

fn response_future_size<S, F>(_: &S) -> usize
where
    S: Service<Request<()>, Future = ResponseFuture<F>>,
{
    size_of::<ResponseFuture<F>>()
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut rows = Rows {
        rt: &rt,
        rows: Vec::new(),
    };
    each_config(&mut rows);
    let rows = rows.rows;

    println!("## Allocations per request ({REQUESTS} requests after {WARM_UP} warm-up)\n");
    println!("| config | allocs/request | bytes/request | allocs over bare |");
    println!("| --- | ---: | ---: | ---: |");
    let bare = &rows[0];
    for row in &rows {
        println!(
            "| {} | {:.2} | {:.1} | {:+.2} |",
            row.name,
            row.allocs,
            row.bytes,
            row.allocs - bare.allocs
        );
    }
    let by_name = |name: &str| rows.iter().find(|row| row.name == name).unwrap();

    // The first value inserted into a request's extensions creates its map.
    let mut extensions = http::Extensions::new();
    let region = Region::new(GLOBAL);
    extensions.insert(0_usize);
    let insert = region.change();
    drop(black_box(extensions));

    let hello_future = future_size(&ServiceBuilder::new().service_fn(hello));
    let layered = ServiceBuilder::new()
        .layer(LifecycleLayer::new())
        .service_fn(hello);
    let layer_added = by_name("lifecycle_default").bytes - bare.bytes;
    // The handler's future is boxed whatever the settings.
    let boxed_future = hello_future as f64;
    let insert_bytes = insert.bytes_allocated as f64;

    println!("\n## Sizes\n");
    println!(
        "- first insert into a fresh `http::Extensions` (an 8-byte value): {} allocations, {} bytes",
        insert.allocations + insert.reallocations,
        insert.bytes_allocated
    );
    println!(
        "- `size_of::<Lifecycle>()`: {} bytes",
        size_of::<Lifecycle>()
    );
    println!("- the hello-world handler's future: {hello_future} bytes");
    println!(
        "- `ResponseFuture` of the hello-world future: {} bytes",
        response_future_size(&layered)
    );
    println!(
        "- `Full<Bytes>`: {} bytes; `LifecycleBody<Full<Bytes>>`: {} bytes",
        size_of::<Full<Bytes>>(),
        size_of::<LifecycleBody<Full<Bytes>>>()
    );
    println!(
        "- bytes allocated per request by `lifecycle_default` minus `bare`: {layer_added:.1} \
         (the extensions map with the `Lifecycle` in it, the boxed handler future; the \
         per-request state is reused from the thread's spare states)"
    );
    println!("  - of which the first extensions insert (measured above): {insert_bytes:.1}");
    println!("  - of which the boxed handler future (its size): {boxed_future:.1}");
    println!(
        "  - left (a new per-request state, when no spare was at hand): {:.1}",
        layer_added - boxed_future - insert_bytes
    );
}
