//! OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export` and
//! `…logs.v1.LogsService/Export` on `server.otlp_grpc_addr`, gzip accepted, through the same decoding and pipeline as
//! OTLP/HTTP. Overload answers `UNAVAILABLE` (retried by the SDKs); bad data
//! `INVALID_ARGUMENT`; a message over `max_request_bytes` is refused by tonic before it is
//! buffered (and a gzip bomb while it is being decompressed) with `RESOURCE_EXHAUSTED`, as
//! the OTLP spec asks (tonic itself says `OUT_OF_RANGE` for the first case; see
//! [`over_size_is_resource_exhausted`]).

use bytes::Buf;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Bytes, Context, Poll, Service, StdError};
use tonic::{Request, Response, Status};

use crate::api::AppState;
use crate::ingest;
use crate::pipeline::{Batch, SubmitError};

/// The OTLP trace service. tonic's generated server fixes prost's codec, which decodes
/// every span of a request into owned messages; this one hands the handler the request's
/// bytes (tonic's own buffer, not copied), read by [`ingest::otlp_wire`]. Routing,
/// compression and the size limit are tonic's, as in the generated server.
#[derive(Clone)]
pub struct TraceServer {
    state: AppState,
}

const TRACE_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

pub fn trace_service(state: AppState) -> TraceServer {
    TraceServer { state }
}

impl tonic::server::NamedService for TraceServer {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl<B> Service<http::Request<B>> for TraceServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != TRACE_EXPORT_PATH {
            return Box::pin(async {
                Ok(Status::unimplemented("no such method of TraceService").into_http())
            });
        }
        let state = self.state.clone();
        Box::pin(async move {
            let limit = state.config.max_request_bytes;
            let mut grpc = tonic::server::Grpc::new(RawRequests)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(limit);
            Ok(grpc.unary(ExportTraces(state), request).await)
        })
    }
}

struct ExportTraces(AppState);

impl tonic::server::UnaryService<Bytes> for ExportTraces {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<Response<Self::Response>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let state = self.0.clone();
        let redactor = state.config.redactor.clone();
        Box::pin(async move {
            let (rejected, error_message) = export(&state, request.into_inner(), move |body| {
                let decoded =
                    ingest::otlp_wire::decode_request(&body, &redactor).map_err(|error| {
                        Status::invalid_argument(format!(
                            "not a valid OTLP ExportTraceServiceRequest protobuf: {error}"
                        ))
                    })?;
                let message = decoded.rejection_message();
                Ok((Batch::Spans(decoded.spans), decoded.rejected.len(), message))
            })
            .await?;
            Ok(Response::new(ExportTraceServiceResponse {
                partial_success: (rejected > 0).then_some(ExportTracePartialSuccess {
                    rejected_spans: rejected as i64,
                    error_message,
                }),
            }))
        })
    }
}

/// Requests as their bytes; responses encoded by prost.
struct RawRequests;

impl Codec for RawRequests {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = RawRequests;
    type Decoder = RawRequests;

    fn encoder(&mut self) -> RawRequests {
        RawRequests
    }

    fn decoder(&mut self) -> RawRequests {
        RawRequests
    }
}

impl Encoder for RawRequests {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf)
            .map_err(|error| Status::internal(format!("encoding the response: {error}")))
    }
}

impl Decoder for RawRequests {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }
}

/// A decoded request: its batch, and how many records were refused one by one and why.
type Decoded = (Batch, usize, String);

/// What both services do: wait for an ingest slot, decode on a blocking thread, submit
/// the batch; returns the count and reasons of the records refused one by one.
async fn export<R: Send + 'static>(
    state: &AppState,
    request: R,
    decode: impl FnOnce(R) -> Result<Decoded, Status> + Send + 'static,
) -> Result<(usize, String), Status> {
    let _slot = state
        .ingest_slots
        .acquire()
        .await
        .map_err(|_| Status::unavailable("service is shutting down"))?;
    state.pipeline.check_room().map_err(submit_status)?;
    let (batch, rejected, message) = crate::ingest::decoders::decode(move || decode(request))
        .await
        .map_err(|error| Status::internal(format!("decoding failed: {error}")))??;
    state.pipeline.submit(batch).await.map_err(submit_status)?;
    Ok((rejected, message))
}

fn submit_status(error: SubmitError) -> Status {
    match error {
        SubmitError::BatchTooLarge { .. } | SubmitError::RecordTooLarge { .. } => {
            Status::resource_exhausted(error.to_string())
        }
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
            Ok((
                Batch::Logs(decoded.records),
                decoded.rejected.len(),
                message,
            ))
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
