//! What the browser tests share: chromedriver and a fresh Chromium profile
//! ([`Driver`]), a session that is closed whatever the scenario did
//! ([`with_session`]), and bounded waits.

use std::future::Future;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

pub(crate) const CHROMIUM: &str = "/usr/bin/chromium";
pub(crate) const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long a test waits for any one thing (a browser command, a condition
/// on the page) before failing. Longer than the loopback tests' bound: a
/// browser is slower to start and to answer.
pub(crate) const WAIT: Duration = Duration::from_secs(15);
/// How many times a chromedriver and its session are started before the
/// test fails.
const SESSION_ATTEMPTS: u32 = 3;
/// How often a condition on the page is checked.
pub(crate) const POLL: Duration = Duration::from_millis(50);

/// The binaries of [`CHROMIUM`] and [`CHROMEDRIVER`] that do not exist, as
/// "X and Y", or an empty string.
pub(crate) fn missing() -> String {
    [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|path| !Path::new(path).exists())
        .collect::<Vec<_>>()
        .join(" and ")
}

/// Starts chromedriver and a session, runs `scenario` in a task of its own
/// with the session, then closes the session (Chromium quits) and stops
/// chromedriver, whether the scenario passed or panicked.
pub(crate) async fn with_session<F, Fut>(scenario: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    // A chromedriver that has just started sometimes drops the first
    // session request (a reset connection, seen on a cold machine): the
    // setup is tried again with a new chromedriver, the test itself never.
    let mut attempt = 1;
    let (driver, client) = loop {
        let driver = Driver::start();
        let session = within(
            "a chromedriver session",
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities(&driver.profile))
                .connect(&driver.url()),
        )
        .await;
        match session {
            Ok(client) => break (driver, client),
            Err(err) if attempt < SESSION_ATTEMPTS => {
                eprintln!("chromedriver session attempt {attempt} failed ({err}); starting again");
                attempt += 1;
            }
            Err(err) => panic!("could not start a chromedriver session: {err}"),
        }
    };
    let outcome = tokio::spawn(scenario(client.clone())).await;
    let closed = tokio::time::timeout(WAIT, client.close()).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic.into_panic());
    }
    closed
        .expect("timed out closing the browser session")
        .expect("could not close the browser session");
    drop(driver);
}

/// Awaits `fut`, failing the test after [`WAIT`].
pub(crate) async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

/// Runs `script` in the page and parses what it returns.
pub(crate) async fn read_page<P: DeserializeOwned>(c: &Client, script: &str) -> P {
    let json = within("the page's state", c.execute(script, vec![]))
        .await
        .expect("could not read the page");
    serde_json::from_value(json).expect("unexpected page state")
}

/// Reads the page with `script` every [`POLL`] until `check` returns
/// something, failing with the page's state if it does not within [`WAIT`].
pub(crate) async fn wait_for<P, T>(
    c: &Client,
    script: &str,
    what: &str,
    mut check: impl FnMut(&P) -> Option<T>,
) -> T
where
    P: DeserializeOwned + std::fmt::Display,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let page: P = read_page(c, script).await;
        if let Some(found) = check(&page) {
            return found;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {WAIT:?} waiting for {what}\n{page}");
        }
        tokio::time::sleep(POLL).await;
    }
}

pub(crate) async fn click(c: &Client, id: &str) {
    let button = within(id, c.find(Locator::Id(id))).await.unwrap();
    within(id, button.click()).await.unwrap();
}

fn capabilities(profile: &Path) -> fantoccini::wd::Capabilities {
    let caps = serde_json::json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                format!("--user-data-dir={}", profile.display()),
                "--window-size=1000,800",
            ],
        },
    });
    caps.as_object().unwrap().clone()
}

/// A chromedriver listening on a free loopback port, and a fresh Chromium
/// profile directory; dropping it kills chromedriver and removes the
/// profile, also when the test fails.
pub(crate) struct Driver {
    child: Child,
    port: u16,
    profile: PathBuf,
}

impl Driver {
    fn start() -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("could not pick a free port")
            .port();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let profile = std::env::temp_dir().join(format!(
            "tower-lifecycle-chromium-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&profile).expect("could not create a Chromium profile directory");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("could not start chromedriver");
        let mut driver = Driver {
            child,
            port,
            profile,
        };

        let deadline = std::time::Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!("chromedriver exited before it listened on port {port}: {status}");
            }
            if std::time::Instant::now() >= deadline {
                panic!(
                    "timed out after {WAIT:?} waiting for chromedriver to listen on port {port}"
                );
            }
            std::thread::sleep(POLL);
        }
        driver
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
