//! Zipkin v2 `POST /api/v2/spans`: a JSON list of spans, gzip allowed, answered 202.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};

use super::{body_rejection, media_type, ApiError, AppState};
use crate::ingest::{self, IngestError};

pub async fn post_spans(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    match media_type(&headers, header::CONTENT_TYPE).as_deref() {
        None | Some("application/json") => {}
        Some(other) => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "unsupported content-type {other:?}; Zipkin spans are taken as application/json"
            )))
        }
    }
    let limit = state.config.max_request_bytes;
    let body = body.map_err(|rejection| body_rejection(rejection, limit))?;
    let content_encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let decoded = tokio::task::spawn_blocking(move || {
        let body = ingest::decode_body(content_encoding.as_deref(), &body, limit)?;
        ingest::zipkin::decode_json(&body)
    })
    .await
    .unwrap_or_else(|join_error| {
        Err(IngestError::BadRequest(format!(
            "decoding failed: {join_error}"
        )))
    })?;
    state.pipeline.submit_spans(decoded.spans).await?;
    Ok(StatusCode::ACCEPTED)
}
