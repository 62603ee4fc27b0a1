//! [`End`]: how the response side of one request ended, as the part that
//! ended it saw it; the [`Completion`](crate::Completion) is built from it.

use std::time::Duration;

use http::StatusCode;

use crate::completion::Phase;

/// How the response side of a request ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct End {
    pub(crate) phase: Phase,
    pub(crate) panicked: bool,
    pub(crate) response_status: Option<StatusCode>,
    pub(crate) bytes_sent: u64,
    pub(crate) body_error: bool,
    pub(crate) service_error: bool,
    /// Dropped by the server while its client was still there.
    pub(crate) cancelled: bool,
    /// Ended by the shutdown (a stream ended when it began, a body or a
    /// handler cut when its grace ran out).
    pub(crate) shutdown: bool,
    /// The layer cut the body short with an error or a deadline's trailers
    /// (time limit, end of the shutdown's grace).
    pub(crate) cut: bool,
    /// From entering the layer to the response head handed to the server.
    pub(crate) time_to_head: Option<Duration>,
    /// From entering the layer to the end of the response body.
    pub(crate) time_to_body_end: Option<Duration>,
    pub(crate) grpc_status: Option<i32>,
}

impl End {
    pub(crate) fn handler() -> Self {
        End {
            phase: Phase::Handler,
            panicked: false,
            response_status: None,
            bytes_sent: 0,
            body_error: false,
            service_error: false,
            cancelled: false,
            shutdown: false,
            cut: false,
            time_to_head: None,
            time_to_body_end: None,
            grpc_status: None,
        }
    }
}
