//! OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export` and
//! `…logs.v1.LogsService/Export` on `server.otlp_grpc_addr`, gzip accepted, through the same decoding and pipeline as
//! OTLP/HTTP. Overload answers `UNAVAILABLE` (retried by the SDKs); bad data
//! `INVALID_ARGUMENT`; a message over `max_request_bytes` is refused by tonic before it is
//! buffered (and a gzip bomb while it is being decompressed) with `RESOURCE_EXHAUSTED`, as
//! the OTLP spec asks (tonic itself says `OUT_OF_RANGE` for the first case; see
//! [`over_size_is_resource_exhausted`]).

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use crate::api::AppState;
use crate::ingest;
use crate::pipeline::{Batch, SubmitError};

pub struct GrpcTraces {
    state: AppState,
}

pub fn trace_service(state: AppState) -> TraceServiceServer<GrpcTraces> {
    let limit = state.config.max_request_bytes;
    TraceServiceServer::new(GrpcTraces { state })
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limit)
}

#[tonic::async_trait]
impl TraceService for GrpcTraces {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let (rejected, error_message) = export(&self.state, request.into_inner(), |request| {
            let decoded = ingest::otlp::from_request(request);
            let message = decoded.rejection_message();
            (Batch::Spans(decoded.spans), decoded.rejected.len(), message)
        })
        .await?;
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: (rejected > 0).then_some(ExportTracePartialSuccess {
                rejected_spans: rejected as i64,
                error_message,
            }),
        }))
    }
}

/// What both services do: wait for an ingest slot, decode on a blocking thread, submit
/// the batch; returns the count and reasons of the records refused one by one.
async fn export<R: Send + 'static>(
    state: &AppState,
    request: R,
    decode: fn(R) -> (Batch, usize, String),
) -> Result<(usize, String), Status> {
    let _slot = state
        .ingest_slots
        .acquire()
        .await
        .map_err(|_| Status::unavailable("service is shutting down"))?;
    let (batch, rejected, message) = tokio::task::spawn_blocking(move || decode(request))
        .await
        .map_err(|error| Status::internal(format!("decoding failed: {error}")))?;
    state.pipeline.submit(batch).await.map_err(submit_status)?;
    Ok((rejected, message))
}

fn submit_status(error: SubmitError) -> Status {
    match error {
        SubmitError::BatchTooLarge { .. } => Status::resource_exhausted(error.to_string()),
        _ => Status::unavailable(error.to_string()),
    }
}

pub struct GrpcLogs {
    state: AppState,
}

pub fn logs_service(state: AppState) -> LogsServiceServer<GrpcLogs> {
    let limit = state.config.max_request_bytes;
    LogsServiceServer::new(GrpcLogs { state })
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limit)
}

#[tonic::async_trait]
impl LogsService for GrpcLogs {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let (rejected, error_message) = export(&self.state, request.into_inner(), |request| {
            let decoded = ingest::otlp_logs::from_request(request);
            let message = decoded.rejection_message();
            (
                Batch::Logs(decoded.records),
                decoded.rejected.len(),
                message,
            )
        })
        .await?;
        Ok(Response::new(ExportLogsServiceResponse {
            partial_success: (rejected > 0).then_some(ExportLogsPartialSuccess {
                rejected_log_records: rejected as i64,
                error_message,
            }),
        }))
    }
}

/// Rewrite tonic's `OUT_OF_RANGE` for a message over the decoding limit into the
/// `RESOURCE_EXHAUSTED` that OTLP and grpc-go use. Decode errors happen before any message
/// is sent, so the status travels in the headers of a trailers-only response.
pub fn over_size_is_resource_exhausted(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    let is_over_size = headers.get("grpc-status").is_some_and(|code| code == "11")
        && headers
            .get("grpc-message")
            .and_then(|message| message.to_str().ok())
            .is_some_and(|message| {
                message.contains("message%20length%20too%20large")
                    || message.contains("message length too large")
            });
    if is_over_size {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}
