//! The SSE feed: a page whose `EventSource` shows the ticks and its own
//! state, the `/events` stream, and the readiness probe. Shared by the
//! example and the browser test.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use futures_util::stream::{self, Stream};
use tower_lifecycle::{Drain, Lifecycle, LifecycleLayer};

/// The ticks of one client: one event every `every`, numbered, each with
/// the port of the server that sent it, for ever (the layer ends the
/// stream when the shutdown begins).
fn ticks(port: u16, every: Duration) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(0u64, move |n| async move {
        tokio::time::sleep(every).await;
        let event = Event::default()
            .event("tick")
            .id(n.to_string())
            .data(format!("tick {n} from :{port}"));
        Some((Ok(event), n + 1))
    })
}

/// The page: shows each tick and the `EventSource`'s `readyState`, and
/// counts the times it (re)connected.
const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>SSE and shutdown</title>
<h1>Server-Sent Events and shutdown</h1>
<p>state: <b id="state">connecting</b>, opened <b id="opens">0</b> times</p>
<p>last event: <code id="last">none</code></p>
<p>Stop the server (Ctrl-C): the stream ends cleanly, the state goes to
connecting, and the page reconnects when a server is back on the port.</p>
<script>
const names = ["connecting", "open", "closed"];
const es = new EventSource("/events");
let opens = 0;
const show = () => { document.getElementById("state").textContent = names[es.readyState]; };
es.onopen = () => {
  opens += 1;
  document.getElementById("opens").textContent = opens;
  document.getElementById("last").textContent = "none since this connection opened";
  show();
};
es.onerror = show;
es.addEventListener("tick", (e) => { document.getElementById("last").textContent = e.data; show(); });
setInterval(show, 50);
</script>
"#;

/// The routes: `/` (the page), `/events` (the feed, the one route through
/// the layer), `/ready` (the readiness probe). `port` is the server's own,
/// shown in each event.
pub fn router(layer: LifecycleLayer, drain: &Drain, port: u16, every: Duration) -> Router {
    let events = move |lifecycle: Lifecycle| async move {
        lifecycle.on_shutdown(|done| {
            tracing::info!(
                status = %done.status(),
                shutdown = done.shutdown(),
                elapsed = ?done.elapsed(),
                "an event stream ended"
            );
        });
        // `retry` tells the browser how soon to reconnect after the end.
        let first = stream::once(async { Ok(Event::default().retry(Duration::from_millis(500))) });
        Sse::new(futures_util::StreamExt::chain(first, ticks(port, every)))
            .keep_alive(KeepAlive::default())
    };
    Router::new()
        .route("/events", get(events).layer(layer))
        .route("/", get(|| async { Html(PAGE) }))
        .route_service("/ready", drain.readiness())
}
