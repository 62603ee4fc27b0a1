//! The handlers' line to the test: each handler reports what the test needs
//! of its request once it has set it up, and may hand over the sending end
//! of a body the test feeds. A [`Job`] is the report of the tests that read
//! a request's events off a channel and open a gate when they choose.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::channel::Channel;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tower_lifecycle::{Completion, Lifecycle};

use super::{within, BodySender, EventReader, Opener};

/// The handler side's line to the test: hands over one report `R` per
/// request, and the sending ends of the bodies the test feeds.
pub struct Probe<R> {
    reports: mpsc::UnboundedSender<R>,
    bodies: mpsc::UnboundedSender<BodySender>,
}

impl<R> Clone for Probe<R> {
    fn clone(&self) -> Self {
        Probe {
            reports: self.reports.clone(),
            bodies: self.bodies.clone(),
        }
    }
}

impl<R> Probe<R> {
    /// Hands `report` to the test.
    pub fn report(&self, report: R) {
        let _ = self.reports.send(report);
    }

    /// A body fed by the test, one data frame per send: hands the sending
    /// end over.
    pub fn channel_body(&self) -> Channel<Bytes, Infallible> {
        let (tx, body) = Channel::new(1);
        let _ = self.bodies.send(tx);
        body
    }
}

/// The test's end of a [`Probe`].
pub struct Reports<R> {
    reports: mpsc::UnboundedReceiver<R>,
    bodies: mpsc::UnboundedReceiver<BodySender>,
}

impl<R> Reports<R> {
    /// The next handler's report, failing the test if none comes within
    /// [`super::WAIT`].
    pub async fn next(&mut self) -> R {
        within("a handler to report", self.reports.recv())
            .await
            .expect("probe dropped")
    }

    /// The next handler's report if one came already (for a test without a
    /// runtime).
    pub fn try_next(&mut self) -> Option<R> {
        self.reports.try_recv().ok()
    }

    /// The sending end of the next body a handler streams.
    pub async fn body_sender(&mut self) -> BodySender {
        within("a streamed body", self.bodies.recv())
            .await
            .expect("probe dropped")
    }
}

/// A probe and the test's end of it.
pub fn probe<R>() -> (Probe<R>, Reports<R>) {
    let (reports_tx, reports) = mpsc::unbounded_channel();
    let (bodies_tx, bodies) = mpsc::unbounded_channel();
    let probe = Probe {
        reports: reports_tx,
        bodies: bodies_tx,
    };
    (probe, Reports { reports, bodies })
}

/// Where a job's handler, its body's producer, its continued work and its
/// hook report events of type `E`.
pub type Events<E> = mpsc::UnboundedSender<E>;

/// What a job's handler (or its producer, or its continued work) waits on
/// until the test opens it.
pub type Gate = oneshot::Receiver<()>;

/// The test's end of one job: a request whose events come on a channel, in
/// the order they happened.
pub struct Job<E> {
    pub lifecycle: Lifecycle,
    /// When the handler reported the job, and the deadline it saw then.
    pub entered: Instant,
    pub deadline: Option<Instant>,
    pub gate: Opener,
    pub events: EventReader<E>,
}

impl<E: Send + 'static> Probe<Job<E>> {
    /// Registers the request's hook, which reports `hook(completion)`, and
    /// hands the job to the test; returns the job's event sender and gate.
    pub fn job(&self, lifecycle: &Lifecycle, hook: fn(Completion) -> E) -> (Events<E>, Gate) {
        let entered = Instant::now();
        let (events, receiver) = mpsc::unbounded_channel();
        let hook_events = events.clone();
        lifecycle.on_shutdown(move |done| {
            let _ = hook_events.send(hook(done.clone()));
        });
        let (key, gate) = oneshot::channel();
        self.report(Job {
            lifecycle: lifecycle.clone(),
            entered,
            deadline: lifecycle.deadline(),
            gate: Opener(Some(key)),
            events: EventReader(receiver),
        });
        (events, gate)
    }
}

/// Reports its event when dropped before it was disarmed: the future that
/// holds it was dropped before it finished.
pub struct DropGuard<'a, E> {
    events: &'a Events<E>,
    event: Option<E>,
}

impl<'a, E> DropGuard<'a, E> {
    /// A guard that reports `event` on `events` unless disarmed.
    pub fn new(events: &'a Events<E>, event: E) -> Self {
        DropGuard {
            events,
            event: Some(event),
        }
    }

    /// The work finished: the guard reports nothing.
    pub fn disarm(mut self) {
        self.event = None;
    }
}

impl<E> Drop for DropGuard<'_, E> {
    fn drop(&mut self) {
        if let Some(event) = self.event.take() {
            let _ = self.events.send(event);
        }
    }
}
