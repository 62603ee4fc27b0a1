//! The layer's `tracing` events, in a process of its own so that its global
//! subscriber can listen at DEBUG: what a body drained after its client left
//! amounted to.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::channel::Channel;
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};
use tower_lifecycle::ConnectionStatus;

use common::{layer, within};

/// The DEBUG-and-above output of this process so far.
fn debug_logs() -> String {
    #[derive(Clone)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    static LOGS: OnceLock<Sink> = OnceLock::new();
    let sink = LOGS.get_or_init(|| {
        let sink = Sink(Arc::default());
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        sink
    });
    String::from_utf8_lossy(&sink.0.lock().unwrap()).into_owned()
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
