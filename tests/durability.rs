//! The real binary, killed with SIGKILL while clients are being acked, and stopped with
//! SIGTERM: every acked span is there after a restart, and none is indexed twice.
//! Also: `/ready` is 503 until the WAL is replayed, and a bad configuration exits 64.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan};
use prost::Message;
use tower::ServiceExt;
use tracelink::model::TraceId;

const SPANS_PER_BATCH: usize = 20;

/// One batch is one trace: trace id = the batch number.
fn batch(number: u64) -> Vec<u8> {
    let mut trace_id = [0u8; 16];
    trace_id[8..].copy_from_slice(&number.to_be_bytes());
    trace_id[0] = 0xab;
    let spans = (0..SPANS_PER_BATCH)
        .map(|index| OtlpSpan {
            trace_id: trace_id.to_vec(),
            span_id: ((number << 8) + index as u64 + 1).to_be_bytes().to_vec(),
            parent_span_id: if index == 0 {
                Vec::new()
            } else {
                ((number << 8) + 1).to_be_bytes().to_vec()
            },
            name: format!("op-{index}"),
            start_time_unix_nano: 1_700_000_000_000_000_000 + index as u64,
            end_time_unix_nano: 1_700_000_000_100_000_000 + index as u64,
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(common::service_resource("crashy")),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn trace_hex(number: u64) -> String {
    let mut trace_id = [0u8; 16];
    trace_id[8..].copy_from_slice(&number.to_be_bytes());
    trace_id[0] = 0xab;
    TraceId(trace_id).to_hex()
}

/// Send batches from 4 concurrent clients until `stop`; return the acked batch numbers.
async fn send_until(
    otlp_http: std::net::SocketAddr,
    first: u64,
    stop: Arc<AtomicBool>,
) -> Vec<u64> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut senders = Vec::new();
    for sender in 0..4u64 {
        let acked = acked.clone();
        let stop = stop.clone();
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut number = first + sender;
            while !stop.load(Ordering::SeqCst) {
                let sent = client
                    .post(format!("http://{otlp_http}/v1/traces"))
                    .header("content-type", "application/x-protobuf")
                    .body(batch(number))
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status() == 200 => acked.lock().unwrap().push(number),
                    Ok(response) => panic!("unexpected status {}", response.status()),
                    Err(_) => break, // the server died mid-request: not acked
                }
                number += 4;
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let mut acked = acked.lock().unwrap().clone();
    acked.sort();
    acked
}

/// Count the spans of a trace in the committed index (every fragment), without read-side
/// de-duplication.
fn indexed_copies(data_dir: &Path, number: u64) -> usize {
    let index = tracelink::store::TraceIndex::open(&data_dir.join("traces")).unwrap();
    let trace_id = TraceId::parse(&trace_hex(number)).unwrap();
    index.trace_payloads(&trace_id).unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_ingest_loses_no_acked_span_and_indexes_none_twice() {
    let dir = common::temp_dir();
    let data = common::data_path(&dir);
    let env = [("TRACELINK_STORAGE_COMMIT_INTERVAL_MS", "150")];
    let mut all_acked = Vec::new();
    let mut next_batch = 1u64;
    // Three crashes at different moments: early, mid-stream, right after a commit window.
    for (round, run_for) in [(0, 300u64), (1, 900), (2, 1400)] {
        let process = common::spawn_binary(dir.path(), &data, &env);
        common::wait_ready(process.http).await;
        // Every batch acked before this crash is readable right after the restart.
        for number in all_acked.iter().rev().take(50) {
            let spans = common::fetch_trace(process.http, &trace_hex(*number))
                .await
                .unwrap_or_else(|| panic!("round {round}: acked trace {number} lost"));
            assert_eq!(common::flatten(&spans).len(), SPANS_PER_BATCH);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let sending = tokio::spawn(send_until(process.otlp_http, next_batch, stop.clone()));
        tokio::time::sleep(Duration::from_millis(run_for)).await;
        process.kill9();
        stop.store(true, Ordering::SeqCst);
        let acked = sending.await.unwrap();
        assert!(!acked.is_empty(), "round {round}: nothing was acked");
        next_batch = acked.iter().max().unwrap() + 100;
        all_acked.extend(acked);
    }

    // Restart, let replay finish, then stop gracefully so everything is committed.
    let process = common::spawn_binary(dir.path(), &data, &env);
    common::wait_ready(process.http).await;
    for number in &all_acked {
        let spans = common::fetch_trace(process.http, &trace_hex(*number))
            .await
            .unwrap_or_else(|| panic!("acked trace {number} lost"));
        assert_eq!(
            common::flatten(&spans).len(),
            SPANS_PER_BATCH,
            "trace {number}"
        );
    }
    let status = process.terminate();
    assert!(status.success(), "{status:?}");
    for number in &all_acked {
        assert_eq!(
            indexed_copies(&data, *number),
            SPANS_PER_BATCH,
            "trace {number} indexed once"
        );
    }
    // Batches in flight at a crash may be stored or not, but never twice.
    for number in 1..next_batch {
        let copies = indexed_copies(&data, number);
        assert!(
            copies == 0 || copies == SPANS_PER_BATCH,
            "batch {number}: {copies} copies"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_commits_and_exits_zero() {
    let dir = common::temp_dir();
    let data = common::data_path(&dir);
    // A commit interval longer than the test: only the shutdown's final commit can
    // put these spans into tantivy.
    let env = [
        ("TRACELINK_STORAGE_COMMIT_INTERVAL_MS", "600000"),
        ("TRACELINK_STORAGE_WAL_SEGMENT_BYTES", "4096"),
    ];
    let process = common::spawn_binary(dir.path(), &data, &env);
    common::wait_ready(process.http).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sending = tokio::spawn(send_until(process.otlp_http, 1, stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let acked = sending.await.unwrap();
    assert!(acked.len() > 10);
    let wal_segments = std::fs::read_dir(data.join("wal")).unwrap().count();
    assert!(wal_segments > 3, "small segments roll over: {wal_segments}");
    let status = process.terminate();
    assert_eq!(status.code(), Some(0));

    for number in &acked {
        assert_eq!(indexed_copies(&data, *number), SPANS_PER_BATCH);
    }
    // Everything is committed, so every segment but the open one is gone.
    let wal_segments = std::fs::read_dir(data.join("wal")).unwrap().count();
    assert_eq!(wal_segments, 1);

    // A restart replays nothing and serves everything.
    let process = common::spawn_binary(dir.path(), &data, &env);
    common::wait_ready(process.http).await;
    for number in &acked {
        let spans = common::fetch_trace(process.http, &trace_hex(*number))
            .await
            .unwrap();
        assert_eq!(common::flatten(&spans).len(), SPANS_PER_BATCH);
    }
    assert_eq!(process.terminate().code(), Some(0));
    for number in &acked {
        assert_eq!(indexed_copies(&data, *number), SPANS_PER_BATCH);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_and_ingest_refused_until_the_wal_is_replayed() {
    let dir = common::temp_dir();
    let mut raw = tracelink::config::RawConfig::default();
    raw.storage.data_dir = common::data_path(&dir);
    let config = raw.validate().unwrap();
    let storage =
        Arc::new(tracelink::store::Storage::open(&config.data_dir, config.head_limits()).unwrap());
    let metrics = tracelink::metrics::Metrics::new(
        config.latency_buckets.clone(),
        config.max_series_per_metric,
        config.span_metrics,
    );
    let pipeline = tracelink::pipeline::Pipeline::new(storage.clone(), &config, metrics).unwrap();
    let app = tracelink::api::router(tracelink::api::AppState::new(
        pipeline.clone(),
        storage,
        config,
    ));
    let ready = || Request::get("/ready").body(Body::empty()).unwrap();
    let ingest = || {
        Request::post("/v1/traces")
            .header("content-type", "application/x-protobuf")
            .body(Body::from(batch(1)))
            .unwrap()
    };
    let response = app.clone().oneshot(ready()).await.unwrap();
    assert_eq!(response.status(), 503);
    let response = app.clone().oneshot(ingest()).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");

    let replayer = pipeline.clone();
    tokio::task::spawn_blocking(move || replayer.replay_and_start())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(app.clone().oneshot(ready()).await.unwrap().status(), 200);
    assert_eq!(app.clone().oneshot(ingest()).await.unwrap().status(), 200);
    tokio::task::spawn_blocking(move || pipeline.shutdown())
        .await
        .unwrap();
}

#[test]
fn bad_configuration_exits_64_with_one_line_naming_the_key() {
    let dir = common::temp_dir();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tracelink"));
        command.arg("serve").args(args).current_dir(dir.path());
        command.env("TRACELINK_STORAGE_DATA_DIR", dir.path().join("data"));
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&[], &[("TRACELINK_SERVER_HTTP_ADDR", "localhost-ish")]);
    assert_eq!(code, Some(64));
    assert!(
        stderr.trim().starts_with("config: server.http_addr:"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1);

    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[storage]\ncommit_interval = 5\n").unwrap();
    let (code, stderr) = run(&["--config", config.to_str().unwrap()], &[]);
    assert_eq!(code, Some(64));
    assert!(stderr.contains("commit_interval"), "{stderr}");

    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "x").unwrap();
    let (code, stderr) = run(
        &[],
        &[(
            "TRACELINK_STORAGE_DATA_DIR",
            blocker.join("data").to_str().unwrap(),
        )],
    );
    assert_eq!(code, Some(64));
    assert!(stderr.contains("storage.data_dir"), "{stderr}");

    let (code, stderr) = run(&[], &[("TRACELINK_LIMITS_MAX_REQUEST_BYTES", "0")]);
    assert_eq!(code, Some(64));
    assert!(stderr.contains("limits.max_request_bytes"), "{stderr}");
}
