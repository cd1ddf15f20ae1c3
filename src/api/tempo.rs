//! Tempo's query API, as Grafana's Tempo data source calls it: trace by id (v1 and v2,
//! protobuf or JSON) and build info.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, TracesData};

use super::{ApiError, AppState};
use crate::ingest::otlp_wire;
use crate::model::TraceId;

/// `tempopb.TraceByIDResponse`. Field 2 (metrics) is never sent.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TraceByIdResponse {
    #[prost(message, optional, tag = "1")]
    pub trace: Option<TracesData>,
    /// COMPLETE = 0, PARTIAL = 1.
    #[prost(int32, tag = "3")]
    pub status: i32,
    #[prost(string, tag = "4")]
    pub message: String,
}

fn wants_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| {
            accept.split(',').any(|item| {
                let media = item.split(';').next().unwrap_or_default().trim();
                media.eq_ignore_ascii_case("application/protobuf")
                    || media.eq_ignore_ascii_case("application/x-protobuf")
            })
        })
}

/// A trace's stored span payloads (duplicates included), and the cluster's nodes that
/// did not answer (their spans may be missing).
async fn load_payloads(
    state: &AppState,
    trace_id: TraceId,
) -> Result<(Vec<Bytes>, Vec<String>), ApiError> {
    // On one node a trace is a few term lookups and a block decompressed per fragment
    // (~0.15 ms): done on this worker, without the two thread wake-ups of a blocking task,
    // each of which waited up to a scheduler slice (1.5 ms) for a core under ingest. A
    // cluster asks its peers over HTTP, which blocks; that goes to a blocking thread.
    if state.storage.peers.get().is_none() {
        return Ok(state.storage.trace_payloads_reporting(&trace_id)?);
    }
    let storage = state.storage.clone();
    tokio::task::spawn_blocking(move || storage.trace_payloads_reporting(&trace_id))
        .await
        .map_err(|error| ApiError::Internal(error.to_string()))?
        .map_err(ApiError::from)
}

/// A trace: encoded as OTLP `TracesData` when `protobuf`, decoded otherwise; and the
/// nodes that did not answer.
async fn load_trace(
    state: &AppState,
    raw_id: &str,
    protobuf: bool,
) -> Result<(Loaded, Vec<String>), ApiError> {
    let trace_id = TraceId::parse(raw_id)
        .map_err(|error| ApiError::BadRequest(format!("invalid trace id {raw_id:?}: {error}")))?;
    let (payloads, missing) = load_payloads(state, trace_id).await?;
    let found = match protobuf {
        true => otlp_wire::merge_stored(&trace_id, &payloads).map(Loaded::Encoded),
        false => crate::store::merge_payloads(&trace_id, payloads).map(Loaded::Batches),
    };
    match found {
        Some(loaded) => Ok((loaded, missing)),
        None if missing.is_empty() => {
            Err(ApiError::NotFound(format!("trace {trace_id} not found")))
        }
        None => Err(ApiError::NotFound(format!(
            "trace {trace_id} not found; {}",
            partial_message(&missing)
        ))),
    }
}

/// A trace as an answer carries it.
enum Loaded {
    /// An encoded OTLP `TracesData`, merged on the wire.
    Encoded(Vec<u8>),
    Batches(Vec<ResourceSpans>),
}

/// What an answer says when some nodes of the cluster did not answer.
pub(crate) fn partial_message(missing: &[String]) -> String {
    format!(
        "nodes {} did not answer in time: what they hold is missing",
        missing.join(", ")
    )
}

/// The header that names the nodes a partial answer lacks.
pub const PARTIAL_HEADER: &str = "tracelink-partial";

/// Name in [`PARTIAL_HEADER`] the nodes that did not answer, if any.
pub(crate) fn mark_partial(response: &mut Response, missing: &[String]) {
    if missing.is_empty() {
        return;
    }
    if let Ok(value) = HeaderValue::from_str(&missing.join(",")) {
        response.headers_mut().insert(PARTIAL_HEADER, value);
    }
}

fn protobuf_response(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/protobuf"),
        )],
        body,
    )
        .into_response()
}

/// `GET /api/traces/{id}`: `tempopb.Trace` (wire-identical to OTLP `TracesData`) or
/// `{"batches": [...]}`.
pub async fn trace_v1(
    State(state): State<AppState>,
    Path(trace_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (loaded, missing) = load_trace(&state, &trace_id, wants_protobuf(&headers)).await?;
    // `tempopb.Trace` is wire-identical to OTLP `TracesData`.
    let mut response = match loaded {
        Loaded::Encoded(body) => protobuf_response(body),
        Loaded::Batches(batches) => Json(serde_json::json!({ "batches": batches })).into_response(),
    };
    // v1 has no status field: a partial answer says so in a header.
    mark_partial(&mut response, &missing);
    Ok(response)
}

/// `GET /api/v2/traces/{id}`: `tempopb.TraceByIDResponse` or
/// `{"trace": {"resourceSpans": [...]}, "status": "COMPLETE"}`.
pub async fn trace_v2(
    State(state): State<AppState>,
    Path(trace_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (loaded, missing) = load_trace(&state, &trace_id, wants_protobuf(&headers)).await?;
    // Tempo's PARTIAL: some of the cluster did not answer in time.
    let (status, message) = match missing.is_empty() {
        true => (0, String::new()),
        false => (1, partial_message(&missing)),
    };
    let batches = match loaded {
        Loaded::Encoded(traces_data) => {
            let body = otlp_wire::trace_by_id_response(&traces_data, status, &message);
            return Ok(protobuf_response(body));
        }
        Loaded::Batches(batches) => batches,
    };
    let mut body = serde_json::json!({
        "trace": { "resourceSpans": batches },
        "status": if status == 0 { "COMPLETE" } else { "PARTIAL" },
    });
    if status != 0 {
        body["message"] = serde_json::Value::String(message);
    }
    Ok(Json(body).into_response())
}

/// `GET /api/status/buildinfo`, in the shape Grafana reads from Tempo.
pub async fn buildinfo() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "revision": option_env!("TRACELINK_GIT_REVISION").unwrap_or("unknown"),
        "branch": "main",
        "buildUser": "tracelink",
        "buildDate": "",
        "goVersion": "none (tracelink is written in Rust)",
    }))
}
