//! OTLP/HTTP `POST /v1/traces` and `POST /v1/logs`: protobuf or JSON, chosen by `Content-Type`, answered in
//! the same encoding; failures as a `google.rpc.Status`, partial success for spans refused
//! one by one.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;

use super::{decode_ingest_body, media_type, AppState};
use crate::ingest::{self, IngestError};
use crate::pipeline::{Batch, SubmitError};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> HeaderValue {
        match self {
            Encoding::Protobuf => HeaderValue::from_static("application/x-protobuf"),
            Encoding::Json => HeaderValue::from_static("application/json"),
        }
    }
}

/// `google.rpc.Status`, the body of every OTLP failure response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

const GRPC_INVALID_ARGUMENT: i32 = 3;
const GRPC_RESOURCE_EXHAUSTED: i32 = 8;
const GRPC_UNAVAILABLE: i32 = 14;

/// Which OTLP signal a request carries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Signal {
    Traces,
    Logs,
}

/// What one request decoded to: the batch to store and the records refused one by one.
struct Decoded {
    batch: Batch,
    rejected: usize,
    rejection_message: String,
}

pub async fn post_traces(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    post_otlp(state, headers, body, Signal::Traces).await
}

pub async fn post_logs(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    post_otlp(state, headers, body, Signal::Logs).await
}

async fn post_otlp(
    state: AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    signal: Signal,
) -> Response {
    let encoding = match media_type(&headers, header::CONTENT_TYPE).as_deref() {
        Some("application/x-protobuf") | Some("application/protobuf") => Encoding::Protobuf,
        Some("application/json") => Encoding::Json,
        other => {
            return failure(
                Encoding::Json,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                GRPC_INVALID_ARGUMENT,
                format!(
                    "unsupported content-type {:?}; OTLP/HTTP takes application/x-protobuf or application/json",
                    other.unwrap_or("")
                ),
            )
        }
    };
    if let Err(error) = state.pipeline.check_room() {
        return submit_failure(encoding, error);
    }
    let limit = state.config.max_request_bytes;
    let redactor = state.config.redactor.clone();
    let decoded = decode_ingest_body(&headers, body, limit, move |body| {
        decode(signal, encoding, body, &redactor)
    })
    .await;
    let decoded = match decoded {
        Ok(decoded) => decoded,
        Err(error) => return ingest_failure(encoding, error),
    };
    if let Err(error) = state.pipeline.submit(decoded.batch).await {
        return submit_failure(encoding, error);
    }
    success(
        encoding,
        signal,
        decoded.rejected,
        decoded.rejection_message,
    )
}

fn decode(
    signal: Signal,
    encoding: Encoding,
    body: &[u8],
    redactor: &crate::redact::Redactor,
) -> Result<Decoded, IngestError> {
    match signal {
        Signal::Traces => {
            let spans = match encoding {
                Encoding::Protobuf => ingest::otlp::decode_protobuf(body, redactor)?,
                Encoding::Json => ingest::otlp::decode_json(body, redactor)?,
            };
            Ok(Decoded {
                rejected: spans.rejected.len(),
                rejection_message: spans.rejection_message(),
                batch: Batch::Spans(spans.spans),
            })
        }
        Signal::Logs => {
            let logs = match encoding {
                Encoding::Protobuf => ingest::otlp_logs::decode_protobuf(body)?,
                Encoding::Json => ingest::otlp_logs::decode_json(body)?,
            };
            Ok(Decoded {
                rejected: logs.rejected.len(),
                rejection_message: logs.rejection_message(),
                batch: Batch::Logs(logs.records),
            })
        }
    }
}

fn success(encoding: Encoding, signal: Signal, rejected: usize, message: String) -> Response {
    let body = match encoding {
        Encoding::Protobuf => match signal {
            Signal::Traces => ExportTraceServiceResponse {
                partial_success: (rejected > 0).then_some(ExportTracePartialSuccess {
                    rejected_spans: rejected as i64,
                    error_message: message,
                }),
            }
            .encode_to_vec(),
            Signal::Logs => ExportLogsServiceResponse {
                partial_success: (rejected > 0).then_some(ExportLogsPartialSuccess {
                    rejected_log_records: rejected as i64,
                    error_message: message,
                }),
            }
            .encode_to_vec(),
        },
        Encoding::Json => {
            let count_key = match signal {
                Signal::Traces => "rejectedSpans",
                Signal::Logs => "rejectedLogRecords",
            };
            let value = if rejected == 0 {
                serde_json::json!({})
            } else {
                serde_json::json!({"partialSuccess": {
                    count_key: rejected.to_string(),
                    "errorMessage": message,
                }})
            };
            value.to_string().into_bytes()
        }
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response()
}

pub fn ingest_failure(encoding: Encoding, error: IngestError) -> Response {
    let (status, code) = match &error {
        IngestError::BadRequest(_) => (StatusCode::BAD_REQUEST, GRPC_INVALID_ARGUMENT),
        IngestError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, GRPC_RESOURCE_EXHAUSTED),
        IngestError::UnsupportedMediaType(_) => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, GRPC_INVALID_ARGUMENT)
        }
    };
    failure(encoding, status, code, error.to_string())
}

fn submit_failure(encoding: Encoding, error: SubmitError) -> Response {
    let (status, code) = match &error {
        SubmitError::Overloaded => (StatusCode::TOO_MANY_REQUESTS, GRPC_RESOURCE_EXHAUSTED),
        SubmitError::BatchTooLarge { .. } | SubmitError::RecordTooLarge { .. } => {
            (StatusCode::PAYLOAD_TOO_LARGE, GRPC_RESOURCE_EXHAUSTED)
        }
        SubmitError::NotReady
        | SubmitError::ShuttingDown
        | SubmitError::WalFailed
        | SubmitError::DiskFull(_)
        | SubmitError::Cluster(_) => (StatusCode::SERVICE_UNAVAILABLE, GRPC_UNAVAILABLE),
    };
    failure(encoding, status, code, error.to_string())
}

fn failure(encoding: Encoding, status: StatusCode, code: i32, message: String) -> Response {
    let body = match encoding {
        Encoding::Protobuf => RpcStatus { code, message }.encode_to_vec(),
        Encoding::Json => serde_json::json!({"code": code, "message": message})
            .to_string()
            .into_bytes(),
    };
    let mut response = (
        status,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
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
