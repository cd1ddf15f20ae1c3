//! The join API end to end: the seed's checkout trace and its logs sent over OTLP, then
//! one call from the trace id (any spelling) or from a log line to the analysed trace, its
//! logs and its operations' normal latency; a log line without a trace id joins by
//! inference; the command line prints the tree.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan, Status};
use prost::Message;
use reqwest::StatusCode;
use serde_json::{json, Value};

use common::TestServer;

const MS: u64 = 1_000_000;
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn span_id(name: &str) -> String {
    format!(
        "{:0>16}",
        name.bytes()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>()
    )[..16]
        .to_string()
}

struct Plan<'a> {
    id: &'a str,
    parent: Option<&'a str>,
    service: &'a str,
    name: &'a str,
    start_ms: u64,
    duration_ms: u64,
    error: Option<&'a str>,
}

fn batch(trace: &str, t0: u64, plans: &[Plan]) -> ExportTraceServiceRequest {
    let resource_spans = plans
        .iter()
        .map(|plan| ResourceSpans {
            resource: Some(common::service_resource(plan.service)),
            scope_spans: vec![ScopeSpans {
                spans: vec![OtlpSpan {
                    trace_id: hex(trace),
                    span_id: hex(&span_id(plan.id)),
                    parent_span_id: plan
                        .parent
                        .map(|parent| hex(&span_id(parent)))
                        .unwrap_or_default(),
                    name: plan.name.into(),
                    kind: 1,
                    start_time_unix_nano: t0 + plan.start_ms * MS,
                    end_time_unix_nano: t0 + (plan.start_ms + plan.duration_ms) * MS,
                    status: plan.error.map(|message| Status {
                        message: message.into(),
                        code: 2,
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

fn checkout(t0: u64) -> ExportTraceServiceRequest {
    let plan = |id, parent, service, name, start_ms, duration_ms, error| Plan {
        id,
        parent,
        service,
        name,
        start_ms,
        duration_ms,
        error,
    };
    batch(
        TRACE,
        t0,
        &[
            plan(
                "root",
                None,
                "gateway",
                "POST /checkout",
                0,
                523,
                Some("internal error"),
            ),
            plan("gw", Some("root"), "gateway", "Gateway", 0, 25, None),
            plan(
                "auth",
                Some("gw"),
                "gateway",
                "Auth middleware",
                5,
                10,
                None,
            ),
            plan(
                "orders",
                Some("root"),
                "orders",
                "Order Service",
                25,
                450,
                Some("save failed"),
            ),
            plan(
                "validate",
                Some("orders"),
                "orders",
                "Validate order",
                25,
                15,
                None,
            ),
            plan(
                "inventory",
                Some("orders"),
                "orders",
                "Check inventory",
                40,
                120,
                None,
            ),
            plan(
                "dbq",
                Some("inventory"),
                "orders",
                "DB query",
                42,
                115,
                None,
            ),
            plan(
                "pricing",
                Some("orders"),
                "orders",
                "Calculate pricing",
                160,
                45,
                None,
            ),
            plan(
                "save",
                Some("orders"),
                "orders",
                "Save order",
                205,
                270,
                Some("db write failed"),
            ),
            plan(
                "dbw",
                Some("save"),
                "orders",
                "DB write",
                207,
                265,
                Some("lock wait timeout exceeded"),
            ),
            plan(
                "notify",
                Some("root"),
                "notification",
                "Notification Service",
                475,
                48,
                None,
            ),
            plan(
                "email",
                Some("notify"),
                "notification",
                "Send email",
                476,
                45,
                None,
            ),
        ],
    )
}

async fn post(server: &TestServer, path: &str, content_type: &str, body: Vec<u8>) {
    let response = reqwest::Client::new()
        .post(server.url(path))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

async fn get_json(server: &TestServer, path: &str) -> (StatusCode, Value) {
    let response = reqwest::get(server.url(path)).await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_a_log_error_to_its_trace_root_cause_and_normal_latency() {
    let dir = common::temp_dir();
    let server = TestServer::start(&common::data_path(&dir), |_| {}).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let t0 = now - 2_000 * MS;

    // The normal latency of "DB query": 40 calls of about 10 ms in other traces.
    for index in 0..40u64 {
        let trace = format!("{:032x}", 0xabc000 + index);
        let plan = Plan {
            id: "q",
            parent: None,
            service: "orders",
            name: "DB query",
            start_ms: 0,
            duration_ms: 8 + index % 5,
            error: None,
        };
        post(
            &server,
            "/v1/traces",
            "application/x-protobuf",
            batch(&trace, t0 - 60_000 * MS, &[plan]).encode_to_vec(),
        )
        .await;
    }
    post(
        &server,
        "/v1/traces",
        "application/x-protobuf",
        checkout(t0).encode_to_vec(),
    )
    .await;
    let record = |offset_ms: u64,
                  severity: i32,
                  body: &str,
                  trace: Option<&str>,
                  span: Option<&str>| {
        let mut record = json!({"timeUnixNano": (t0 + offset_ms * MS).to_string(), "severityNumber": severity, "body": {"stringValue": body}});
        if let Some(trace) = trace {
            record["traceId"] = json!(trace);
        }
        if let Some(span) = span {
            record["spanId"] = json!(span_id(span));
        }
        record
    };
    let logs = json!({"resourceLogs": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "orders"}}]},
    "scopeLogs": [{"logRecords": [
        record(30, 9, "validating order 42", Some(TRACE), Some("validate")),
        record(470, 17, "DB write failed: lock wait timeout exceeded", Some(TRACE), Some("dbw")),
        record(300, 13, "slow write, still waiting", None, None),
    ]}]}]});
    post(
        &server,
        "/v1/logs",
        "application/json",
        logs.to_string().into_bytes(),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let error_log = loop {
        let (_, body) = get_json(&server, "/api/logs?service=orders&level=error").await;
        if let Some(found) = body["logs"]
            .as_array()
            .and_then(|logs| logs.first())
            .cloned()
        {
            break found;
        }
        assert!(Instant::now() < deadline, "logs never became searchable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // From the trace id, in hex and as Datadog's decimal low 64 bits.
    let (status, joined) = get_json(&server, &format!("/api/join/trace/{TRACE}")).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    let (_, by_decimal) = get_json(&server, "/api/join/trace/11803532876627986230").await;
    assert_eq!(by_decimal["trace"]["trace_id"], TRACE);
    let trace = &joined["trace"];
    assert_eq!(trace["span_count"], 12);
    assert_eq!(trace["duration_ms"], 523.0);
    assert_eq!(trace["root_service"], "gateway");
    assert_eq!(trace["analysis"]["slowest_span"]["span_id"], span_id("dbw"));
    assert_eq!(trace["analysis"]["slowest_span"]["percent_of_trace"], 50.7);
    assert_eq!(trace["analysis"]["root_cause"]["span_id"], span_id("dbw"));
    assert_eq!(
        trace["analysis"]["root_cause"]["message"],
        "lock wait timeout exceeded"
    );
    let findings = trace["analysis"]["findings"].as_array().unwrap();
    let slow = findings
        .iter()
        .find(|finding| finding["kind"] == "slow_operation")
        .expect("DB query is unusually slow");
    assert_eq!(slow["span_ids"][0], span_id("dbq"));
    assert!(findings.iter().any(|finding| finding["kind"] == "timeout"));

    // Every log record of the trace, in time order, with its span.
    let logs = joined["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 2);
    assert_eq!(logs[0]["span_id"], span_id("validate"));
    assert_eq!(logs[1]["level"], "error");

    // Is it normal? DB query's 115 ms against its ~10 ms calls.
    let metrics = joined["metrics"].as_array().unwrap();
    let db_query = metrics
        .iter()
        .find(|entry| entry["span_name"] == "DB query")
        .unwrap();
    assert_eq!(db_query["this_duration_ms"], 115.0);
    // Above every other call (this one counts half: the mid-rank).
    assert!(
        db_query["percentile_rank"].as_f64().unwrap() > 97.0,
        "{db_query}"
    );
    assert_eq!(db_query["verdict"], "slow", "{db_query}");
    assert_eq!(db_query["normal"]["calls_before"], 40, "{db_query}");
    assert!(db_query["count"].as_u64().unwrap() >= 40);
    assert!(db_query["p50_ms"].as_f64().unwrap() < 20.0);
    assert!(!db_query["exemplars"].as_array().unwrap().is_empty());
    assert!(joined["links"]["promql"]["latency_p99"]
        .as_str()
        .unwrap()
        .contains("traces_spanmetrics_latency_bucket"));

    // From the error log line.
    let log_id = error_log["id"].as_str().unwrap();
    let (status, from_log) = get_json(&server, &format!("/api/join/log/{log_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(from_log["join"], "trace_id");
    assert_eq!(from_log["log"]["id"], log_id);
    assert_eq!(
        from_log["trace"]["analysis"]["root_cause"]["span_id"],
        span_id("dbw")
    );

    // A line without a trace id joins by inference: the failing orders span running then.
    let (_, warned) = get_json(&server, "/api/logs?service=orders&level=warn").await;
    let untraced = warned["logs"][0]["id"].as_str().unwrap().to_owned();
    let (status, inferred) = get_json(&server, &format!("/api/join/log/{untraced}")).await;
    assert_eq!(status, StatusCode::OK, "{inferred}");
    assert_eq!(inferred["join"], "inferred");
    assert!(inferred["rule"].as_str().unwrap().contains("orders"));
    assert_eq!(inferred["candidates"][0]["trace_id"], TRACE);
    assert_eq!(
        inferred["candidates"][0]["span_id"],
        span_id("dbw"),
        "errors first, then the tightest"
    );
    assert_eq!(inferred["trace"]["trace_id"], TRACE);

    // Unknown ids: 404; bad ids: 400.
    assert_eq!(
        get_json(&server, "/api/join/log/w1-0").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get_json(&server, "/api/join/trace/deadbeef").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get_json(&server, "/api/join/trace/not-an-id").await.0,
        StatusCode::BAD_REQUEST
    );

    // The command line draws the tree the way the seed does.
    let url = format!("http://{}", server.http);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tracelink"))
            .args(["trace", TRACE, "--server", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{printed} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        printed.contains("Trace: 4bf92f3577b34da6a3ce929d0e0e4736"),
        "{printed}"
    );
    let write_line = printed
        .lines()
        .find(|line| line.contains("DB write"))
        .unwrap();
    assert!(
        write_line.contains("(265ms)")
            && write_line.contains("← slowest")
            && write_line.contains("← root cause"),
        "{write_line}"
    );
    assert!(printed
        .lines()
        .any(|line| line.contains("│") && line.contains("Save order")));
    assert!(
        printed.contains("DB write failed: lock wait timeout exceeded"),
        "logs under their spans"
    );
    assert!(
        !printed.contains("\u{1b}["),
        "no colour when stdout is not a terminal"
    );
    server.stop().await;
}
