//! A full disk, on a real small filesystem (a tmpfs this test mounts; it runs as root):
//! below `storage.min_free_bytes` ingest is refused with 503 + `Retry-After` (gRPC
//! `UNAVAILABLE`) while queries go on and `/ready` says why, and it resumes by itself when
//! space returns; a WAL write that meets ENOSPC is refused the same way, nothing acked is
//! lost and the log is not damaged: after a restart every acked span is there and the
//! refused one is not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan};
use prost::Message;

use common::{flatten, TestServer};

/// A tmpfs mounted for the test, unmounted when it ends.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, mib: u64) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount(8) runs");
        assert!(
            status.success(),
            "this test mounts a {mib} MiB tmpfs at {} and must run as root",
            path.display()
        );
        Tmpfs {
            path: path.to_owned(),
        }
    }

    fn free_bytes(&self) -> u64 {
        let stat = rustix::fs::statvfs(&self.path).unwrap();
        stat.f_bavail * stat.f_frsize
    }

    /// Fill the filesystem with a ballast file until `leave` bytes are free (0: until a
    /// write fails).
    fn fill(&self, leave: u64) -> PathBuf {
        let path = self.path.join("ballast");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0x5au8; 64 * 1024];
        loop {
            let free = self.free_bytes();
            if leave > 0 && free <= leave {
                break;
            }
            let size = if leave > 0 {
                chunk.len().min((free - leave) as usize).max(1)
            } else {
                chunk.len()
            };
            if file.write_all(&chunk[..size]).is_err() || file.flush().is_err() {
                break;
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn request(trace_byte: u8, count: usize) -> ExportTraceServiceRequest {
    let spans = (0..count)
        .map(|index| OtlpSpan {
            trace_id: vec![trace_byte; 16],
            span_id: ((index as u64) + 1).to_be_bytes().to_vec(),
            name: format!("op-{index}-{}", "x".repeat(200)),
            start_time_unix_nano: 1_700_000_000_000_000_000 + index as u64,
            end_time_unix_nano: 1_700_000_000_100_000_000 + index as u64,
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

fn hex(trace_byte: u8) -> String {
    format!("{trace_byte:02x}").repeat(16)
}

async fn post(server: &TestServer, body: &ExportTraceServiceRequest) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{}/v1/traces", server.otlp_http))
        .header("content-type", "application/x-protobuf")
        .body(body.encode_to_vec())
        .send()
        .await
        .unwrap()
}

async fn spans_of(server: &TestServer, trace_byte: u8) -> usize {
    common::fetch_trace(server.http, &hex(trace_byte))
        .await
        .map_or(0, |batches| flatten(&batches).len())
}

/// Ask until ingest answers `status` (the guard reads free space every 2 s).
async fn until_ingest_answers(
    server: &TestServer,
    trace_byte: u8,
    status: u16,
) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = post(server, &request(trace_byte, 10)).await;
        if response.status().as_u16() == status || Instant::now() > deadline {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn text(server: &TestServer, path: &str) -> String {
    reqwest::get(server.url(path))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_pauses_ingest_loses_nothing_and_resumes() {
    let dir = common::temp_dir();
    let disk = Tmpfs::mount(&dir.path().join("small"), 64);
    let data = disk.path.join("data");
    let small = |raw: &mut tracelink::config::RawConfig, min_free: u64| {
        raw.storage.min_free_bytes = min_free;
        raw.storage.index_memory_mb = 16;
        raw.storage.wal_segment_bytes = 1 << 20;
    };

    // Below the floor: refused before decoding, queries go on, /ready says why.
    let server = TestServer::start(&data, |raw| small(raw, 16 << 20)).await;
    assert_eq!(post(&server, &request(1, 20)).await.status(), 200);
    let ballast = disk.fill(10 << 20);
    let refused = until_ingest_answers(&server, 2, 503).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let mut grpc = TraceServiceClient::connect(format!("http://{}", server.otlp_grpc))
        .await
        .unwrap();
    let status = grpc.export(request(3, 5)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("min_free_bytes"), "{status:?}");
    let ready = text(&server, "/ready").await;
    assert!(
        ready.starts_with("ready; ingest paused: free space on"),
        "{ready}"
    );
    let metrics = text(&server, "/metrics").await;
    assert!(
        metrics.contains("tracelink_ingest_paused_disk 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tracelink_storage_free_bytes "));
    assert_eq!(spans_of(&server, 1).await, 20, "queries go on");
    // Space comes back: ingest resumes by itself.
    std::fs::remove_file(&ballast).unwrap();
    let resumed = until_ingest_answers(&server, 4, 200).await;
    assert_eq!(resumed.status(), 200);
    assert_eq!(text(&server, "/ready").await, "ready");
    let metrics = text(&server, "/metrics").await;
    assert!(
        metrics.contains("tracelink_ingest_paused_disk 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tracelink_disk_full_episodes_total 1"),
        "{metrics}"
    );
    server.stop().await;

    // No floor, and a disk filled to the last byte: the WAL write meets ENOSPC, the
    // request is refused, nothing of it is acked, and nothing before it is lost.
    let server = TestServer::start(&data, |raw| small(raw, 0)).await;
    assert_eq!(post(&server, &request(5, 20)).await.status(), 200);
    let ballast = disk.fill(0);
    let mut refused = None;
    let mut six_acked = false;
    for attempt in 0..20u8 {
        let response = post(&server, &request(6, 400)).await;
        if response.status() == 503 {
            refused = Some(response);
            break;
        }
        // A write the page cache still took: fill what it used, and try again.
        assert_eq!(response.status(), 200, "attempt {attempt}");
        six_acked = true;
        disk.fill(0);
    }
    let refused = refused.expect("a write on a full disk is refused");
    assert_eq!(refused.headers()["retry-after"], "1");
    let ready = text(&server, "/ready").await;
    assert!(ready.contains("ingest paused: a write to"), "{ready}");
    for trace in [1, 4, 5] {
        assert!(
            spans_of(&server, trace).await > 0,
            "trace {trace} is served"
        );
    }
    std::fs::remove_file(&ballast).unwrap();
    let resumed = until_ingest_answers(&server, 7, 200).await;
    assert_eq!(resumed.status(), 200);
    server.stop().await;

    // A restart replays and opens everything: every acked span is there.
    let server = TestServer::start(&data, |raw| small(raw, 0)).await;
    assert_eq!(spans_of(&server, 1).await, 20);
    assert_eq!(spans_of(&server, 4).await, 10);
    assert_eq!(spans_of(&server, 5).await, 20);
    assert_eq!(spans_of(&server, 7).await, 10);
    assert_eq!(spans_of(&server, 6).await, if six_acked { 400 } else { 0 });
    assert_eq!(
        spans_of(&server, 3).await,
        0,
        "refused below the floor (gRPC)"
    );
    server.stop().await;
}
