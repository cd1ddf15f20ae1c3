//! Shared by the end-to-end tests: a real tracelink on 127.0.0.1:0, in process or as the
//! real binary, and small HTTP helpers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, Span as OtlpSpan, TracesData};
use prost::Message;
use tracelink::config::RawConfig;

pub mod sdk;
pub mod webdriver;

/// A tracelink running inside the test process.
pub struct TestServer {
    pub http: SocketAddr,
    pub otlp_http: SocketAddr,
    pub otlp_grpc: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(data_dir: &Path, tweak: impl FnOnce(&mut RawConfig)) -> TestServer {
        let started = TestServer::start_unchecked(data_dir, tweak).await;
        wait_ready(started.http).await;
        started
    }

    /// Start, without waiting for `/ready` over plain HTTP (a TLS server).
    pub async fn start_unchecked(
        data_dir: &Path,
        tweak: impl FnOnce(&mut RawConfig),
    ) -> TestServer {
        let mut raw = RawConfig::default();
        raw.server.http_addr = "127.0.0.1:0".into();
        raw.server.otlp_http_addr = "127.0.0.1:0".into();
        raw.server.otlp_grpc_addr = "127.0.0.1:0".into();
        raw.storage.data_dir = data_dir.to_owned();
        raw.storage.commit_interval_ms = 200;
        // Traces leave the head (and meet sampling, which sets their exemplars) soon
        // after their last span, so tests need not wait the default 5 s.
        raw.storage.trace_idle_ms = 300;
        // The tests need little room; a machine with under the default 1 GiB free must
        // still run them.
        raw.storage.min_free_bytes = 64 << 20;
        tweak(&mut raw);
        let config = raw.validate().unwrap();
        let server = tracelink::Server::bind(config).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let http = server.http_addr();
        let otlp_http = server.otlp_http_addr();
        let otlp_grpc = server.otlp_grpc_addr();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        TestServer {
            http,
            otlp_http,
            otlp_grpc,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// Graceful stop: drain and final commit.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

pub async fn wait_ready(http: SocketAddr) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = client.get(format!("http://{http}/ready")).send().await {
            if response.status() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "tracelink never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real `tracelink` binary, with stderr drained on a thread.
pub struct Process {
    pub child: Child,
    pub http: SocketAddr,
    pub otlp_http: SocketAddr,
    pub otlp_grpc: SocketAddr,
    pub log: mpsc::Receiver<String>,
}

pub fn spawn_binary(work_dir: &Path, data_dir: &Path, env: &[(&str, &str)]) -> Process {
    spawn_binary_with_args(work_dir, data_dir, env, &[])
}

pub fn spawn_binary_with_args(
    work_dir: &Path,
    data_dir: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> Process {
    let mut all = vec!["serve"];
    all.extend_from_slice(args);
    spawn_subcommand(work_dir, data_dir, env, &all)
}

/// The binary with `args` (a subcommand first) on ports of 127.0.0.1:0.
pub fn spawn_subcommand(
    work_dir: &Path,
    data_dir: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tracelink"));
    command
        .args(args)
        .current_dir(work_dir)
        .env("TRACELINK_SERVER_HTTP_ADDR", "127.0.0.1:0")
        .env("TRACELINK_SERVER_OTLP_HTTP_ADDR", "127.0.0.1:0")
        .env("TRACELINK_SERVER_OTLP_GRPC_ADDR", "127.0.0.1:0")
        .env("TRACELINK_STORAGE_DATA_DIR", data_dir)
        .env("TRACELINK_STORAGE_MIN_FREE_BYTES", "67108864")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines_sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines_sender.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        else {
            let _ = child.kill();
            let status = child.wait();
            panic!("tracelink did not report its addresses (exit: {status:?})");
        };
        if line.contains("tracelink listening") {
            let field = |name: &str| -> SocketAddr {
                let start = line.find(&format!(" {name}=")).unwrap() + name.len() + 2;
                line[start..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            return Process {
                http: field("http"),
                otlp_http: field("otlp_http"),
                otlp_grpc: field("otlp_grpc"),
                child,
                log: lines,
            };
        }
    }
}

impl Process {
    /// What the process has logged so far.
    pub fn drain_log(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib * 1024
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "tracelink did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// POST a protobuf body to an OTLP/HTTP path (`/v1/traces`, `/v1/logs`); it must be acked.
pub async fn post_protobuf(otlp_http: SocketAddr, path: &str, body: Vec<u8>) {
    let response = reqwest::Client::new()
        .post(format!("http://{otlp_http}{path}"))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
}

/// Fetch a trace as OTLP through Tempo's v1 protobuf route; `None` on 404.
pub async fn fetch_trace(http: SocketAddr, trace_id: &str) -> Option<Vec<ResourceSpans>> {
    let response = reqwest::Client::new()
        .get(format!("http://{http}/api/traces/{trace_id}"))
        .header("accept", "application/protobuf")
        .send()
        .await
        .unwrap();
    if response.status() == 404 {
        return None;
    }
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.unwrap();
    Some(TracesData::decode(body).unwrap().resource_spans)
}

/// Every span of a fetched trace with its service name.
pub fn flatten(batches: &[ResourceSpans]) -> Vec<(String, OtlpSpan)> {
    let mut spans = Vec::new();
    for batch in batches {
        let service = tracelink::model::service_name(batch.resource.as_ref()).to_owned();
        for scope in &batch.scope_spans {
            for span in &scope.spans {
                spans.push((service.clone(), span.clone()));
            }
        }
    }
    spans
}

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn data_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("data")
}

/// The committed traces index (every partition), read beside the server.
pub fn open_traces(data_dir: &Path) -> tracelink::store::Partitions<tracelink::store::TraceIndex> {
    tracelink::store::Partitions::open_read_only(
        &data_dir.join("traces"),
        Duration::from_secs(3600),
    )
    .unwrap()
}

/// The committed logs index (every partition), read beside the server.
pub fn open_logs(data_dir: &Path) -> tracelink::store::Partitions<tracelink::store::LogIndex> {
    tracelink::store::Partitions::open_read_only(&data_dir.join("logs"), Duration::from_secs(3600))
        .unwrap()
}

/// Every record of the committed logs index, read beside the running server.
pub fn indexed_logs(data_dir: &Path) -> Vec<tracelink::model::LogRecord> {
    open_logs(data_dir)
        .search(&tracelink::store::LogQuery {
            limit: 2_000_000,
            ..Default::default()
        })
        .unwrap()
}

/// Wait until the committed logs index holds at least `count` records (or time runs out),
/// then return them all.
pub fn wait_for_indexed_logs(data_dir: &Path, count: usize) -> Vec<tracelink::model::LogRecord> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let records = indexed_logs(data_dir);
        if records.len() >= count || Instant::now() > deadline {
            return records;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An OTLP resource naming a service.
pub fn service_resource(
    service: impl Into<String>,
) -> opentelemetry_proto::tonic::resource::v1::Resource {
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    opentelemetry_proto::tonic::resource::v1::Resource {
        attributes: vec![KeyValue {
            key: "service.name".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(service.into())),
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A configuration file for the real binary tailing `glob`, with fast polls and commits;
/// returns its path as an argument for `--config`.
pub fn write_tail_config(dir: &Path, glob: &Path, poll_interval_ms: u64) -> String {
    let config = dir.join("tracelink.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\ncommit_interval_ms = 100\n[logs]\npoll_interval_ms = {poll_interval_ms}\n[[logs.sources]]\npaths = [\"{}\"]\n",
            glob.display()
        ),
    )
    .unwrap();
    config.display().to_string()
}

/// splitmix64's finaliser: a bijective mix, for reproducible, well-spread trace ids (the
/// sampling randomness is their low 56 bits) without a random number crate.
pub fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
