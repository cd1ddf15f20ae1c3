//! Tail sampling and trace assembly end to end: a real tracelink on 127.0.0.1:0, OTLP over
//! HTTP. 2,000 generated traces at a 10 % fraction keep exactly the errors, the slow ones
//! and the threshold's choice, while the metrics count all of them and every exemplar
//! opens a stored trace; late spans follow their trace's decision; the join says when a
//! trace was dropped; a full head answers 429 and memory stays bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::TestServer;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{span::Event, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use reqwest::StatusCode;
use serde_json::Value;

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

use common::mix;

fn trace_id(number: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&mix(number ^ 0xdead_beef).to_be_bytes());
    id[8..].copy_from_slice(&mix(number).to_be_bytes());
    id
}

fn hex(bytes: &[u8]) -> String {
    tracelink::model::to_hex(bytes)
}

/// What kind of trace the generator makes.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Shape {
    Error,
    Exception,
    Slow,
    Plain,
}

fn shape(number: u64) -> Shape {
    match number % 20 {
        0 | 7 => Shape::Error,
        3 => Shape::Exception,
        11 | 15 => Shape::Slow,
        _ => Shape::Plain,
    }
}

/// Three spans: a server root in `gateway`, a client child, and a server grandchild in
/// `orders`; the shape decides the status, an exception event or a 1.5 s duration.
fn trace_spans(number: u64, end: u64) -> Vec<(String, Span)> {
    let id = trace_id(number);
    let duration: u64 = if shape(number) == Shape::Slow {
        1_500_000_000
    } else {
        20_000_000 + (number % 7) * 1_000_000
    };
    let start = end - duration;
    let span_id = |index: u64| (number * 8 + index + 1).to_be_bytes().to_vec();
    let make = |index: u64, parent: Option<u64>, kind: i32, name: &str| Span {
        trace_id: id.to_vec(),
        span_id: span_id(index),
        parent_span_id: parent.map(span_id).unwrap_or_default(),
        name: name.into(),
        kind,
        start_time_unix_nano: start + index * 1_000_000,
        end_time_unix_nano: end - index * 1_000_000,
        ..Default::default()
    };
    let mut root = make(0, None, 2, "POST /checkout");
    let client = make(1, Some(0), 3, "POST /orders");
    let mut server = make(2, Some(1), 2, "POST /orders");
    match shape(number) {
        Shape::Error => {
            server.status = Some(Status {
                code: 2,
                message: "card declined".into(),
            });
            root.status = Some(Status {
                code: 2,
                message: "checkout failed".into(),
            });
        }
        Shape::Exception => server.events.push(Event {
            name: "exception".into(),
            time_unix_nano: start,
            ..Default::default()
        }),
        Shape::Slow | Shape::Plain => {}
    }
    vec![
        ("gateway".into(), root),
        ("gateway".into(), client),
        ("orders".into(), server),
    ]
}

fn request(spans: Vec<(String, Span)>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: spans
            .into_iter()
            .map(|(service, span)| ResourceSpans {
                resource: Some(common::service_resource(&service)),
                scope_spans: vec![ScopeSpans {
                    spans: vec![span],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

async fn send(server: &TestServer, request: &ExportTraceServiceRequest) -> StatusCode {
    reqwest::Client::new()
        .post(server.url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(request.encode_to_vec())
        .send()
        .await
        .unwrap()
        .status()
}

async fn metrics_text(server: &TestServer) -> String {
    reqwest::Client::new()
        .get(server.url("/metrics"))
        .header("accept", "application/openmetrics-text;version=1.0.0")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The sum of every sample of `metric` whose labels contain `labels`.
fn metric_sum(text: &str, metric: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(&format!("{metric}{{")) && line.contains(labels))
        .filter_map(|line| {
            let value_part = line.split(" # ").next()?;
            value_part.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

async fn wait_for_decisions(server: &TestServer, traces: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = metrics_text(server).await;
        if metric_sum(&text, "tracelink_sampling_traces_total", "") >= traces {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "sampling decided fewer than {traces} traces"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn trace_status(server: &TestServer, trace_hex: &str) -> StatusCode {
    reqwest::get(server.url(&format!("/api/v2/traces/{trace_hex}")))
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenth_of_plain_traces_and_every_error_and_slow_one_are_kept() {
    let dir = common::temp_dir();
    let server = TestServer::start(&common::data_path(&dir), |raw| {
        raw.sampling.fraction = 0.1;
    })
    .await;
    const TRACES: u64 = 2000;
    let end = now_nanos();
    for chunk in (0..TRACES).collect::<Vec<_>>().chunks(100) {
        let spans = chunk
            .iter()
            .flat_map(|number| trace_spans(*number, end))
            .collect();
        assert_eq!(send(&server, &request(spans)).await, StatusCode::OK);
    }
    let text = wait_for_decisions(&server, TRACES as f64).await;

    // The OpenTelemetry threshold for 10 %, computed here from the specification:
    // T = round((1 - 0.1) * 2^56); keep when the low 56 bits of the id are >= T.
    let threshold = ((1.0 - 0.1) * 2f64.powi(56)).round() as u64;
    let mut expected_kept = 0;
    for number in 0..TRACES {
        let id = trace_id(number);
        let randomness = u64::from_be_bytes(id[8..].try_into().unwrap()) & ((1 << 56) - 1);
        let keep = shape(number) != Shape::Plain || randomness >= threshold;
        expected_kept += u64::from(keep);
        let status = trace_status(&server, &hex(&id)).await;
        let expected = if keep {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        assert_eq!(status, expected, "trace {number} ({:?})", shape(number));
    }
    let plain_kept = expected_kept - TRACES * 5 / 20;
    assert!(
        (100..=300).contains(&plain_kept),
        "about a tenth of 1,500 plain traces: {plain_kept}"
    );

    // The reasons are counted.
    assert_eq!(
        metric_sum(
            &text,
            "tracelink_sampling_traces_total",
            r#"reason="error""#
        ),
        (TRACES * 3 / 20) as f64
    );
    assert_eq!(
        metric_sum(&text, "tracelink_sampling_traces_total", r#"reason="slow""#),
        (TRACES * 2 / 20) as f64
    );
    assert_eq!(
        metric_sum(
            &text,
            "tracelink_sampling_traces_total",
            r#"decision="keep""#
        ),
        expected_kept as f64
    );

    // Metrics saw every span, kept or not.
    let text = metrics_text(&server).await;
    assert_eq!(
        metric_sum(&text, "traces_spanmetrics_calls_total", ""),
        (TRACES * 3) as f64
    );
    assert_eq!(
        metric_sum(&text, "traces_spanmetrics_latency_count", ""),
        (TRACES * 3) as f64
    );
    assert_eq!(
        metric_sum(
            &text,
            "traces_service_graph_request_total",
            r#"client="gateway",server="orders""#
        ),
        TRACES as f64
    );

    // Every exemplar names a trace that opens.
    let exemplar = regex::Regex::new(r#"# \{[^}]*trace_id="([0-9a-f]{32})""#).unwrap();
    let named: BTreeSet<String> = exemplar
        .captures_iter(&text)
        .map(|captures| captures[1].to_owned())
        .collect();
    assert!(named.len() >= 3, "exemplars are there: {}", named.len());
    for trace_hex in &named {
        assert_eq!(
            trace_status(&server, trace_hex).await,
            StatusCode::OK,
            "exemplar trace {trace_hex} opens"
        );
    }
    // So do the sampled traces of the latency API.
    let latency: Value = reqwest::get(server.url("/api/metrics/latency?service=orders&window=5m"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut samples = 0;
    for operation in latency["operations"].as_array().unwrap() {
        let exemplars = &operation["exemplars"];
        let bands = exemplars["bands"].as_array().unwrap();
        for sample in bands.iter().chain(std::iter::once(&exemplars["slowest"])) {
            let Some(trace_hex) = sample["trace_id"].as_str() else {
                continue;
            };
            samples += 1;
            assert_eq!(
                trace_status(&server, trace_hex).await,
                StatusCode::OK,
                "{sample}"
            );
        }
    }
    assert!(
        samples > 0,
        "the latency API names sampled traces: {latency}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_spans_join_their_trace_or_follow_its_drop() {
    let dir = common::temp_dir();
    let server = TestServer::start(&common::data_path(&dir), |raw| {
        raw.sampling.fraction = 0.0; // keep only errors and slow traces
    })
    .await;
    let end = now_nanos();
    // Trace 0 is an error (kept), trace 1 plain (dropped).
    let early = |number: u64| -> Vec<(String, Span)> {
        trace_spans(number, end).into_iter().take(2).collect()
    };
    let late = |number: u64| -> Vec<(String, Span)> {
        trace_spans(number, end).into_iter().skip(2).collect()
    };
    let mut first = early(0);
    first.extend(early(1));
    // The late half of the error trace carries the error; its early half alone is an
    // error too (the root failed), so the decision does not depend on what comes late.
    assert_eq!(send(&server, &request(first)).await, StatusCode::OK);
    // Read your writes: served from the head before any decision.
    assert_eq!(
        trace_status(&server, &hex(&trace_id(1))).await,
        StatusCode::OK
    );
    wait_for_decisions(&server, 2.0).await;
    assert_eq!(
        trace_status(&server, &hex(&trace_id(1))).await,
        StatusCode::NOT_FOUND
    );

    let mut second = late(0);
    second.extend(late(1));
    assert_eq!(send(&server, &request(second)).await, StatusCode::OK);
    // The kept trace is whole at once (head and index merged), the dropped one stays out.
    let spans = common::fetch_trace(server.http, &hex(&trace_id(0)))
        .await
        .unwrap();
    assert_eq!(common::flatten(&spans).len(), 3);
    assert_eq!(
        trace_status(&server, &hex(&trace_id(1))).await,
        StatusCode::NOT_FOUND
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = metrics_text(&server).await;
        if metric_sum(&text, "tracelink_sampling_late_spans_total", "") >= 2.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "late spans are counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        metric_sum(
            &text,
            "tracelink_sampling_late_spans_total",
            r#"decision="keep""#
        ),
        1.0
    );
    assert_eq!(
        metric_sum(
            &text,
            "tracelink_sampling_late_spans_total",
            r#"decision="drop""#
        ),
        1.0
    );
    // Decisions are counted per trace, not again per late fragment.
    assert_eq!(
        metric_sum(&text, "tracelink_sampling_traces_total", ""),
        2.0
    );

    // After the late fragment is committed the trace is still whole, from two documents.
    server.stop().await;
    let index = common::open_traces(&common::data_path(&dir));
    let kept = tracelink::model::TraceId(trace_id(0));
    assert_eq!(index.fragments(&kept).unwrap(), 2);
    assert_eq!(index.trace_payloads(&kept).unwrap().len(), 3);
    let dropped = tracelink::model::TraceId(trace_id(1));
    assert!(index.trace_payloads(&dropped).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_join_says_when_sampling_dropped_the_trace_of_a_log() {
    let dir = common::temp_dir();
    let server = TestServer::start(&common::data_path(&dir), |raw| {
        raw.sampling.fraction = 0.0;
    })
    .await;
    let end = now_nanos();
    assert_eq!(
        send(&server, &request(trace_spans(1, end))).await,
        StatusCode::OK
    );
    let trace_hex = hex(&trace_id(1));
    let logs = serde_json::json!({"resourceLogs": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "orders"}}]},
        "scopeLogs": [{"logRecords": [{"timeUnixNano": end.to_string(), "severityNumber": 9,
            "body": {"stringValue": "order accepted"}, "traceId": trace_hex}]}]}]});
    let response = reqwest::Client::new()
        .post(server.url("/v1/logs"))
        .header("content-type", "application/json")
        .body(logs.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    wait_for_decisions(&server, 1.0).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let log_id = loop {
        let found: Value = reqwest::get(server.url(&format!("/api/logs?trace_id={trace_hex}")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(id) = found["logs"][0]["id"].as_str() {
            break id.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the log record is indexed (logs are never sampled)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let joined: Value = reqwest::get(server.url(&format!("/api/join/log/{log_id}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(joined["sampling"]["decision"], "drop", "{joined}");
    assert_eq!(joined["sampling"]["reason"], "not_sampled");
    assert_eq!(joined["findings"][0]["kind"], "trace_dropped_by_sampling");
    let response = reqwest::get(server.url(&format!("/api/join/trace/{trace_hex}")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body = response.text().await.unwrap();
    assert!(
        body.contains("dropped by tail sampling (not_sampled)"),
        "{body}"
    );
    server.stop().await;
}

/// Send `request` until the head is full and refuses, then `extra` more; returns how
/// many were refused with 429 and Retry-After.
async fn flood(
    otlp_http: std::net::SocketAddr,
    mut request: impl FnMut(u64) -> ExportTraceServiceRequest,
    extra: u64,
) -> u64 {
    let client = reqwest::Client::new();
    let mut refused = 0;
    let mut number = 0;
    while refused <= extra {
        let response = client
            .post(format!("http://{otlp_http}/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(request(number).encode_to_vec())
            .send()
            .await
            .unwrap();
        match response.status() {
            StatusCode::OK => assert_eq!(refused, 0, "nothing frees room while traces assemble"),
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(response.headers().contains_key("retry-after"));
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
        number += 1;
        assert!(number < 100_000, "the head never filled");
    }
    refused
}

fn one_span_traces(number: u64) -> ExportTraceServiceRequest {
    let end = now_nanos();
    request(
        (0..500)
            .map(|index| {
                let mut span = trace_spans(number * 500 + index, end).remove(0);
                span.1.name = format!("flood {index}");
                span
            })
            .collect(),
    )
}

fn giant_trace_steps(number: u64) -> ExportTraceServiceRequest {
    let end = now_nanos();
    request(
        (0..500)
            .map(|index| {
                let (service, mut span) = trace_spans(7, end).remove(1);
                span.span_id = (number * 500 + index + 1).to_be_bytes().to_vec();
                (service, span)
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_head_refuses_with_429_and_memory_stays_bounded() {
    for (name, shape) in [
        (
            "one-span traces",
            one_span_traces as fn(u64) -> ExportTraceServiceRequest,
        ),
        ("one giant trace", giant_trace_steps),
    ] {
        let dir = common::temp_dir();
        let data = common::data_path(&dir);
        let env = [
            ("TRACELINK_LIMITS_INGEST_QUEUE_SPANS", "50000"),
            ("TRACELINK_LIMITS_MAX_SPANS_PER_TRACE", "10000000"),
            ("TRACELINK_LIMITS_MAX_BYTES_PER_TRACE", "10000000000"),
            ("TRACELINK_STORAGE_TRACE_IDLE_MS", "600000"),
            ("TRACELINK_STORAGE_TRACE_MAX_AGE_MS", "600000"),
        ];
        let process = common::spawn_binary(dir.path(), &data, &env);
        common::wait_ready(process.http).await;
        flood(process.otlp_http, shape, 1).await;
        let full = process.rss_bytes();
        let refused = flood(process.otlp_http, |number| shape(number + 1_000), 300).await;
        assert!(refused > 300);
        let after = process.rss_bytes();
        assert!(
            after < full + 64 * 1024 * 1024,
            "{name}: RSS grew from {full} to {after} bytes while refusing"
        );
        assert!(
            after < 512 * 1024 * 1024,
            "{name}: 50,000 spans in the head take {after} bytes"
        );
        // Still serving: the assembled traces are readable, /ready answers.
        let ready = reqwest::get(format!("http://{}/ready", process.http))
            .await
            .unwrap();
        assert_eq!(ready.status(), StatusCode::OK);
        let first = hex(&trace_id(if name == "one giant trace" { 7 } else { 0 }));
        assert!(common::fetch_trace(process.http, &first).await.is_some());
        assert!(process.terminate().success());
    }
}
