//! OTLP logs over HTTP (JSON, protobuf, gzip) and gRPC, through the WAL, found again by
//! `/api/logs` with every filter, and by id; ids stay the same across a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use prost::Message;
use reqwest::StatusCode;
use serde_json::Value;

use common::TestServer;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const T0: u64 = 1_714_557_600_000_000_000;

fn json_logs() -> String {
    serde_json::json!({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]},
        "scopeLogs": [{"scope": {"name": "app"}, "logRecords": [
            {"timeUnixNano": T0.to_string(), "severityNumber": 9, "body": {"stringValue": "cart loaded"},
             "traceId": TRACE, "spanId": "00f067aa0ba902b7"},
            {"timeUnixNano": (T0 + 1_000_000).to_string(), "severityNumber": 17, "severityText": "ERROR",
             "body": {"stringValue": "payment declined by issuer"}, "traceId": TRACE, "spanId": "00f067aa0ba902b8",
             "attributes": [{"key": "payment.provider", "value": {"stringValue": "acme"}}]},
            {"timeUnixNano": (T0 + 2_000_000).to_string(), "severityText": "warning",
             "body": {"stringValue": "retrying without trace"}},
            {"timeUnixNano": T0.to_string(), "traceId": "abcd", "body": {"stringValue": "bad id"}}
        ]}]
    }]})
    .to_string()
}

fn proto_logs(service: &str, count: usize) -> ExportLogsServiceRequest {
    let records = (0..count)
        .map(|index| LogRecord {
            time_unix_nano: T0 + 10_000_000 + index as u64,
            severity_number: 13,
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(format!(
                    "slow query number {index}"
                ))),
            }),
            trace_id: vec![0x5a; 16],
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(common::service_resource(service)),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn logs(server: &TestServer, query: &str) -> Vec<Value> {
    let response = reqwest::get(server.url(&format!("/api/logs?{query}")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{query}");
    let body: Value = response.json().await.unwrap();
    body["logs"].as_array().unwrap().clone()
}

/// Logs become searchable with the next commit; wait for it.
async fn wait_for_logs(server: &TestServer, query: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = logs(server, query).await;
        if found.len() >= count || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_logs_are_stored_and_found_by_every_filter() {
    let dir = common::temp_dir();
    let server = TestServer::start(&common::data_path(&dir), |_| {}).await;
    let client = reqwest::Client::new();

    let response = client
        .post(format!("http://{}/v1/logs", server.otlp_http))
        .header("content-type", "application/json")
        .body(json_logs())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["partialSuccess"]["rejectedLogRecords"], "1");

    let response = client
        .post(server.url("/v1/logs"))
        .header("content-type", "application/x-protobuf")
        .body(proto_logs("inventory", 3).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let answer = ExportLogsServiceResponse::decode(response.bytes().await.unwrap()).unwrap();
    assert!(answer.partial_success.is_none());

    let mut grpc = LogsServiceClient::connect(format!("http://{}", server.otlp_grpc))
        .await
        .unwrap()
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    grpc.export(proto_logs("pricing", 2)).await.unwrap();

    // By trace id, in every spelling; newest first.
    let by_trace = wait_for_logs(&server, &format!("trace_id={TRACE}"), 2).await;
    assert_eq!(by_trace.len(), 2);
    assert_eq!(by_trace[0]["message"], "payment declined by issuer");
    assert_eq!(by_trace[0]["level"], "error");
    assert_eq!(by_trace[0]["service"], "checkout");
    assert_eq!(by_trace[0]["trace_id"], TRACE);
    assert_eq!(by_trace[0]["span_id"], "00f067aa0ba902b8");
    assert_eq!(by_trace[0]["attributes"]["payment.provider"], "acme");
    assert_eq!(by_trace[0]["time_unix_nano"], T0 + 1_000_000);
    assert_eq!(by_trace[0]["time"], "2024-05-01T10:00:00.001000000Z");
    assert_eq!(by_trace[1]["message"], "cart loaded");
    for spelling in [
        TRACE.to_uppercase(),
        "11803532876627986230".to_string(),
        "S/kvNXezTaajzpKdDg5HNg==".to_string(),
    ] {
        let found = logs(&server, &format!("trace_id={}", urlencode(&spelling))).await;
        assert_eq!(found.len(), 2, "{spelling}");
    }
    // A different trace with the same low 64 bits is not this trace.
    assert!(logs(&server, "trace_id=ffffffffffffffffa3ce929d0e0e4736")
        .await
        .is_empty());

    let found = wait_for_logs(&server, "service=pricing", 2).await;
    assert_eq!(found.len(), 2);
    assert_eq!(logs(&server, "service=inventory").await.len(), 3);
    assert_eq!(logs(&server, "span_id=00f067aa0ba902b7").await.len(), 1);
    let errors = logs(&server, "level=error").await;
    assert_eq!(errors.len(), 1);
    assert_eq!(
        logs(&server, "level=WARNING").await.len(),
        6,
        "warn records of all three services"
    );
    let declined = logs(&server, "q=declined").await;
    assert_eq!(declined.len(), 1);
    assert_eq!(
        logs(&server, "q=slow%20query&service=inventory&limit=2")
            .await
            .len(),
        2
    );
    let window = logs(
        &server,
        &format!(
            "start={}&end={}",
            T0 + 500_000,
            urlencode("2024-05-01T10:00:00.002Z")
        ),
    )
    .await;
    let messages: Vec<&str> = window
        .iter()
        .map(|log| log["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        vec!["retrying without trace", "payment declined by issuer"]
    );

    // One by id; unknown id 404; bad parameters 400.
    let id = by_trace[0]["id"].as_str().unwrap().to_owned();
    let one: Value = reqwest::get(server.url(&format!("/api/logs/{id}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one, by_trace[0]);
    assert_eq!(
        reqwest::get(server.url("/api/logs/w1-0"))
            .await
            .unwrap()
            .status(),
        404
    );
    for bad in [
        "trace_id=xyz",
        "level=chatty",
        "start=yesterday",
        "span_id=zz-not-an-id",
    ] {
        let response = reqwest::get(server.url(&format!("/api/logs?{bad}")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }

    // Bad bodies get OTLP errors and the service keeps serving.
    let response = client
        .post(server.url("/v1/logs"))
        .header("content-type", "application/x-protobuf")
        .body(vec![0x0a, 0xff, 0xff])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = client
        .post(server.url("/v1/logs"))
        .header("content-type", "text/csv")
        .body("a,b")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Ids are stable: after a restart the same records have the same ids.
    server.stop().await;
    let server = TestServer::start(&common::data_path(&dir), |_| {}).await;
    let again = logs(&server, &format!("trace_id={TRACE}")).await;
    assert_eq!(again, by_trace);
    server.stop().await;
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

async fn loki(server: &TestServer, path: &str, params: &[(&str, String)]) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .get(server.url(path))
        .query(params)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_loki_data_source_queries_work() {
    let dir = common::temp_dir();
    let server = TestServer::start(&common::data_path(&dir), |_| {}).await;
    let response = reqwest::Client::new()
        .post(server.url("/v1/logs"))
        .header("content-type", "application/json")
        .body(json_logs())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    wait_for_logs(&server, "service=checkout", 3).await;
    let range = [
        ("start", (T0 - 60_000_000_000).to_string()),
        ("end", (T0 + 60_000_000_000).to_string()),
    ];

    // Health check.
    let (status, body) = loki(
        &server,
        "/loki/api/v1/query",
        &[
            ("query", "vector(1)+vector(1)".into()),
            ("time", T0.to_string()),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["resultType"], "vector");
    assert_eq!(body["data"]["result"][0]["value"][1], "2");

    // Trace → logs, both ways Grafana builds the query.
    for query in [
        format!(r#"{{service_name="checkout"}} | trace_id="{TRACE}""#),
        format!(r#"{{service_name=~"check.*"}} |= "{TRACE}""#),
    ] {
        let mut params = range.to_vec();
        params.push(("query", query.clone()));
        params.push(("limit", "100".into()));
        let (status, body) = loki(&server, "/loki/api/v1/query_range", &params).await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
        assert_eq!(body["data"]["resultType"], "streams");
        let streams = body["data"]["result"].as_array().unwrap();
        let lines: usize = streams
            .iter()
            .map(|stream| stream["values"].as_array().unwrap().len())
            .sum();
        assert_eq!(lines, 2, "{query}");
        let error_stream = streams
            .iter()
            .find(|stream| stream["stream"]["level"] == "error")
            .unwrap();
        assert_eq!(error_stream["stream"]["service_name"], "checkout");
        let entry = &error_stream["values"][0];
        assert_eq!(entry[0], (T0 + 1_000_000).to_string());
        let line: Value = serde_json::from_str(entry[1].as_str().unwrap()).unwrap();
        assert_eq!(line["trace_id"], TRACE);
        assert_eq!(line["message"], "payment declined by issuer");
    }

    // Line filters, label filters, parsers, forward direction.
    let mut params = range.to_vec();
    params.push((
        "query",
        r#"{service_name="checkout"} != "cart" | json | level=~"warn|error" | drop __error__"#
            .into(),
    ));
    params.push(("direction", "forward".into()));
    let (status, body) = loki(&server, "/loki/api/v1/query_range", &params).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let messages: Vec<String> = body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|stream| stream["values"].as_array().unwrap().clone())
        .map(|entry| {
            serde_json::from_str::<Value>(entry[1].as_str().unwrap()).unwrap()["message"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(messages.len(), 2);
    assert!(messages.contains(&"retrying without trace".to_string()));

    // Log volume, as Grafana asks for it.
    let mut params = range.to_vec();
    params.push((
        "query",
        r#"sum by (level) (count_over_time({service_name="checkout"}[1m]))"#.into(),
    ));
    params.push(("step", "60s".into()));
    let (status, body) = loki(&server, "/loki/api/v1/query_range", &params).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["resultType"], "matrix");
    let series = body["data"]["result"].as_array().unwrap();
    let error_series = series
        .iter()
        .find(|series| series["metric"]["level"] == "error")
        .unwrap();
    let counted: f64 = error_series["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|point| point[1].as_str().unwrap().parse::<f64>().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(counted, 1.0);

    // Labels and their values.
    let (_, body) = loki(&server, "/loki/api/v1/labels", &[]).await;
    assert_eq!(body["data"], serde_json::json!(["level", "service_name"]));
    let (_, body) = loki(&server, "/loki/api/v1/label/service_name/values", &[]).await;
    assert_eq!(body["data"], serde_json::json!(["checkout"]));
    let (_, body) = loki(&server, "/loki/api/v1/label/level/values", &[]).await;
    assert_eq!(body["data"], serde_json::json!(["error", "info", "warn"]));

    // Unsupported LogQL: 400 naming the construct.
    let (status, body) = loki(
        &server,
        "/loki/api/v1/query_range",
        &[(
            "query",
            r#"{service_name="checkout"} | line_format "{{.msg}}""#.into(),
        )],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("line_format"),
        "{body}"
    );
    server.stop().await;
}
