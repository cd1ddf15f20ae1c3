//! Retention end to end: a real tracelink on 127.0.0.1:0 with partitions of a second or
//! two. Old partitions are dropped whole while ingest and queries run (no query fails), a
//! trace written into two partitions comes back whole until its older half expires, logs
//! expire the same way, a restart finishes a drop a crash interrupted, and
//! `retention.max_disk_bytes` drops the oldest partitions first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestServer;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use serde_json::Value;

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn trace_id(number: u64) -> Vec<u8> {
    let mut id = common::mix(number).to_be_bytes().to_vec();
    id.extend(common::mix(number ^ 0x5eed).to_be_bytes());
    id
}

/// One span of trace `number`, with `filler` bytes of attribute that do not compress.
fn span(number: u64, span_number: u64, filler: usize) -> Span {
    let end = now_nanos();
    let mut text = String::new();
    let mut seed = number * 1000 + span_number;
    while text.len() < filler {
        seed = common::mix(seed);
        text.push_str(&format!("{seed:016x}"));
    }
    Span {
        trace_id: trace_id(number),
        span_id: (number * 16 + span_number + 1).to_be_bytes().to_vec(),
        name: format!("step {span_number}"),
        kind: 2,
        start_time_unix_nano: end - 5_000_000,
        end_time_unix_nano: end,
        attributes: vec![KeyValue {
            key: "filler".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(text)),
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn send_spans(server_otlp: std::net::SocketAddr, spans: Vec<Span>) {
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(common::service_resource("keeper")),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    common::post_protobuf(server_otlp, "/v1/traces", request.encode_to_vec()).await;
}

async fn send_log(server_otlp: std::net::SocketAddr, number: u64, message: &str) {
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(common::service_resource("keeper")),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: now_nanos(),
                    severity_text: "ERROR".into(),
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(message.into())),
                    }),
                    trace_id: trace_id(number),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    common::post_protobuf(server_otlp, "/v1/logs", request.encode_to_vec()).await;
}

fn hex(number: u64) -> String {
    tracelink::model::to_hex(&trace_id(number))
}

/// Span names of a trace as served; empty when it is not found.
async fn span_names(server: &TestServer, number: u64) -> Vec<String> {
    let mut names: Vec<String> = common::fetch_trace(server.http, &hex(number))
        .await
        .map(|batches| {
            common::flatten(&batches)
                .into_iter()
                .map(|(_, span)| span.name)
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn log_messages(server: &TestServer, number: u64) -> Vec<String> {
    let response = reqwest::get(server.url(&format!("/api/logs?trace_id={}", hex(number))))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| record["message"].as_str().unwrap().to_owned())
        .collect()
}

fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(&format!("{name}{{{labels}")))
        .and_then(|line| line.rsplit(' ').next())
        .map_or(0.0, |value| value.parse().unwrap())
}

async fn metrics_text(server: &TestServer) -> String {
    reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Partition directories of an index, by name.
fn partition_dirs(data: &Path, index: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data.join(index))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Traces into the server every 50 ms and queries of every kind against it, until
/// stopped; counts what failed.
struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
    queries: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(server: &TestServer) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicU64::new(0));
        let queries = Arc::new(AtomicU64::new(0));
        let (otlp, http) = (server.otlp_http, server.http);
        let ingest = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut number = 1_000_000u64;
                while !stop.load(Ordering::Relaxed) {
                    send_spans(otlp, vec![span(number, 0, 64), span(number, 1, 64)]).await;
                    number += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        let query = {
            let (stop, failures, queries) = (stop.clone(), failures.clone(), queries.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut number = 1_000_000u64;
                while !stop.load(Ordering::Relaxed) {
                    for path in [
                        format!("/api/traces/{}", hex(number)),
                        "/api/search?tags=service.name%3Dkeeper&limit=50".to_owned(),
                        "/api/search?q=%7Bname%3D%22step%201%22%7D&limit=20".to_owned(),
                        "/api/logs?service=keeper&limit=20".to_owned(),
                        "/api/search/tags".to_owned(),
                    ] {
                        let status = client
                            .get(format!("http://{http}{path}"))
                            .send()
                            .await
                            .unwrap()
                            .status();
                        queries.fetch_add(1, Ordering::Relaxed);
                        if !(status.is_success() || status == 404) {
                            eprintln!("{path}: {status}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    number += 3;
                }
            })
        };
        Load {
            stop,
            failures,
            queries,
            tasks: vec![ingest, query],
        }
    }

    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        (
            self.failures.load(Ordering::Relaxed),
            self.queries.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_expire_whole_while_ingest_and_queries_run_and_a_restart_finishes_a_drop() {
    let dir = common::temp_dir();
    let data = common::data_path(&dir);
    let configure = |raw: &mut tracelink::config::RawConfig| {
        raw.storage.partition_hours = 2.0 / 3600.0;
        raw.retention.traces_max_age = "8s".into();
        raw.retention.logs_max_age = "8s".into();
    };
    let server = TestServer::start(&data, configure).await;
    let load = Load::start(&server);

    // Trace 1's first span, and a log line of it.
    send_spans(server.otlp_http, vec![span(1, 0, 16)]).await;
    send_log(server.otlp_http, 1, "first half failed").await;
    wait_for("the first fragment in the index", async || {
        (common::open_traces(&data)
            .fragments(&tracelink::model::TraceId::parse(&hex(1)).unwrap())
            .unwrap()
            == 1)
            .then_some(())
    })
    .await;
    // A later fragment, written into a later partition (at least one window on).
    tokio::time::sleep(Duration::from_millis(2200)).await;
    send_spans(server.otlp_http, vec![span(1, 1, 16)]).await;
    wait_for("the second fragment in the index", async || {
        (common::open_traces(&data)
            .fragments(&tracelink::model::TraceId::parse(&hex(1)).unwrap())
            .unwrap()
            == 2)
            .then_some(())
    })
    .await;
    assert_eq!(span_names(&server, 1).await, ["step 0", "step 1"], "whole");
    assert_eq!(log_messages(&server, 1).await, ["first half failed"]);

    // The older half expires first: the trace comes back with its later half only.
    wait_for("the first half to expire", async || {
        (span_names(&server, 1).await == ["step 1"]).then_some(())
    })
    .await;
    wait_for("the log line to expire", async || {
        log_messages(&server, 1).await.is_empty().then_some(())
    })
    .await;
    wait_for("the second half to expire", async || {
        span_names(&server, 1).await.is_empty().then_some(())
    })
    .await;
    // Expired partitions are gone from the disk, the written ones stay few.
    wait_for("the dropped partitions' directories to go", async || {
        let names = partition_dirs(&data, "traces");
        (!names.iter().any(|name| name.ends_with(".dropping")) && names.len() <= 7).then_some(())
    })
    .await;
    let text = metrics_text(&server).await;
    assert!(
        metric(
            &text,
            "tracelink_storage_partitions_dropped_total",
            "index=\"traces\",reason=\"age\""
        ) >= 2.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "tracelink_storage_partitions_dropped_total",
            "index=\"logs\",reason=\"age\""
        ) >= 1.0
    );
    assert!(metric(&text, "tracelink_storage_partitions", "index=\"traces\"") >= 1.0);
    let newest = partition_dirs(&data, "traces").last().unwrap().clone();
    assert!(
        metric(
            &text,
            "tracelink_storage_bytes",
            &format!("index=\"traces\",partition=\"{newest}\"")
        ) > 0.0
            || text.contains(&format!("partition=\"{newest}\"")),
        "{text}"
    );
    let (failures, queries) = load.finish().await;
    assert_eq!(failures, 0, "of {queries} queries");
    assert!(queries > 50, "{queries}");

    // A crash in the middle of a drop leaves a renamed partition, half deleted; the next
    // start finishes it and serves the rest.
    let recent = 5_000_000u64;
    send_spans(server.otlp_http, vec![span(recent, 0, 16)]).await;
    wait_for("the recent trace in the index", async || {
        (common::open_traces(&data)
            .fragments(&tracelink::model::TraceId::parse(&hex(recent)).unwrap())
            .unwrap()
            == 1)
            .then_some(())
    })
    .await;
    server.stop().await;
    let names = partition_dirs(&data, "traces");
    assert!(names.len() >= 2, "{names:?}");
    let victim = data.join("traces").join(&names[0]);
    let dropping = data.join("traces").join(format!("{}.dropping", names[0]));
    std::fs::rename(&victim, &dropping).unwrap();
    std::fs::remove_file(dropping.join("meta.json")).unwrap();
    let server = TestServer::start(&data, configure).await;
    assert!(!dropping.exists());
    assert_eq!(span_names(&server, recent).await, ["step 0"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_cap_drops_the_oldest_partitions_first() {
    let dir = common::temp_dir();
    let data = common::data_path(&dir);
    let cap: u64 = 600_000;
    let server = TestServer::start(&data, |raw| {
        raw.storage.partition_hours = 1.0 / 3600.0;
        raw.retention.max_disk_bytes = cap;
        // The WAL counts too; it lets go of whole segments only.
        raw.storage.wal_segment_bytes = 128 * 1024;
    })
    .await;
    // ~40 KB of incompressible attributes every 100 ms: a cap's worth in 1.5 s.
    let mut number = 0u64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(12) {
        send_spans(
            server.otlp_http,
            (0..4).map(|s| span(number, s, 10_000)).collect(),
        )
        .await;
        number += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = number - 1;
    wait_for("the last trace in the index", async || {
        (common::open_traces(&data)
            .fragments(&tracelink::model::TraceId::parse(&hex(last)).unwrap())
            .unwrap()
            == 1)
            .then_some(())
    })
    .await;
    let text = metrics_text(&server).await;
    let dropped = metric(
        &text,
        "tracelink_storage_partitions_dropped_total",
        "index=\"traces\",reason=\"disk\"",
    );
    assert!(dropped >= 3.0, "{text}");
    // The oldest went, the newest stayed.
    assert!(span_names(&server, 0).await.is_empty());
    assert_eq!(span_names(&server, last).await.len(), 4);
    // What is left settles near the cap: the partitions being written, plus a window (the
    // WAL lets go of its segments at the next latency snapshot, within 10 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let parts: Vec<u64> = ["traces", "logs", "wal"]
            .iter()
            .map(|part| tracelink::store::dir_bytes(&data.join(part)))
            .collect();
        let stored: u64 = parts.iter().sum();
        if stored <= cap + 400_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stored} bytes stored (traces, logs, wal: {parts:?}), cap {cap}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop().await;
}
