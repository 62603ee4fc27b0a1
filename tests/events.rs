//! The layer's `tracing` events, in a process of its own so that its global
//! subscriber can listen at DEBUG: what a body drained after its client left
//! amounted to.

mod common;

use bytes::Bytes;
use tower_lifecycle::ConnectionStatus;

use common::logic::leave_after_first_frame;
use common::{layer, within};

/// The DEBUG-and-above output of this process so far.
fn debug_logs() -> String {
    common::logs_at(tracing::Level::DEBUG)
}

#[tokio::test]
async fn a_drained_body_reports_how_much_it_drained() {
    debug_logs();
    let (layer, mut done) = layer();
    // The client leaves mid-body: the rest is drained.
    let (mut tx, _first) = leave_after_first_frame(layer.ignore_abort(true), "first").await;
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
