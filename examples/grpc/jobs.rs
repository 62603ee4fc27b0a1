//! A tiny gRPC service, written by hand so that no `protoc` is needed:
//! `jobs.Jobs/Run` (unary: work `steps` steps, answer how many were done)
//! and `jobs.Jobs/Watch` (server streaming: one `Progress` message per
//! step). Shared by the gRPC example and its tests.

// Used by the example and by its tests, which each use a part of it.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;
use tower_lifecycle::Lifecycle;

/// What to do.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JobRequest {
    #[prost(uint32, tag = "1")]
    pub steps: u32,
    #[prost(uint64, tag = "2")]
    pub step_ms: u64,
    /// Keep working when the client cancels (ignore-abort).
    #[prost(bool, tag = "3")]
    pub keep: bool,
    /// Answer with an error status instead of working.
    #[prost(bool, tag = "4")]
    pub fail: bool,
}

/// The unary answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JobReply {
    #[prost(uint32, tag = "1")]
    pub steps_done: u32,
}

/// One streamed step.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Progress {
    #[prost(uint32, tag = "1")]
    pub step: u32,
    #[prost(uint32, tag = "2")]
    pub total: u32,
}

/// What a handler reports as it goes, for whoever watches (the tests).
#[derive(Debug)]
pub enum Event {
    /// The handler started; here is its request's lifecycle.
    Started(Lifecycle),
    /// A step was done.
    Step(u32),
    /// The handler's work ended, with this many steps done.
    Finished(u32),
}

/// The `jobs.Jobs` service.
#[derive(Clone, Default)]
pub struct Jobs {
    events: Option<mpsc::UnboundedSender<Event>>,
}

impl Jobs {
    /// A service that reports its handlers' events.
    pub fn with_events(events: mpsc::UnboundedSender<Event>) -> Self {
        Jobs {
            events: Some(events),
        }
    }

    fn report(&self, event: Event) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }

    /// Reads the request's lifecycle (from the extensions tonic copies over
    /// from the HTTP request) and applies the request's `keep`.
    fn start(&self, request: &Request<JobRequest>) -> Lifecycle {
        let lifecycle = request.extensions().get::<Lifecycle>().cloned().expect(
            "add LifecycleLayer to the server: Server::builder().layer(LifecycleLayer::new())",
        );
        if request.get_ref().keep {
            lifecycle.ignore_abort(true);
        }
        self.report(Event::Started(lifecycle.clone()));
        lifecycle
    }

    async fn run(self, request: Request<JobRequest>) -> Result<Response<JobReply>, Status> {
        let lifecycle = self.start(&request);
        let job = request.into_inner();
        if job.fail {
            return Err(Status::invalid_argument("this job was asked to fail"));
        }
        let done = Arc::new(AtomicU32::new(0));
        let _finished = Finished(self.clone(), done.clone());
        for step in 1..=job.steps {
            tokio::time::sleep(Duration::from_millis(job.step_ms)).await;
            done.store(step, Ordering::Relaxed);
            self.report(Event::Step(step));
        }
        tracing::info!(status = %lifecycle.status(), steps = job.steps, "Run finished its work");
        Ok(Response::new(JobReply {
            steps_done: job.steps,
        }))
    }

    async fn watch(
        self,
        request: Request<JobRequest>,
    ) -> Result<Response<ReceiverStream<Result<Progress, Status>>>, Status> {
        self.start(&request);
        let job = request.into_inner();
        if job.fail {
            return Err(Status::invalid_argument("this job was asked to fail"));
        }
        let (tx, rx) = mpsc::channel(1);
        let jobs = self.clone();
        tokio::spawn(async move {
            let done = Arc::new(AtomicU32::new(0));
            let _finished = Finished(jobs.clone(), done.clone());
            for step in 1..=job.steps {
                tokio::time::sleep(Duration::from_millis(job.step_ms)).await;
                let progress = Progress {
                    step,
                    total: job.steps,
                };
                if tx.send(Ok(progress)).await.is_err() {
                    tracing::info!(step, "Watch: the client is gone, stopping");
                    return;
                }
                done.store(step, Ordering::Relaxed);
                jobs.report(Event::Step(step));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Reports `Finished` when the work ends, however it ends (it may be
/// dropped at an `.await` when the client leaves).
struct Finished(Jobs, Arc<AtomicU32>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0
            .report(Event::Finished(self.1.load(Ordering::Relaxed)));
    }
}

impl NamedService for Jobs {
    const NAME: &'static str = "jobs.Jobs";
}

impl tower::Service<http::Request<Body>> for Jobs {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let jobs = self.clone();
        match req.uri().path() {
            "/jobs.Jobs/Run" => Box::pin(async move {
                let svc = tower::service_fn(move |r| jobs.clone().run(r));
                let mut grpc =
                    tonic::server::Grpc::new(ProstCodec::<JobReply, JobRequest>::default());
                Ok(grpc.unary(svc, req).await)
            }),
            "/jobs.Jobs/Watch" => Box::pin(async move {
                let svc = tower::service_fn(move |r| jobs.clone().watch(r));
                let mut grpc =
                    tonic::server::Grpc::new(ProstCodec::<Progress, JobRequest>::default());
                Ok(grpc.server_streaming(svc, req).await)
            }),
            _ => Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// A client of `jobs.Jobs`.
#[derive(Clone)]
pub struct JobsClient {
    inner: tonic::client::Grpc<tonic::transport::Channel>,
}

impl JobsClient {
    pub async fn connect(addr: std::net::SocketAddr) -> Result<Self, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        Ok(JobsClient {
            inner: tonic::client::Grpc::new(channel),
        })
    }

    pub async fn run(
        &mut self,
        request: impl tonic::IntoRequest<JobRequest>,
    ) -> Result<Response<JobReply>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        let path = PathAndQuery::from_static("/jobs.Jobs/Run");
        let codec = ProstCodec::<JobRequest, JobReply>::default();
        self.inner.unary(request.into_request(), path, codec).await
    }

    pub async fn watch(
        &mut self,
        request: impl tonic::IntoRequest<JobRequest>,
    ) -> Result<Response<tonic::Streaming<Progress>>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        let path = PathAndQuery::from_static("/jobs.Jobs/Watch");
        let codec = ProstCodec::<JobRequest, Progress>::default();
        self.inner
            .server_streaming(request.into_request(), path, codec)
            .await
    }
}
