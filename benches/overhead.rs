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

use support::{call, each_config, Benched, Configs};

use std::fmt::Debug;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use http_body::Body;
use tokio::runtime::Runtime;

/// Benches each configuration in one criterion group.
struct Bench<'a, 'b> {
    group: BenchmarkGroup<'a, WallTime>,
    rt: &'b Runtime,
}

impl Configs for Bench<'_, '_> {
    fn config<S, B>(&mut self, name: &'static str, svc: S)
    where
        S: Benched<B>,
        B: Body<Error: Debug>,
    {
        let rt = self.rt;
        // Check once that the configuration answers what the handler said.
        assert_eq!(rt.block_on(call(&svc)), "hello world", "{name}");
        self.group
            .bench_function(name, |b| b.to_async(rt).iter(|| call(&svc)));
    }
}

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut bench = Bench {
        group: c.benchmark_group("overhead"),
        rt: &rt,
    };
    each_config(&mut bench);
    bench.group.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
