//! The process-wide panic hook, in a process of its own (one test, so no
//! other test installs a hook meanwhile): a layer built with
//! `record_caught_panics(false)` leaves the hook alone, `install_panic_hook`
//! chains it in, and the hook that was there before still runs.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_http::catch_panic::CatchPanicLayer;
use tower_lifecycle::{install_panic_hook, LifecycleLayer};

use common::{layer, Completions};

static EARLIER_HOOK_RAN: AtomicUsize = AtomicUsize::new(0);

/// Panics when polled: the request, and the `Lifecycle` in it, is long
/// gone, as in an axum handler without extractors.
async fn boom() -> Result<Response<Full<Bytes>>, Infallible> {
    panic!("caught by CatchPanicLayer")
}

/// One request whose handler panics inside `CatchPanicLayer`, inside a layer
/// built from `lifecycle`; whether the completion says it panicked.
async fn caught_panic_recorded(lifecycle: LifecycleLayer, done: &mut Completions) -> bool {
    let svc = ServiceBuilder::new()
        .layer(lifecycle)
        .layer(CatchPanicLayer::new())
        .service_fn(|req: Request<()>| {
            drop(req);
            boom()
        });
    let res = svc.oneshot(Request::new(())).await.unwrap();
    res.into_body().collect().await.unwrap();
    done.next().await.panicked()
}

/// Sets a hook of the program's own: it counts, then prints as the
/// default one does.
fn set_own_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        EARLIER_HOOK_RAN.fetch_add(1, Ordering::SeqCst);
        default(info);
    }));
}

#[tokio::test]
async fn the_panic_hook_is_opt_out_chained_and_reinstallable() {
    set_own_hook();

    // Opted out: the hook stays the program's own, and a panic caught
    // inside the layer goes unseen.
    let (lifecycle, mut done) = layer();
    let recorded = caught_panic_recorded(lifecycle.record_caught_panics(false), &mut done).await;
    assert!(
        !recorded,
        "no hook was installed, so nothing could record it"
    );
    assert_eq!(EARLIER_HOOK_RAN.load(Ordering::SeqCst), 1);

    // The default installs ours, chained: both run.
    let (lifecycle, mut done) = layer();
    assert!(caught_panic_recorded(lifecycle, &mut done).await);
    assert_eq!(
        EARLIER_HOOK_RAN.load(Ordering::SeqCst),
        2,
        "the earlier hook still runs"
    );

    // A program that sets its own hook afterwards, without chaining,
    // replaces ours...
    std::panic::set_hook(Box::new(|info| {
        EARLIER_HOOK_RAN.fetch_add(1, Ordering::SeqCst);
        eprintln!("{info}");
    }));
    let (lifecycle, mut done) = layer();
    assert!(!caught_panic_recorded(lifecycle, &mut done).await);
    // ...and chains it in again.
    install_panic_hook();
    let (lifecycle, mut done) = layer();
    assert!(caught_panic_recorded(lifecycle, &mut done).await);
    assert_eq!(EARLIER_HOOK_RAN.load(Ordering::SeqCst), 4);
}
