//! gRPC in one place: telling a gRPC request, its `grpc-timeout` (which
//! caps the time limit), the `grpc-status` of a response, and the answers
//! the layer gives when the limit expires (`DEADLINE_EXCEEDED`).

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use http::StatusCode;

use crate::header;

/// The gRPC client's deadline, on a request.
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// A gRPC call's outcome, on a response's trailers (or its head).
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Whether the request is gRPC (`content-type: application/grpc…`).
#[inline]
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    header::get(headers, &CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The cap a gRPC request's `grpc-timeout` puts on its time limit: the
/// client's timeout less a margin (see [`margin`]). `None` when absent;
/// malformed values are ignored with a debug event.
pub(crate) fn deadline_cap(headers: &HeaderMap) -> Option<Duration> {
    grpc_timeout(headers).map(|t| t - margin(t))
}

/// How much earlier than the client's `grpc-timeout` the layer gives up:
/// a tenth of it, at most 20 ms. The client and tonic's own `grpc-timeout`
/// handling start their clocks first; answering a little early is what lets
/// the layer's `DEADLINE_EXCEEDED` reach the client before they give up
/// (tonic reports its own timeouts as `CANCELLED`, and the server would see
/// an abort).
fn margin(timeout: Duration) -> Duration {
    (timeout / 10).min(Duration::from_millis(20))
}

/// The `grpc-timeout` request header: up to 8 ASCII digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`). `None` when absent; malformed values
/// are ignored with a debug event.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = header::get(headers, &GRPC_TIMEOUT)?;
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
pub(crate) const DEADLINE_EXCEEDED: i32 = 4;

/// The `grpc-status` of a response head or trailers.
pub(crate) fn status(headers: &HeaderMap) -> Option<i32> {
    header::get(headers, &GRPC_STATUS)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A status the layer answers with itself: its `grpc-status` and its
/// (percent-encoded) `grpc-message`.
#[derive(Clone, Copy)]
pub(crate) struct Answer {
    status: &'static str,
    message: &'static str,
}

/// The time limit expired: `DEADLINE_EXCEEDED`.
pub(crate) const DEADLINE: Answer = Answer {
    status: "4",
    message: "request%20time%20limit%20expired",
};

/// `grpc-status` 14: the server is going away; clients retry elsewhere.
pub(crate) const UNAVAILABLE: i32 = 14;

/// The shutdown: `UNAVAILABLE`, which clients retry on another server.
pub(crate) const SHUTDOWN: Answer = Answer {
    status: "14",
    message: "the%20server%20is%20shutting%20down",
};

impl Answer {
    fn insert(self, headers: &mut HeaderMap) {
        headers.insert("grpc-status", HeaderValue::from_static(self.status));
        headers.insert("grpc-message", HeaderValue::from_static(self.message));
    }

    /// The trailers that end a streaming response with this status.
    pub(crate) fn trailers(self) -> HeaderMap {
        let mut trailers = HeaderMap::new();
        self.insert(&mut trailers);
        trailers
    }

    /// The head of a trailers-only answer with this status, for a handler
    /// that had not answered.
    pub(crate) fn head(self) -> http::response::Builder {
        let mut head = http::Response::builder()
            .status(StatusCode::OK)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        if let Some(headers) = head.headers_mut() {
            self.insert(headers);
        }
        head
    }
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
