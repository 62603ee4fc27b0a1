//! The SSE example (`examples/sse`) in Chromium: the page's `EventSource`
//! receives ticks; the server shuts down (`Drain::begin`) and the stream
//! ends cleanly: the page's `readyState` goes to CONNECTING (no error, no
//! CLOSED) and the server's hook says `shutdown`; a second server started on
//! the same port receives the reconnection, and the page shows its ticks.

#[path = "../../examples/sse/app.rs"]
mod app;

use std::fmt;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::Duration;

use fantoccini::Client;
use serde::Deserialize;
use tokio::sync::mpsc;
use tower_lifecycle::{Completion, Drain, LifecycleLayer};

use crate::chromium::{self, with_session, within};

/// One server of the example on `addr`: its drain, its completions, and
/// the task that serves it.
struct Server {
    drain: Drain,
    done: mpsc::UnboundedReceiver<Completion>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(listener: tokio::net::TcpListener) -> Server {
        let port = listener.local_addr().unwrap().port();
        let (tx, done) = mpsc::unbounded_channel();
        let layer = LifecycleLayer::new().on_complete(move |c| {
            let _ = tx.send(c.clone());
        });
        let drain = layer.drain();
        let app = app::router(layer, &drain, port, Duration::from_millis(100));
        let served = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(drain.begun())
                .into_future(),
        );
        Server {
            drain,
            done,
            served,
        }
    }

    /// Begins the shutdown and waits for the server to stop; returns the
    /// completion of the one event stream it served.
    async fn stop(mut self) -> Completion {
        self.drain.begin();
        within("axum::serve to return", self.served)
            .await
            .unwrap()
            .unwrap();
        within("the stream's completion", self.done.recv())
            .await
            .unwrap()
    }
}

pub(crate) async fn in_chromium() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let first = Server::start(listener).await;
    with_session(move |c| scenario(c, addr, first)).await;
}

async fn scenario(c: Client, addr: SocketAddr, first: Server) {
    within("the page", c.goto(&format!("http://{addr}/")))
        .await
        .unwrap();
    let port = addr.port();
    let page = wait_for(&c, "ticks from the first server", |p| {
        (p.state == "open" && p.ticks_from(port) && p.opens == 1).then(|| p.clone())
    })
    .await;
    eprintln!("before the shutdown: {page}");

    let done = first.stop().await;
    assert!(
        done.shutdown() && done.status().is_normal(),
        "the stream's completion: {done:?}"
    );
    let page = wait_for(&c, "the page to go back to `connecting`", |p| {
        (p.state == "connecting").then(|| p.clone())
    })
    .await;
    eprintln!("after the shutdown: {page}");
    assert_eq!(page.opens, 1, "{page}");

    // A new server on the same port: the page reconnects by itself.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let second = Server::start(listener).await;
    let page = wait_for(&c, "the page to reconnect to the second server", |p| {
        (p.state == "open" && p.opens == 2 && p.ticks_from(port)).then(|| p.clone())
    })
    .await;
    eprintln!("reconnected: {page}");
    let done = second.stop().await;
    assert!(done.shutdown(), "the second stream's completion: {done:?}");
}

/// What the test reads from the page.
#[derive(Clone, Debug, Deserialize)]
struct Page {
    /// The `EventSource`'s `readyState`: connecting, open or closed.
    state: String,
    /// How many times it opened.
    opens: u32,
    /// The last event's data: `tick N from :PORT`.
    last: String,
}

impl Page {
    fn ticks_from(&self, port: u16) -> bool {
        self.last.starts_with("tick ") && self.last.ends_with(&format!(" from :{port}"))
    }
}

impl fmt::Display for Page {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "page: state {:?}, opened {} times, last event {:?}",
            self.state, self.opens, self.last
        )
    }
}

const READ_PAGE: &str = r##"
const $ = (id) => document.getElementById(id);
return {
  state: $("state").textContent, opens: Number($("opens").textContent),
  last: $("last").textContent,
};
"##;

async fn wait_for<T>(c: &Client, what: &str, check: impl FnMut(&Page) -> Option<T>) -> T {
    chromium::wait_for(c, READ_PAGE, what, check).await
}
