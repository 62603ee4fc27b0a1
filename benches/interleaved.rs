//! Run with: cargo bench --bench interleaved
//!
//! The layer's cost per request, for ratios: every configuration of
//! `support::each_config` plus a *floor* (a service that inserts one `Arc`
//! handle into the request's extensions, the least any design that hands
//! the handler a status must pay) and a *timed floor* (the same, its handle
//! holding the time the request came in: one clock read more, the least a
//! design that also reports how long requests took must pay), run in
//! `ROUNDS` (7) interleaved rounds of `REQUESTS` (20,000) requests each, the
//! order rotated every round, so that the machine's drift hits every
//! configuration alike (criterion runs them one after another). Each
//! request is `oneshot` on a clone of the service on a current-thread
//! runtime, its body collected. Prints the median ns/request of each, and
//! its difference from bare and from the floors.
//!
//! Then contention, in rotated interleaved rounds: the same service driven
//! by one thread; by two threads at once, each with its own runtime and a
//! service built from a layer of its own; and by two threads sharing one
//! service. Prints ns/request per thread; the difference between the last
//! two is what sharing the layer costs, apart from what two busy threads
//! cost each other on the machine.
//!
//! Last, inside a span: the floor and the default layer with each request
//! in a new INFO span and a subscriber installed (what keeping the trace
//! context costs).
//!
//! `ONLY=name` runs one configuration (and nothing after the first table),
//! for a profiler; `ONLY=bare,floor,lifecycle_default` runs those.

mod support;

use std::fmt::Debug;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use http::Request;
use http_body::Body;
use tower::ServiceBuilder;
use tower_lifecycle::LifecycleLayer;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

use support::{call, each_config, hello, Benched, Configs};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `n` requests through a clone of a service on a fresh
/// current-thread runtime; returns the time they took.
type Run = Arc<dyn Fn(usize) -> Duration + Send + Sync>;

fn runner<S, B>(svc: S) -> Run
where
    S: Benched<B>,
    B: Body<Error: Debug>,
{
    runner_with(svc, false)
}

/// A runner whose requests each run inside a new INFO span (as a
/// `TraceLayer` outside would make one), when `in_span`.
fn runner_with<S, B>(svc: S, in_span: bool) -> Run
where
    S: Benched<B>,
    B: Body<Error: Debug>,
{
    Arc::new(move |n| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let svc = svc.clone();
        rt.block_on(async move {
            assert_eq!(call(&svc).await, "hello world");
            let start = Instant::now();
            for _ in 0..n {
                if in_span {
                    call(&svc).instrument(tracing::info_span!("request")).await;
                } else {
                    call(&svc).await;
                }
            }
            start.elapsed()
        })
    })
}

/// Collects a runner per configuration.
struct Collect(Vec<(&'static str, Run)>);

impl Configs for Collect {
    fn config<S, B>(&mut self, name: &'static str, svc: S)
    where
        S: Benched<B>,
        B: Body<Error: Debug>,
    {
        self.0.push((name, runner(svc)));
    }
}

/// The floor: the handler behind a service that inserts one `Arc` handle
/// into the request's extensions.
fn floor() -> Run {
    floor_with(false)
}

fn floor_with(in_span: bool) -> Run {
    runner_with(
        ServiceBuilder::new()
            .map_request(|mut req: Request<()>| {
                req.extensions_mut().insert(Arc::new(0_u64));
                req
            })
            .service_fn(hello),
        in_span,
    )
}

/// The floor of a design that also reports how long a request took: the
/// handle it inserts holds the time the request came in (one clock read,
/// tokio's clock, as the layer reads it).
fn floor_timed() -> Run {
    runner(
        ServiceBuilder::new()
            .map_request(|mut req: Request<()>| {
                req.extensions_mut()
                    .insert(Arc::new(tokio::time::Instant::now()));
                req
            })
            .service_fn(hello),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ns_per_request(d: Duration, n: usize) -> f64 {
    d.as_nanos() as f64 / n as f64
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let rounds = env_or("ROUNDS", 7);
    let n = env_or("REQUESTS", 20_000);
    let mut configs = Collect(vec![("floor", floor()), ("floor_timed", floor_timed())]);
    each_config(&mut configs);
    let mut configs = configs.0;
    let only = std::env::var("ONLY").ok();
    if let Some(only) = &only {
        let names: Vec<&str> = only.split(',').collect();
        configs.retain(|(name, _)| names.contains(name));
        assert!(!configs.is_empty(), "no configuration named {only}");
    }

    let mut times: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    for round in 0..rounds {
        for k in 0..configs.len() {
            let i = (k + round) % configs.len();
            times[i].push(ns_per_request((configs[i].1)(n), n));
        }
    }
    let medians: Vec<f64> = times.into_iter().map(median).collect();
    let at = |name: &str| {
        configs
            .iter()
            .position(|(c, _)| *c == name)
            .map_or(f64::NAN, |i| medians[i])
    };
    let (bare, floor_ns, timed) = (at("bare"), at("floor"), at("floor_timed"));
    println!("## Per request, one thread ({rounds} interleaved rounds of {n})\n");
    println!(
        "| config | ns/request (median) | over bare | over the floor | over the timed floor |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for ((name, _), ns) in configs.iter().zip(&medians) {
        println!(
            "| {name} | {ns:.0} | {:+.0} | {:+.0} | {:+.0} |",
            ns - bare,
            ns - floor_ns,
            ns - timed
        );
    }

    if only.is_some() {
        return;
    }
    // The same configurations again, built from layers of their own: what
    // the second thread drives when the two share nothing.
    let mut own = Collect(vec![("floor", floor())]);
    each_config(&mut own);
    let own = own.0;
    println!("\n## Two threads ({rounds} interleaved rounds of {n} per thread)\n");
    println!(
        "Per thread: one thread alone; two threads, each with a layer of its own; \
         two threads sharing one layer. The two-thread rows pay for sharing the \
         machine (its caches, its clock frequency, the allocator); only the last \
         column is the cost of sharing the layer.\n"
    );
    println!(
        "| config | one thread | two, own layers | two, one layer | sharing the layer costs |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    let find = |set: &[(&'static str, Run)], name: &str| {
        set.iter().find(|(c, _)| *c == name).unwrap().1.clone()
    };
    for name in [
        "bare",
        "floor",
        "lifecycle_default",
        "lifecycle_full",
        "bare_pending",
        "lifecycle_pending",
    ] {
        let (run, other) = (find(&configs, name), find(&own, name));
        let (mut one, mut apart, mut shared) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let single = || ns_per_request(run(n), n);
            let pair = |second: &Run| {
                let barrier = Arc::new(Barrier::new(2));
                let threads: Vec<_> = [run.clone(), second.clone()]
                    .into_iter()
                    .map(|run| {
                        let barrier = barrier.clone();
                        std::thread::spawn(move || {
                            barrier.wait();
                            run(n)
                        })
                    })
                    .collect();
                let total: Duration = threads.into_iter().map(|t| t.join().unwrap()).sum();
                ns_per_request(total / 2, n)
            };
            // The order rotates with the round.
            for k in 0..3 {
                match (k + round) % 3 {
                    0 => one.push(single()),
                    1 => apart.push(pair(&other)),
                    _ => shared.push(pair(&run)),
                }
            }
        }
        let (one, apart, shared) = (median(one), median(apart), median(shared));
        println!(
            "| {name} | {one:.0} | {apart:.0} | {shared:.0} | {:+.0} |",
            shared - apart
        );
    }
    // Last, as it installs a global subscriber for the rest of the run:
    // trace context, the span current when the layer is called kept for
    // the request's hooks and continued work.
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(tracing_subscriber::filter::LevelFilter::INFO),
    )
    .expect("no subscriber was set before");
    let in_span = [
        ("floor", floor_with(true)),
        (
            "lifecycle_default",
            runner_with(
                ServiceBuilder::new()
                    .layer(LifecycleLayer::new())
                    .service_fn(hello),
                true,
            ),
        ),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); in_span.len()];
    for round in 0..rounds {
        for k in 0..in_span.len() {
            let i = (k + round) % in_span.len();
            times[i].push(ns_per_request((in_span[i].1)(n), n));
        }
    }
    let (floor_span, default_span) = (median(times[0].clone()), median(times[1].clone()));
    println!(
        "\n## Inside a span ({rounds} interleaved rounds of {n})\n\n\
         Each request runs inside a new INFO span, a subscriber (a `tracing_subscriber` \
         registry at INFO) installed, so the layer keeps the span for the request's \
         hooks and continued work.\n"
    );
    println!("| config | ns/request (median) | over the floor in a span |");
    println!("| --- | ---: | ---: |");
    println!("| floor | {floor_span:.0} | +0 |");
    println!(
        "| lifecycle_default | {default_span:.0} | {:+.0} |",
        default_span - floor_span
    );
    println!("\nThe machine's cores are shared with whatever else runs: compare rows of one run.");
}
