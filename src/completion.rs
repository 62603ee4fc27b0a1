//! What every hook receives: [`Completion`] and [`Phase`].

use std::fmt;
use std::time::Duration;

use http::StatusCode;

use crate::ConnectionStatus;

/// Where a request was when its lifecycle ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// The inner service had not yet produced the response head: the
    /// handler's future was still running (or was dropped while running).
    Handler,
    /// The response head had been produced; the lifecycle ended while (or
    /// after) the response body was being written.
    Body,
    /// The lifecycle ended in work that continued after the response side
    /// was over: a handler or body kept running after the client left
    /// (ignore-abort), or work from [`Lifecycle::spawn`](crate::Lifecycle::spawn)
    /// or [`Lifecycle::after_response`](crate::Lifecycle::after_response)
    /// that finished last.
    Continued,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Handler => "handler",
            Phase::Body => "body",
            Phase::Continued => "continued",
        })
    }
}

/// The outcome of a request's lifecycle, handed to every shutdown hook.
///
/// Built once, when the lifecycle ends; every hook of the request and the
/// layer's [`on_complete`](crate::LifecycleLayer::on_complete) see the same
/// values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub(crate) status: ConnectionStatus,
    pub(crate) phase: Phase,
    pub(crate) elapsed: Duration,
    pub(crate) bytes_sent: u64,
    pub(crate) response_status: Option<StatusCode>,
    pub(crate) panicked: bool,
    pub(crate) body_error: bool,
    pub(crate) service_error: bool,
    pub(crate) cancelled: bool,
    pub(crate) shutdown: bool,
    pub(crate) cut: bool,
    pub(crate) time_to_head: Option<Duration>,
    pub(crate) time_to_body_end: Option<Duration>,
    pub(crate) timeout_status: StatusCode,
    pub(crate) continued: bool,
    pub(crate) detach_refused: bool,
    pub(crate) grpc_status: Option<i32>,
}

impl Completion {
    /// The final status word: [`NORMAL`](ConnectionStatus::NORMAL) or
    /// [`ABORTED`](ConnectionStatus::ABORTED) (and, with a time limit,
    /// [`TIMEOUT`](ConnectionStatus::TIMEOUT)).
    pub fn status(&self) -> ConnectionStatus {
        self.status
    }

    /// Where the request was when it ended.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Time from the request entering the layer to the end of its
    /// lifecycle (just before the first hook runs).
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Time from the request entering the layer to the response head handed
    /// to the server: the inner service's response (or the layer's own
    /// answer: the time limit's 503, the shutdown's 503) returned to hyper.
    /// `None` when no head was produced (the handler was dropped, panicked
    /// or failed). Like `elapsed`, measured on tokio's clock.
    ///
    /// Handed over, not sent: hyper writes the head with the first body
    /// frame, or at once for a body it knows is empty.
    pub fn time_to_head(&self) -> Option<Duration> {
        self.time_to_head
    }

    /// Time from the request entering the layer to the end of the response
    /// body: its last frame handed to the server (or the body dropped,
    /// failed or cut), when there was a body phase; `None` otherwise.
    /// [`elapsed`](Self::elapsed) minus this is what ran after the
    /// response: continued work and the hooks before the first.
    pub fn time_to_body_end(&self) -> Option<Duration> {
        self.time_to_body_end
    }

    /// The status for an access log, with the conventions operators read in
    /// nginx's logs:
    ///
    /// | the request | `log_status()` |
    /// | --- | --- |
    /// | the client left before the response was complete ([`ABORTED`](ConnectionStatus::ABORTED)) | 499 |
    /// | the time limit cut the body ([`TIMEOUT`](ConnectionStatus::TIMEOUT) in the body) | the timeout answer ([`timeout_status`](crate::LifecycleLayer::timeout_status), 503 by default) |
    /// | the shutdown's grace cut the body | 503 |
    /// | a response head was handed over (the layer's own 503 included) | its status ([`response_status`](Self::response_status)) |
    /// | no response: the handler panicked, failed, or was dropped by the server | 500 |
    ///
    /// A request whose response was complete and whose continued work ran
    /// past the limit logs the response's status: the client got it.
    pub fn log_status(&self) -> u16 {
        if self.status.is_aborted() {
            499
        } else if self.cut && self.shutdown {
            StatusCode::SERVICE_UNAVAILABLE.as_u16()
        } else if self.cut {
            self.timeout_status.as_u16()
        } else {
            self.response_status
                .map_or(StatusCode::INTERNAL_SERVER_ERROR.as_u16(), |s| s.as_u16())
        }
    }

    /// Bytes of response body data handed to the server (the sum of the
    /// data frames the body yielded).
    ///
    /// "Handed to the server" is not "delivered": hyper buffers what it is
    /// given, and the kernel buffers what hyper writes, so a client that
    /// left may not have received all of these bytes.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// The status code of the response head, or `None` when no response
    /// was sent: the handler was dropped, panicked or failed, or it ran on
    /// after its client left (ignore-abort) and its response was discarded.
    ///
    /// Like [`bytes_sent`](Self::bytes_sent), this is what was handed to the
    /// server: a head hyper had not yet written when the connection ended
    /// (a time limit expiring before hyper first polled the body, say) is
    /// reported although the client never saw it.
    pub fn response_status(&self) -> Option<StatusCode> {
        self.response_status
    }

    /// Whether a panic unwound through the request's processing: the
    /// handler's future or the response body panicked while being polled,
    /// continued work ([`spawn`](crate::Lifecycle::spawn),
    /// [`after_response`](crate::Lifecycle::after_response), a detached
    /// handler or body) panicked, or code holding the request's
    /// [`Lifecycle`](crate::Lifecycle) panicked.
    ///
    /// A panic caught *inside* the layer, by tower-http's `CatchPanicLayer`
    /// turning it into a 500 say, counts too, with or without the
    /// extractor: the layer notices a panic that started while it was
    /// calling into the inner service or body on that thread (see
    /// [`LifecycleLayer::record_caught_panics`](crate::LifecycleLayer::record_caught_panics)).
    /// A panic that code inside the handler caught itself with
    /// `catch_unwind` counts as well: it still unwound through part of the
    /// request's processing.
    ///
    /// A panic is a server-side failure, not a client abort: it does not
    /// set [`ABORTED`](ConnectionStatus::ABORTED).
    pub fn panicked(&self) -> bool {
        self.panicked
    }

    /// Whether the response body ended with an error.
    ///
    /// A body error is a server-side failure, not an abort: it does not
    /// set [`ABORTED`](ConnectionStatus::ABORTED). hyper resets the stream
    /// (HTTP/2) or closes the connection (HTTP/1.1) so the client sees an
    /// incomplete response.
    pub fn body_error(&self) -> bool {
        self.body_error
    }

    /// Whether the inner service's future returned an error instead of a
    /// response. Like a body error, this is not an abort.
    pub fn service_error(&self) -> bool {
        self.service_error
    }

    /// Whether the server dropped the request while its client was still
    /// connected: a layer outside this one gave up on it (tower-http's
    /// `TimeoutLayer`, a `select!`), or
    /// [`ConnectionWatch::close`](crate::watch::ConnectionWatch::close) shut
    /// its connection down. Not an abort: the status word stays
    /// [`NORMAL`](ConnectionStatus::NORMAL) (or
    /// [`TIMEOUT`](ConnectionStatus::TIMEOUT) if the layer's own limit had
    /// passed), and ignore-abort does not keep the work going.
    ///
    /// Known only with a [connection watch](crate::watch) and over
    /// HTTP/1.1, where the client's only way to leave is to close the
    /// connection. Without a watch, and over HTTP/2 (where a client cancels
    /// one stream, and the server's own drop looks the same), such a drop
    /// is taken for the client leaving:
    /// [`ABORTED`](ConnectionStatus::ABORTED).
    pub fn cancelled(&self) -> bool {
        self.cancelled
    }

    /// Whether the shutdown changed how this request ended
    /// ([`Drain`](crate::Drain)): its stream was ended when the shutdown
    /// began (Server-Sent Events: status
    /// [`NORMAL`](ConnectionStatus::NORMAL); gRPC: [`grpc_status`](Self::grpc_status)
    /// 14), or the end of the grace cut it (a body, a handler, continued
    /// work: status [`TIMEOUT`](ConnectionStatus::TIMEOUT)). This is what
    /// tells a cut by the shutdown from the request's own time limit.
    ///
    /// A request that merely ran during the shutdown and ended on its own
    /// (a handler that answered early because it awaited
    /// [`Lifecycle::shutting_down`](crate::Lifecycle::shutting_down)
    /// included) reads false: the layer did not change its end.
    pub fn shutdown(&self) -> bool {
        self.shutdown
    }

    /// Whether the request's work continued after the client left, because
    /// ignore-abort was on when the abort was detected: the handler ran to
    /// its end, or the body was drained, or spawned work was not cancelled.
    pub fn continued(&self) -> bool {
        self.continued
    }

    /// Whether ignore-abort was on when the client left but the request
    /// could not continue and was cancelled instead: the layer's
    /// [`max_detached`](crate::LifecycleLayer::max_detached) requests were
    /// already continuing, or there was no tokio runtime to continue on.
    pub fn detach_refused(&self) -> bool {
        self.detach_refused
    }

    /// The `grpc-status` of a gRPC response (`content-type:
    /// application/grpc…` request): read from the trailers, or from the
    /// response head of a trailers-only answer. `None` for other requests,
    /// and when the response ended before carrying one (the client left).
    /// `Some(0)` is OK; a handler's error `Status` shows here while the
    /// status word stays `normal`: the server answered.
    pub fn grpc_status(&self) -> Option<i32> {
        self.grpc_status
    }
}
