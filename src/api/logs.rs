//! The logs query API: `GET /api/logs` with filters, newest first, and `GET /api/logs/{id}`.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::ingest::logline;
use crate::model::Level;
use crate::model::{LogRecord, SpanId, TraceId};
use crate::store::LogQuery;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 5000;

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct LogsParams {
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub service: Option<String>,
    pub level: Option<String>,
    pub q: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub limit: Option<usize>,
}

/// A trace id as a user may paste it: 32 hex, shorter hex, base64, a `traceparent`, or
/// Datadog's decimal 64-bit id. Returns the id and whether only its low 64 bits count.
pub fn parse_query_trace_id(text: &str) -> Result<(TraceId, bool), ApiError> {
    if let Some(found) = logline::parse_log_trace_id("trace_id", text) {
        return Ok(found);
    }
    TraceId::parse(text)
        .map(|trace_id| (trace_id, false))
        .map_err(|error| ApiError::BadRequest(format!("invalid trace id {text:?}: {error}")))
}

fn parse_time(name: &str, text: &str) -> Result<u64, ApiError> {
    logline::parse_time_text(text).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "{name} {text:?} is neither RFC 3339 nor unix nanoseconds"
        ))
    })
}

impl LogsParams {
    pub fn to_query(&self) -> Result<LogQuery, ApiError> {
        let mut query = LogQuery {
            limit: self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
            ..LogQuery::default()
        };
        if let Some(text) = self.trace_id.as_deref().filter(|text| !text.is_empty()) {
            let (trace_id, low_only) = parse_query_trace_id(text)?;
            query.trace_id = Some(trace_id);
            query.trace_low64_only = low_only;
        }
        if let Some(text) = self.span_id.as_deref().filter(|text| !text.is_empty()) {
            query.span_id = Some(
                logline::parse_log_span_id("span_id", text)
                    .or_else(|| SpanId::parse(text).ok())
                    .ok_or_else(|| ApiError::BadRequest(format!("invalid span id {text:?}")))?,
            );
        }
        query.service = self.service.clone().filter(|service| !service.is_empty());
        if let Some(text) = self.level.as_deref().filter(|text| !text.is_empty()) {
            query.level = Some(
                Level::parse(text)
                    .ok_or_else(|| ApiError::BadRequest(format!("unknown level {text:?}")))?,
            );
        }
        query.text = self.q.clone();
        if let Some(text) = self.start.as_deref().filter(|text| !text.is_empty()) {
            query.start_unix_nano = Some(parse_time("start", text)?);
        }
        if let Some(text) = self.end.as_deref().filter(|text| !text.is_empty()) {
            query.end_unix_nano = Some(parse_time("end", text)?);
        }
        Ok(query)
    }
}

pub async fn list(
    State(state): State<AppState>,
    Query(params): Query<LogsParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let query = params.to_query()?;
    let storage = state.storage.clone();
    let records: Vec<LogRecord> = tokio::task::spawn_blocking(move || storage.search_logs(&query))
        .await
        .map_err(|error| ApiError::Internal(error.to_string()))??;
    Ok(Json(serde_json::json!({ "logs": records })))
}

pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<LogRecord>, ApiError> {
    let storage = state.storage.clone();
    let lookup = id.clone();
    let found = tokio::task::spawn_blocking(move || storage.log_by_id(&lookup))
        .await
        .map_err(|error| ApiError::Internal(error.to_string()))??;
    found
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("log record {id} not found")))
}
