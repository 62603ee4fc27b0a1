//! Smoke test: one request per protocol through the shared harness.
mod common;
use common::*;
use http_body_util::Full;
use std::convert::Infallible;
use tower::ServiceBuilder;
use tower_lifecycle::ConnectionStatus;

#[tokio::test]
async fn smoke_both_protocols() {
    let (layer, mut done) = layer();
    let svc = ServiceBuilder::new().layer(layer).service_fn(|_req| async {
        Ok::<_, Infallible>(http::Response::new(Full::<bytes::Bytes>::from("hi")))
    });
    let addr = serve(svc).await;
    for proto in BOTH {
        let (mut c, _t) = Client::connect(addr, proto).await;
        let res = c.send(get("/")).await.unwrap();
        assert_eq!(read_all(res).await, "hi");
        let comp = done.next().await;
        assert_eq!(comp.status(), ConnectionStatus::NORMAL, "{proto:?}");
    }
}
