//! The progress demo's stream, read by a plain HTTP client over HTTP/1.1
//! and HTTP/2: each progress frame reaches the client before the next one
//! is produced (compared with the instants the server recorded, same
//! clock), and the response carries the anti-buffering headers.

use crate::common;

#[path = "../../examples/progress/app.rs"]
mod app;

use http_body_util::BodyExt;
use tokio::time::Instant;

use common::{within, Client, BOTH};

#[tokio::test]
async fn each_frame_arrives_before_the_next_is_produced() {
    let demo = app::Demo::default();
    let addr = common::serve(app::router(demo.clone())).await;
    for proto in BOTH {
        let (mut client, _conn) = Client::connect(addr, proto).await;
        let res = within(
            "the head",
            client.send(common::get("/job?steps=5&step_ms=100")),
        )
        .await
        .unwrap();
        assert_eq!(res.headers()["cache-control"], "no-cache, no-transform");
        assert_eq!(res.headers()["x-accel-buffering"], "no");
        assert!(!res.headers().contains_key("content-encoding"));
        let id: u64 = res.headers()["x-job-id"].to_str().unwrap().parse().unwrap();

        let mut body = res.into_body();
        let mut lines = Vec::new();
        let mut received = Vec::new();
        while let Some(frame) = within("a frame", body.frame()).await {
            let Ok(data) = frame.unwrap().into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            received.push(Instant::now());
            lines.push(String::from_utf8(data.to_vec()).unwrap());
        }
        assert_eq!(
            lines,
            ["1/5\n", "2/5\n", "3/5\n", "4/5\n", "5/5\n"],
            "{proto:?}: one frame per step"
        );

        let produced = demo.produced(id);
        assert_eq!(produced.len(), 5);
        for i in 0..5 {
            assert!(
                produced[i] <= received[i],
                "{proto:?}: step {i} received before it was produced?"
            );
            if i + 1 < 5 {
                assert!(
                    received[i] < produced[i + 1],
                    "{proto:?}: step {} arrived only after step {} was produced: buffered",
                    i + 1,
                    i + 2
                );
            }
        }
    }
    let outcomes = demo.outcomes();
    assert_eq!(outcomes.len(), 2);
    assert!(outcomes
        .iter()
        .all(|o| o.status == "normal" && o.steps == 5));
}
