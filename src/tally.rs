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

/// [`Tally::expected`] and [`Tally::head`] when unknown: a body never
/// reaches that many bytes, nor a head that many nanoseconds (584 years).
const UNKNOWN: u64 = u64::MAX;

/// What the body has told about the response so far: kept small (no
/// `Option<u64>`, no `Option<Duration>`), as the body it is part of is moved
/// by every layer and server it passes through.
pub(crate) struct Tally {
    pub(crate) status: StatusCode,
    /// Data bytes yielded.
    pub(crate) sent: u64,
    /// The exact length, from the size hint or `Content-Length`, or
    /// [`UNKNOWN`].
    expected: u64,
    pub(crate) grpc: bool,
    /// From the response head (a trailers-only answer) or the trailers.
    pub(crate) grpc_status: Option<i32>,
    /// From entering the layer to the head handed to the server, in
    /// nanoseconds, or [`UNKNOWN`].
    head: u64,
}

impl Tally {
    /// What the body knows when it is made: the response's `status`, its
    /// exact length if known, whether it is gRPC (and its status if the
    /// head has one), and the time to head if anything could read it.
    #[inline]
    pub(crate) fn new(
        status: StatusCode,
        expected: Option<u64>,
        grpc: bool,
        grpc_status: Option<i32>,
        head: Option<Duration>,
    ) -> Self {
        Tally {
            status,
            sent: 0,
            expected: expected.unwrap_or(UNKNOWN),
            grpc,
            grpc_status,
            // `nanos` gives `u64::MAX`, `UNKNOWN`, past 584 years.
            head: head.map_or(UNKNOWN, crate::deadline::nanos),
        }
    }

    /// The exact length, if known.
    pub(crate) fn expected(&self) -> Option<u64> {
        (self.expected != UNKNOWN).then_some(self.expected)
    }

    /// How the body phase ended, so far.
    #[inline]
    pub(crate) fn end(&self) -> End {
        End {
            phase: Phase::Body,
            response_status: Some(self.status),
            bytes_sent: self.sent,
            grpc_status: self.grpc_status,
            time_to_head: (self.head != UNKNOWN).then(|| Duration::from_nanos(self.head)),
            ..End::handler()
        }
    }

    /// Counts a frame; true when the body is complete with it.
    #[inline]
    pub(crate) fn frame<D: Buf>(&mut self, frame: &Frame<D>) -> bool {
        if let Some(data) = frame.data_ref() {
            self.sent += data.remaining() as u64;
            // Never reached when unknown.
            self.sent >= self.expected
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
    crate::header::get(headers, &header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}
