//! Zipkin v2 `POST /api/v2/spans`: a JSON list of spans, gzip allowed, answered 202.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};

use super::{decode_ingest_body, media_type, ApiError, AppState};
use crate::ingest;

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
    state.pipeline.check_room()?;
    let limit = state.config.max_request_bytes;
    let redactor = state.config.redactor.clone();
    let decoded = decode_ingest_body(&headers, body, limit, move |body| {
        ingest::zipkin::decode_json(body, &redactor)
    })
    .await?;
    state.pipeline.submit_spans(decoded.spans).await?;
    Ok(StatusCode::ACCEPTED)
}
