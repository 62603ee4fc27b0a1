//! The server behind the proxies: an axum app with the layer, whose
//! handlers report when they start, when each streamed frame is produced,
//! and how each request ended.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::HeaderValue;
use tokio::sync::mpsc;
use tower_lifecycle::{Completion, Lifecycle, LifecycleLayer};

/// How many frames a stream has, and how far apart they are produced.
pub(crate) const FRAMES: usize = 12;
pub(crate) const EVERY: Duration = Duration::from_millis(100);

/// What the handlers report.
#[derive(Debug)]
pub(crate) enum Event {
    /// `/slow` started.
    Started,
    /// A request ended: its route, its completion, when.
    Ended(&'static str, Completion, Instant),
}

/// The backend: its address, its events, and when each frame of the
/// current stream was produced.
pub(crate) struct Backend {
    pub(crate) addr: SocketAddr,
    pub(crate) events: mpsc::UnboundedReceiver<Event>,
    pub(crate) produced: Arc<Mutex<Vec<Instant>>>,
}

fn report(lifecycle: &Lifecycle, route: &'static str, tx: &mpsc::UnboundedSender<Event>) {
    let tx = tx.clone();
    lifecycle.on_shutdown(move |c| {
        let _ = tx.send(Event::Ended(route, c.clone(), Instant::now()));
    });
}

/// A streamed response of [`FRAMES`] frames, one every [`EVERY`], each
/// one's production time recorded; Server-Sent Events when `sse`.
fn stream(produced: Arc<Mutex<Vec<Instant>>>, sse: bool) -> Response {
    produced.lock().unwrap().clear();
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(1);
    tokio::spawn(async move {
        for k in 0..FRAMES {
            let frame = if sse {
                format!("data: frame {k}\n\n")
            } else {
                format!("frame {k}\n")
            };
            produced.lock().unwrap().push(Instant::now());
            if tx.send_data(Bytes::from(frame)).await.is_err() {
                return;
            }
            tokio::time::sleep(EVERY).await;
        }
    });
    let mut res = Response::new(Body::new(body));
    let content_type = if sse {
        "text/event-stream"
    } else {
        "text/plain"
    };
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    tower_lifecycle::no_buffering(res.headers_mut());
    res
}

/// The route of a [`stream`], reporting as `route`.
fn streaming(
    route: &'static str,
    tx: mpsc::UnboundedSender<Event>,
    produced: Arc<Mutex<Vec<Instant>>>,
    sse: bool,
) -> axum::routing::MethodRouter {
    get(move |lifecycle: Lifecycle| async move {
        report(&lifecycle, route, &tx);
        stream(produced, sse)
    })
}

impl Backend {
    pub(crate) async fn start() -> Backend {
        let (tx, events) = mpsc::unbounded_channel();
        let produced = Arc::new(Mutex::new(Vec::new()));
        let (t1, t2, t3, t4, t5) = (tx.clone(), tx.clone(), tx.clone(), tx.clone(), tx);
        let (p1, p2) = (produced.clone(), produced.clone());
        let app = Router::new()
            .route(
                "/hello",
                get(move |lifecycle: Lifecycle| async move {
                    report(&lifecycle, "hello", &t1);
                    "hello"
                }),
            )
            .route(
                "/slow",
                get(move |lifecycle: Lifecycle| async move {
                    report(&lifecycle, "slow", &t2);
                    let _ = t2.send(Event::Started);
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .route(
                "/limited",
                get(move |lifecycle: Lifecycle| async move {
                    report(&lifecycle, "limited", &t3);
                    lifecycle.set_time_limit(Some(Duration::from_millis(200)));
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .route("/stream", streaming("stream", t4, p1, false))
            .route("/sse", streaming("sse", t5, p2, true))
            .layer(LifecycleLayer::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Backend {
            addr,
            events,
            produced,
        }
    }

    async fn event(&mut self, what: &str) -> Event {
        tokio::time::timeout(Duration::from_secs(10), self.events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out after 10 s waiting for {what}"))
            .expect("the backend is gone")
    }

    /// Waits for `/slow` to start.
    pub(crate) async fn started(&mut self) {
        loop {
            if let Event::Started = self.event("/slow to start").await {
                return;
            }
        }
    }

    /// Waits for `route`'s request to end; returns its completion and when.
    pub(crate) async fn ended(&mut self, route: &str) -> (Completion, Instant) {
        loop {
            if let Event::Ended(r, c, at) = self.event(&format!("the end of {route}")).await {
                if r == route {
                    return (c, at);
                }
            }
        }
    }

    /// When each frame of the last stream was produced.
    pub(crate) fn produced(&self) -> Vec<Instant> {
        self.produced.lock().unwrap().clone()
    }
}
