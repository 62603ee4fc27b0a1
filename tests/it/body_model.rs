//! Body classification against a simple model, with proptest: random frame
//! sequences, exact / inexact / absent size hints, a `Content-Length` set or
//! not, HEAD / 204 / 304, trailers, `is_end_stream` reported or not, and
//! the server dropping the body at any point. The layer's verdict (NORMAL
//! or ABORTED) and `bytes_sent` must equal the model's.

use crate::common;

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use proptest::prelude::*;
use tower::{Service, ServiceBuilder};
use tower_lifecycle::{Completion, ConnectionStatus, LifecycleLayer};

use common::scripted_body::{Hint, ScriptedBody};

/// What the test body does.
#[derive(Clone, Debug)]
struct Script {
    /// Lengths of the data frames.
    chunks: Vec<usize>,
    trailers: bool,
    /// How the body reports its size.
    hint: Hint,
    /// Whether it reports `is_end_stream` once nothing is left.
    reports_end: bool,
    /// The response's `Content-Length` header, if any.
    content_length: Option<u64>,
    status: StatusCode,
    method: Method,
    /// Frames the server polls before dropping the body; `None`: it polls
    /// until the body returns `None`.
    polls: Option<usize>,
}

impl Script {
    fn total(&self) -> u64 {
        self.chunks.iter().map(|&n| n as u64).sum()
    }
}

/// The model: (complete, bytes handed over).
fn model(s: &Script) -> (bool, u64) {
    let bodiless = s.method == Method::HEAD
        || s.status == StatusCode::NO_CONTENT
        || s.status == StatusCode::NOT_MODIFIED;
    let total = s.total();
    let exact = matches!(s.hint, Hint::Exact).then_some(total);
    let expected = match (exact, s.content_length) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let frames = s.chunks.len() + usize::from(s.trailers);
    let polled = s.polls.map_or(frames + 1, |p| p.min(frames + 1));
    let data_polled = polled.min(s.chunks.len());
    let sent: u64 = s.chunks[..data_polled].iter().map(|&n| n as u64).sum();
    let saw_none = polled > frames;
    let saw_trailers = s.trailers && polled > s.chunks.len();
    let reported_end =
        s.reports_end && !s.trailers && (s.chunks.is_empty() || data_polled == s.chunks.len());
    let complete =
        bodiless || saw_none || saw_trailers || reported_end || expected.is_some_and(|n| sent >= n);
    (complete, sent)
}

/// Runs the script through the layer; returns the completion.
fn run(s: &Script) -> Completion {
    let seen: Arc<Mutex<Option<Completion>>> = Arc::default();
    let record = seen.clone();
    let layer =
        LifecycleLayer::new().on_complete(move |c| *record.lock().unwrap() = Some(c.clone()));
    let script = s.clone();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |_req: Request<()>| {
            let s = script.clone();
            let mut body = ScriptedBody::new(s.chunks.iter().map(|&n| vec![b'x'; n]))
                .hint(s.hint)
                .reports_end(s.reports_end);
            if s.trailers {
                body = body.trailers(HeaderMap::new());
            }
            let mut res = Response::new(body);
            *res.status_mut() = s.status;
            if let Some(n) = s.content_length {
                res.headers_mut()
                    .insert(http::header::CONTENT_LENGTH, n.into());
            }
            std::future::ready(Ok::<_, Infallible>(res))
        });
    let req = Request::builder()
        .method(s.method.clone())
        .body(())
        .unwrap();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut fut = std::pin::pin!(svc.call(req));
    let Poll::Ready(Ok(res)) = fut.as_mut().poll(&mut cx) else {
        panic!("the handler is ready at once");
    };
    let mut body = Box::pin(res.into_body());
    let mut polls = 0;
    while s.polls.is_none_or(|p| polls < p) {
        polls += 1;
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(_))) => {}
            Poll::Ready(None) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(body);
    let done = seen.lock().unwrap().take().expect("the hooks ran");
    done
}

fn script() -> impl Strategy<Value = Script> {
    (
        prop::collection::vec(0usize..64, 0..6),
        any::<bool>(),
        prop_oneof![Just(Hint::Exact), Just(Hint::Inexact), Just(Hint::Default)],
        any::<bool>(),
        prop::option::of(0u64..400),
        prop_oneof![
            6 => Just(StatusCode::OK),
            1 => Just(StatusCode::NO_CONTENT),
            1 => Just(StatusCode::NOT_MODIFIED),
        ],
        prop_oneof![5 => Just(Method::GET), 1 => Just(Method::HEAD)],
        prop::option::of(0usize..9),
        any::<bool>(),
    )
        .prop_map(
            |(chunks, trailers, hint, reports_end, length, status, method, polls, right_length)| {
                let total = chunks.iter().map(|&n| n as u64).sum::<u64>();
                // Half the time the header is the true length, as servers set it.
                let content_length = length.map(|n| if right_length { total } else { n });
                Script {
                    chunks,
                    trailers,
                    hint,
                    reports_end,
                    content_length,
                    status,
                    method,
                    polls,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_verdict_and_bytes_sent_match_the_model(s in script()) {
        let done = run(&s);
        let (complete, sent) = model(&s);
        let status = if complete { ConnectionStatus::NORMAL } else { ConnectionStatus::ABORTED };
        prop_assert_eq!(done.status(), status, "{:?} -> {:?}", s, done);
        prop_assert_eq!(done.bytes_sent(), sent, "{:?} -> {:?}", s, done);
    }
}
