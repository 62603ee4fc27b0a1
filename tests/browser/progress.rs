//! The progress demo (`examples/progress`) in Chromium, one job after
//! another in one session:
//!
//! 1. a job that runs to the end: the progress bar takes several increasing
//!    values while it runs, the page says `done`, and the outcomes panel
//!    says `normal` with every step done;
//! 2. a job cancelled mid-way: the panel says `aborted` with fewer steps;
//! 3. the same with "keep running if I leave" ticked: the panel says
//!    `aborted` with every step done;
//! 4. a job longer than its time limit: the panel says `timeout` with fewer
//!    steps, and the page shows the failed response.

#[path = "../../examples/progress/app.rs"]
mod app;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use fantoccini::{Client, Locator};
use serde::Deserialize;

use crate::chromium::{self, click, with_session, within, POLL};

pub(crate) async fn in_chromium() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app::router(app::Demo::default()))
            .await
            .expect("server error");
    });
    with_session(move |c| scenarios(c, addr)).await;
}

async fn scenarios(c: Client, addr: SocketAddr) {
    within("the page", c.goto(&format!("http://{addr}/")))
        .await
        .unwrap();
    wait_for(&c, "the page's script", |p| {
        (p.state == "idle").then_some(())
    })
    .await;

    cancelled(&c).await;
    cancelled_but_kept(&c).await;
    timed_out(&c).await;
    // Last, so that the screenshot shows the outcomes of the others too.
    runs_to_the_end(&c).await;
}

/// A job that runs to the end: progress shows while it runs, then `done`
/// and a `normal` outcome.
async fn runs_to_the_end(c: &Client) {
    set_keep(c, false).await;
    set_field(c, "limit_ms", "0").await;
    let id = start(c, "8", "250").await;

    // Every value the bar takes while the job runs, in the order seen.
    let mut seen: Vec<u32> = Vec::new();
    let mut screenshot = None;
    loop {
        let page = read_page(c).await;
        if page.state == "done" {
            break;
        }
        assert_eq!(page.state, "running", "job {id}: unexpected state\n{page}");
        if page.progress > 0 && seen.last() != Some(&page.progress) {
            seen.push(page.progress);
        }
        if screenshot.is_none() && (3..=5).contains(&page.progress) {
            screenshot = Some(within("a screenshot", c.screenshot()).await.unwrap());
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(
        seen.len() >= 3 && seen.windows(2).all(|w| w[0] < w[1]) && seen.iter().all(|&v| v <= 8),
        "job {id}: expected at least three increasing progress values up to 8 before `done`, saw {seen:?}"
    );
    let page = read_page(c).await;
    assert_eq!(
        (page.progress, page.max),
        (8, 8),
        "job {id}: the bar at the end\n{page}"
    );

    let row = outcome(c, id).await;
    assert_eq!(
        (row.status.as_str(), row.steps, row.total),
        ("normal", 8, 8),
        "job {id}: the outcome of a job that ran to the end"
    );
    eprintln!("job {id} ran to the end: progress {seen:?}, outcome {row:?}");

    let png = screenshot.unwrap_or_else(|| {
        panic!(
            "job {id}: never saw it mid-way (progress 3 to 5) to take a screenshot; saw {seen:?}"
        )
    });
    save_screenshot(&png);
}

/// A job cancelled mid-way: an `aborted` outcome with the steps it did.
async fn cancelled(c: &Client) {
    let id = start(c, "20", "200").await;
    cancel_at(c, 3).await;

    let row = outcome(c, id).await;
    assert_eq!(
        row.status, "aborted",
        "job {id}: the outcome of a cancelled job: {row:?}"
    );
    assert!(
        row.steps >= 3 && row.steps < 20 && row.total == 20,
        "job {id}: a cancelled job did some of its steps, not all: {row:?}"
    );
    eprintln!("job {id} cancelled: outcome {row:?}");
}

/// A job cancelled with "keep running if I leave" ticked: ignore-abort
/// keeps it going, so the outcome is `aborted` with every step done.
async fn cancelled_but_kept(c: &Client) {
    set_keep(c, true).await;
    let id = start(c, "10", "150").await;
    cancel_at(c, 2).await;

    let row = outcome(c, id).await;
    assert_eq!(
        (row.status.as_str(), row.steps, row.total),
        ("aborted", 10, 10),
        "job {id}: the outcome of a kept job whose client left: {row:?}"
    );
    eprintln!("job {id} cancelled, kept: outcome {row:?}");
}

/// A job longer than its time limit: a `timeout` outcome, and the page
/// sees its response fail.
async fn timed_out(c: &Client) {
    set_keep(c, false).await;
    set_field(c, "limit_ms", "600").await;
    let id = start(c, "20", "200").await;

    let row = outcome(c, id).await;
    assert_eq!(
        row.status, "timeout",
        "job {id}: the outcome of a job past its limit: {row:?}"
    );
    assert!(
        row.steps < 20 && row.total == 20,
        "job {id}: a job cut at its limit did some of its steps, not all: {row:?}"
    );
    let page = wait_for(c, "the page to leave `running`", |p| {
        (p.state != "running").then(|| p.clone())
    })
    .await;
    assert!(
        page.state.starts_with("failed"),
        "job {id}: the page should show the cut response as a failure\n{page}"
    );
    eprintln!(
        "job {id} timed out: outcome {row:?}, page says {:?}",
        page.state
    );
}

/// What the test reads from the page.
#[derive(Clone, Debug, Deserialize)]
struct Page {
    /// `#state`: idle, running, done, cancelled or failed: ...
    state: String,
    /// The `x-job-id` of the last job the page started.
    job: Option<String>,
    /// The progress bar's `value` and `max`.
    progress: u32,
    max: u32,
    /// The outcomes panel, parsed from its rows' data attributes.
    rows: Vec<Row>,
    /// The outcomes panel as HTML, for failure messages.
    outcomes: String,
}

/// One row of the outcomes panel.
#[derive(Clone, Debug, Deserialize)]
struct Row {
    id: u64,
    status: String,
    steps: u32,
    total: u32,
}

impl Page {
    fn job(&self) -> Option<u64> {
        self.job.as_deref().and_then(|id| id.parse().ok())
    }
}

impl fmt::Display for Page {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "page: #state {:?} (job {:?}), progress {}/{}, #outcomes: {}",
            self.state, self.job, self.progress, self.max, self.outcomes
        )
    }
}

const READ_PAGE: &str = r##"
const $ = (id) => document.getElementById(id);
const rows = [...document.querySelectorAll("#outcomes tr")].map((r) => ({
  id: Number(r.dataset.id), status: r.dataset.status,
  steps: Number(r.dataset.steps), total: Number(r.dataset.total),
}));
return {
  state: $("state").textContent, job: $("state").dataset.job ?? null,
  progress: Number($("progress").value), max: Number($("progress").max),
  rows, outcomes: $("outcomes").innerHTML,
};
"##;

async fn read_page(c: &Client) -> Page {
    chromium::read_page(c, READ_PAGE).await
}

async fn wait_for<T>(c: &Client, what: &str, check: impl FnMut(&Page) -> Option<T>) -> T {
    chromium::wait_for(c, READ_PAGE, what, check).await
}

/// Types `value` into the input `id`.
async fn set_field(c: &Client, id: &str, value: &str) {
    let input = within(id, c.find(Locator::Id(id))).await.unwrap();
    within(id, input.clear()).await.unwrap();
    within(id, input.send_keys(value)).await.unwrap();
    let now = within(id, input.prop("value")).await.unwrap();
    assert_eq!(now.as_deref(), Some(value), "#{id} after typing {value:?}");
}

/// Ticks or unticks "keep running if I leave".
async fn set_keep(c: &Client, keep: bool) {
    let checkbox = within("keep", c.find(Locator::Id("keep"))).await.unwrap();
    if within("keep", checkbox.is_selected()).await.unwrap() != keep {
        within("keep", checkbox.click()).await.unwrap();
    }
    let now = within("keep", checkbox.is_selected()).await.unwrap();
    assert_eq!(now, keep, "#keep after clicking it");
}

/// Starts a job of `steps` steps of `step_ms` each, once the previous one
/// is over; returns its id.
async fn start(c: &Client, steps: &str, step_ms: &str) -> u64 {
    set_field(c, "steps", steps).await;
    set_field(c, "step_ms", step_ms).await;
    let before = wait_for(c, "the previous job to end", |p| {
        (p.state != "running").then(|| p.job())
    })
    .await;
    click(c, "start").await;
    wait_for(c, "the new job's id (x-job-id)", |p| {
        p.job().filter(|id| Some(*id) != before)
    })
    .await
}

/// Clicks "cancel" once the progress bar reached `progress`, and waits for
/// the page to say `cancelled`.
async fn cancel_at(c: &Client, progress: u32) {
    wait_for(c, &format!("progress to reach {progress}"), |p| {
        (p.progress >= progress).then_some(())
    })
    .await;
    click(c, "cancel").await;
    wait_for(c, "the page to say `cancelled`", |p| {
        (p.state == "cancelled").then_some(())
    })
    .await;
}

/// The row of job `id` in the outcomes panel, once it shows.
async fn outcome(c: &Client, id: u64) -> Row {
    wait_for(c, &format!("job {id} in the outcomes panel"), |p| {
        p.rows.iter().find(|r| r.id == id).cloned()
    })
    .await
}

fn save_screenshot(png: &[u8]) {
    let path = if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).expect("could not create docs/");
        docs.join("progress.png")
    } else {
        std::env::temp_dir().join("tower-lifecycle-progress.png")
    };
    std::fs::write(&path, png).expect("could not write the screenshot");
    eprintln!("screenshot of the page mid-job: {}", path.display());
}
