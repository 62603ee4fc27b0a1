//! The progress demo's application: a page, a job endpoint that streams
//! progress, and the outcomes the lifecycle hooks recorded. Shared by the
//! example and its tests.

// Used by the example and by its tests, which each use a part of it.
#![allow(dead_code, unreachable_pub)]
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::channel::Channel;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tower_lifecycle::{Lifecycle, LifecycleLayer};

/// One finished job, as the outcomes panel shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub id: u64,
    /// `normal`, `aborted`, `timeout` or `aborted|timeout`.
    pub status: String,
    pub steps: u32,
    pub total: u32,
    pub bytes: u64,
    pub ms: u64,
    pub keep: bool,
}

/// The demo's state: finished jobs, and when each step of each job was
/// handed to the response body (for the timing test).
#[derive(Clone, Default)]
pub struct Demo {
    next_id: Arc<AtomicU64>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    produced: Arc<Mutex<HashMap<u64, Vec<Instant>>>>,
}

impl Demo {
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().unwrap().clone()
    }

    /// When each step of job `id` was accepted by its response body.
    pub fn produced(&self, id: u64) -> Vec<Instant> {
        self.produced
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }
}

#[derive(Debug, Deserialize)]
pub struct JobParams {
    #[serde(default = "default_steps")]
    steps: u32,
    #[serde(default = "default_step_ms")]
    step_ms: u64,
    /// Keep running if the client leaves: ignore-abort for this job.
    #[serde(default)]
    keep: bool,
    /// A time limit for this job, in milliseconds.
    limit_ms: Option<u64>,
}

fn default_steps() -> u32 {
    20
}

fn default_step_ms() -> u64 {
    250
}

/// The demo's router, with the lifecycle layer around it.
pub fn router(demo: Demo) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/job", get(job))
        .route("/outcomes", get(outcomes))
        .with_state(demo)
        .layer(LifecycleLayer::new())
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn outcomes(State(demo): State<Demo>) -> Json<Vec<Outcome>> {
    Json(demo.outcomes())
}

/// Streams `step/total` lines, one frame per step, as the job makes
/// progress. The job stops when a write fails (the client left), unless
/// `keep` turned ignore-abort on: then the body is drained and every write
/// succeeds until the job ends.
async fn job(
    State(demo): State<Demo>,
    lifecycle: Lifecycle,
    Query(params): Query<JobParams>,
) -> Response {
    let id = demo.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    let total = params.steps.clamp(1, 1000);
    let step = Duration::from_millis(params.step_ms.clamp(1, 10_000));
    lifecycle.ignore_abort(params.keep);
    if let Some(ms) = params.limit_ms.filter(|ms| *ms > 0) {
        lifecycle.set_time_limit(Some(Duration::from_millis(ms)));
    }

    let done = Arc::new(AtomicU32::new(0));
    let record = {
        let (demo, done) = (demo.clone(), done.clone());
        move |c: &tower_lifecycle::Completion| {
            let outcome = Outcome {
                id,
                status: c.status().to_string(),
                steps: done.load(Ordering::Relaxed),
                total,
                bytes: c.bytes_sent(),
                ms: c.elapsed().as_millis() as u64,
                keep: params.keep,
            };
            tracing::info!(?outcome, "job ended");
            demo.outcomes.lock().unwrap().push(outcome);
        }
    };
    lifecycle.on_shutdown(record);

    let (mut tx, body) = Channel::<Bytes, Infallible>::new(1);
    tokio::spawn(async move {
        for n in 1..=total {
            tokio::time::sleep(step).await; // the work of one step
            let line = Bytes::from(format!("{n}/{total}\n"));
            if tx.send_data(line).await.is_err() {
                tracing::info!(id, step = n, "the client is gone: stopping the job");
                return;
            }
            done.store(n, Ordering::Relaxed);
            demo.produced
                .lock()
                .unwrap()
                .entry(id)
                .or_default()
                .push(Instant::now());
        }
        finish(tx).await;
    });

    let mut response = Response::new(Body::new(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert("x-job-id", HeaderValue::from(id));
    tower_lifecycle::no_buffering(headers);
    (StatusCode::OK, response).into_response()
}

/// Ends a channel body without losing its last frame.
///
/// `http_body_util::channel::Channel` (0.1.5) can return `None` for a
/// sender dropped right after its last frame was queued, before that frame
/// was taken. With a buffer of one, sending an (empty) trailers frame waits
/// until the last data frame was taken; only the trailers can be lost then,
/// and HTTP/1.1 clients that did not ask for trailers never see them.
pub async fn finish(mut tx: http_body_util::channel::Sender<Bytes, Infallible>) {
    let _ = tx.send_trailers(axum::http::HeaderMap::new()).await;
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>tower-lifecycle: live progress</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem; max-width: 46rem; color: #222; }
  h1 { font-size: 1.4rem; }
  fieldset { border: 1px solid #ccc; border-radius: 6px; margin-bottom: 1rem; }
  label { margin-right: 1rem; }
  input[type=number] { width: 5rem; }
  button { font-size: 1rem; padding: .3rem .9rem; margin-right: .5rem; }
  progress { width: 100%; height: 1.4rem; }
  #state { font-weight: bold; }
  table { border-collapse: collapse; width: 100%; margin-top: .5rem; }
  th, td { border-bottom: 1px solid #ddd; padding: .25rem .5rem; text-align: left; }
  td.normal { color: #176f2c; } td.aborted { color: #a15c00; } td.timeout, td.aborted\|timeout { color: #b00020; }
</style>
</head>
<body>
<h1>A long job, watched over one streamed response</h1>
<fieldset>
  <label>Steps <input id="steps" type="number" min="1" value="20"></label>
  <label>ms per step <input id="step_ms" type="number" min="1" value="250"></label>
  <label>Time limit, ms <input id="limit_ms" type="number" min="0" value="0" title="0: none"></label>
  <label><input id="keep" type="checkbox"> keep running if I leave</label>
</fieldset>
<button id="start">Start job</button>
<button id="cancel" disabled>Cancel</button>
<p><progress id="progress" value="0" max="20"></progress></p>
<p>Step <span id="step">0</span> &middot; <span id="state">idle</span></p>
<h2>Outcomes (from the lifecycle hooks)</h2>
<table>
  <thead><tr><th>job</th><th>status</th><th>steps</th><th>bytes</th><th>ms</th><th>keep</th></tr></thead>
  <tbody id="outcomes"></tbody>
</table>
<script>
const $ = (id) => document.getElementById(id);
let current = null;

$("start").onclick = async () => {
  const ctrl = new AbortController();
  current = ctrl;
  $("start").disabled = true;
  $("cancel").disabled = false;
  const q = new URLSearchParams({
    steps: $("steps").value, step_ms: $("step_ms").value,
    keep: $("keep").checked, limit_ms: $("limit_ms").value,
  });
  $("progress").value = 0;
  $("progress").max = Number($("steps").value);
  $("step").textContent = "0";
  $("state").textContent = "running";
  try {
    const res = await fetch("/job?" + q, { signal: ctrl.signal, cache: "no-store" });
    $("state").dataset.job = res.headers.get("x-job-id");
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      const lines = buffered.split("\n");
      buffered = lines.pop();
      for (const line of lines) {
        const [step, total] = line.split("/").map(Number);
        $("progress").max = total;
        $("progress").value = step;
        $("step").textContent = String(step);
      }
    }
    $("state").textContent = "done";
  } catch (e) {
    $("state").textContent = ctrl.signal.aborted ? "cancelled" : "failed: " + e.message;
  } finally {
    $("start").disabled = false;
    $("cancel").disabled = true;
  }
};

$("cancel").onclick = () => { if (current) current.abort(); };

async function refreshOutcomes() {
  try {
    const rows = await (await fetch("/outcomes", { cache: "no-store" })).json();
    $("outcomes").innerHTML = rows.reverse().map((o) =>
      `<tr data-id="${o.id}" data-status="${o.status}" data-steps="${o.steps}" data-total="${o.total}">` +
      `<td>${o.id}</td><td class="${o.status}">${o.status}</td><td>${o.steps}/${o.total}</td>` +
      `<td>${o.bytes}</td><td>${o.ms}</td><td>${o.keep ? "yes" : "no"}</td></tr>`).join("");
  } catch (e) { /* the server is gone; try again */ }
}
setInterval(refreshOutcomes, 300);
refreshOutcomes();
</script>
</body>
</html>
"#;
