//! The examples in a real browser: headless Chromium, driven through
//! chromedriver, opens an example's page served on 127.0.0.1 and uses it as
//! a person would.
//!
//! - `progress_page_in_chromium` (`progress.rs`): the progress demo
//!   (`examples/progress`), one job after another in one session: a job run
//!   to its end, one cancelled, one cancelled with "keep running if I
//!   leave" ticked, one past its time limit;
//! - `sse_page_in_chromium` (`sse.rs`): the SSE example (`examples/sse`):
//!   its `EventSource` receives events, the server shuts down, the stream
//!   ends and the page goes to `connecting`, and a second server on the
//!   same port receives the reconnection.
//!
//! They need /usr/bin/chromium and /usr/bin/chromedriver (Debian's
//! `chromium chromium-driver` packages). Without them the tests are
//! reported `ignored`, not passed, with a note on stderr saying what to
//! install; when the `CI` environment variable is set they fail instead.
//! This test has a harness of its own (`harness = false`, libtest-mimic)
//! because the built-in one cannot decide at run time that a test is
//! ignored. Run with `-- --ignored` without the binaries, the tests fail
//! saying what is missing.
//!
//! While the progress demo's last job runs, the test takes a screenshot of
//! the page. It is written to the OS temporary directory; to refresh the
//! one in the docs, run
//!
//! ```text
//! UPDATE_SCREENSHOT=1 cargo test --test browser
//! ```
//!
//! which writes it to `docs/progress.png`.

mod chromium;
mod progress;
mod sse;

use std::future::Future;

use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let args = Arguments::from_args();
    let missing = chromium::missing();
    let ignored = !missing.is_empty() && std::env::var_os("CI").is_none();
    if ignored && !args.list {
        eprintln!(
            "the browser tests are ignored: {missing} not found; install Debian's \
             `chromium chromium-driver` packages (apt-get install chromium chromium-driver) \
             to run them"
        );
    }
    let trials = vec![
        Trial::test("progress_page_in_chromium", || run(progress::in_chromium()))
            .with_ignored_flag(ignored),
        Trial::test("sse_page_in_chromium", || run(sse::in_chromium())).with_ignored_flag(ignored),
    ];
    // A panic in a trial is caught by the runner and reported as a failure.
    libtest_mimic::run(&args, trials).exit();
}

/// Runs one browser test on a runtime of its own, once the binaries are
/// known to be there.
fn run(test: impl Future<Output = ()>) -> Result<(), Failed> {
    let missing = chromium::missing();
    if !missing.is_empty() {
        let why = if std::env::var_os("CI").is_some() {
            "CI is set, so the browser test fails instead of being ignored"
        } else {
            "the browser test was asked to run anyway"
        };
        return Err(format!(
            "{missing} not found: install Debian's `chromium chromium-driver` packages ({why})"
        )
        .into());
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("could not build the tokio runtime: {e}"))?
        .block_on(test);
    Ok(())
}
