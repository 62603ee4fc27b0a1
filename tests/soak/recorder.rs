//! The recorder both soak tests share: per request id, what the server saw
//! and how it ended.

use super::*;

// ---------------------------------------------------------------------------
// The recorder: per request id, what the server saw and how it ended.

thread_local! {
    /// The id of the request whose hooks are running on this thread, from
    /// its `on_shutdown` hook to the layer's `on_complete`.
    static ENDING: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The test's lines to one request's handler and completion.
#[derive(Default)]
pub(crate) struct Wiring {
    /// The handler sends its `Lifecycle` here once it runs.
    pub(crate) started: Option<oneshot::Sender<Lifecycle>>,
    /// The handler (or its body's producer) waits until the test drops the
    /// sender of this.
    pub(crate) gate: Option<oneshot::Receiver<()>>,
    /// `on_complete` sends the completion here.
    pub(crate) done: Option<oneshot::Sender<Completion>>,
}

/// What the client of a request saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Saw {
    /// The whole response, as expected.
    Full,
    /// The layer's timeout response (503) instead of the handler's.
    TimeoutHead,
    /// The head, then a body that failed (the time limit cut it).
    BodyError,
    /// No response at all: the request failed. The time limit cut the body
    /// before hyper had flushed the head (HTTP/1.1 closes the connection,
    /// HTTP/2 resets the stream).
    Failed,
    /// The client left before the head.
    LeftBeforeHead,
    /// The client left after reading what it meant to read of the body.
    LeftMidBody,
}

#[derive(Default)]
pub(crate) struct Slot {
    /// How many times the service was called with this id.
    pub(crate) seen: AtomicUsize,
    /// Runs of the request's `on_shutdown` hook.
    pub(crate) hook_runs: AtomicUsize,
    /// Runs of the layer's `on_complete` for this id.
    pub(crate) completions: AtomicUsize,
    /// The first completion.
    pub(crate) completion: Mutex<Option<Completion>>,
    pub(crate) wiring: Mutex<Wiring>,
    pub(crate) saw: Mutex<Option<Saw>>,
}

/// Everything the layer and the handlers report, by request id.
pub(crate) struct Recorder {
    pub(crate) slots: Vec<Slot>,
    /// What cannot be attributed to a request id, or happened out of order.
    pub(crate) strays: Mutex<Vec<String>>,
    /// Every attributed completion, in order.
    pub(crate) events: mpsc::UnboundedSender<(usize, Completion)>,
}

impl Recorder {
    pub(crate) fn new(ids: usize) -> (Arc<Self>, mpsc::UnboundedReceiver<(usize, Completion)>) {
        let (events, rx) = mpsc::unbounded_channel();
        let recorder = Recorder {
            slots: (0..ids).map(|_| Slot::default()).collect(),
            strays: Mutex::default(),
            events,
        };
        (Arc::new(recorder), rx)
    }

    pub(crate) fn slot(&self, id: usize) -> &Slot {
        &self.slots[id]
    }

    /// A layer whose `on_complete` reports to this recorder.
    pub(crate) fn layer(self: &Arc<Self>) -> LifecycleLayer {
        let recorder = self.clone();
        LifecycleLayer::new().on_complete(move |done| recorder.complete(done))
    }

    pub(crate) fn stray(&self, note: String) {
        lock(&self.strays).push(note);
    }

    /// The service's first step, before the handler's future exists: finds
    /// the request's id, registers the hook that hands the id to
    /// `on_complete`, and takes the handler's wiring.
    pub(crate) fn begin(
        self: &Arc<Self>,
        req: &Request<Incoming>,
    ) -> Option<(usize, Lifecycle, Wiring)> {
        let Some(lifecycle) = req.extensions().get::<Lifecycle>().cloned() else {
            self.stray("a request without a Lifecycle".into());
            return None;
        };
        let header = req.headers().get("x-id");
        let id = header
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&id| id < self.slots.len());
        let Some(id) = id else {
            self.stray(format!("a request with x-id {header:?}"));
            return None;
        };
        let slot = self.slot(id);
        slot.seen.fetch_add(1, Ordering::SeqCst);
        let recorder = self.clone();
        lifecycle.on_shutdown(move |_| {
            recorder.slot(id).hook_runs.fetch_add(1, Ordering::SeqCst);
            if let Some(before) = ENDING.with(|ending| ending.replace(Some(id))) {
                recorder.stray(format!(
                    "request {before}'s hook ran but no on_complete followed before request {id}'s"
                ));
            }
        });
        let wiring = {
            let mut wiring = lock(&slot.wiring);
            Wiring {
                started: wiring.started.take(),
                gate: wiring.gate.take(),
                done: None,
            }
        };
        Some((id, lifecycle, wiring))
    }

    /// The layer's `on_complete`.
    pub(crate) fn complete(&self, done: &Completion) {
        let Some(id) = ENDING.with(Cell::take) else {
            self.stray(format!("a completion without a request id: {done:?}"));
            return;
        };
        let slot = self.slot(id);
        slot.completions.fetch_add(1, Ordering::SeqCst);
        lock(&slot.completion).get_or_insert_with(|| done.clone());
        if let Some(tx) = lock(&slot.wiring).done.take() {
            let _ = tx.send(done.clone());
        }
        let _ = self.events.send((id, done.clone()));
    }

    /// Wires request `id` before it is sent; returns the test's ends.
    pub(crate) fn wire(&self, id: usize) -> Wires {
        let (started_tx, started) = oneshot::channel();
        let (gate, gate_rx) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        *lock(&self.slot(id).wiring) = Wiring {
            started: Some(started_tx),
            gate: Some(gate_rx),
            done: Some(done_tx),
        };
        Wires {
            started,
            gate,
            done,
        }
    }

    pub(crate) fn strays(&self) -> Vec<String> {
        lock(&self.strays).clone()
    }

    /// Asserts request `id` was seen once, and its hook and `on_complete`
    /// ran once each; returns its completion.
    pub(crate) fn ended_once(&self, id: usize, context: &str) -> Completion {
        let slot = self.slot(id);
        let seen = slot.seen.load(Ordering::SeqCst);
        let hooks = slot.hook_runs.load(Ordering::SeqCst);
        let completions = slot.completions.load(Ordering::SeqCst);
        assert_eq!(
            (seen, hooks, completions),
            (1, 1, 1),
            "{context}: (service calls, hook runs, on_complete runs) must be (1, 1, 1); \
             completion {:?}",
            lock(&slot.completion)
        );
        lock(&slot.completion).clone().expect("counted above")
    }
}

/// The test's ends of one request's [`Wiring`].
pub(crate) struct Wires {
    pub(crate) started: oneshot::Receiver<Lifecycle>,
    /// Dropping it opens the gate.
    pub(crate) gate: oneshot::Sender<()>,
    pub(crate) done: oneshot::Receiver<Completion>,
}

pub(crate) type Body = BoxBody<Bytes, Infallible>;

pub(crate) fn full(text: String) -> Body {
    Full::new(Bytes::from(text)).boxed()
}

pub(crate) fn request(id: usize) -> Request<Empty<Bytes>> {
    let mut req = common::get("/");
    req.headers_mut().insert("x-id", HeaderValue::from(id));
    req
}

pub(crate) fn closed(client: &Client) -> bool {
    match client {
        Client::Http1(send) => send.is_closed(),
        Client::Http2(send) => send.is_closed(),
    }
}
