//! tracelink: follow requests across services, from a log line to its trace and metrics.
//!
//! Architecture in ten lines (DESIGN.md has the whole of it):
//! - `ingest` decodes OTLP (HTTP protobuf/JSON, gRPC) and Zipkin bodies into `model::Span`s;
//!   `api` and `grpc` are the servers that call it, and never touch storage themselves.
//! - `pipeline` is the one path a span takes: the `wal` (fsync before the ack, group
//!   commit), then the head buffer (read-your-writes), then the indexer thread that adds
//!   spans to tantivy and commits with the covered WAL position as commit payload.
//! - `store` holds the tantivy spans index and the head; reads by trace id merge both.
//! - On start the WAL is replayed from the committed position (`/ready` is 503 until then);
//!   on SIGTERM the servers stop accepting, the pipeline drains, and a final commit runs.
//! - `config` turns the TOML file and `TRACELINK_*` variables into a checked `Config`.

pub mod analysis;
pub mod api;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod diagnose;
#[doc(hidden)]
pub mod fuzz;
pub mod grpc;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod page;
pub mod pipeline;
pub mod query;
pub mod redact;
pub mod store;
pub mod tls;
pub mod wal;

/// Hash maps keyed by ids and labels on the ingest path: foldhash, seeded per process (so
/// colliding keys cannot be picked from outside) and far cheaper than SipHash.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::AppState;
use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::store::Storage;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {key} {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open storage under {path}: {source}")]
    Storage {
        path: String,
        source: store::StoreError,
    },
}

/// A bound, not yet serving, tracelink. Binding first lets callers (tests) learn the
/// ports of `127.0.0.1:0` addresses before anything is sent.
pub struct Server {
    config: Config,
    http: TcpListener,
    otlp_http: TcpListener,
    otlp_grpc: TcpListener,
    storage: Arc<Storage>,
    pipeline: Arc<Pipeline>,
    /// The tailer's counters, once it runs; read by `/metrics`.
    tail_stats: Arc<std::sync::Mutex<Option<Arc<ingest::tail::TailStats>>>>,
    /// In a cluster, the partitions this node owns; read by `/metrics`.
    ownership: Arc<cluster::owner::Ownership>,
}

impl Server {
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        async fn listen(key: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { key, addr, source })
        }
        let http = listen("server.http_addr", config.http_addr).await?;
        let otlp_http = listen("server.otlp_http_addr", config.otlp_http_addr).await?;
        let otlp_grpc = listen("server.otlp_grpc_addr", config.otlp_grpc_addr).await?;
        let storage_error = |source| StartError::Storage {
            path: config.data_dir.display().to_string(),
            source,
        };
        let storage = Arc::new(
            Storage::open(&config.data_dir, config.partition, config.head_limits())
                .map_err(storage_error)?,
        );
        let metrics = metrics::Metrics::new(
            config.latency_buckets.clone(),
            config.max_series_per_metric,
            config.span_metrics,
        );
        let pipeline =
            Pipeline::new(storage.clone(), &config, metrics.clone()).map_err(storage_error)?;
        let tail_stats = Arc::new(std::sync::Mutex::new(None));
        let ownership: Arc<cluster::owner::Ownership> = Arc::default();
        metrics.register_collector(Box::new(metrics::own::OwnMetrics {
            stats: pipeline.stats.clone(),
            pipeline: Arc::downgrade(&pipeline),
            storage: Arc::downgrade(&storage),
            data_dir: config.data_dir.clone(),
            tail: tail_stats.clone(),
            ownership: config.cluster.is_some().then(|| ownership.clone()),
        }));
        Ok(Server {
            config,
            http,
            otlp_http,
            otlp_grpc,
            storage,
            pipeline,
            tail_stats,
            ownership,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().unwrap_or(self.config.http_addr)
    }

    pub fn otlp_http_addr(&self) -> SocketAddr {
        self.otlp_http
            .local_addr()
            .unwrap_or(self.config.otlp_http_addr)
    }

    /// The pipeline's counters (spans and records accepted, indexed, commits…).
    pub fn stats(&self) -> Arc<pipeline::PipelineStats> {
        self.pipeline.stats.clone()
    }

    pub fn otlp_grpc_addr(&self) -> SocketAddr {
        self.otlp_grpc
            .local_addr()
            .unwrap_or(self.config.otlp_grpc_addr)
    }

    /// Serve until `shutdown` resolves; then stop accepting, drain the pipeline, make the
    /// final commit, all within `shutdown_grace`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tracing::info!(
            http = %self.http_addr(),
            otlp_http = %self.otlp_http_addr(),
            otlp_grpc = %self.otlp_grpc_addr(),
            data_dir = %self.config.data_dir.display(),
            "tracelink listening"
        );
        let state = AppState::new(
            self.pipeline.clone(),
            self.storage.clone(),
            self.config.clone(),
        );
        let token = CancellationToken::new();
        let mut servers = tokio::task::JoinSet::new();
        {
            // The disk guard's eye on free space, for as long as the servers run.
            let token = token.clone();
            let disk = self.pipeline.disk.clone();
            servers.spawn(async move {
                let mut ticks = tokio::time::interval(pipeline::disk::CHECK_INTERVAL);
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = ticks.tick() => disk.check(),
                    }
                }
            });
        }
        if let Some(mut cluster_config) = self.config.cluster.clone() {
            if cluster_config.advertise_url.is_empty() {
                cluster_config.advertise_url = format!("http://{}", self.http_addr());
            }
            // Join the cluster (ingest answers 503 until then), then hold this node's
            // share of the partitions until shutdown.
            let token = token.clone();
            let pipeline = self.pipeline.clone();
            let storage = self.storage.clone();
            let peer_token = self.config.tokens.first(auth::Scope::Query);
            let ownership = self.ownership.clone();
            let data_dir = self.config.data_dir.clone();
            servers.spawn(async move {
                let incarnation = match cluster::incarnation(&data_dir) {
                    Ok(incarnation) => incarnation,
                    Err(error) => {
                        tracing::error!(%error, "cluster: cannot keep this data directory's identity; not joining");
                        return;
                    }
                };
                let Some(joined) = cluster::Cluster::join(cluster_config.clone(), &token).await
                else {
                    return;
                };
                let joined = Arc::new(joined);
                let peers = Arc::new(cluster::peers::Peers::new(
                    cluster_config.node_id.clone(),
                    cluster_config.query_timeout,
                    peer_token,
                    tokio::runtime::Handle::current(),
                ));
                let _ = storage.peers.set(peers.clone());
                let _ = pipeline.cluster.set(joined.clone());
                tracing::info!(node = %cluster_config.node_id, "joined the cluster");
                cluster::owner::run(joined, pipeline, peers, ownership, incarnation, token).await;
            });
        }
        servers.spawn(serve_http(
            "http",
            self.http,
            self.config.tls.clone(),
            api::router(state.clone()),
            token.clone(),
        ));
        // Ingest is received on threads of its own: the query API's threads then never
        // hold a query behind an export's frames.
        let ingest = ingest_runtime();
        let otlp_http = Rebind::new(self.otlp_http);
        let otlp_router = api::otlp_router(state.clone());
        let otlp_tls = self.config.tls.clone();
        let otlp_token = token.clone();
        servers.spawn_on(
            async move {
                match otlp_http.listener() {
                    Ok(listener) => {
                        serve_http("otlp http", listener, otlp_tls, otlp_router, otlp_token).await
                    }
                    Err(error) => tracing::error!(%error, "otlp http server cannot listen"),
                }
            },
            &ingest,
        );
        {
            let token = token.clone();
            let otlp_grpc = Rebind::new(self.otlp_grpc);
            let guard = auth::grpc_guard(state.config.tokens.clone());
            let traces = tonic::service::interceptor::InterceptedService::new(
                grpc::trace_service(state.clone()),
                guard.clone(),
            );
            let logs = tonic::service::interceptor::InterceptedService::new(
                grpc::logs_service(state.clone()),
                guard,
            );
            let tls = self.config.tls.clone();
            servers.spawn_on(async move {
                let listener = match otlp_grpc.listener() {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::error!(%error, "otlp grpc server cannot listen");
                        return;
                    }
                };
                // Small answers (an export's ack) go out at once, not after the peer's
                // delayed ACK (~40 ms with Nagle's algorithm on).
                let incoming =
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                let mut builder = tonic::transport::Server::builder();
                if let Some(tls) = tls {
                    builder = match builder.tls_config(tls.grpc()) {
                        Ok(builder) => builder,
                        Err(error) => {
                            tracing::error!(%error, "otlp grpc server cannot use the TLS certificate");
                            return;
                        }
                    };
                }
                let served = builder
                    .layer(tower::util::MapResponseLayer::new(
                        grpc::over_size_is_resource_exhausted,
                    ))
                    .add_service(traces)
                    .add_service(logs)
                    .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
                    .await;
                if let Err(error) = served {
                    tracing::error!(%error, "otlp grpc server failed");
                }
            }, &ingest);
        }
        let replay_pipeline = self.pipeline.clone();
        let logs_config = self.config.logs.clone();
        let tail_stats = self.tail_stats.clone();
        let replay = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            match replay_pipeline.replay_and_start() {
                Ok(records) => tracing::info!(
                    replayed_records = records,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "write-ahead log replayed; ready"
                ),
                Err(error) => {
                    tracing::error!(%error, "write-ahead log replay failed; ingest stays off");
                    return None;
                }
            }
            if logs_config.sources.is_empty() {
                return None;
            }
            let sender = replay_pipeline.tail_sender()?;
            match ingest::tail::spawn(
                logs_config,
                sender,
                replay_pipeline.committed_files(),
                replay_pipeline.checkpoints_damaged,
            ) {
                Ok(tailer) => {
                    if let Ok(mut shared) = tail_stats.lock() {
                        *shared = Some(tailer.stats.clone());
                    }
                    Some(tailer)
                }
                Err(error) => {
                    tracing::error!(%error, "cannot start the file tailer");
                    None
                }
            }
        });

        shutdown.await;
        tracing::info!("shutting down: no new requests, draining");
        token.cancel();
        let pipeline = self.pipeline.clone();
        let drain = async move {
            while servers.join_next().await.is_some() {}
            let tailer = replay.await.ok().flatten();
            let _ = tokio::task::spawn_blocking(move || {
                // The tailer holds a sender into the indexer: stop it before draining.
                if let Some(tailer) = tailer {
                    tailer.stop();
                }
                pipeline.shutdown();
            })
            .await;
        };
        if tokio::time::timeout(self.config.shutdown_grace, drain)
            .await
            .is_err()
        {
            tracing::warn!(
                grace_ms = self.config.shutdown_grace.as_millis() as u64,
                "shutdown grace period expired; unfinished work stays in the write-ahead log"
            );
        } else {
            tracing::info!("stopped");
        }
    }
}

/// The runtime that receives ingest requests (OTLP over HTTP and gRPC), and the current
/// one when it cannot be made.
///
/// A tokio worker runs its tasks one after the other: when the query API shared its two
/// workers with ingest, a query by trace id waited behind an export's frames and its
/// answer's, and its p99 grew with the ingest rate. With runtimes of their own, a query
/// only waits for a core.
fn ingest_runtime() -> tokio::runtime::Handle {
    static INGEST: std::sync::OnceLock<Option<tokio::runtime::Runtime>> =
        std::sync::OnceLock::new();
    INGEST
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .thread_name("tracelink-ingest")
                .enable_all()
                .build()
                .inspect_err(|error| {
                    tracing::warn!(%error, "no ingest threads; ingest is received on the query threads")
                })
                .ok()
        })
        .as_ref()
        .map(|runtime| runtime.handle().clone())
        .unwrap_or_else(tokio::runtime::Handle::current)
}

/// A listener bound on one runtime, to be served on another: a tokio socket is registered
/// with the runtime that made it, so it travels as the standard library's and is
/// registered again where it is served.
enum Rebind {
    Listener(std::net::TcpListener),
    Failed(std::io::Error),
}

impl Rebind {
    fn new(listener: TcpListener) -> Rebind {
        match listener.into_std() {
            Ok(listener) => Rebind::Listener(listener),
            Err(error) => Rebind::Failed(error),
        }
    }

    /// The listener, on the runtime this is called in.
    fn listener(self) -> std::io::Result<TcpListener> {
        match self {
            Rebind::Listener(listener) => TcpListener::from_std(listener),
            Rebind::Failed(error) => Err(error),
        }
    }
}

/// TCP_NODELAY on every accepted HTTP connection: responses are written whole, so
/// Nagle's algorithm only adds the peer's delayed-ACK wait.
/// Serve an axum app on a listener, over TLS when the config has it, until `token`.
async fn serve_http(
    name: &'static str,
    listener: TcpListener,
    tls: Option<tls::Tls>,
    app: axum::Router,
    token: CancellationToken,
) {
    let served = match tls {
        Some(tls) => {
            axum::serve(tls.listener(listener), app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await
        }
        None => {
            axum::serve(listener.tap_io(no_delay), app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await
        }
    };
    if let Err(error) = served {
        tracing::error!(%error, server = name, "server failed");
    }
}

fn no_delay(stream: &mut tokio::net::TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
}

/// Lower the calling thread's priority to `nice` (threads it starts inherit it); `what`
/// names the threads in the warning when the system refuses.
pub(crate) fn lower_thread_priority(nice: i32, what: &str) {
    let thread = rustix::thread::gettid();
    if let Err(error) = rustix::process::setpriority_process(Some(thread), nice) {
        tracing::warn!(%error, "{what}: priority not lowered");
    }
}

/// Lock a mutex whose holders never leave its data half-changed, so a panic elsewhere
/// (poisoning) is no reason to stop using it.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called (inside
/// a runtime), not when the future is first polled, so a signal that arrives while the
/// server is still starting is not lost to the default action.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (terminate, interrupt) {
            (Ok(mut terminate), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            (terminate, interrupt) => {
                tracing::warn!(
                    sigterm = terminate.is_ok(),
                    sigint = interrupt.is_ok(),
                    "cannot listen for shutdown signals; falling back to ctrl-c"
                );
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
