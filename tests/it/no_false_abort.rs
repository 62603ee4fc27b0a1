//! Zero false aborts: every way hyper legitimately finishes a response
//! without polling its body to `None` must end the request's lifecycle
//! NORMAL, in the `Body` phase, with the bytes handed over counted.
//!
//! Every case runs over real loopback sockets, once over HTTP/1.1
//! keep-alive and once over HTTP/2, all requests of a protocol in sequence
//! on one connection per server (a plain hyper server for most cases, an
//! `axum::serve` server for axum's GET-route HEAD handling), and exactly one
//! completion must arrive per request, in request order.
//!
//! The same cases are then served through tower-http's `OnEarlyDropLayer`
//! instead, and whether it reported an early drop is printed next to our
//! layer's status in a comparison table. tower-http's column is printed,
//! not asserted: its classification may change (be fixed) without this
//! crate being wrong; only our layer's is asserted. Run with `--nocapture`
//! to see the table.

use crate::common;

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TE, TRAILER};
use http::{response, HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::channel::Channel;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use tokio::sync::mpsc;
use tower::Layer;
use tower_http::on_early_drop::{OnBodyDrop, OnDropCallback, OnEarlyDropLayer, OnFutureDrop};
use tower_lifecycle::{Completion, ConnectionStatus, Phase};

use common::scripted_body::ScriptedBody;
use common::{within, Client, Proto, BOTH};

/// Which server a case is served by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    /// A plain service answering with [`response`] for the case's name.
    Plain,
    /// An axum router with one GET route, `/`, answering [`AXUM_BODY`].
    Axum,
}

/// One response kind, and everything observed about it. Per-protocol
/// values are `[HTTP/1.1, HTTP/2]`.
#[derive(Debug)]
struct Case {
    /// The path on the plain server, and the case's name.
    name: &'static str,
    /// What the table calls it.
    what: &'static str,
    server: Server,
    /// Whether the request is HEAD (else GET).
    head: bool,
    /// The response status.
    status: u16,
    /// The body the client reads.
    body: &'static str,
    /// Whether the client must receive [`trailers`].
    trailers: [bool; 2],
    /// Whether the client's HTTP/2 library resets the stream with
    /// `PROTOCOL_ERROR` instead of reading the body: hyper's HTTP/2 server
    /// sends a HEAD response's body as DATA frames, which HTTP/2 forbids.
    protocol_error: [bool; 2],
    /// `Completion::bytes_sent`.
    bytes_sent: [u64; 2],
}

const AXUM_BODY: &str = "hello from axum";

/// The table of cases, in the order they are requested.
const CASES: &[Case] = &[
    Case::plain(
        "stream",
        "chunked `Channel` stream, read to the end",
        "one two three",
    )
    .bytes_sent([13, 13]),
    Case::plain("full", "`Full` body", "full body").bytes_sent([9, 9]),
    Case::plain(
        "exact-size-hint",
        "exact `size_hint`, two chunks (not `Full`)",
        "exact size",
    )
    .bytes_sent([10, 10]),
    Case::plain(
        "end-stream",
        "`is_end_stream` after the last chunk, no `size_hint`",
        "ends itself",
    )
    .bytes_sent([11, 11]),
    Case::plain(
        "content-length",
        "handler-set `Content-Length`, streamed body",
        "length from header",
    )
    .bytes_sent([18, 18]),
    Case::plain(
        "head",
        "HEAD, plain service, body with `Content-Length`",
        "",
    )
    .head()
    .protocol_error([false, true])
    .bytes_sent([0, 9]),
    Case::plain("axum-get", "axum GET route", AXUM_BODY)
        .axum()
        .bytes_sent([15, 15]),
    Case::plain("axum-head", "HEAD on an axum GET route", "")
        .axum()
        .head()
        .bytes_sent([0, 0]),
    Case::plain("204", "204 No Content, empty streamed body", "")
        .status(204)
        .bytes_sent([0, 0]),
    Case::plain("304", "304 Not Modified, empty streamed body", "")
        .status(304)
        .bytes_sent([0, 0]),
    Case::plain("empty", "`Empty` body", "").bytes_sent([0, 0]),
    Case::plain("trailers", "data then trailers", "with trailers")
        .trailers()
        .bytes_sent([13, 13]),
];

impl Case {
    /// A GET answered 200 by the plain server, no trailers, no protocol
    /// error.
    const fn plain(name: &'static str, what: &'static str, body: &'static str) -> Case {
        Case {
            name,
            what,
            server: Server::Plain,
            head: false,
            status: 200,
            body,
            trailers: [false, false],
            protocol_error: [false, false],
            bytes_sent: [0, 0],
        }
    }

    const fn axum(self) -> Case {
        Case {
            server: Server::Axum,
            ..self
        }
    }

    const fn head(self) -> Case {
        Case { head: true, ..self }
    }

    const fn status(self, status: u16) -> Case {
        Case { status, ..self }
    }

    const fn trailers(self) -> Case {
        Case {
            trailers: [true, true],
            ..self
        }
    }

    const fn protocol_error(self, protocol_error: [bool; 2]) -> Case {
        Case {
            protocol_error,
            ..self
        }
    }

    const fn bytes_sent(self, bytes_sent: [u64; 2]) -> Case {
        Case { bytes_sent, ..self }
    }
}

/// The response body type of the plain server.
type CaseBody = BoxBody<Bytes, Infallible>;

/// Builds the plain server's response for the case named `name`.
fn response(name: &str) -> Response<CaseBody> {
    let ok = Response::builder();
    let (head, body) = match name {
        "stream" => (ok, produced(&["one ", "two ", "three"])),
        "full" => (ok, Full::from("full body").boxed()),
        "exact-size-hint" => (ok, ScriptedBody::new(["exact ", "size"]).exact().boxed()),
        "end-stream" => (ok, ScriptedBody::new(["ends ", "itself"]).ends().boxed()),
        "content-length" => (
            ok.header(CONTENT_LENGTH, 18),
            ScriptedBody::new(["length ", "from header"]).boxed(),
        ),
        "head" => (
            ok.header(CONTENT_LENGTH, 9),
            ScriptedBody::new(["head ", "body"]).boxed(),
        ),
        "204" => (
            ok.status(204),
            ScriptedBody::new(Vec::<Bytes>::new()).boxed(),
        ),
        "304" => (
            ok.status(304),
            ScriptedBody::new(Vec::<Bytes>::new()).boxed(),
        ),
        "empty" => (ok, Empty::new().boxed()),
        "trailers" => (
            ok.header(TRAILER, "x-checksum"),
            ScriptedBody::new(["with ", "trailers"])
                .trailers(trailers())
                .boxed(),
        ),
        other => panic!("no case named {other:?}"),
    };
    head.body(body).unwrap()
}

/// The trailers of the `trailers` case.
fn trailers() -> HeaderMap {
    HeaderMap::from_iter([(
        HeaderName::from_static("x-checksum"),
        HeaderValue::from_static("abc123"),
    )])
}

/// The plain server's service.
async fn handle(req: Request<Incoming>) -> Result<Response<CaseBody>, Infallible> {
    Ok(response(&req.uri().path()[1..]))
}

/// The axum server's only handler.
async fn axum_handler() -> &'static str {
    AXUM_BODY
}

fn axum_app() -> axum::Router {
    axum::Router::new().route("/", axum::routing::get(axum_handler))
}

/// A `Channel` body fed chunk by chunk by a producer task, like a handler
/// streaming from elsewhere: no `size_hint`, never `is_end_stream`.
fn produced(chunks: &'static [&'static str]) -> CaseBody {
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(1);
    tokio::spawn(async move {
        for chunk in chunks {
            if tx
                .send_data(Bytes::from_static(chunk.as_bytes()))
                .await
                .is_err()
            {
                return; // the body was dropped
            }
        }
    });
    body.boxed()
}

/// The two servers of a run.
struct Servers {
    plain: SocketAddr,
    axum: SocketAddr,
}

impl Servers {
    /// Serves `plain` with hyper-util and `app` with `axum::serve`, each on
    /// 127.0.0.1:0.
    async fn start<S, B>(plain: S, app: axum::Router) -> Servers
    where
        S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let axum = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Servers {
            plain: common::serve(plain).await,
            axum,
        }
    }
}

impl Case {
    fn method(&self) -> Method {
        if self.head {
            Method::HEAD
        } else {
            Method::GET
        }
    }

    fn request(&self) -> Request<Empty<Bytes>> {
        let path = match self.server {
            Server::Plain => self.name,
            Server::Axum => "",
        };
        let mut req = Request::builder()
            .method(self.method())
            .uri(format!("http://127.0.0.1/{path}"));
        if self.trailers.contains(&true) {
            req = req.header(TE, "trailers");
        }
        req.body(Empty::new()).unwrap()
    }

    /// The completion `LifecycleLayer` must report.
    fn completion(&self, proto: Proto) -> Summary {
        Summary {
            status: ConnectionStatus::NORMAL,
            phase: Phase::Body,
            response_status: Some(StatusCode::from_u16(self.status).unwrap()),
            bytes_sent: self.bytes_sent[column(proto)],
            failed: false,
        }
    }
}

/// The index of `proto` in a case's per-protocol values.
fn column(proto: Proto) -> usize {
    match proto {
        Proto::Http1 => 0,
        Proto::Http2 => 1,
    }
}

/// How a request is named in the early-drop reports.
fn request_id(method: &Method, uri: &http::Uri) -> String {
    format!("{method} {}", uri.path())
}

/// The parts of a [`Completion`] a case asserts.
#[derive(Debug, PartialEq, Eq)]
struct Summary {
    status: ConnectionStatus,
    phase: Phase,
    response_status: Option<StatusCode>,
    bytes_sent: u64,
    /// Panicked, body error or service error.
    failed: bool,
}

impl From<&Completion> for Summary {
    fn from(c: &Completion) -> Self {
        Summary {
            status: c.status(),
            phase: c.phase(),
            response_status: c.response_status(),
            bytes_sent: c.bytes_sent(),
            failed: c.panicked() || c.body_error() || c.service_error(),
        }
    }
}

/// One client connection per server, speaking one protocol.
struct Connections {
    proto: Proto,
    plain: (Client, tokio::task::JoinHandle<()>),
    axum: (Client, tokio::task::JoinHandle<()>),
}

impl Connections {
    async fn open(servers: &Servers, proto: Proto) -> Connections {
        Connections {
            proto,
            plain: Client::connect(servers.plain, proto).await,
            axum: Client::connect(servers.axum, proto).await,
        }
    }

    /// Sends `case`'s request on its server's connection, reads the whole
    /// response and checks it.
    async fn exchange(&mut self, case: &Case) {
        let what = format!("{} over {:?}", case.name, self.proto);
        let (client, _) = match case.server {
            Server::Plain => &mut self.plain,
            Server::Axum => &mut self.axum,
        };
        let res = within(&what, client.send(case.request()))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(res.status(), case.status, "{what}");
        assert_ne!(
            res.headers().get(CONNECTION),
            Some(&HeaderValue::from_static("close")),
            "{what}: the server closes the connection"
        );
        let body = within(&what, res.into_body().collect()).await;
        if case.protocol_error[column(self.proto)] {
            let err = body.expect_err(&what);
            assert!(
                format!("{err:?}").contains("PROTOCOL_ERROR"),
                "{what}: {err:?}"
            );
            return;
        }
        let body = body.unwrap_or_else(|e| panic!("{what}: body error: {e:?}"));
        let expected_trailers = case.trailers[column(self.proto)].then(trailers);
        assert_eq!(body.trailers(), expected_trailers.as_ref(), "{what}");
        assert_eq!(body.to_bytes(), case.body, "{what}");
    }

    /// Asserts both connections are still open: every request was sent on
    /// the one connection to its server (a closed connection also fails the
    /// next `send`).
    fn assert_still_open(&self) {
        for (server, (_, conn)) in [("plain", &self.plain), ("axum", &self.axum)] {
            assert!(
                !conn.is_finished(),
                "{:?} connection to the {server} server closed",
                self.proto
            );
        }
    }
}

/// What a run learns about each request once its response was read.
trait Observer {
    type Outcome;
    /// Waits for what the middleware reported about `case`'s request.
    async fn observe(&mut self, case: &Case, proto: Proto) -> Self::Outcome;
    /// Asserts nothing more was reported.
    fn assert_none(&mut self);
}

/// Runs every case, in table order, over `proto`: one connection per
/// server, one request at a time, each observed before the next is sent.
async fn run<O: Observer>(servers: Servers, proto: Proto, mut observer: O) -> Vec<O::Outcome> {
    let mut conns = Connections::open(&servers, proto).await;
    let mut outcomes = Vec::new();
    for case in CASES {
        conns.exchange(case).await;
        outcomes.push(observer.observe(case, proto).await);
    }
    conns.assert_still_open();
    observer.assert_none();
    outcomes
}

impl Observer for common::Completions {
    type Outcome = ConnectionStatus;

    async fn observe(&mut self, case: &Case, proto: Proto) -> ConnectionStatus {
        let completion = self.next().await;
        assert_eq!(
            Summary::from(&completion),
            case.completion(proto),
            "{} over {proto:?}: {completion:?}",
            case.name
        );
        completion.status()
    }

    fn assert_none(&mut self) {
        common::Completions::assert_none(self);
    }
}

/// Serves every case through `LifecycleLayer` over `proto` and asserts each
/// request's one completion; returns their statuses in case order.
async fn lifecycle_run(proto: Proto) -> Vec<ConnectionStatus> {
    let (layer, done) = common::layer();
    let servers = Servers::start(
        layer.clone().layer(tower::service_fn(handle)),
        axum_app().layer(layer),
    )
    .await;
    run(servers, proto, done).await
}

/// Which of tower-http's two hook slots a report is from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Future,
    Body,
}

/// One request's slot: whether its early-drop callback fired.
#[derive(Debug)]
struct Report {
    request: String,
    slot: Slot,
    early_drop: bool,
}

/// tower-http's early-drop callback: reports when it is fired (an early
/// drop) and when it is dropped unfired (the future resolved, or the body
/// ended), so every request yields exactly one report per slot and no
/// test has to guess when a callback might still fire.
struct Reporter {
    tx: mpsc::UnboundedSender<Report>,
    request: String,
    slot: Slot,
    early_drop: bool,
}

impl OnDropCallback for Reporter {
    fn on_drop(mut self) {
        self.early_drop = true;
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        let _ = self.tx.send(Report {
            request: std::mem::take(&mut self.request),
            slot: self.slot,
            early_drop: self.early_drop,
        });
    }
}

/// The hook for both of `OnEarlyDropLayer`'s slots.
#[derive(Clone)]
struct EarlyDrops(mpsc::UnboundedSender<Report>);

impl EarlyDrops {
    fn reporter(&self, request: String, slot: Slot) -> Reporter {
        Reporter {
            tx: self.0.clone(),
            request,
            slot,
            early_drop: false,
        }
    }
}

impl<B> OnFutureDrop<B> for EarlyDrops {
    type Callback = Reporter;

    fn make(&mut self, req: &Request<B>) -> Reporter {
        self.reporter(request_id(req.method(), req.uri()), Slot::Future)
    }
}

impl<B> OnBodyDrop<B> for EarlyDrops {
    type Intermediate = String;
    type Callback = Reporter;

    fn make_at_call(&mut self, req: &Request<B>) -> String {
        request_id(req.method(), req.uri())
    }

    fn make_at_response(&mut self, request: String, _parts: &response::Parts) -> Reporter {
        self.reporter(request, Slot::Body)
    }
}

/// Receives the [`Report`]s.
struct Reports(mpsc::UnboundedReceiver<Report>);

impl Reports {
    async fn next(&mut self, request: &str, slot: Slot) -> Report {
        let report = within("an early-drop report", self.0.recv())
            .await
            .expect("layer dropped");
        assert_eq!((report.request.as_str(), report.slot), (request, slot));
        report
    }
}

impl Observer for Reports {
    /// The number of early drops tower-http reported for the request.
    type Outcome = usize;

    async fn observe(&mut self, case: &Case, _proto: Proto) -> usize {
        let req = case.request();
        let request = request_id(req.method(), req.uri());
        let future = self.next(&request, Slot::Future).await;
        let body = self.next(&request, Slot::Body).await;
        usize::from(future.early_drop) + usize::from(body.early_drop)
    }

    fn assert_none(&mut self) {
        if let Ok(report) = self.0.try_recv() {
            panic!("unexpected extra early-drop report: {report:?}");
        }
    }
}

/// Serves every case through tower-http's `OnEarlyDropLayer` over `proto`;
/// returns the early drops it reported per request, in case order.
async fn tower_http_run(proto: Proto) -> Vec<usize> {
    let (tx, rx) = mpsc::unbounded_channel();
    let layer = OnEarlyDropLayer::new(EarlyDrops(tx));
    let servers = Servers::start(
        layer.layer(tower::service_fn(handle)),
        axum_app().layer(layer),
    )
    .await;
    run(servers, proto, Reports(rx)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_false_abort_over_http1_keep_alive() {
    lifecycle_run(Proto::Http1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_false_abort_over_http2() {
    lifecycle_run(Proto::Http2).await;
}

/// The same cases through tower-http's `OnEarlyDropLayer`: prints the
/// comparison table. Only our layer's completions are asserted (by
/// `lifecycle_run`); tower-http's early drops are printed, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compared_with_tower_http_on_early_drop() {
    let mut tower_http = Vec::new();
    let mut lifecycle = Vec::new();
    for proto in BOTH {
        tower_http.push(tower_http_run(proto).await);
        lifecycle.push(lifecycle_run(proto).await);
    }

    let cell = |early_drops: usize| match early_drops {
        0 => "no early drop".to_owned(),
        1 => "**early drop**".to_owned(),
        n => format!("**{n} early drops**"),
    };
    let mut table = String::from(
        "| case | tower-http on_early_drop, HTTP/1.1 (printed, not asserted) \
         | tower-http on_early_drop, HTTP/2 (printed, not asserted) \
         | tower-lifecycle (asserted) |\n| --- | --- | --- | --- |\n",
    );
    for (i, case) in CASES.iter().enumerate() {
        let ours = if lifecycle[0][i] == lifecycle[1][i] {
            lifecycle[0][i].to_string()
        } else {
            format!("HTTP/1.1 {}, HTTP/2 {}", lifecycle[0][i], lifecycle[1][i])
        };
        writeln!(
            table,
            "| {} | {} | {} | {ours} |",
            case.what,
            cell(tower_http[0][i]),
            cell(tower_http[1][i]),
        )
        .unwrap();
    }
    println!("{table}");
}

/// hyper sends no body with a 2xx answer to CONNECT over HTTP/1.1 (the
/// connection becomes a tunnel) and drops the body unread, as for HEAD: that
/// is not an abort.
#[tokio::test]
async fn connect_2xx_over_http1_is_not_an_abort() {
    let (layer, mut done) = common::layer();
    let svc =
        tower::ServiceBuilder::new()
            .layer(layer)
            .service_fn(|_req: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("connected")))
            });
    let addr = common::serve(svc).await;
    let (mut client, _conn) = Client::connect(addr, Proto::Http1).await;
    let req = Request::connect("127.0.0.1:443")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = within("the CONNECT response", client.send(req))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let completion = done.next().await;
    assert_eq!(
        completion.status(),
        ConnectionStatus::NORMAL,
        "{completion:?}"
    );
    assert_eq!(completion.phase(), Phase::Body);
    assert_eq!(completion.bytes_sent(), 0);
}
