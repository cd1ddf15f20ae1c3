//! Span metrics and exemplars: a real Prometheus server (Debian's `prometheus` package,
//! installed by `.ci/run`) scrapes tracelink with exemplar storage on, and every trace id
//! it returns from `/api/v1/query_exemplars` is a trace tracelink returns; the 0.0.4
//! rendering passes `promtool check metrics`; exact quantiles match a sorted array; the
//! cardinality cap folds extra series into `__overflow__`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan, Status};
use prost::Message;
use reqwest::StatusCode;
use serde_json::Value;

use common::TestServer;

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// One span per duration, each its own trace; names as given.
fn request(service: &str, spans: &[(&str, u64, bool)], seed: u8) -> ExportTraceServiceRequest {
    let end = now_nanos();
    let spans = spans
        .iter()
        .enumerate()
        .map(|(index, (name, duration_ms, error))| {
            let mut trace_id = [seed; 16];
            trace_id[8..].copy_from_slice(&(index as u64 + 1).to_be_bytes());
            OtlpSpan {
                trace_id: trace_id.to_vec(),
                span_id: (index as u64 + 1).to_be_bytes().to_vec(),
                name: name.to_string(),
                kind: 2,
                start_time_unix_nano: end - duration_ms * 1_000_000,
                end_time_unix_nano: end,
                status: error.then(|| Status {
                    message: "failed".into(),
                    code: 2,
                }),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(common::service_resource(service)),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn send(server: &TestServer, request: ExportTraceServiceRequest) {
    let response = reqwest::Client::new()
        .post(server.url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(request.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn require(binary: &str) {
    let found = Command::new(binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        found.is_ok_and(|status| status.success()),
        "{binary} not found: install Debian's prometheus package (.ci/run does)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_exemplars_that_open_stored_traces() {
    require("prometheus");
    require("promtool");
    let dir = common::temp_dir();
    let server = TestServer::start(&common::data_path(&dir), |_| {}).await;
    let spans: Vec<(&str, u64, bool)> = vec![
        ("GET /orders/1001", 3, false),
        ("GET /orders/1002", 40, false),
        ("GET /orders/1003", 700, true),
        ("POST /checkout", 120, false),
    ];
    send(&server, request("orders", &spans, 0x42)).await;

    // The 0.0.4 rendering passes promtool.
    let response = reqwest::get(server.url("/metrics")).await.unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let classic = response.text().await.unwrap();
    assert!(
        !classic.contains(" # {"),
        "no exemplars in the classic format"
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(classic.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // OpenMetrics when asked for, as Prometheus asks.
    let response = reqwest::Client::new()
        .get(server.url("/metrics"))
        .header("accept", "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(response.text().await.unwrap().ends_with("# EOF\n"));

    // A real Prometheus with exemplar storage scrapes it.
    let prometheus_port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tracelink\n    static_configs:\n      - targets: ['{}']\n",
            server.http
        ),
    )
    .unwrap();
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
        .arg("--enable-feature=exemplar-storage")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let exemplars = loop {
        let start = (now_nanos() / 1_000_000_000 - 600).to_string();
        let end = (now_nanos() / 1_000_000_000 + 60).to_string();
        let answer = client
            .get(format!(
                "http://127.0.0.1:{prometheus_port}/api/v1/query_exemplars"
            ))
            .query(&[
                ("query", "traces_spanmetrics_latency_bucket"),
                ("start", &start),
                ("end", &end),
            ])
            .send()
            .await;
        if let Ok(answer) = answer {
            if let Ok(body) = answer.json::<Value>().await {
                let found: Vec<Value> = body["data"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|series| series["exemplars"].as_array().cloned().unwrap_or_default())
                    .collect();
                if found.len() >= spans.len() {
                    break found;
                }
            }
        }
        if Instant::now() > deadline {
            let _ = prometheus.kill();
            let _ = prometheus.wait();
            panic!("Prometheus stored no exemplars from tracelink");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let _ = prometheus.kill();
    let _ = prometheus.wait();

    for exemplar in &exemplars {
        let trace_id = exemplar["labels"]["trace_id"].as_str().unwrap();
        assert_eq!(trace_id.len(), 32, "{trace_id}");
        assert_eq!(exemplar["labels"]["span_id"].as_str().unwrap().len(), 16);
        let response = client
            .get(server.url(&format!("/api/v2/traces/{trace_id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "exemplar {trace_id} must open a stored trace"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_api_quantiles_match_a_sorted_array_and_overflow_is_capped() {
    let dir = common::temp_dir();
    let server = TestServer::start(&common::data_path(&dir), |raw| {
        raw.metrics.max_series_per_metric = 3;
    })
    .await;
    let durations: Vec<u64> = (1..=200).map(|index| (index * 37) % 1000 + 1).collect();
    let spans: Vec<(&str, u64, bool)> = durations
        .iter()
        .map(|duration| ("GET /orders/{id}", *duration, *duration > 990))
        .collect();
    send(&server, request("orders", &spans, 0x51)).await;
    let body: Value = reqwest::get(server.url("/api/metrics/latency?service=orders&window=5m"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let operation = &body["operations"][0];
    assert_eq!(operation["count"], 200);
    let mut sorted = durations.clone();
    sorted.sort_unstable();
    for (field, quantile) in [("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99)] {
        let rank = ((quantile * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        let exact = sorted[rank - 1] as f64;
        let measured = operation[field].as_f64().unwrap();
        assert!(
            (measured - exact).abs() <= exact * 0.01 + 0.01,
            "{field}: {measured} vs {exact}"
        );
    }
    // Exact to 2 significant digits (hdrhistogram reports the top of the value's bucket).
    assert!((operation["max_ms"].as_f64().unwrap() - 1000.0).abs() <= 10.0);
    let errors = durations.iter().filter(|duration| **duration > 990).count() as f64;
    assert!((operation["error_rate"].as_f64().unwrap() - errors / 200.0).abs() < 1e-9);
    let slowest = operation["exemplars"]["slowest"]["trace_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = reqwest::get(server.url(&format!("/api/v2/traces/{slowest}")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(!operation["exemplars"]["bands"]
        .as_array()
        .unwrap()
        .is_empty());

    // The histograms survive a restart: rebuilt from the index.
    server.stop().await;
    let server = TestServer::start(&common::data_path(&dir), |raw| {
        raw.metrics.max_series_per_metric = 3;
    })
    .await;
    let again: Value = reqwest::get(server.url("/api/metrics/latency?service=orders&window=5m"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for field in [
        "count",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "max_ms",
        "error_rate",
    ] {
        assert_eq!(
            again["operations"][0][field], operation[field],
            "{field} after restart"
        );
    }

    // Unknown service: 404; bad window: 400.
    assert_eq!(
        reqwest::get(server.url("/api/metrics/latency?service=nobody"))
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        reqwest::get(server.url("/api/metrics/latency?service=orders&window=2d"))
            .await
            .unwrap()
            .status(),
        400
    );

    // Span names with ids are normalised; past the cap of 3 label sets, an overflow series.
    let named: Vec<(&str, u64, bool)> = vec![
        ("GET /items/1234", 5, false),
        ("GET /items/5678", 5, false),
        ("op-a", 5, false),
        ("op-b", 5, false),
        ("op-c", 5, false),
    ];
    send(&server, request("catalog", &named, 0x61)).await;
    let text = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains(r#"span_name="GET /items/{id}""#));
    assert!(!text.contains("/items/1234"));
    assert!(text.contains(r#"service="__overflow__""#));
    let overflow_line = text
        .lines()
        .find(|line| line.starts_with("tracelink_metrics_series_overflow_total"))
        .unwrap();
    let overflowed: f64 = overflow_line
        .split_whitespace()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    assert!(overflowed >= 1.0, "{overflow_line}");
    // The service's own metrics are there.
    for name in [
        "tracelink_spans_accepted_total",
        "tracelink_wal_fsync_seconds_bucket",
        "tracelink_ingest_queue_depth",
        "tracelink_storage_bytes",
    ] {
        assert!(text.contains(name), "{name}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_graph_and_the_shipped_dashboard_use_metrics_tracelink_exports() {
    let dir = common::temp_dir();
    let server = TestServer::start(&common::data_path(&dir), |_| {}).await;
    // gateway (client span) → orders (server span, its child, failed).
    let end = now_nanos();
    let trace_id = vec![0x77; 16];
    let span = |service: &str, id: u8, parent: Option<u8>, kind: i32, error: bool| ResourceSpans {
        resource: Some(common::service_resource(service)),
        scope_spans: vec![ScopeSpans {
            spans: vec![OtlpSpan {
                trace_id: trace_id.clone(),
                span_id: vec![id; 8],
                parent_span_id: parent.map(|parent| vec![parent; 8]).unwrap_or_default(),
                name: "POST /orders".into(),
                kind,
                start_time_unix_nano: end - 50_000_000,
                end_time_unix_nano: end,
                status: error.then(|| Status {
                    message: "boom".into(),
                    code: 2,
                }),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    send(
        &server,
        ExportTraceServiceRequest {
            resource_spans: vec![span("orders", 2, Some(1), 2, true)],
        },
    )
    .await;
    send(
        &server,
        ExportTraceServiceRequest {
            resource_spans: vec![
                span("gateway", 1, None, 3, false),
                span("gateway", 9, None, 2, false),
            ],
        },
    )
    .await;
    let logs = serde_json::json!({"resourceLogs": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "orders"}}]},
        "scopeLogs": [{"logRecords": [{"timeUnixNano": end.to_string(), "severityNumber": 17, "body": {"stringValue": "boom"},
            "traceId": "77777777777777777777777777777777"}]}]}]});
    let response = reqwest::Client::new()
        .post(server.url("/v1/logs"))
        .header("content-type", "application/json")
        .body(logs.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = reqwest::get(server.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        // Latency observations that carry exemplars wait for their trace's sampling
        // decision, and the service graph for the trace whole (it leaves the head after
        // `trace_idle_ms`).
        let settled = text.contains("tracelink_log_records_total{")
            && text.contains("traces_spanmetrics_latency_bucket{")
            && text.contains("traces_service_graph_request_total{");
        if settled || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        text.contains(r#"traces_service_graph_request_total{client="gateway",server="orders"} 1"#),
        "{text}"
    );
    assert!(text.contains(
        r#"traces_service_graph_request_failed_total{client="gateway",server="orders"} 1"#
    ));
    assert!(text.contains("traces_service_graph_request_server_seconds_bucket{"));
    assert!(text.contains(r#"tracelink_log_records_total{service="orders",level="error"} 1"#));

    let exported: std::collections::BTreeSet<String> = text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| line.split(['{', ' ']).next().unwrap().to_owned())
        .collect();
    let dashboard: Value =
        serde_json::from_str(include_str!("../dashboards/tracelink-services.json")).unwrap();
    let names = regex::Regex::new(r"\b(traces|tracelink)_[a-z_]+").unwrap();
    let mut exemplar_panels = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            if target["exemplar"] == true {
                exemplar_panels += 1;
            }
            let Some(expr) = target["expr"].as_str() else {
                continue;
            };
            for name in names.find_iter(expr) {
                assert!(
                    exported.contains(name.as_str()),
                    "dashboard queries {} which tracelink does not export",
                    name.as_str()
                );
            }
        }
    }
    assert!(
        exemplar_panels >= 4,
        "latency, heatmap and rate panels show exemplars"
    );
    assert_eq!(dashboard["templating"]["list"][0]["name"], "service");
    let provisioning = include_str!("../dashboards/provisioning/datasources/tracelink.yaml");
    for needed in [
        "exemplarTraceIdDestinations",
        "datasourceUid: tracelink-traces",
        "tracesToLogsV2",
        "tracesToMetrics",
        "uid: tracelink-logs",
        "type: tempo",
        "type: loki",
        "url: http://localhost:3200",
    ] {
        assert!(provisioning.contains(needed), "{needed}");
    }
    server.stop().await;
}
