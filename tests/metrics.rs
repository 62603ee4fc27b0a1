//! The metrics example (`examples/metrics.rs`) scraped after a few normal,
//! aborted and timed-out requests, in a process of its own (the Prometheus
//! recorder is process-wide).

mod common;

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/metrics.rs"]
mod example;

use std::future::IntoFuture;
use std::net::SocketAddr;

use common::{within, Client, InFlight, Proto};

/// One scrape of `/metrics`.
async fn scrape(addr: SocketAddr) -> String {
    let (mut client, _conn) = Client::connect(addr, Proto::Http1).await;
    let res = within("a scrape", client.send(common::get("/metrics")))
        .await
        .unwrap();
    String::from_utf8(common::read_all(res).await.to_vec()).unwrap()
}

/// The value of the sample of `name` whose labels include all of `labels`.
fn sample(scrape: &str, name: &str, labels: &[&str]) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            return None;
        }
        if !labels.iter().all(|l| rest.contains(l)) {
            return None;
        }
        rest.rsplit(' ').next()?.parse().ok()
    })
}

/// Scrapes until `check` accepts a scrape; returns it.
async fn scrape_until(addr: SocketAddr, what: &str, check: impl Fn(&str) -> bool) -> String {
    within(what, async {
        loop {
            let text = scrape(addr).await;
            if check(&text) {
                return text;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrape_counts_normal_aborted_and_timed_out_requests() {
    let handle = example::install();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, example::app(handle)).into_future());

    for _ in 0..3 {
        let (mut client, _conn) = Client::connect(addr, Proto::Http1).await;
        let res = within("hello", client.send(common::get("/hello")))
            .await
            .unwrap();
        assert_eq!(common::read_all(res).await, "hello\n");
    }
    // A client that leaves while /slow runs: in flight, then aborted.
    let slow = InFlight::start(addr, Proto::Http1, "/slow").await;
    scrape_until(addr, "the slow request in flight", |s| {
        sample(s, "tower_lifecycle_in_flight", &[]) == Some(1.0)
    })
    .await;
    slow.leave();
    let (mut client, _conn) = Client::connect(addr, Proto::Http1).await;
    let res = within("limited", client.send(common::get("/limited")))
        .await
        .unwrap();
    assert_eq!(res.status(), http::StatusCode::SERVICE_UNAVAILABLE);

    let text = scrape_until(addr, "all five requests counted", |s| {
        sample(s, "http_request_duration_seconds_count", &[]) == Some(5.0)
    })
    .await;
    let count = |labels: &[&str]| sample(&text, "http_requests_total", labels);
    assert_eq!(
        count(&["status=\"normal\"", "log_status=\"200\""]),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        count(&[
            "status=\"aborted\"",
            "phase=\"handler\"",
            "log_status=\"499\""
        ]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        count(&[
            "status=\"timeout\"",
            "phase=\"handler\"",
            "log_status=\"503\""
        ]),
        Some(1.0),
        "{text}"
    );
    // The aborted request never had a head.
    assert_eq!(
        sample(&text, "http_time_to_head_seconds_count", &[]),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "tower_lifecycle_in_flight", &[]),
        Some(0.0),
        "{text}"
    );
    assert!(
        text.contains("http_request_duration_seconds_bucket{le=\"0.005\"}"),
        "{text}"
    );
}
