//! A request whose end nothing observes hands its state to the next request
//! on its thread (the hot path's spare states): that request must start
//! exactly as on a new state, and nothing of the first one may linger.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

use super::*;

/// What a request's handler saw of its lifecycle when it started.
#[derive(Debug, PartialEq)]
struct Fresh {
    status: ConnectionStatus,
    ignore_abort_was: bool,
    has_deadline: bool,
    ended: bool,
    shutting_down: bool,
}

/// Every path first leaves its lifecycle in some state; `/check` reports
/// how its own lifecycle starts and registers a hook.
async fn handle(seen: Log, req: Request<()>) -> Result<Response<Full<Bytes>>, Infallible> {
    let lifecycle = lifecycle_of(&req);
    match req.uri().path() {
        // Ignore-abort on and a time limit: the request still ends
        // normally, with nothing observing it.
        "/dirty" => {
            lifecycle.ignore_abort(true);
            lifecycle.set_time_limit(Some(Duration::from_secs(1)));
        }
        // A hook: the lifecycle ends through its hooks, and its state is
        // kept after them.
        "/hooked" => {
            lifecycle.on_shutdown(move |c| seen.push(format!("hooked: {}", c.status())));
        }
        _ => {
            let fresh = Fresh {
                status: lifecycle.status(),
                ignore_abort_was: lifecycle.ignore_abort(false),
                has_deadline: lifecycle.deadline().is_some(),
                ended: format!("{lifecycle:?}").contains("ended: true"),
                shutting_down: lifecycle.is_shutting_down(),
            };
            seen.push(format!("{fresh:?}"));
            let hook = seen.clone();
            lifecycle.on_shutdown(move |c| {
                hook.push(format!(
                    "check: {} continued={} head={}",
                    c.status(),
                    c.continued(),
                    c.time_to_head().is_some()
                ))
            });
            // A hook registered on an ended lifecycle would have run by now.
            seen.push("registered");
        }
    }
    Ok(full("ok"))
}

/// What `/check` logs of a lifecycle that starts fresh and ends normally.
fn checked() -> Vec<String> {
    let fresh = Fresh {
        status: ConnectionStatus::NORMAL,
        ignore_abort_was: false,
        has_deadline: false,
        ended: false,
        shutting_down: false,
    };
    vec![
        format!("{fresh:?}"),
        "registered".to_owned(),
        "check: normal continued=false head=true".to_owned(),
    ]
}

/// Three rounds of `first` then `/check`, on one thread (the second request
/// of each round reuses the first one's state); returns the log.
async fn after(first: &str) -> Vec<String> {
    let log = Log::default();
    let seen = log.clone();
    let svc = layered(LifecycleLayer::new(), move |req| handle(seen.clone(), req));
    for _ in 0..3 {
        run_to_end(svc.clone(), get(first)).await;
        run_to_end(svc.clone(), get("/check")).await;
    }
    log.get()
}

#[tokio::test]
async fn a_request_after_an_unobserved_one_starts_fresh() {
    assert_eq!(after("/dirty").await, vec![checked(); 3].concat());
}

#[tokio::test]
async fn a_request_after_one_that_ran_its_hooks_starts_fresh() {
    let round = [vec!["hooked: normal".to_owned()], checked()].concat();
    assert_eq!(after("/hooked").await, vec![round; 3].concat());
}

#[tokio::test]
async fn the_drain_counts_reused_states_in_and_out() {
    let layer = LifecycleLayer::new();
    let drain = layer.drain();
    let svc = layered(layer, |_req: Request<()>| async {
        Ok::<_, Infallible>(full("ok"))
    });
    for _ in 0..10 {
        let response = svc.clone().oneshot(get("/")).await.unwrap();
        assert_eq!(drain.in_flight(), 1, "counted in");
        response.into_body().collect().await.unwrap();
        assert_eq!(drain.in_flight(), 0, "counted out");
    }
}

/// Counts the spans that closed.
#[derive(Clone, Default)]
struct Closed(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Closed {
    fn on_close(&self, _id: tracing::span::Id, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_kept_state_lets_go_of_the_requests_span() {
    let closed = Closed::default();
    let subscriber = tracing_subscriber::registry()
        .with(closed.clone())
        .with(tracing_subscriber::filter::LevelFilter::INFO);
    let _default = tracing::subscriber::set_default(subscriber);
    let svc = layered(LifecycleLayer::new(), |_req: Request<()>| async {
        Ok::<_, Infallible>(full("ok"))
    });
    for n in 1..=3 {
        let span = tracing::info_span!("request", n);
        run_to_end(svc.clone(), get("/")).instrument(span).await;
        assert_eq!(
            closed.0.load(Ordering::SeqCst),
            n,
            "the span of request {n} closed when the request ended"
        );
    }
}
