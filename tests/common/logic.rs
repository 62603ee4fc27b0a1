//! In-process helpers shared by the logic tests and the tests that run in a
//! process of their own: the layer driven with `ServiceBuilder` + `oneshot`,
//! no server.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::channel::Channel;
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};
use tower_lifecycle::LifecycleLayer;

use super::{within, BodySender};

/// Sends a request through `layer` to a handler that answers with a channel
/// body, sends `first` down that body and reads it, then drops the body as a
/// client that left mid-body would. Returns the body's sender, for the test
/// to go on feeding whatever now takes the rest, and the frame's data.
pub async fn leave_after_first_frame(
    layer: LifecycleLayer,
    first: &'static str,
) -> (BodySender, Bytes) {
    let (body_tx, mut body_rx) = tokio::sync::mpsc::unbounded_channel();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |_req: Request<()>| {
            let (tx, body) = Channel::<Bytes, Infallible>::new(1);
            body_tx.send(tx).unwrap();
            std::future::ready(Ok::<_, Infallible>(Response::new(body)))
        });
    let res = svc.oneshot(Request::new(())).await.unwrap();
    let mut tx = body_rx.recv().await.unwrap();
    let mut body = res.into_body();
    tx.send_data(Bytes::from_static(first.as_bytes()))
        .await
        .unwrap();
    let frame = within("the first frame", body.frame())
        .await
        .expect("a frame")
        .expect("no body error");
    drop(body);
    (tx, frame.into_data().expect("a data frame"))
}
