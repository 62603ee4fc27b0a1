//! The axum extractor: the rejection that says how to fix it, and `Option<Lifecycle>`.

use super::*;

use axum::routing::get;
use axum::Router;

async fn uses_it(lifecycle: Lifecycle) -> String {
    lifecycle.status().to_string()
}

async fn optional(lifecycle: Option<Lifecycle>) -> &'static str {
    if lifecycle.is_some() {
        "some"
    } else {
        "none"
    }
}

fn app() -> Router {
    Router::new()
        .route("/", get(uses_it))
        .route("/optional", get(optional))
}

async fn text(app: Router, uri: &str) -> (StatusCode, String) {
    let res = app
        .oneshot(Request::get(uri).body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn without_the_layer_the_rejection_says_how_to_fix_it() {
    let (status, body) = text(app(), "/").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains("LifecycleLayer"), "{body}");
    assert_eq!(
        text(app(), "/optional").await,
        (StatusCode::OK, "none".into())
    );
}

#[tokio::test]
async fn with_the_layer_the_extractor_works() {
    let app = app().layer(LifecycleLayer::new());
    assert_eq!(
        text(app.clone(), "/").await,
        (StatusCode::OK, "normal".into())
    );
    assert_eq!(
        text(app, "/optional").await,
        (StatusCode::OK, "some".into())
    );
}

#[tokio::test]
async fn the_rejection_says_how_to_fix_it_as_an_error_too() {
    use axum::extract::FromRequestParts;
    let (mut parts, ()) = Request::new(()).into_parts();
    let rejection = <Lifecycle as FromRequestParts<()>>::from_request_parts(&mut parts, &())
        .await
        .expect_err("no layer, no Lifecycle");
    let message = rejection.to_string();
    assert!(message.contains("LifecycleLayer::new()"), "{message}");
    let error: &dyn std::error::Error = &rejection;
    assert_eq!(error.to_string(), message);
}
