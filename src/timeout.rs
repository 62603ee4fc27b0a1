//! What the time limit answers: the timeout response before the head, and
//! the error a body ends with when the limit expires while it streams.

use std::fmt;

use http::header::{HeaderValue, CONTENT_LENGTH};
use http::StatusCode;

use crate::grpc;

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

/// The head of the response sent when the limit expires before the handler
/// produced one: `status` for HTTP, a trailers-only gRPC response
/// (`grpc-status: 4`, DEADLINE_EXCEEDED) for gRPC.
pub(crate) fn timeout_head(grpc: bool, status: StatusCode) -> http::response::Builder {
    if grpc {
        grpc::DEADLINE.head()
    } else {
        http::Response::builder()
            .status(status)
            .header(CONTENT_LENGTH, HeaderValue::from_static("0"))
    }
}
