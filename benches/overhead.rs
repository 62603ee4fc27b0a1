//! Time per request added by `LifecycleLayer`, side by side with no layer,
//! with tower-http's `OnEarlyDropLayer` and `TimeoutLayer` (the closest
//! alternatives) and with `TraceLayer` for scale.
//!
//! Every configuration serves the same hello-world handler (`Request<()>`
//! in, `Response<Full<Bytes>>` with "hello world" out), called with
//! `ServiceBuilder` + `oneshot` on a current-thread tokio runtime, the body
//! collected. The handler is ready on its first poll, so this measures the
//! layer's fixed cost per request; nothing here waits on a timer.
//!
//! Run with:
//!
//! ```text
//! cargo bench --bench overhead -- --warm-up-time 1 --measurement-time 3
//! ```

mod support;

use support::{call, early_drop, hello, hello_with_hook, timeout, LIMIT};

use std::fmt::Debug;

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use http::{Request, Response};
use http_body::Body;
use http_body_util::Empty;
use tokio::runtime::Runtime;
use tower::{Service, ServiceBuilder};
use tower_http::trace::TraceLayer;
use tower_lifecycle::LifecycleLayer;

fn bench<S, B>(group: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, name: &str, svc: S)
where
    S: Service<Request<()>, Response = Response<B>> + Clone,
    S::Error: Debug,
    B: Body,
    B::Error: Debug,
{
    // Check once that the configuration answers what the handler said.
    assert_eq!(rt.block_on(call(&svc)), "hello world", "{name}");
    group.bench_function(name, |b| b.to_async(rt).iter(|| call(&svc)));
}

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("overhead");

    bench(
        &mut group,
        &rt,
        "bare",
        ServiceBuilder::new().service_fn(hello),
    );
    bench(
        &mut group,
        &rt,
        "lifecycle_default",
        ServiceBuilder::new()
            .layer(LifecycleLayer::new())
            .service_fn(hello),
    );
    bench(
        &mut group,
        &rt,
        "lifecycle_hook",
        ServiceBuilder::new()
            .layer(LifecycleLayer::new())
            .service_fn(hello_with_hook),
    );
    bench(
        &mut group,
        &rt,
        "lifecycle_time_limit",
        ServiceBuilder::new()
            .layer(LifecycleLayer::new().time_limit(LIMIT))
            .service_fn(hello),
    );
    bench(
        &mut group,
        &rt,
        "lifecycle_ignore_abort",
        ServiceBuilder::new()
            .layer(LifecycleLayer::new().ignore_abort(true))
            .service_fn(hello),
    );
    bench(
        &mut group,
        &rt,
        "lifecycle_full",
        ServiceBuilder::new()
            .layer(LifecycleLayer::new().time_limit(LIMIT).ignore_abort(true))
            .service_fn(hello_with_hook),
    );
    bench(
        &mut group,
        &rt,
        "lifecycle_no_detach",
        ServiceBuilder::new()
            .layer(LifecycleLayer::new().max_detached(0))
            .service_fn(hello),
    );
    bench(
        &mut group,
        &rt,
        "tower_http_early_drop",
        ServiceBuilder::new().layer(early_drop()).service_fn(hello),
    );
    bench(
        &mut group,
        &rt,
        "tower_http_timeout",
        ServiceBuilder::new().layer(timeout()).service_fn(hello),
    );
    bench(
        &mut group,
        &rt,
        "tower_http_early_drop_plus_timeout",
        ServiceBuilder::new()
            .layer(early_drop())
            .layer(timeout())
            .service_fn(hello),
    );
    bench(
        &mut group,
        &rt,
        "tower_http_trace",
        ServiceBuilder::new()
            // `TraceLayer` wants a request body that is a `Body`.
            .map_request(|req: Request<()>| req.map(|()| Empty::<Bytes>::new()))
            .layer(TraceLayer::new_for_http())
            .service_fn(hello),
    );

    group.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
