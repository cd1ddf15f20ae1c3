//! The routes through which the nodes of a cluster read each other's data (see
//! [`crate::cluster::peers`]). Each answers from this node alone.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{blocking, ApiError, AppState};
use crate::model::{LogRecord, TraceId};
use crate::store::LogQuery;

/// The stored span payloads of a trace here, each prefixed by its length (u32 LE).
pub async fn trace_payloads(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    let trace_id = TraceId::parse(&raw_id)
        .map_err(|error| ApiError::BadRequest(format!("invalid trace id {raw_id:?}: {error}")))?;
    let storage = state.storage.clone();
    let payloads = blocking(move || storage.local_trace_payloads(&trace_id))
        .await
        .map_err(ApiError::Internal)?;
    let mut body = Vec::new();
    for payload in payloads {
        crate::store::traces::append_payload(&mut body, &payload);
    }
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        body,
    )
        .into_response())
}

/// The log records here matching a query.
pub async fn logs(
    State(state): State<AppState>,
    Json(query): Json<LogQuery>,
) -> Result<Json<Vec<LogRecord>>, ApiError> {
    let storage = state.storage.clone();
    Ok(Json(
        blocking(move || storage.logs.search(&query))
            .await
            .map_err(ApiError::Internal)?,
    ))
}

/// The log record here with this id, or `null`.
pub async fn log(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Option<LogRecord>>, ApiError> {
    let storage = state.storage.clone();
    Ok(Json(
        blocking(move || storage.logs.get(&id))
            .await
            .map_err(ApiError::Internal)?,
    ))
}

/// This node's latency windows (and dependency links) for another node.
pub async fn latency(
    State(state): State<AppState>,
    Json(ask): Json<crate::cluster::latency::LatencyAsk>,
) -> Result<Json<crate::cluster::latency::LatencyAnswer>, ApiError> {
    let storage = state.storage.clone();
    let metrics = state.pipeline.metrics.clone();
    Ok(Json(
        blocking(move || Ok(crate::cluster::latency::answer(&storage, &metrics, &ask)))
            .await
            .map_err(ApiError::Internal)?,
    ))
}

/// What `/api/diagnose` on another node asks for.
#[derive(serde::Deserialize)]
pub struct DiagnoseTraces {
    service: Option<String>,
    start: u64,
    end: u64,
}

/// The traces here that start in the range, with their payloads.
pub async fn diagnose_traces(
    State(state): State<AppState>,
    Json(asked): Json<DiagnoseTraces>,
) -> Result<Response, ApiError> {
    let storage = state.storage.clone();
    let found = blocking(move || {
        crate::diagnose::traces_between(&storage, asked.service.as_deref(), asked.start, asked.end)
    })
    .await
    .map_err(ApiError::Internal)?;
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        crate::cluster::peers::encode_traces(&found),
    )
        .into_response())
}
