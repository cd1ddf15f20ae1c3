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

/// The low half of the trace id of batch `number`, mixed so that the sampling randomness
/// (the low 56 bits) is spread out.
fn trace_low(number: u64) -> u64 {
    common::mix(number)
}

fn trace_bytes(number: u64) -> [u8; 16] {
    let mut trace_id = [0u8; 16];
    trace_id[8..].copy_from_slice(&trace_low(number).to_be_bytes());
    trace_id[0] = 0xab;
    trace_id
}

/// Long traces get one span from every batch a sender sends; they are numbered from here.
const LONG_BASE: u64 = 1 << 40;

/// One batch is one trace, numbered, plus one span of the sender's long trace `long`,
/// which stays in the head while the sender sends: so traces that leave and are committed
/// lie in WAL records after the oldest span still assembling.
fn batch(number: u64, long: u64) -> Vec<u8> {
    let trace_id = trace_bytes(number);
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
        .chain(std::iter::once(OtlpSpan {
            trace_id: trace_bytes(long).to_vec(),
            span_id: (number + 1).to_be_bytes().to_vec(),
            name: "long-step".into(),
            start_time_unix_nano: 1_700_000_000_000_000_000 + number,
            end_time_unix_nano: 1_700_000_000_000_000_100 + number,
            ..Default::default()
        }))
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
    TraceId(trace_bytes(number)).to_hex()
}

/// The long trace the sender of batch `number` (in a run that started at `first`) feeds.
fn long_of(first: u64, number: u64) -> u64 {
    LONG_BASE + first + (number - first) % 4
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
                    .body(batch(number, long_of(first, number)))
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
    let index = common::open_traces(data_dir);
    let trace_id = TraceId::parse(&trace_hex(number)).unwrap();
    index.trace_payloads(&trace_id).unwrap().len()
}

/// Three SIGKILLs mid-ingest with `env`, then a restart: every acked batch that `kept`
/// says sampling keeps is served whole and indexed once, every other one is absent, and
/// no batch is ever indexed twice.
async fn crash_three_times_and_check(env: &[(&str, &str)], kept: impl Fn(u64) -> bool) {
    let dir = common::temp_dir();
    let data = common::data_path(&dir);
    let mut all_acked = Vec::new();
    // Acked steps per long trace.
    let mut long_steps: std::collections::BTreeMap<u64, usize> = Default::default();
    let mut next_batch = 1u64;
    // Three crashes at different moments: early, mid-stream, right after a commit window.
    for (round, run_for) in [(0, 300u64), (1, 900), (2, 1400)] {
        let process = common::spawn_binary(dir.path(), &data, env);
        common::wait_ready(process.http).await;
        // Every batch acked before this crash is readable right after the restart.
        for number in all_acked.iter().rev().take(50) {
            let spans = common::fetch_trace(process.http, &trace_hex(*number)).await;
            if !kept(*number) {
                continue; // dropped traces may still be assembling, or gone
            }
            let spans = spans.unwrap_or_else(|| panic!("round {round}: acked trace {number} lost"));
            assert_eq!(common::flatten(&spans).len(), SPANS_PER_BATCH);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let sending = tokio::spawn(send_until(process.otlp_http, next_batch, stop.clone()));
        tokio::time::sleep(Duration::from_millis(run_for)).await;
        process.kill9();
        stop.store(true, Ordering::SeqCst);
        let acked = sending.await.unwrap();
        assert!(!acked.is_empty(), "round {round}: nothing was acked");
        for number in &acked {
            *long_steps.entry(long_of(next_batch, *number)).or_default() += 1;
        }
        next_batch = acked.iter().max().unwrap() + 100;
        all_acked.extend(acked);
    }

    // Restart, let replay finish, then stop gracefully so everything is committed.
    let process = common::spawn_binary(dir.path(), &data, env);
    common::wait_ready(process.http).await;
    for number in all_acked.iter().filter(|number| kept(**number)) {
        let spans = common::fetch_trace(process.http, &trace_hex(*number))
            .await
            .unwrap_or_else(|| panic!("acked trace {number} lost"));
        assert_eq!(
            common::flatten(&spans).len(),
            SPANS_PER_BATCH,
            "trace {number}"
        );
    }
    let mut long_served = std::collections::BTreeMap::new();
    for (long, acked_steps) in &long_steps {
        let served = common::fetch_trace(process.http, &trace_hex(*long))
            .await
            .map_or(0, |spans| common::flatten(&spans).len());
        if kept(*long) {
            // One step per sender may have been in flight at the crash: stored or not.
            assert!(
                served == *acked_steps || served == acked_steps + 1,
                "long trace {long}: {served} steps served, {acked_steps} acked"
            );
        } else {
            assert_eq!(served, 0, "long trace {long} is dropped");
        }
        long_served.insert(*long, served);
    }
    let status = process.terminate();
    assert!(status.success(), "{status:?}");
    for (long, served) in &long_served {
        assert_eq!(
            indexed_copies(&data, *long),
            *served,
            "long trace {long}: no step twice"
        );
    }
    let kept_count = all_acked.iter().filter(|number| kept(**number)).count();
    assert!(kept_count > 0, "some acked traces are kept");
    for number in &all_acked {
        let expected = if kept(*number) { SPANS_PER_BATCH } else { 0 };
        assert_eq!(
            indexed_copies(&data, *number),
            expected,
            "trace {number} indexed once if kept, never if dropped"
        );
    }
    // Batches in flight at a crash may be stored or not, but never twice.
    for number in 1..next_batch {
        let copies = indexed_copies(&data, number);
        assert!(
            copies == 0 || (copies == SPANS_PER_BATCH && kept(number)),
            "batch {number}: {copies} copies"
        );
    }
}

/// With the default `trace_idle_ms` (5 s) every trace is still assembling in the head
/// at each crash: replay must rebuild the head from the WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_ingest_loses_no_acked_span_and_indexes_none_twice() {
    let env = [("TRACELINK_STORAGE_COMMIT_INTERVAL_MS", "150")];
    crash_three_times_and_check(&env, |_| true).await;
}

/// Traces leave the head quickly, so at each crash some are committed (and their WAL
/// records still replayed, since older traces assemble), some assemble, some are
/// dropped by a 50 % consistent fraction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_tail_sampling_keeps_exactly_the_sampled_traces_once() {
    let env = [
        ("TRACELINK_STORAGE_COMMIT_INTERVAL_MS", "150"),
        ("TRACELINK_STORAGE_TRACE_IDLE_MS", "250"),
        ("TRACELINK_SAMPLING_FRACTION", "0.5"),
    ];
    let threshold = 1u64 << 55; // round((1 - 0.5) * 2^56)
    crash_three_times_and_check(&env, |number| {
        trace_low(number) & ((1 << 56) - 1) >= threshold
    })
    .await;
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
    let storage = Arc::new(
        tracelink::store::Storage::open(&config.data_dir, config.partition, config.head_limits())
            .unwrap(),
    );
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
            .body(Body::from(batch(1, LONG_BASE)))
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
