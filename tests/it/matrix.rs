//! The scenario matrix: every way a request can end, over HTTP/1.1 and
//! HTTP/2, with ignore-abort off and on. Each cell runs on a fresh server
//! and asserts the status word, the phase, whether a panic was recorded,
//! and that every hook ran exactly once (the request's own hooks and the
//! layer's `on_complete`). The matrix is printed as a table
//! (`cargo test --test it matrix -- --nocapture`).

use crate::common;

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::channel::Channel;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::sync::{mpsc, Semaphore};
use tower::ServiceBuilder;
use tower_lifecycle::{Completion, ConnectionStatus, Drain, Lifecycle, Phase};

use common::{within, Client, Proto, BOTH};

/// Every way a request ends that the matrix covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Normal,
    AbortBeforeHead,
    AbortMidBody,
    TimeoutBeforeHead,
    TimeoutMidBody,
    HandlerPanic,
    HandlerPanicCaught,
    HookPanic,
    GracefulShutdown,
    RuntimeShutdown,
}

const SCENARIOS: [Scenario; 10] = [
    Scenario::Normal,
    Scenario::AbortBeforeHead,
    Scenario::AbortMidBody,
    Scenario::TimeoutBeforeHead,
    Scenario::TimeoutMidBody,
    Scenario::HandlerPanic,
    Scenario::HandlerPanicCaught,
    Scenario::HookPanic,
    Scenario::GracefulShutdown,
    Scenario::RuntimeShutdown,
];

/// What a cell must end with.
#[derive(Debug, PartialEq, Eq)]
struct Expected {
    status: ConnectionStatus,
    phase: Phase,
    panicked: bool,
    /// Runs of the request's counting hooks (two for `HookPanic`: one
    /// before and one after the panicking hook).
    hook_runs: usize,
}

fn expected(scenario: Scenario, keep: bool) -> Expected {
    use ConnectionStatus as S;
    let (status, phase, panicked, hook_runs) = match scenario {
        Scenario::Normal => (S::NORMAL, Phase::Body, false, 1),
        Scenario::AbortBeforeHead if keep => (S::ABORTED, Phase::Continued, false, 1),
        Scenario::AbortBeforeHead => (S::ABORTED, Phase::Handler, false, 1),
        Scenario::AbortMidBody if keep => (S::ABORTED, Phase::Continued, false, 1),
        Scenario::AbortMidBody => (S::ABORTED, Phase::Body, false, 1),
        Scenario::TimeoutBeforeHead => (S::TIMEOUT, Phase::Handler, false, 1),
        Scenario::TimeoutMidBody => (S::TIMEOUT, Phase::Body, false, 1),
        Scenario::HandlerPanic => (S::NORMAL, Phase::Handler, true, 1),
        Scenario::HandlerPanicCaught => (S::NORMAL, Phase::Body, true, 1),
        Scenario::HookPanic => (S::NORMAL, Phase::Body, false, 2),
        Scenario::GracefulShutdown => (S::TIMEOUT, Phase::Continued, false, 1),
        Scenario::RuntimeShutdown => (S::NORMAL, Phase::Continued, false, 1),
    };
    Expected {
        status,
        phase,
        panicked,
        hook_runs,
    }
}

const LIMIT: Duration = Duration::from_millis(200);
const HELLO: &str = "hello";
const FIRST: &str = "first chunk";

/// The handler's side of a cell.
#[derive(Clone)]
struct Ctl {
    /// The handler (or its producer) is inside its work.
    started: mpsc::UnboundedSender<Lifecycle>,
    /// Opened by the test: lets pending work go on.
    gate: Arc<Semaphore>,
    /// Runs of the request's counting hooks.
    hook_runs: Arc<AtomicUsize>,
}

impl Ctl {
    async fn wait_gate(&self) {
        drop(self.gate.acquire().await);
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(s: &'static str) -> Body {
    Full::new(Bytes::from_static(s.as_bytes())).boxed()
}

/// A body whose producer sends [`FIRST`], then waits for the gate and sends
/// two more chunks (which fail if the body is gone).
fn gated_stream(ctl: &Ctl, lifecycle: Lifecycle) -> Body {
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(1);
    let ctl = ctl.clone();
    tokio::spawn(async move {
        if tx
            .send_data(Bytes::from_static(FIRST.as_bytes()))
            .await
            .is_err()
        {
            return;
        }
        let _ = ctl.started.send(lifecycle);
        ctl.wait_gate().await;
        for chunk in ["second", "third"] {
            if tx
                .send_data(Bytes::from_static(chunk.as_bytes()))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    body.boxed()
}

async fn handle(ctl: Ctl, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let lifecycle = req.extensions().get::<Lifecycle>().unwrap().clone();
    let runs = ctl.hook_runs.clone();
    lifecycle.on_shutdown(move |_| {
        runs.fetch_add(1, Ordering::SeqCst);
    });
    let body = match req.uri().path() {
        "/normal" => full(HELLO),
        "/pending" => {
            let _ = ctl.started.send(lifecycle.clone());
            ctl.wait_gate().await;
            full("late")
        }
        "/stream" => gated_stream(&ctl, lifecycle.clone()),
        "/timeout-head" => {
            lifecycle.set_time_limit(Some(LIMIT));
            let _ = ctl.started.send(lifecycle.clone());
            ctl.wait_gate().await;
            full("late")
        }
        "/timeout-body" => {
            lifecycle.set_time_limit(Some(LIMIT));
            gated_stream(&ctl, lifecycle.clone())
        }
        "/panic" => panic!("the handler panics"),
        "/hook-panic" => {
            lifecycle.on_shutdown(|_| panic!("a hook panics"));
            let runs = ctl.hook_runs.clone();
            lifecycle.on_shutdown(move |_| {
                runs.fetch_add(1, Ordering::SeqCst);
            });
            full(HELLO)
        }
        "/after" => {
            lifecycle.after_response(std::future::pending());
            full(HELLO)
        }
        other => panic!("no route {other}"),
    };
    Ok(Response::new(body))
}

fn path(scenario: Scenario) -> &'static str {
    match scenario {
        Scenario::Normal => "/normal",
        Scenario::AbortBeforeHead => "/pending",
        Scenario::AbortMidBody => "/stream",
        Scenario::TimeoutBeforeHead => "/timeout-head",
        Scenario::TimeoutMidBody => "/timeout-body",
        Scenario::HandlerPanic | Scenario::HandlerPanicCaught => "/panic",
        Scenario::HookPanic => "/hook-panic",
        Scenario::GracefulShutdown | Scenario::RuntimeShutdown => "/after",
    }
}

/// A fresh server for one cell.
struct Cell {
    addr: std::net::SocketAddr,
    ctl: Ctl,
    started: mpsc::UnboundedReceiver<Lifecycle>,
    done: common::Completions,
    drain: Drain,
}

impl Cell {
    async fn start(scenario: Scenario, keep: bool) -> Self {
        let (layer, done) = common::layer();
        let layer = layer.ignore_abort(keep);
        let drain = layer.drain();
        let (tx, started) = mpsc::unbounded_channel();
        let ctl = Ctl {
            started: tx,
            gate: Arc::new(Semaphore::new(0)),
            hook_runs: Arc::default(),
        };
        let handler_ctl = ctl.clone();
        let handler = tower::service_fn(move |req| handle(handler_ctl.clone(), req));
        let addr = if scenario == Scenario::HandlerPanicCaught {
            let svc = ServiceBuilder::new()
                .layer(layer)
                .layer(tower_http::catch_panic::CatchPanicLayer::new())
                .service(handler);
            common::serve(svc).await
        } else {
            common::serve(ServiceBuilder::new().layer(layer).service(handler)).await
        };
        Cell {
            addr,
            ctl,
            started,
            done,
            drain,
        }
    }

    fn open_gate(&self) {
        self.ctl.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    async fn started(&mut self) -> Lifecycle {
        within("the handler to start", self.started.recv())
            .await
            .unwrap()
    }

    /// Plays the client's part of `scenario`.
    async fn play(&mut self, scenario: Scenario, proto: Proto) {
        let (mut client, _conn) = Client::connect(self.addr, proto).await;
        let req = common::get(path(scenario));
        match scenario {
            Scenario::Normal | Scenario::HookPanic => {
                let res = within("the response", client.send(req)).await.unwrap();
                assert_eq!(common::read_all(res).await, HELLO);
            }
            Scenario::AbortBeforeHead => {
                let call = tokio::spawn(async move { client.send(req).await.map(drop) });
                let lifecycle = self.started().await;
                call.abort();
                within("the abort", lifecycle.aborted()).await;
                // Under ignore-abort the handler goes on; let it finish.
                self.open_gate();
            }
            Scenario::AbortMidBody => {
                let res = within("the head", client.send(req)).await.unwrap();
                let mut body = res.into_body();
                common::read_exactly(&mut body, FIRST).await;
                let lifecycle = self.started().await;
                drop(body);
                drop(client);
                within("the abort", lifecycle.aborted()).await;
                self.open_gate();
            }
            Scenario::TimeoutBeforeHead => {
                let res = within("the response", client.send(req)).await.unwrap();
                assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
                self.open_gate();
            }
            Scenario::TimeoutMidBody => {
                let res = within("the head", client.send(req)).await.unwrap();
                let mut body = res.into_body();
                common::read_exactly(&mut body, FIRST).await;
                let rest = within("the rest", body.collect()).await;
                assert!(rest.is_err(), "a cut body must not end cleanly");
                self.open_gate();
            }
            Scenario::HandlerPanic => {
                let res = within("the response", client.send(req)).await;
                assert!(res.is_err(), "no response after a panic: {res:?}");
            }
            Scenario::HandlerPanicCaught => {
                let res = within("the response", client.send(req)).await.unwrap();
                assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
                common::read_all(res).await;
            }
            Scenario::GracefulShutdown => {
                let res = within("the response", client.send(req)).await.unwrap();
                assert_eq!(common::read_all(res).await, HELLO);
                assert_eq!(self.drain.in_flight(), 1);
                let report = within("the shutdown", self.drain.shutdown(LIMIT)).await;
                assert_eq!((report.finished(), report.cancelled()), (0, 1));
                assert_eq!(self.drain.in_flight(), 0);
            }
            Scenario::RuntimeShutdown => unreachable!("played on a runtime of its own"),
        }
    }
}

/// Checks a cell's completion and hook counts against what it must be.
fn check(cell: &str, done: &Completion, hook_runs: usize, expected: &Expected) {
    let got = Expected {
        status: done.status(),
        phase: done.phase(),
        panicked: done.panicked(),
        hook_runs,
    };
    assert_eq!(&got, expected, "{cell}: {done:?}");
}

async fn run_cell(scenario: Scenario, proto: Proto, keep: bool) -> Completion {
    let name = format!("{scenario:?} over {proto:?}, ignore-abort {keep}");
    let mut cell = Cell::start(scenario, keep).await;
    cell.play(scenario, proto).await;
    let done = cell.done.next().await;
    let want = expected(scenario, keep);
    // The hook ran before on_complete; it must have run exactly as often.
    check(
        &name,
        &done,
        cell.ctl.hook_runs.load(Ordering::SeqCst),
        &want,
    );
    // Nothing runs twice: a normal request afterwards is the only other
    // completion.
    let (mut client, _conn) = Client::connect(cell.addr, proto).await;
    let res = within("a normal request", client.send(common::get("/normal")))
        .await
        .unwrap();
    assert_eq!(common::read_all(res).await, HELLO);
    let next = cell.done.next().await;
    assert_eq!(next.status(), ConnectionStatus::NORMAL, "{name}");
    cell.done.assert_none();
    assert_eq!(
        cell.ctl.hook_runs.load(Ordering::SeqCst),
        want.hook_runs + 1,
        "{name}: a hook ran again"
    );
    done
}

/// The runtime the server runs on is shut down while `after_response` work
/// is in flight: the work is dropped, and the hooks still run, once.
fn run_runtime_shutdown_cell(proto: Proto, keep: bool) -> Completion {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (hook_runs, mut done) = runtime.block_on(async {
        let mut cell = Cell::start(Scenario::RuntimeShutdown, keep).await;
        let (mut client, _conn) = Client::connect(cell.addr, proto).await;
        let res = within("the response", client.send(common::get("/after")))
            .await
            .unwrap();
        assert_eq!(common::read_all(res).await, HELLO);
        assert_eq!(cell.drain.in_flight(), 1, "the work is in flight");
        cell.done.assert_none();
        (cell.ctl.hook_runs.clone(), cell.done)
    });
    drop(runtime);
    let name = format!("RuntimeShutdown over {proto:?}, ignore-abort {keep}");
    let completion = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(done.next());
    check(
        &name,
        &completion,
        hook_runs.load(Ordering::SeqCst),
        &expected(Scenario::RuntimeShutdown, keep),
    );
    done.assert_none();
    completion
}

/// Keeps the panics this test causes on purpose out of the output.
fn quiet_expected_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .unwrap_or_default();
        if !matches!(message, "the handler panics" | "a hook panics") {
            default(info);
        }
    }));
}

#[test]
fn scenario_matrix() {
    quiet_expected_panics();
    let mut table = String::from(
        "| scenario | HTTP/1.1, ignore-abort off | HTTP/1.1, on | HTTP/2, off | HTTP/2, on |\n| --- | --- | --- | --- | --- |\n",
    );
    for scenario in SCENARIOS {
        let mut row = format!("| {scenario:?} |");
        for proto in BOTH {
            for keep in [false, true] {
                let done = if scenario == Scenario::RuntimeShutdown {
                    run_runtime_shutdown_cell(proto, keep)
                } else {
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .unwrap()
                        .block_on(run_cell(scenario, proto, keep))
                };
                let panicked = if done.panicked() { ", panicked" } else { "" };
                write!(row, " {} / {}{panicked} |", done.status(), done.phase()).unwrap();
            }
        }
        table.push_str(&row);
        table.push('\n');
    }
    println!("{table}");
}
