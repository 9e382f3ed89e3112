//! The RPC handlers and the server's life cycle (start, health, graceful stop).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::convert::{self, status};
use super::deadline::{ClientDeadline, DeadlineLayer};
use super::pb::{
    self, info_server::InfoServer, matcher_server::MatcherServer, registry_server::RegistryServer,
};
use super::pool::WorkPool;
use super::stats::Stats;
use super::{ServeConfig, Shared};
use crate::engine::{EMBED_BATCH, Engine, EngineError, EnrollRequest};
use crate::store::ListQuery;

/// Everything the handlers share.
pub struct ServiceState {
    engine: Arc<Engine>,
    pool: WorkPool,
    stats: Stats,
    started: Instant,
    default_deadline: Option<Duration>,
}

impl ServiceState {
    pub fn new(engine: Arc<Engine>, config: &ServeConfig) -> Self {
        ServiceState {
            engine,
            pool: WorkPool::new(config.workers, config.queue),
            stats: Stats::default(),
            started: Instant::now(),
            default_deadline: config.default_deadline,
        }
    }

    /// The request's deadline: its client's ([`ClientDeadline`]), else the server
    /// default.
    fn deadline<T>(&self, request: &Request<T>) -> Option<Instant> {
        match request.extensions().get::<ClientDeadline>() {
            Some(ClientDeadline(at)) => Some(*at),
            None => Some(Instant::now() + self.default_deadline?),
        }
    }

    /// Runs `job` with the engine on the work pool (refused at once when the queue
    /// is full); engine errors become their gRPC statuses.
    async fn engine_call<T, F>(&self, deadline: Option<Instant>, job: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Engine) -> Result<T, EngineError> + Send + 'static,
    {
        let engine = self.engine.clone();
        self.pool
            .run(deadline, move || job(&engine))
            .await?
            .map_err(status)
    }

    /// Runs a handler body and records its latency and outcome.
    async fn observed<T>(
        &self,
        method: &'static str,
        body: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let result = body.await;
        self.stats.record(method, started.elapsed(), result.is_ok());
        result
    }
}

fn enroll_request(request: pb::EnrollRequest) -> Result<EnrollRequest, Status> {
    Ok(EnrollRequest {
        id: request.id,
        fields: convert::fields_from_proto(request.fields)?,
        image: request.image,
        create_only: request.fail_if_exists,
    })
}

struct Registry(Shared);
struct Matcher(Shared);
struct InfoService(Shared);

const MAX_PAGE: u32 = 1000;

#[tonic::async_trait]
impl pb::registry_server::Registry for Registry {
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let state = &self.0;
        let deadline = state.deadline(&request);
        state
            .observed("marklens.v1.Registry/Enroll", async {
                let enroll = enroll_request(request.into_inner())?;
                let id = enroll.id.clone();
                let (outcome, record) = state
                    .engine_call(deadline, move |engine| {
                        let outcome = engine.enroll(enroll)?;
                        Ok::<_, EngineError>((outcome, engine.get(&id)?))
                    })
                    .await?;
                Ok(Response::new(pb::EnrollResponse {
                    outcome: convert::outcome_to_proto(outcome) as i32,
                    mark: Some(convert::mark_to_proto(&record)),
                }))
            })
            .await
    }

    async fn enroll_stream(
        &self,
        request: Request<Streaming<pb::EnrollRequest>>,
    ) -> Result<Response<pb::EnrollSummary>, Status> {
        let state = &self.0;
        state
            .observed("marklens.v1.Registry/EnrollStream", async {
                let mut stream = request.into_inner();
                let mut summary = pb::EnrollSummary::default();
                let mut batch: Vec<(u32, pb::EnrollRequest)> = Vec::new();
                let mut index = 0u32;
                loop {
                    let next = stream.next().await;
                    let done = next.is_none();
                    if let Some(item) = next {
                        batch.push((index, item?));
                        index += 1;
                    }
                    if batch.len() == EMBED_BATCH || (done && !batch.is_empty()) {
                        enroll_batch(state, std::mem::take(&mut batch), &mut summary).await?;
                    }
                    if done {
                        break;
                    }
                }
                Ok(Response::new(summary))
            })
            .await
    }

    async fn get_mark(
        &self,
        request: Request<pb::GetMarkRequest>,
    ) -> Result<Response<pb::Mark>, Status> {
        let state = &self.0;
        let deadline = state.deadline(&request);
        state
            .observed("marklens.v1.Registry/GetMark", async {
                let request = request.into_inner();
                let mark = state
                    .engine_call(deadline, move |engine| {
                        let mut mark = convert::mark_to_proto(&engine.get(&request.id)?);
                        if request.include_image {
                            mark.image = engine.image(&request.id)?;
                        }
                        Ok::<_, EngineError>(mark)
                    })
                    .await?;
                Ok(Response::new(mark))
            })
            .await
    }

    async fn remove_mark(
        &self,
        request: Request<pb::RemoveMarkRequest>,
    ) -> Result<Response<pb::RemoveMarkResponse>, Status> {
        let state = &self.0;
        let deadline = state.deadline(&request);
        state
            .observed("marklens.v1.Registry/RemoveMark", async {
                let id = request.into_inner().id;
                state
                    .engine_call(deadline, move |engine| engine.remove(&id))
                    .await?;
                Ok(Response::new(pb::RemoveMarkResponse {}))
            })
            .await
    }

    async fn list_marks(
        &self,
        request: Request<pb::ListMarksRequest>,
    ) -> Result<Response<pb::ListMarksResponse>, Status> {
        let state = &self.0;
        let deadline = state.deadline(&request);
        state
            .observed("marklens.v1.Registry/ListMarks", async {
                let r = request.into_inner();
                if r.page_size > MAX_PAGE {
                    return Err(Status::invalid_argument(format!(
                        "page_size {} is over {MAX_PAGE}",
                        r.page_size
                    )));
                }
                let page = if r.page_size == 0 { 100 } else { r.page_size } as usize;
                let query = ListQuery {
                    after: (!r.page_token.is_empty()).then_some(r.page_token),
                    limit: page + 1,
                    status: convert::status_from_proto(r.status),
                    holder: (!r.holder.is_empty()).then_some(r.holder),
                    nice_classes: convert::classes_from_proto(&r.nice_classes)?,
                };
                let mut marks = state
                    .engine_call(deadline, move |engine| engine.list(&query))
                    .await?;
                // One extra row tells whether another page follows.
                let next_page_token = if marks.len() > page {
                    marks.truncate(page);
                    marks.last().map(|m| m.id.clone()).unwrap_or_default()
                } else {
                    String::new()
                };
                Ok(Response::new(pb::ListMarksResponse {
                    marks: marks.iter().map(convert::mark_to_proto).collect(),
                    next_page_token,
                }))
            })
            .await
    }
}

/// Enrols one batch of a stream, counting outcomes into `summary`.
async fn enroll_batch(
    state: &Shared,
    batch: Vec<(u32, pb::EnrollRequest)>,
    summary: &mut pb::EnrollSummary,
) -> Result<(), Status> {
    let mut requests = Vec::with_capacity(batch.len());
    let mut positions = Vec::with_capacity(batch.len());
    summary.received += batch.len() as u32;
    for (index, item) in batch {
        let id = item.id.clone();
        match enroll_request(item) {
            Ok(request) => {
                requests.push(request);
                positions.push((index, id));
            }
            Err(e) => record_failure(summary, index, id, &e),
        }
    }
    let engine = state.engine.clone();
    let results = state
        .pool
        .run_waiting(None, move || engine.enroll_many(requests))
        .await?;
    for ((index, id), result) in positions.into_iter().zip(results) {
        match result {
            Ok(outcome) => match convert::outcome_to_proto(outcome) {
                pb::EnrollOutcome::Created => summary.created += 1,
                pb::EnrollOutcome::Replaced => summary.replaced += 1,
                pb::EnrollOutcome::Updated => summary.updated += 1,
                _ => summary.unchanged += 1,
            },
            Err(e) => record_failure(summary, index, id, &status(e)),
        }
    }
    Ok(())
}

fn record_failure(summary: &mut pb::EnrollSummary, index: u32, id: String, error: &Status) {
    summary.failed += 1;
    if summary.failures.len() < 100 {
        summary.failures.push(pb::EnrollFailure {
            index,
            id,
            code: convert::code_name(error.code()).to_owned(),
            message: error.message().to_owned(),
        });
    }
}

type SearchReplies = Pin<Box<dyn Stream<Item = Result<pb::SearchResponse, Status>> + Send>>;

/// Runs one search on the pool; `wait` chooses waiting for a queue slot over
/// refusing when the queue is full.
async fn search_one(
    state: &Shared,
    request: pb::SearchRequest,
    deadline: Option<Instant>,
    wait: bool,
) -> Result<pb::SearchResponse, Status> {
    let queued = Instant::now();
    let options = convert::options_from_proto(&request)?;
    let engine = state.engine.clone();
    let image = request.image;
    let job = move || engine.search(&image, &options);
    let outcome = if wait {
        state.pool.run_waiting(deadline, job).await?
    } else {
        state.pool.run(deadline, job).await?
    };
    let mut result = outcome.map_err(status)?;
    // The client waited for the queue too: report it in the total.
    result.timings.total_ms = queued.elapsed().as_secs_f64() * 1000.0;
    Ok(convert::result_to_proto(request.request_id, &result))
}

#[tonic::async_trait]
impl pb::matcher_server::Matcher for Matcher {
    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let state = &self.0;
        let deadline = state.deadline(&request);
        state
            .observed("marklens.v1.Matcher/Search", async {
                search_one(state, request.into_inner(), deadline, false)
                    .await
                    .map(Response::new)
            })
            .await
    }

    type SearchStreamStream = SearchReplies;

    async fn search_stream(
        &self,
        request: Request<Streaming<pb::SearchRequest>>,
    ) -> Result<Response<Self::SearchStreamStream>, Status> {
        let state = self.0.clone();
        let deadline = state.deadline(&request);
        let mut incoming = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut in_flight = tokio::task::JoinSet::new();
            while let Some(item) = incoming.next().await {
                let request = match item {
                    Ok(request) => request,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                };
                let (state, tx) = (state.clone(), tx.clone());
                in_flight.spawn(async move {
                    let started = Instant::now();
                    let request_id = request.request_id.clone();
                    let reply = search_one(&state, request, deadline, true).await;
                    state.stats.record(
                        "marklens.v1.Matcher/SearchStream",
                        started.elapsed(),
                        reply.is_ok(),
                    );
                    let reply = reply.unwrap_or_else(|e| pb::SearchResponse {
                        request_id,
                        error: Some(pb::SearchError {
                            code: convert::code_name(e.code()).to_owned(),
                            message: e.message().to_owned(),
                        }),
                        ..pb::SearchResponse::default()
                    });
                    let _ = tx.send(Ok(reply)).await;
                });
            }
            while in_flight.join_next().await.is_some() {}
        });
        let replies = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(replies)))
    }
}

#[tonic::async_trait]
impl pb::info_server::Info for InfoService {
    async fn get_info(
        &self,
        request: Request<pb::GetInfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        let state = &self.0;
        let deadline = state.deadline(&request);
        state
            .observed("marklens.v1.Info/GetInfo", async {
                let (info, calibration) = state
                    .engine_call(deadline, move |engine| {
                        Ok((engine.info()?, engine.calibration()))
                    })
                    .await?;
                Ok(Response::new(pb::InfoResponse {
                    model: info.model,
                    model_sha256: info.model_sha256,
                    fingerprint: info.fingerprint,
                    backend: info.backend.name().to_owned(),
                    dimensions: info.dim as u32,
                    index: info.index.to_owned(),
                    marks: info.marks as u64,
                    indexed_vectors: info.indexed_vectors as u64,
                    uptime_seconds: state.started.elapsed().as_secs_f64(),
                    methods: state
                        .stats
                        .figures()
                        .into_iter()
                        .map(|f| pb::MethodStats {
                            method: f.method,
                            requests: f.requests,
                            failures: f.failures,
                            p50_ms: f.p50_ms,
                            p95_ms: f.p95_ms,
                            p99_ms: f.p99_ms,
                        })
                        .collect(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    decision: calibration.as_ref().map(convert::thresholds_to_proto),
                }))
            })
            .await
    }
}

/// Serves `engine` until `shutdown` completes, then finishes in-flight requests
/// and flushes the engine (index snapshot, database checkpoint).
///
/// `ready` receives the bound address once the server accepts connections (useful
/// with port 0).
pub async fn serve(
    engine: Arc<Engine>,
    config: ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> Result<(), ServeError> {
    let state = super::shared(engine.clone(), &config);
    let limit = config.max_message_bytes;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RegistryServer<Registry>>().await;
    health.set_serving::<MatcherServer<Matcher>>().await;
    health.set_serving::<InfoServer<InfoService>>().await;

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(super::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(ServeError::Reflection)?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(ServeError::Reflection)?;

    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.addr,
        source,
    })?;
    tracing::info!(%addr, workers = config.workers, queue = config.queue, "serving marklens.v1");
    if let Some(ready) = ready {
        let _ = ready.send(addr);
    }

    let health_on_stop = health.clone();
    let stop = async move {
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight requests");
        health_on_stop
            .set_not_serving::<MatcherServer<Matcher>>()
            .await;
    };
    // Replies are small and latency-bound: never wait on Nagle's algorithm (with
    // delayed ACKs it adds ~40 ms to every call).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .layer(DeadlineLayer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            RegistryServer::new(Registry(state.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            MatcherServer::new(Matcher(state.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(InfoServer::new(InfoService(state)))
        .serve_with_incoming_shutdown(incoming, stop)
        .await
        .map_err(ServeError::Transport)?;

    let flushed = tokio::task::spawn_blocking(move || engine.flush())
        .await
        .map_err(|e| ServeError::Flush(e.to_string()))?;
    flushed.map_err(|e| ServeError::Flush(e.to_string()))?;
    tracing::info!("stopped; store flushed");
    Ok(())
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("reflection service: {0}")]
    Reflection(tonic_reflection::server::Error),
    #[error("server failed: {0}")]
    Transport(tonic::transport::Error),
    #[error("flushing the store on shutdown: {0}")]
    Flush(String),
}
