//! The time limit: the `grpc-timeout` header, the timeout response, and
//! the error a body ends with when the limit expires while it streams.

use std::fmt;
use std::future::Future as _;
use std::time::Duration;

use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::StatusCode;

/// The error type of [`LifecycleBody`](crate::LifecycleBody): the inner
/// body's error, or [`TimedOut`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error a response body ends with when the request's time limit
/// expires while it streams.
///
/// hyper answers a body error by resetting the stream (HTTP/2) or closing
/// the connection (HTTP/1.1), so the client sees an incomplete response,
/// never a short one that looks complete. Find it with
/// `err.downcast_ref::<TimedOut>()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TimedOut;

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request's time limit expired")
    }
}

impl std::error::Error for TimedOut {}

/// Whether the request is gRPC (`content-type: application/grpc…`).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The `grpc-timeout` request header: up to 8 ASCII digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`). `None` when absent; malformed values
/// are ignored with a debug event.
pub(crate) fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?;
    let parsed = parse_grpc_timeout(value.as_bytes());
    if parsed.is_none() {
        tracing::debug!(
            value = ?value,
            "tower_lifecycle: ignoring a malformed grpc-timeout header"
        );
    }
    parsed
}

fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// gRPC's `DEADLINE_EXCEEDED` status code.
pub(crate) const GRPC_DEADLINE_EXCEEDED: i32 = 4;

/// The `grpc-status` of a response head or trailers.
pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

const GRPC_MESSAGE: &str = "request%20time%20limit%20expired";

/// The trailers that end a gRPC response cut by the time limit.
pub(crate) fn grpc_deadline_exceeded() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("4"));
    trailers.insert("grpc-message", HeaderValue::from_static(GRPC_MESSAGE));
    trailers
}

/// The head of the response sent when the limit expires before the handler
/// produced one: `status` for HTTP, a trailers-only gRPC response
/// (`grpc-status: 4`, DEADLINE_EXCEEDED) for gRPC.
pub(crate) fn timeout_head(grpc: bool, status: StatusCode) -> http::response::Builder {
    if grpc {
        http::Response::builder()
            .status(StatusCode::OK)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/grpc"))
            .header("grpc-status", HeaderValue::from_static("4"))
            .header("grpc-message", HeaderValue::from_static(GRPC_MESSAGE))
    } else {
        http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"))
    }
}

/// Polls a lazily armed timer against the request's current deadline:
/// arms it on first need, moves it when the deadline changed, disarms it
/// when the limit was removed. True once the deadline has passed.
///
/// The timer is boxed so that the future and body stay `Unpin` (when what
/// they wrap is); the box is only made when a request with a limit had to
/// wait.
pub(crate) fn poll_deadline(
    sleep: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    shared: &crate::lifecycle::Shared,
    cx: &mut std::task::Context<'_>,
) -> bool {
    let Some(deadline) = shared.deadline() else {
        *sleep = None;
        return false;
    };
    let timer = match sleep {
        Some(timer) => {
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            timer
        }
        None => sleep.insert(Box::pin(tokio::time::sleep_until(deadline))),
    };
    timer.as_mut().poll(cx).is_ready()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let cases: [(&str, Option<Duration>); 14] = [
            ("2H", Some(Duration::from_secs(7200))),
            ("3M", Some(Duration::from_secs(180))),
            ("4S", Some(Duration::from_secs(4))),
            ("5m", Some(Duration::from_millis(5))),
            ("6u", Some(Duration::from_micros(6))),
            ("7n", Some(Duration::from_nanos(7))),
            ("99999999S", Some(Duration::from_secs(99_999_999))),
            ("0m", Some(Duration::ZERO)),
            ("123456789S", None),
            ("S", None),
            ("10", None),
            ("10x", None),
            ("-1S", None),
            ("1.5S", None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_grpc_timeout(value.as_bytes()), expected, "{value}");
        }
        assert_eq!(parse_grpc_timeout(b""), None);
        assert_eq!(parse_grpc_timeout("1\u{e9}".as_bytes()), None);
    }

    #[test]
    fn grpc_detection() {
        let mut headers = HeaderMap::new();
        assert!(!is_grpc(&headers));
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&headers));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert!(!is_grpc(&headers));
    }
}
