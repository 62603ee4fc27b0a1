//! What a response body has told so far ([`Tally`]), and which responses
//! hyper sends without one ([`Bodiless`]): the facts that tell a complete
//! body from an aborted one.

use std::time::Duration;

use bytes::Buf;
use http::{header, HeaderMap, Method, StatusCode};
use http_body::Frame;

use crate::completion::Phase;
use crate::grpc;
use crate::state::End;

/// Requests whose response hyper sends without a body (RFC 9110 §6.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bodiless {
    No,
    Head,
    Connect,
}

impl Bodiless {
    #[inline]
    pub(crate) fn of(method: &Method) -> Self {
        if method == Method::HEAD {
            Bodiless::Head
        } else if method == Method::CONNECT {
            Bodiless::Connect
        } else {
            Bodiless::No
        }
    }

    #[inline]
    pub(crate) fn response(self, status: StatusCode) -> bool {
        match self {
            Bodiless::No => {
                status.is_informational()
                    || status == StatusCode::NO_CONTENT
                    || status == StatusCode::NOT_MODIFIED
            }
            Bodiless::Head => true,
            Bodiless::Connect => status.is_success() || Bodiless::No.response(status),
        }
    }
}

/// What the body has told about the response so far.
pub(crate) struct Tally {
    pub(crate) status: StatusCode,
    /// Data bytes yielded.
    pub(crate) sent: u64,
    /// The exact length, from the size hint or `Content-Length`.
    pub(crate) expected: Option<u64>,
    pub(crate) grpc: bool,
    /// From the response head (a trailers-only answer) or the trailers.
    pub(crate) grpc_status: Option<i32>,
    /// From entering the layer to the head handed to the server.
    pub(crate) head: Option<Duration>,
}

impl Tally {
    /// How the body phase ended, so far.
    #[inline]
    pub(crate) fn end(&self) -> End {
        End {
            phase: Phase::Body,
            response_status: Some(self.status),
            bytes_sent: self.sent,
            grpc_status: self.grpc_status,
            time_to_head: self.head,
            ..End::handler()
        }
    }

    /// Counts a frame; true when the body is complete with it.
    #[inline]
    pub(crate) fn frame<D: Buf>(&mut self, frame: &Frame<D>) -> bool {
        if let Some(data) = frame.data_ref() {
            self.sent += data.remaining() as u64;
            self.expected.is_some_and(|n| self.sent >= n)
        } else if let Some(trailers) = frame.trailers_ref() {
            if self.grpc {
                self.grpc_status = grpc::status(trailers).or(self.grpc_status);
            }
            true
        } else {
            false
        }
    }
}

/// The `Content-Length` of a response head, if it is a number.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}
