//! HTTP: the axum routers, one file per protocol family, and the one `ApiError`.
//!
//! `router` serves `server.http_addr` (query API, Tempo routes, OTLP/HTTP and Zipkin
//! ingest); `otlp_router` serves `server.otlp_http_addr` (OTLP/HTTP only). Handlers decode
//! on blocking threads and hand spans to the pipeline; reads go to `Storage` on blocking
//! threads too. Layers: tracing, a request timeout, the body limit, and a cap on ingest
//! requests decoded at once.

pub mod cluster;
pub mod diagnose;
pub mod fanout;
pub mod jaeger;
pub mod join;
pub mod logs;
pub mod loki;
pub mod metrics;
pub mod otlp;
pub mod tempo;
pub mod tempo_metrics;
pub mod tempo_search;
pub mod tempo_tags;
pub mod zipkin;
pub mod zipkin_query;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::Semaphore;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::ingest::IngestError;
use crate::pipeline::{Pipeline, SubmitError};
use crate::store::Storage;

/// Shared by every handler; lives as long as the servers.
#[derive(Clone)]
pub struct AppState {
    pub pipeline: Arc<Pipeline>,
    pub storage: Arc<Storage>,
    pub config: Config,
    /// Ingest requests being read and decoded; bounds the memory bodies can take.
    pub ingest_slots: Arc<Semaphore>,
}

impl AppState {
    pub fn new(pipeline: Arc<Pipeline>, storage: Arc<Storage>, config: Config) -> AppState {
        AppState {
            ingest_slots: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            pipeline,
            storage,
            config,
        }
    }
}

/// The main HTTP port: queries, Grafana-compatible routes and ingest.
pub fn router(state: AppState) -> Router {
    let ingest = ingest_routes(&state)
        // Zipkin's read API answers GET on the path its ingest takes POST on.
        .route(
            "/api/v2/spans",
            post(zipkin::post_spans).get(zipkin_query::span_names),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit_ingest_concurrency,
        ));
    Router::new()
        .route("/api/traces/{trace_id}", get(tempo::trace_v1))
        .route("/api/v2/traces/{trace_id}", get(tempo::trace_v2))
        .route("/api/search", get(tempo_search::search))
        .route("/api/metrics/query_range", get(tempo_metrics::query_range))
        .route("/api/metrics/query", get(tempo_metrics::query_instant))
        .route("/api/search/tags", get(tempo_tags::tag_names_v1))
        .route("/api/v2/search/tags", get(tempo_tags::tag_names_v2))
        .route(
            "/api/search/tag/{tag}/values",
            get(tempo_tags::tag_values_v1),
        )
        .route(
            "/api/v2/search/tag/{tag}/values",
            get(tempo_tags::tag_values_v2),
        )
        .route("/jaeger/api/services", get(jaeger::services))
        .route(
            "/jaeger/api/services/{service}/operations",
            get(jaeger::service_operations),
        )
        .route("/jaeger/api/operations", get(jaeger::operations))
        .route("/jaeger/api/dependencies", get(jaeger::dependencies))
        .route("/jaeger/api/traces", get(jaeger::find_traces))
        .route("/jaeger/api/traces/{trace_id}", get(jaeger::trace))
        .route("/jaeger/api/v3/services", get(jaeger::services_v3))
        .route("/jaeger/api/v3/operations", get(jaeger::operations_v3))
        .route("/jaeger/api/v3/traces", get(jaeger::find_traces_v3))
        .route(
            "/jaeger/api/v3/trace-summaries",
            get(jaeger::trace_summaries),
        )
        .route("/jaeger/api/v3/traces/{trace_id}", get(jaeger::trace_v3))
        .merge(zipkin_routes("/api/v2"))
        .merge(zipkin_routes("/zipkin/api/v2"))
        .route("/zipkin/api/v2/spans", get(zipkin_query::span_names))
        .route("/zipkin/config.json", get(zipkin_query::config))
        .route("/api/echo", get(|| async { "echo" }))
        .route("/api/status/buildinfo", get(tempo::buildinfo))
        .route("/api/diagnose", get(diagnose::get_diagnose))
        .route("/", get(crate::page::search))
        .route("/search", get(crate::page::search))
        .route("/trace/{trace_id}", get(crate::page::trace))
        .route("/log/{log_id}", get(crate::page::log))
        .route("/go", get(crate::page::go))
        .route("/services", get(crate::page::services))
        .route("/logs", get(crate::page::logs))
        .route("/diagnose", get(crate::page::diagnose))
        .route("/api/join/trace/{trace_id}", get(join::by_trace))
        .route("/api/join/log/{log_id}", get(join::by_log))
        .route("/api/logs", get(logs::list))
        .route("/api/logs/{id}", get(logs::get_one))
        .route("/loki/api/v1/query_range", get(loki::query_range))
        .route("/loki/api/v1/query", get(loki::query))
        .route("/loki/api/v1/labels", get(loki::labels))
        .route("/loki/api/v1/label/{name}/values", get(loki::label_values))
        .route(
            crate::cluster::peers::TRACE_ROUTE,
            get(cluster::trace_payloads),
        )
        .route(crate::cluster::peers::LOGS_ROUTE, post(cluster::logs))
        .route(crate::cluster::peers::LOG_ROUTE, get(cluster::log))
        .route(
            crate::cluster::peers::DIAGNOSE_ROUTE,
            post(cluster::diagnose_traces),
        )
        .route(
            crate::cluster::peers::METRICS_ROUTE,
            post(tempo_metrics::peer_accumulate),
        )
        .route(
            crate::cluster::latency::LATENCY_ROUTE,
            post(cluster::latency),
        )
        .route(
            crate::cluster::peers::PAGE_SEARCH_ROUTE,
            post(crate::page::peer_search),
        )
        .route("/ready", get(ready))
        .route("/metrics", get(metrics::metrics))
        .route("/api/metrics/latency", get(metrics::latency))
        .merge(ingest)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            fanout::fan_out,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.config.tokens.clone(),
            crate::auth::http_guard,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(60),
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// The OTLP/HTTP port.
pub fn otlp_router(state: AppState) -> Router {
    ingest_routes(&state)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit_ingest_concurrency,
        ))
        .fallback(|| async {
            ApiError::NotFound(
                "no such route; OTLP/HTTP serves POST /v1/traces and /v1/logs".into(),
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.config.tokens.clone(),
            crate::auth::http_guard,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(60),
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Zipkin's v2 read API under `prefix` (`GET …/spans` is routed by the caller).
fn zipkin_routes(prefix: &str) -> Router<AppState> {
    Router::new()
        .route(&format!("{prefix}/services"), get(zipkin_query::services))
        .route(
            &format!("{prefix}/remoteServices"),
            get(zipkin_query::remote_services),
        )
        .route(&format!("{prefix}/traces"), get(zipkin_query::traces))
        .route(
            &format!("{prefix}/trace/{{trace_id}}"),
            get(zipkin_query::trace),
        )
        .route(
            &format!("{prefix}/traceMany"),
            get(zipkin_query::trace_many),
        )
        .route(
            &format!("{prefix}/dependencies"),
            get(zipkin_query::dependencies),
        )
        .route(
            &format!("{prefix}/autocompleteKeys"),
            get(zipkin_query::autocomplete_keys),
        )
        .route(
            &format!("{prefix}/autocompleteValues"),
            get(zipkin_query::autocomplete_values),
        )
}

fn ingest_routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/v1/traces", post(otlp::post_traces))
        .route("/v1/logs", post(otlp::post_logs))
        .layer(DefaultBodyLimit::max(state.config.max_request_bytes))
}

async fn limit_ingest_concurrency(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(_slot) = state.ingest_slots.clone().acquire_owned().await else {
        return ApiError::Unavailable("service is shutting down".into()).into_response();
    };
    next.run(request).await
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.pipeline.is_ready() && state.pipeline.cluster_waiting() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, HeaderValue::from_static("1"))],
            "joining the cluster",
        )
            .into_response();
    }
    if state.pipeline.is_ready() {
        // Queries go on while ingest waits for disk space: still ready, and saying why
        // ingest is paused.
        match state.pipeline.disk.refusal() {
            None => (StatusCode::OK, "ready").into_response(),
            Some(reason) => {
                (StatusCode::OK, format!("ready; ingest paused: {reason}")).into_response()
            }
        }
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, HeaderValue::from_static("1"))],
            "replaying write-ahead log",
        )
            .into_response()
    }
}

/// Errors of the non-OTLP routes, rendered as `{"error": "..."}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    Unavailable(String),
    /// The detail goes to the service's log, not to the client.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(error: IngestError) -> Self {
        match error {
            IngestError::BadRequest(message) => ApiError::BadRequest(message),
            IngestError::TooLarge { .. } => ApiError::PayloadTooLarge(error.to_string()),
            IngestError::UnsupportedMediaType(message) => ApiError::UnsupportedMediaType(message),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::Overloaded => ApiError::TooManyRequests(error.to_string()),
            SubmitError::BatchTooLarge { .. } | SubmitError::RecordTooLarge { .. } => {
                ApiError::PayloadTooLarge(error.to_string())
            }
            SubmitError::NotReady
            | SubmitError::ShuttingDown
            | SubmitError::WalFailed
            | SubmitError::DiskFull(_)
            | SubmitError::Cluster(_) => ApiError::Unavailable(error.to_string()),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        ApiError::Internal(error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "request failed");
        }
        let mut response = (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The media type of a request or `Accept` header, without parameters, lowercase.
pub fn media_type(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(|value| {
            value
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
}

/// Read an ingest body (the body limit), undo its `Content-Encoding` (the limit again,
/// after decompression) and decode it, off the async workers.
pub async fn decode_ingest_body<T: Send + 'static>(
    headers: &HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    limit: usize,
    decode: impl FnOnce(&[u8]) -> Result<T, IngestError> + Send + 'static,
) -> Result<T, IngestError> {
    let body = body.map_err(|rejection| body_rejection(rejection, limit))?;
    let content_encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    crate::ingest::decoders::decode(move || {
        let body = crate::ingest::decode_body(content_encoding.as_deref(), &body, limit)?;
        decode(&body)
    })
    .await
    .unwrap_or_else(|join_error| {
        Err(IngestError::BadRequest(format!(
            "decoding failed: {join_error}"
        )))
    })
}

/// Run a blocking store call (tantivy reads) off the async workers. The failure comes back
/// as text for the service's log: each API answers it in its own protocol's form.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(error.to_string()),
        Err(error) => Err(error.to_string()),
    }
}

/// Map an axum body rejection (the body limit, a broken connection) to our error.
fn body_rejection(
    rejection: axum::extract::rejection::BytesRejection,
    limit: usize,
) -> IngestError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        IngestError::TooLarge {
            limit,
            decompressed: false,
        }
    } else {
        IngestError::BadRequest(format!("request body could not be read: {rejection}"))
    }
}
