//! Hand-written OTLP/JSON and Zipkin bodies from the specs, read-your-writes before any
//! commit, and every kind of bad input with its protocol status, each followed by a good
//! request that still works.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan};
use prost::Message;
use reqwest::StatusCode;
use tracelink::api::otlp::RpcStatus;

use common::{flatten, TestServer};

fn json_span(trace_id: &str, span_id: &str, name: &str) -> serde_json::Value {
    serde_json::json!({
        "traceId": trace_id, "spanId": span_id, "name": name, "kind": 2,
        "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": 1544712661000000000u64,
        "attributes": [{"key": "http.method", "value": {"stringValue": "GET"}}]
    })
}

fn json_request(spans: Vec<serde_json::Value>) -> String {
    serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "orders"}}]},
        "scopeSpans": [{"scope": {"name": "lib"}, "spans": spans}]
    }]})
    .to_string()
}

fn proto_request(trace_byte: u8, count: usize) -> ExportTraceServiceRequest {
    let spans = (0..count)
        .map(|index| OtlpSpan {
            trace_id: vec![trace_byte; 16],
            span_id: ((index as u64) + 1).to_be_bytes().to_vec(),
            name: format!("op-{index}"),
            start_time_unix_nano: 1_000 + index as u64,
            end_time_unix_nano: 2_000 + index as u64,
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

async fn post(
    url: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body);
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    request.send().await.unwrap()
}

/// A good protobuf request works and its trace can be read back at once.
async fn assert_still_serving(server: &TestServer, trace_byte: u8) {
    let body = proto_request(trace_byte, 2).encode_to_vec();
    let response = post(
        &format!("http://{}/v1/traces", server.otlp_http),
        "application/x-protobuf",
        None,
        body,
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let trace_id = hex_id(trace_byte);
    let spans = flatten(&common::fetch_trace(server.http, &trace_id).await.unwrap());
    assert_eq!(spans.len(), 2);
}

fn hex_id(byte: u8) -> String {
    format!("{byte:02x}").repeat(16)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_json_and_zipkin_bodies_from_the_specs_are_read_back() {
    let dir = common::temp_dir();
    // A commit interval far beyond the test: everything below is served by the head.
    let server = TestServer::start(&common::data_path(&dir), |raw| {
        raw.storage.commit_interval_ms = 600_000;
    })
    .await;
    let trace = "5B8EFFF798038103D269B633813FC60C";
    let body = json_request(vec![
        json_span(trace, "EEE19B7EC3C1B173", "GET /orders/:id"),
        {
            let mut child = json_span(trace, "EEE19B7EC3C1B174", "SELECT orders");
            child["parentSpanId"] = "EEE19B7EC3C1B173".into();
            child["kind"] = 3.into();
            child["status"] = serde_json::json!({"code": 2, "message": "db timeout"});
            child["events"] = serde_json::json!([{"timeUnixNano": "1544712660500000000", "name": "exception",
                "attributes": [{"key": "exception.type", "value": {"stringValue": "Timeout"}},
                               {"key": "exception.message", "value": {"stringValue": "db timeout"}}]}]);
            child["attributes"] = serde_json::json!([
                {"key": "db.rows", "value": {"intValue": "42"}},
                {"key": "db.ratio", "value": {"doubleValue": 0.5}},
                {"key": "db.cached", "value": {"boolValue": true}},
                {"key": "db.blob", "value": {"bytesValue": "AAEC"}},
                {"key": "db.tags", "value": {"arrayValue": {"values": [{"stringValue": "x"}]}}},
                {"key": "db.map", "value": {"kvlistValue": {"values": [{"key": "k", "value": {"intValue": 7}}]}}}
            ]);
            child
        },
    ]);
    for url in [
        format!("http://{}/v1/traces", server.otlp_http),
        server.url("/v1/traces"),
    ] {
        let response = post(&url, "application/json", None, body.clone().into_bytes()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.text().await.unwrap(), "{}");
    }
    let spans = flatten(
        &common::fetch_trace(server.http, &trace.to_lowercase())
            .await
            .unwrap(),
    );
    assert_eq!(spans.len(), 2, "sent twice, stored once");
    let (service, child) = spans
        .iter()
        .find(|(_, span)| span.name == "SELECT orders")
        .unwrap();
    assert_eq!(service, "orders");
    assert_eq!(hex(&child.parent_span_id), "eee19b7ec3c1b173");
    assert_eq!(child.status.as_ref().unwrap().message, "db timeout");
    assert_eq!(child.events[0].name, "exception");
    assert_eq!(child.events[0].time_unix_nano, 1544712660500000000);
    assert_eq!(child.attributes.len(), 6);
    let json: serde_json::Value = reqwest::get(server.url(&format!("/api/traces/{trace}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = json.to_string();
    assert!(text.contains(r#""traceId":"5b8efff798038103d269b633813fc60c""#));
    assert!(text.contains(r#""bytesValue":"AAEC""#));
    assert!(text.contains(r#""intValue":"42""#));

    // Zipkin v2, 64-bit trace id (left-padded), gzip'd.
    let zipkin = r#"[
      {"traceId":"a3ce929d0e0e4736","id":"00f067aa0ba902b7","name":"get /api","kind":"SERVER",
       "timestamp":1544712660000000,"duration":2500,"localEndpoint":{"serviceName":"frontend"},
       "tags":{"http.path":"/api","error":"upstream failed"}},
      {"traceId":"a3ce929d0e0e4736","id":"00f067aa0ba902b8","parentId":"00f067aa0ba902b7","name":"get",
       "kind":"CLIENT","timestamp":1544712660000100,"duration":2000,"localEndpoint":{"serviceName":"frontend"},
       "remoteEndpoint":{"serviceName":"backend","port":9000},
       "annotations":[{"timestamp":1544712660000200,"value":"wire send"}]}]"#;
    let response = post(
        &server.url("/api/v2/spans"),
        "application/json",
        Some("gzip"),
        gzip(zipkin.as_bytes()),
    )
    .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    for id in ["a3ce929d0e0e4736", "0000000000000000a3ce929d0e0e4736"] {
        let spans = flatten(&common::fetch_trace(server.http, id).await.unwrap());
        assert_eq!(spans.len(), 2);
        let root = spans
            .iter()
            .find(|(_, span)| span.name == "get /api")
            .unwrap();
        assert_eq!(root.0, "frontend");
        assert_eq!(root.1.kind, 2);
        assert_eq!(root.1.status.as_ref().unwrap().code, 2);
        assert_eq!(
            root.1.end_time_unix_nano - root.1.start_time_unix_nano,
            2_500_000
        );
        let client = spans.iter().find(|(_, span)| span.name == "get").unwrap();
        assert_eq!(client.1.events[0].name, "wire send");
        assert_eq!(hex(&client.1.parent_span_id), "00f067aa0ba902b7");
    }
    // base64 spelling of the same id, as Tempo's JSON writes ids.
    let spans = flatten(
        &common::fetch_trace(server.http, "AAAAAAAAAACjzpKdDg5HNg==")
            .await
            .unwrap(),
    );
    assert_eq!(spans.len(), 2);
    server.stop().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_input_gets_its_protocol_status_and_the_service_keeps_serving() {
    let dir = common::temp_dir();
    let server = TestServer::start(&common::data_path(&dir), |raw| {
        raw.limits.max_request_bytes = 1024 * 1024;
    })
    .await;
    let otlp = format!("http://{}/v1/traces", server.otlp_http);

    // Undecodable protobuf: 400 with a google.rpc.Status saying what was wrong.
    let response = post(
        &otlp,
        "application/x-protobuf",
        None,
        vec![0x0a, 0xff, 0xff, 0xff],
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    let status = RpcStatus::decode(response.bytes().await.unwrap()).unwrap();
    assert_eq!(status.code, 3);
    assert!(status.message.contains("protobuf"), "{}", status.message);
    assert_still_serving(&server, 1).await;

    // Malformed JSON: 400, JSON status.
    let response = post(
        &otlp,
        "application/json",
        None,
        b"{\"resourceSpans\":[{".to_vec(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let status: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status["code"], 3);
    assert!(status["message"].as_str().unwrap().contains("OTLP/JSON"));
    assert_still_serving(&server, 2).await;

    // Unsupported content type: 415.
    let response = post(&otlp, "text/plain", None, b"hello".to_vec()).await;
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let response = post(
        &server.url("/api/v2/spans"),
        "application/x-thrift",
        None,
        b"x".to_vec(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_still_serving(&server, 3).await;

    // Over the limit before decompression: 413.
    let response = post(
        &otlp,
        "application/x-protobuf",
        None,
        vec![0u8; 2 * 1024 * 1024],
    )
    .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_still_serving(&server, 4).await;

    // A gzip bomb: small on the wire, over the limit once decompressed: 413.
    let bomb = gzip(&vec![0u8; 64 * 1024 * 1024]);
    assert!(bomb.len() < 1024 * 1024);
    let response = post(&otlp, "application/x-protobuf", Some("gzip"), bomb.clone()).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let response = post(
        &server.url("/api/v2/spans"),
        "application/json",
        Some("gzip"),
        bomb,
    )
    .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_still_serving(&server, 5).await;

    // Broken gzip: 400.
    let response = post(
        &otlp,
        "application/x-protobuf",
        Some("gzip"),
        b"not gzip".to_vec(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_still_serving(&server, 6).await;

    // Bad ids are refused one by one; the rest is stored.
    let good = "6b8efff798038103d269b633813fc60c";
    let body = json_request(vec![
        json_span(good, "eee19b7ec3c1b174", "kept"),
        json_span(
            "00000000000000000000000000000000",
            "eee19b7ec3c1b175",
            "zero trace",
        ),
        json_span(good, "0000000000000000", "zero span"),
        json_span("not-hex-at-all", "eee19b7ec3c1b176", "bad hex"),
        json_span(good, "eee19b", "short span"),
    ]);
    let response = post(&otlp, "application/json", None, body.into_bytes()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let partial: serde_json::Value = response.json().await.unwrap();
    assert_eq!(partial["partialSuccess"]["rejectedSpans"], "4");
    assert!(partial["partialSuccess"]["errorMessage"]
        .as_str()
        .unwrap()
        .contains("zero trace"));
    let spans = flatten(&common::fetch_trace(server.http, good).await.unwrap());
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].1.name, "kept");
    // The same through protobuf: partial success in the response message.
    let mut request = proto_request(7, 3);
    request.resource_spans[0].scope_spans[0].spans[1].trace_id = vec![0; 16];
    request.resource_spans[0].scope_spans[0].spans[2].span_id = vec![1, 2, 3];
    let response = post(
        &otlp,
        "application/x-protobuf",
        None,
        request.encode_to_vec(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer = ExportTraceServiceResponse::decode(response.bytes().await.unwrap()).unwrap();
    assert_eq!(answer.partial_success.unwrap().rejected_spans, 2);
    assert_eq!(
        flatten(&common::fetch_trace(server.http, &hex_id(7)).await.unwrap()).len(),
        1
    );

    // Zipkin: a bad id or a body that is not a list is a 400.
    let response = post(
        &server.url("/api/v2/spans"),
        "application/json",
        None,
        br#"[{"traceId":"xyz","id":"00f067aa0ba902b7"}]"#.to_vec(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: serde_json::Value = response.json().await.unwrap();
    assert!(error["error"].as_str().unwrap().contains("traceId"));
    assert_still_serving(&server, 8).await;

    // Query side: bad ids are 400, unknown traces 404.
    for (id, status) in [
        ("not-an-id", StatusCode::BAD_REQUEST),
        ("00000000000000000000000000000000", StatusCode::BAD_REQUEST),
        ("123456789012345678901234567890123", StatusCode::BAD_REQUEST),
        ("deadbeef", StatusCode::NOT_FOUND),
    ] {
        for route in ["/api/traces/", "/api/v2/traces/"] {
            let response = reqwest::get(server.url(&format!("{route}{id}")))
                .await
                .unwrap();
            assert_eq!(response.status(), status, "{route}{id}");
        }
    }
    assert_eq!(
        reqwest::get(server.url("/api/echo"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "echo"
    );
    let info: serde_json::Value = reqwest::get(server.url("/api/status/buildinfo"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for key in [
        "version",
        "revision",
        "branch",
        "buildUser",
        "buildDate",
        "goVersion",
    ] {
        assert!(info.get(key).is_some(), "{key}");
    }
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_429_and_unavailable_until_a_commit_frees_it() {
    let dir = common::temp_dir();
    // Spans hold their queue room until a commit; with a long interval and a queue of
    // 1000, a second batch of 600 cannot fit.
    let server = TestServer::start(&common::data_path(&dir), |raw| {
        raw.limits.ingest_queue_spans = 1000;
        raw.storage.commit_interval_ms = 600_000;
        raw.storage.commit_max_spans = 100_000;
    })
    .await;
    let otlp = format!("http://{}/v1/traces", server.otlp_http);
    let response = post(
        &otlp,
        "application/x-protobuf",
        None,
        proto_request(1, 400).encode_to_vec(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = post(
        &otlp,
        "application/x-protobuf",
        None,
        proto_request(2, 700).encode_to_vec(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    let status = RpcStatus::decode(response.bytes().await.unwrap()).unwrap();
    assert!(status.message.contains("queue is full"));
    assert!(
        common::fetch_trace(server.http, &hex_id(2)).await.is_none(),
        "nothing of a refused batch is stored"
    );

    let mut grpc = TraceServiceClient::connect(format!("http://{}", server.otlp_grpc))
        .await
        .unwrap();
    let refused = grpc.export(proto_request(3, 700)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    // A batch larger than the whole queue can never fit: 413, not a retry loop.
    let response = post(
        &otlp,
        "application/x-protobuf",
        None,
        proto_request(4, 1001).encode_to_vec(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // What fits is still taken.
    let response = post(
        &otlp,
        "application/x-protobuf",
        None,
        proto_request(5, 500).encode_to_vec(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);

    // 400 + 500 held, 100 left: a batch of 100 fills the queue exactly; after it, every
    // request is refused before its body is even read, Zipkin's and gRPC's too.
    let response = post(
        &otlp,
        "application/x-protobuf",
        None,
        proto_request(6, 100).encode_to_vec(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = post(
        &otlp,
        "application/x-protobuf",
        None,
        b"not even protobuf".to_vec(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    let refused = grpc.export(proto_request(7, 1)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    let zipkin = reqwest::Client::new()
        .post(format!("http://{}/api/v2/spans", server.http))
        .header("content-type", "application/json")
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(zipkin.status(), StatusCode::TOO_MANY_REQUESTS);
    let metrics = reqwest::get(format!("http://{}/metrics", server.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tracelink_requests_refused_overload_total 3"),
        "{metrics}"
    );
    server.stop().await;

    // Once committed (the graceful stop's final commit), the room is back.
    let server = TestServer::start(&common::data_path(&dir), |raw| {
        raw.limits.ingest_queue_spans = 1000;
    })
    .await;
    let otlp = format!("http://{}/v1/traces", server.otlp_http);
    let response = post(
        &otlp,
        "application/x-protobuf",
        None,
        proto_request(2, 700).encode_to_vec(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        flatten(&common::fetch_trace(server.http, &hex_id(1)).await.unwrap()).len(),
        400
    );
    assert_eq!(
        flatten(&common::fetch_trace(server.http, &hex_id(5)).await.unwrap()).len(),
        500
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_grpc_input_gets_grpc_codes_and_the_service_keeps_serving() {
    let dir = common::temp_dir();
    let server = TestServer::start(&common::data_path(&dir), |raw| {
        raw.limits.max_request_bytes = 64 * 1024;
    })
    .await;
    let endpoint = format!("http://{}", server.otlp_grpc);
    let mut client = TraceServiceClient::connect(endpoint.clone()).await.unwrap();

    // Over the limit: refused before it is buffered.
    let refused = client.export(proto_request(9, 2000)).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );

    // A gzip bomb: compresses far under the limit, decompresses far over it.
    let mut bomb = proto_request(10, 1);
    bomb.resource_spans[0].scope_spans[0].spans[0].name = "x".repeat(8 * 1024 * 1024);
    let mut gzip_client = TraceServiceClient::connect(endpoint.clone())
        .await
        .unwrap()
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
        .max_encoding_message_size(64 * 1024 * 1024);
    let refused = gzip_client.export(bomb).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );

    // Not a protobuf of the request, or a span name that is not UTF-8: INVALID_ARGUMENT
    // (not retried by the SDKs), and nothing of it stored.
    let mut bad_name = proto_request(14, 2).encode_to_vec();
    let at = bad_name
        .windows(4)
        .position(|window| window == b"op-0")
        .unwrap();
    bad_name[at] = 0xff;
    for body in [vec![0x0a, 0x05, 0x12], bad_name] {
        let refused = raw_export(&endpoint, TRACE_EXPORT, body).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains("protobuf"), "{refused:?}");
    }
    assert!(common::fetch_trace(server.http, &hex_id(14))
        .await
        .is_none());
    let refused = raw_export(
        &endpoint,
        "/opentelemetry.proto.collector.trace.v1.TraceService/Import",
        proto_request(15, 1).encode_to_vec(),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");

    // Bad ids: partial success.
    let mut request = proto_request(11, 3);
    request.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![0; 16];
    let answer = client.export(request).await.unwrap().into_inner();
    let partial = answer.partial_success.unwrap();
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial.error_message.contains("all zeros"),
        "{}",
        partial.error_message
    );

    // Still serving, over gRPC (gzip) and HTTP.
    let answer = gzip_client
        .export(proto_request(12, 5))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.partial_success.is_none());
    assert_eq!(
        flatten(&common::fetch_trace(server.http, &hex_id(12)).await.unwrap()).len(),
        5
    );
    assert_eq!(
        flatten(&common::fetch_trace(server.http, &hex_id(11)).await.unwrap()).len(),
        2
    );
    assert_still_serving(&server, 13).await;
    server.stop().await;
}

const TRACE_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Any bytes as a gRPC request to `path`: what a broken or hostile client sends.
async fn raw_export(
    endpoint: &str,
    path: &'static str,
    body: Vec<u8>,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    let channel = tonic::transport::Endpoint::new(endpoint.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(bytes::Bytes::from(body)),
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// Sends bytes as they are; decodes the answer as OTLP's response.
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = bytes::Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: bytes::Bytes,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        buf.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<ExportTraceServiceResponse>, tonic::Status> {
        ExportTraceServiceResponse::decode(buf)
            .map(Some)
            .map_err(|error| tonic::Status::internal(error.to_string()))
    }
}
