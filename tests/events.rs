//! The layer's `tracing` events, in a process of its own so that its global
//! subscriber can listen at DEBUG: what a body drained after its client left
//! amounted to.

mod common;

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::channel::Channel;
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};
use tower_lifecycle::ConnectionStatus;

use common::{layer, within};

/// The DEBUG-and-above output of this process so far.
fn debug_logs() -> String {
    common::logs_at(tracing::Level::DEBUG)
}

#[tokio::test]
async fn a_drained_body_reports_how_much_it_drained() {
    debug_logs();
    let (layer, mut done) = layer();
    let (body_tx, mut body_rx) = tokio::sync::mpsc::unbounded_channel();
    let svc = ServiceBuilder::new()
        .layer(layer.ignore_abort(true))
        .service_fn(move |_req: Request<()>| {
            let (tx, body) = Channel::<Bytes, Infallible>::new(1);
            body_tx.send(tx).unwrap();
            std::future::ready(Ok::<_, Infallible>(Response::new(body)))
        });
    let res = svc.oneshot(Request::new(())).await.unwrap();
    let mut tx = body_rx.recv().await.unwrap();
    let mut body = res.into_body();
    tx.send_data(Bytes::from_static(b"first")).await.unwrap();
    within("the first frame", body.frame())
        .await
        .unwrap()
        .unwrap();
    drop(body); // the client left mid-body: the rest is drained
    for frame in ["second", "third!"] {
        within(
            "a drained send",
            tx.send_data(Bytes::from_static(frame.as_bytes())),
        )
        .await
        .unwrap();
    }
    drop(tx);
    let c = done.next().await;
    assert_eq!(c.status(), ConnectionStatus::ABORTED);
    assert!(c.continued());
    let logs = debug_logs();
    assert!(
        logs.contains("drained=12") && logs.contains("drained a body to its end"),
        "{logs}"
    );
}
