//! Redaction before anything touches the disk: a corpus of secrets (a card, a JWT, a
//! password in a URL, an AWS key, a bearer token, a private key, SQL with literals, an
//! email caught by a configured rule) sent through OTLP/HTTP protobuf and JSON, OTLP/gRPC,
//! Zipkin, OTLP logs and a tailed file. Then the write-ahead log and every file of the
//! data directory are searched byte for byte for each secret, and so is everything the
//! query APIs give back (which decompresses what the indexes store): no hit. The ids
//! survive, so the join from a redacted log line still finds its trace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::Event;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan, Status};
use prost::Message;
use tracelink::config::{RawLogSource, RawRedactionRule};

use common::TestServer;

/// Each secret, in the sentence that carries it.
const SECRETS: [(&str, &str); 7] = [
    ("4111 1111 1111 1111", "paid with 4111 1111 1111 1111 today"),
    (
        "eyJzdWIiOiJhbm4iLCJpYXQiOjE3MDB9",
        "session eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbm4iLCJpYXQiOjE3MDB9.c2lnbmF0dXJlc2VjcmV0 refreshed",
    ),
    ("hunter2pass", "GET https://ann:hunter2pass@db.example.com/orders"),
    ("AKIAIOSFODNN7EXAMPLE", "uploading with AKIAIOSFODNN7EXAMPLE"),
    ("s3cr3tT0kenValue", "Authorization: Bearer s3cr3tT0kenValue"),
    (
        "MIIEpAIBAAKCAQEA75sSecret",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA75sSecretKeyMaterial0123456789abcdefghijklmnopqrstuvwxyz\n-----END RSA PRIVATE KEY-----",
    ),
    ("ann.secret@example.com", "mail to ann.secret@example.com bounced"),
];

/// A literal in a statement (`db.statement`): the tokenizer's, not a pattern's, to find.
const SQL: (&str, &str) = (
    "Tr0ub4dor&3",
    "SELECT id FROM users WHERE password = 'Tr0ub4dor&3'",
);

/// Values in a Redis command and a Mongo query (`db.query.text` beside
/// `db.system.name`): the per-command table's and the JSON scanner's to find.
const DATABASE: [(&str, &str, &str); 2] = [
    ("s3cr3tRedisPass", "redis", "AUTH default s3cr3tRedisPass"),
    (
        "078-05-1120",
        "mongodb",
        r#"{"find":"users","filter":{"ssn":"078-05-1120"}}"#,
    ),
];

/// Every secret the tests send, with where it was.
fn all_secrets() -> impl Iterator<Item = &'static str> {
    SECRETS
        .iter()
        .chain([&SQL])
        .map(|(secret, _)| *secret)
        .chain(DATABASE.iter().map(|(secret, _, _)| *secret))
}

/// A span of a database client: its statement holds a value.
fn database_span(
    trace_byte: u8,
    span_byte: u8,
    (_, system, statement): (&str, &str, &str),
) -> OtlpSpan {
    OtlpSpan {
        trace_id: vec![trace_byte; 16],
        span_id: vec![span_byte; 8],
        name: system.into(),
        kind: 3,
        start_time_unix_nano: 1_700_000_000_010_000_000,
        end_time_unix_nano: 1_700_000_000_020_000_000,
        attributes: vec![
            string("db.system.name", system),
            string("db.query.text", statement),
        ],
        ..Default::default()
    }
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// A span carrying every secret: in attributes, the name, the status, an event, and
/// its resource; `db.statement` with the SQL one.
fn secret_span(trace_byte: u8, span_byte: u8) -> OtlpSpan {
    let mut attributes: Vec<KeyValue> = SECRETS
        .iter()
        .enumerate()
        .map(|(index, (_, sentence))| string(&format!("note.{index}"), sentence))
        .collect();
    attributes.push(string("db.statement", SQL.1));
    attributes.push(string(
        "http.request.header.authorization",
        "Basic YW5uOnB3",
    ));
    OtlpSpan {
        trace_id: vec![trace_byte; 16],
        span_id: vec![span_byte; 8],
        name: format!("charge {}", SECRETS[0].0),
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_200_000_000,
        attributes,
        events: vec![Event {
            name: "exception".into(),
            attributes: vec![string("exception.message", SECRETS[1].1)],
            ..Default::default()
        }],
        status: Some(Status {
            message: SECRETS[2].1.into(),
            code: 2,
        }),
        ..Default::default()
    }
}

fn traces(trace_byte: u8) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    string("service.name", "payments"),
                    string("deploy.url", SECRETS[2].1),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![
                    secret_span(trace_byte, 1),
                    secret_span(trace_byte, 2),
                    database_span(trace_byte, 3, DATABASE[0]),
                    database_span(trace_byte, 4, DATABASE[1]),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn hex(trace_byte: u8) -> String {
    format!("{trace_byte:02x}").repeat(16)
}

/// Every file under `dir`, searched for every secret.
fn files_hold_no_secret(dir: &Path) {
    let mut files = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            files += 1;
            for secret in all_secrets() {
                assert!(
                    !bytes
                        .windows(secret.len())
                        .any(|window| window == secret.as_bytes()),
                    "{secret:?} is in {}",
                    path.display()
                );
            }
        }
    }
    assert!(files > 0, "nothing under {}", dir.display());
}

fn text_holds_no_secret(what: &str, text: &str) {
    for secret in all_secrets() {
        assert!(!text.contains(secret), "{secret:?} in {what}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_disk_or_an_answer() {
    let dir = common::temp_dir();
    let data = common::data_path(&dir);
    let logs_dir = dir.path().join("app-logs");
    std::fs::create_dir_all(&logs_dir).unwrap();
    let log_file = logs_dir.join("payments.log");
    let server = TestServer::start(&data, |raw| {
        raw.redaction.rules = vec![RawRedactionRule {
            name: "emails".into(),
            key: None,
            value: Some(r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}".into()),
            action: Some("hash".into()),
            replacement: None,
        }];
        raw.logs.poll_interval_ms = 50;
        raw.logs.sources = vec![RawLogSource {
            paths: vec![format!("{}/*.log", logs_dir.display())],
            ..RawLogSource::default()
        }];
    })
    .await;
    let client = reqwest::Client::new();

    // OTLP/HTTP protobuf and JSON, OTLP/gRPC, Zipkin.
    let response = client
        .post(format!("http://{}/v1/traces", server.otlp_http))
        .header("content-type", "application/x-protobuf")
        .body(traces(1).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let json_request = serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "payments"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": hex(2), "spanId": "0202020202020202", "name": SECRETS[3].1,
            "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000100000000",
            "attributes": SECRETS.iter().enumerate().map(|(index, (_, sentence))| serde_json::json!(
                {"key": format!("note.{index}"), "value": {"stringValue": sentence}})).collect::<Vec<_>>()
        }]}]
    }]});
    let response = client
        .post(format!("http://{}/v1/traces", server.otlp_http))
        .header("content-type", "application/json")
        .body(json_request.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let mut grpc = TraceServiceClient::connect(format!("http://{}", server.otlp_grpc))
        .await
        .unwrap();
    grpc.export(traces(3)).await.unwrap();
    let zipkin = serde_json::json!([{
        "traceId": hex(4), "id": "0404040404040404", "name": "charge",
        "timestamp": 1_700_000_000_000_000u64, "duration": 1000,
        "localEndpoint": {"serviceName": "payments"},
        "tags": SECRETS.iter().enumerate().map(|(index, (_, sentence))| (format!("note.{index}"), *sentence))
            .chain([("db.statement".to_owned(), SQL.1)])
            .collect::<std::collections::BTreeMap<_, _>>()
    }]);
    let response = client
        .post(server.url("/api/v2/spans"))
        .header("content-type", "application/json")
        .body(zipkin.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    // Logs: OTLP (gRPC) and a tailed file, with the trace id of trace 1.
    let otlp_logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![string("service.name", "payments")],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: SECRETS
                    .iter()
                    .map(|(_, sentence)| LogRecord {
                        time_unix_nano: 1_700_000_000_050_000_000,
                        body: Some(AnyValue {
                            value: Some(any_value::Value::StringValue((*sentence).into())),
                        }),
                        attributes: vec![string("card", SECRETS[0].0)],
                        trace_id: vec![1; 16],
                        span_id: vec![1; 8],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    LogsServiceClient::connect(format!("http://{}", server.otlp_grpc))
        .await
        .unwrap()
        .export(otlp_logs)
        .await
        .unwrap();
    let lines: String = SECRETS
        .iter()
        .map(|(_, sentence)| {
            format!(
                "{}\n",
                serde_json::json!({
                    "time": "2023-11-14T22:13:20.05Z", "level": "error",
                    "service": "payments", "trace_id": hex(1), "span_id": "0101010101010101",
                    "msg": sentence, "user": {"email": "ann.secret@example.com", "card": SECRETS[0].0}
                })
            )
        })
        .collect();
    std::fs::write(&log_file, lines).unwrap();

    // Acked means in the WAL: look there now, before a commit lets it go.
    files_hold_no_secret(&data.join("wal"));

    // Every answer: the traces whole, the logs, the join.
    for trace_byte in 1..=4 {
        let body = client
            .get(server.url(&format!("/api/v2/traces/{}", hex(trace_byte))))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.contains("resourceSpans"), "trace {trace_byte}: {body}");
        assert!(
            body.contains("redaction.count"),
            "trace {trace_byte} says so"
        );
        text_holds_no_secret(&format!("trace {trace_byte}"), &body);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let logs = loop {
        let logs: serde_json::Value = client
            .get(server.url(&format!("/api/logs?trace_id={}&limit=100", hex(1))))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let count = logs["logs"].as_array().map_or(0, Vec::len);
        if count >= 2 * SECRETS.len() || Instant::now() > deadline {
            break logs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let records = logs["logs"].as_array().unwrap();
    assert_eq!(records.len(), 2 * SECRETS.len(), "{logs}");
    text_holds_no_secret("logs", &logs.to_string());
    // The emails were hashed with one key: equal values stay equal, and joinable.
    let hashed: std::collections::BTreeSet<String> = records
        .iter()
        .filter_map(|record| {
            record["attributes"]["user.email"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(hashed.len(), 1, "{hashed:?}");
    // The join from a redacted log line still reaches its trace.
    let log_id = records[0]["id"].as_str().unwrap();
    let join: serde_json::Value = client
        .get(server.url(&format!("/api/join/log/{log_id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(join["trace"]["trace_id"].as_str(), Some(hex(1).as_str()));
    text_holds_no_secret("join", &join.to_string());
    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for rule in [
        "card_number",
        "jwt",
        "url_userinfo",
        "aws_key",
        "bearer",
        "private_key",
        "sql",
        "header",
        "emails",
    ] {
        let line = metrics
            .lines()
            .find(|line| {
                line.starts_with(&format!("tracelink_redactions_total{{rule=\"{rule}\"}}"))
            })
            .unwrap_or_else(|| panic!("no count for {rule}"));
        assert!(!line.ends_with(" 0"), "{line}");
    }
    server.stop().await;

    // And the whole data directory once everything is committed.
    files_hold_no_secret(&data);
}
