//! `abort_storm_is_bounded`: a burst of aborting ignore-abort jobs against
//! `max_detached`.

use super::*;
// ---------------------------------------------------------------------------
// abort_storm_is_bounded

const MAX_DETACHED: usize = 8;
const JOBS: usize = 10 * MAX_DETACHED;
/// Ids of normal requests start here.
const FIRST_NORMAL: usize = JOBS;
/// At most this many normal requests.
const NORMALS: usize = 2_000;
/// Normal requests made while the continued jobs are held, all at once.
const NORMAL_BURST: usize = 16;
/// How long a normal request may take during the storm.
const NORMAL_LIMIT: Duration = Duration::from_secs(2);
const HELLO: &str = "hello";

/// The server side of the storm.
struct Storm {
    /// The handlers in their continued part.
    gauge: Arc<Gauge>,
    /// The test holds it closed until the end.
    gate: Arc<Semaphore>,
    /// Ids of the jobs whose handler runs on after its client left.
    continuing: mpsc::UnboundedSender<usize>,
}

impl Handler for Storm {
    /// Jobs turn ignore-abort on, report that they started, and once their
    /// client left wait in the gauge for the gate; normal requests answer.
    /// `begun` (with its entry in the live gauge) lives to the end.
    async fn handle(self: Arc<Self>, mut begun: Begun) -> Response<Body> {
        if begun.id < JOBS {
            let lifecycle = begun.lifecycle.clone();
            lifecycle.ignore_abort(true);
            if let Some(started) = begun.wiring.started.take() {
                let _ = started.send(lifecycle.clone());
            }
            lifecycle.aborted().await;
            // Still polled after the abort: this request continues. A
            // refused one was dropped at the abort.
            let _inside = self.gauge.enter();
            let _ = self.continuing.send(begun.id);
            drop(self.gate.acquire().await);
        }
        Response::new(full(HELLO.into()))
    }
}

/// Normal requests, one at a time, on one HTTP/1.1 and one HTTP/2
/// connection in turn, until `stop` turns true (or the recorder's room for
/// them is used up); each must be answered within [`NORMAL_LIMIT`]. Returns
/// how many were made.
async fn normals_meanwhile(
    addr: std::net::SocketAddr,
    next: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) -> usize {
    let mut conns = Vec::new();
    for proto in [Proto::Http1, Proto::Http2] {
        conns.push(within("a connection", Client::connect(addr, proto)).await);
    }
    let mut made = 0;
    // Leaves room in the recorder for the burst.
    while !*stop.borrow_and_update() && made < NORMALS - NORMAL_BURST {
        let id = next.fetch_add(1, Ordering::SeqCst);
        let (client, _) = &mut conns[made % 2];
        normal(client, id).await;
        made += 1;
    }
    made
}

/// One normal request, answered in full within [`NORMAL_LIMIT`].
async fn normal(client: &mut Client, id: usize) {
    bounded(
        &format!("normal request {id} during the storm"),
        NORMAL_LIMIT,
        async {
            let res = client
                .send(request(id))
                .await
                .unwrap_or_else(|err| panic!("normal request {id} failed: {err}"));
            assert_eq!(res.status(), StatusCode::OK, "normal request {id}");
            let body = res.into_body().collect().await.expect("a normal body");
            assert_eq!(body.to_bytes(), HELLO, "normal request {id}");
        },
    )
    .await;
}

fn assert_normal(id: usize, done: &Completion) {
    assert_eq!(
        (done.status(), done.phase()),
        (ConnectionStatus::NORMAL, Phase::Body),
        "normal request {id}: {done:?}"
    );
    assert!(
        !done.continued() && !done.detach_refused(),
        "normal request {id}: {done:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_storm_is_bounded() {
    let (recorder, mut events) = Recorder::new(FIRST_NORMAL + NORMALS);
    let live = Arc::new(Gauge::default());
    let gauge = Arc::new(Gauge::default());
    let gate = Arc::new(Semaphore::new(0));
    let (continuing_tx, mut continuing_rx) = mpsc::unbounded_channel();
    let layer = recorder.layer().max_detached(MAX_DETACHED);
    let drain = layer.drain();
    let storm = Arc::new(Storm {
        gauge: gauge.clone(),
        gate: gate.clone(),
        continuing: continuing_tx,
    });
    let addr = serve(layer, recorder.clone(), live.clone(), storm).await;

    // Normal requests keep going through the whole storm.
    let next_normal = Arc::new(AtomicUsize::new(FIRST_NORMAL));
    let (stop, stopped) = watch::channel(false);
    let meanwhile = tokio::spawn(normals_meanwhile(addr, next_normal.clone(), stopped));

    // The storm: every client starts a job and leaves once its handler runs.
    let mut set = JoinSet::new();
    for id in 0..JOBS {
        let recorder = recorder.clone();
        set.spawn(async move {
            let proto = if id % 2 == 0 {
                Proto::Http1
            } else {
                Proto::Http2
            };
            let (mut client, conn) = within("a connection", Client::connect(addr, proto)).await;
            let mut wires = recorder.wire(id);
            let lifecycle = {
                let mut call = pin!(client.send(request(id)));
                within("the job's handler to start", async {
                    tokio::select! {
                        biased;
                        started = &mut wires.started => started.expect("the handler started"),
                        res = &mut call => panic!("job {id} was answered: {res:?}"),
                    }
                })
                .await
            };
            // Gone at once: the response future is dropped above, the
            // connection closed here.
            conn.abort();
            drop(client);
            (id, lifecycle)
        });
    }
    let lifecycles = join_all("the storm's clients", common::WAIT, set).await;
    assert_eq!(lifecycles.len(), JOBS);

    // Every job either continues or is refused (its completion comes at
    // once); none completes otherwise while the gate is held.
    let mut refused = BTreeSet::new();
    let mut continuing = BTreeSet::new();
    let mut normal_done = 0;
    within("every job to continue or be refused", async {
        while refused.len() + continuing.len() < JOBS {
            tokio::select! {
                Some((id, done)) = events.recv() => {
                    if id >= FIRST_NORMAL {
                        assert_normal(id, &done);
                        normal_done += 1;
                        continue;
                    }
                    assert!(
                        done.detach_refused(),
                        "job {id} completed while the gate is held without being refused: {done:?}"
                    );
                    assert_eq!(
                        (done.status(), done.phase(), done.continued()),
                        (ConnectionStatus::ABORTED, Phase::Handler, false),
                        "refused job {id}: {done:?}"
                    );
                    assert!(refused.insert(id), "job {id} completed twice");
                }
                Some(id) = continuing_rx.recv() => {
                    assert!(continuing.insert(id), "job {id} continued twice");
                }
            }
        }
    })
    .await;
    assert_eq!(
        (continuing.len(), refused.len()),
        (MAX_DETACHED, JOBS - MAX_DETACHED),
        "(continuing, refused); continuing: {continuing:?}"
    );
    assert!(refused.is_disjoint(&continuing));
    for (id, lifecycle) in &lifecycles {
        assert!(lifecycle.is_aborted(), "job {id}");
    }
    assert_eq!(gauge.now(), MAX_DETACHED);
    assert!(gauge.max() <= MAX_DETACHED, "max {}", gauge.max());

    // The continued jobs hold their slots: a burst of normal requests on
    // fresh connections is still answered, each within the limit.
    let mut set = JoinSet::new();
    for i in 0..NORMAL_BURST {
        let id = next_normal.fetch_add(1, Ordering::SeqCst);
        let proto = if i % 2 == 0 {
            Proto::Http1
        } else {
            Proto::Http2
        };
        set.spawn(async move {
            let (mut client, _conn) = within("a connection", Client::connect(addr, proto)).await;
            normal(&mut client, id).await;
        });
    }
    join_all("the burst of normal requests", common::WAIT, set).await;
    stop.send(true).unwrap();
    let made = bounded("the normal requests to stop", common::WAIT, meanwhile)
        .await
        .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()));
    assert!(made > 0, "no normal request was made during the storm");
    assert_eq!(gauge.now(), MAX_DETACHED, "the held jobs still hold");
    assert!(gauge.max() <= MAX_DETACHED, "max {}", gauge.max());

    // Let the continued jobs finish: each completes once, continued.
    gate.add_permits(JOBS);
    let normals = next_normal.load(Ordering::SeqCst) - FIRST_NORMAL;
    let mut finished = BTreeSet::new();
    within(
        "the continued jobs and normal requests to complete",
        async {
            while finished.len() < MAX_DETACHED || normal_done < normals {
                let (id, done) = events.recv().await.expect("the recorder is alive");
                if id >= FIRST_NORMAL {
                    assert_normal(id, &done);
                    normal_done += 1;
                    continue;
                }
                assert!(
                    continuing.contains(&id),
                    "job {id} completed again: {done:?}"
                );
                assert_eq!(
                    (done.status(), done.phase()),
                    (ConnectionStatus::ABORTED, Phase::Continued),
                    "continued job {id}: {done:?}"
                );
                assert!(
                    done.continued() && !done.detach_refused(),
                    "job {id}: {done:?}"
                );
                assert!(finished.insert(id), "job {id} completed twice");
            }
        },
    )
    .await;

    within("the drain", drain.wait()).await;
    assert_eq!(drain.in_flight(), 0);
    within("the handlers to end", live.idle()).await;
    assert_eq!(gauge.now(), 0);
    assert!(gauge.max() <= MAX_DETACHED, "max {}", gauge.max());
    for id in (0..JOBS).chain(FIRST_NORMAL..FIRST_NORMAL + normals) {
        recorder.ended_once(id, &format!("request {id}"));
    }
    for id in FIRST_NORMAL + normals..FIRST_NORMAL + NORMALS {
        assert_eq!(recorder.slot(id).seen.load(Ordering::SeqCst), 0);
    }
    if let Ok((id, done)) = events.try_recv() {
        panic!("an extra completion for request {id}: {done:?}");
    }
    let strays = recorder.strays();
    assert!(strays.is_empty(), "strays: {strays:#?}");
    println!(
        "abort_storm_is_bounded: {JOBS} jobs, {MAX_DETACHED} continued, {} refused, \
         {normals} normal requests meanwhile",
        refused.len()
    );
}
