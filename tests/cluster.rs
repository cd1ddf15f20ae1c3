//! Several tracelinks as one service: three real `nats-server` processes as one JetStream
//! cluster and three real tracelink binaries on loopback. Spans come from the
//! OpenTelemetry SDK's OTLP exporters; nodes and NATS servers are killed with SIGKILL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::sdk::{self, Service};
use common::Process;
use opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{SpanId, TraceFlags, TraceId};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::logs::{InMemoryLogExporter, LogBatch, LogExporter as _, SdkLoggerProvider};
use opentelemetry_sdk::trace::SpanExporter as _;
use serde_json::{json, Value};

const PARTITIONS: u32 = 8;

/// A port for a NATS server: below Linux's ephemeral range (where every other server of
/// the tests binds port 0), in a block of this process's own, so that two clusters of
/// concurrent tests never meet.
fn nats_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    loop {
        let offset = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = 20_000 + (std::process::id() % 500) as u16 * 24 + offset;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Three `nats-server` processes clustered with JetStream, each with its own store.
struct Nats {
    servers: Vec<Option<Child>>,
    client_ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl Nats {
    fn start() -> Nats {
        let dir = common::temp_dir();
        let client_ports: Vec<u16> = (0..3).map(|_| nats_port()).collect();
        let route_ports: Vec<u16> = (0..3).map(|_| nats_port()).collect();
        // Named apart too: servers of two clusters never join one another.
        let name = format!("tracelink-{}-{}", std::process::id(), client_ports[0]);
        let routes: Vec<String> = route_ports
            .iter()
            .map(|port| format!("nats-route://127.0.0.1:{port}"))
            .collect();
        let servers = (0..3)
            .map(|index| {
                let config = format!(
                    "server_name: n{index}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: {:?} }}\ncluster {{ name: {name}, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                    client_ports[index],
                    dir.path().join(format!("js{index}")),
                    route_ports[index],
                    routes.join(", "),
                );
                let path = dir.path().join(format!("n{index}.conf"));
                std::fs::write(&path, config).unwrap();
                Some(
                    Command::new("nats-server")
                        .arg("-c")
                        .arg(&path)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("nats-server (Debian's nats-server package; `cargo xtask test` installs it)"),
                )
            })
            .collect();
        Nats {
            servers,
            client_ports,
            _dir: dir,
        }
    }

    fn urls(&self) -> String {
        self.client_ports
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn kill9(&mut self, index: usize) {
        if let Some(mut server) = self.servers[index].take() {
            server.kill().unwrap();
            server.wait().unwrap();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for index in 0..self.servers.len() {
            self.kill9(index);
        }
    }
}

/// A tracelink node of the cluster: the real binary, killed when dropped.
struct Node {
    id: String,
    data_dir: PathBuf,
    process: Option<Process>,
}

impl Node {
    fn start(work: &Path, nats: &Nats, id: &str, data_dir: PathBuf) -> Node {
        Node::start_with(work, nats, id, data_dir, &[])
    }

    /// With `serve` arguments (`--config`).
    fn start_with(work: &Path, nats: &Nats, id: &str, data_dir: PathBuf, args: &[&str]) -> Node {
        Node::start_configured(work, nats, id, data_dir, args, &[])
    }

    /// With `serve` arguments and more environment (which wins over the defaults here).
    fn start_configured(
        work: &Path,
        nats: &Nats,
        id: &str,
        data_dir: PathBuf,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Node {
        let urls = nats.urls();
        let partitions = PARTITIONS.to_string();
        let mut all_env = vec![
            ("TRACELINK_CLUSTER_NATS_URLS", urls.as_str()),
            ("TRACELINK_CLUSTER_NODE_ID", id),
            ("TRACELINK_CLUSTER_PARTITIONS", partitions.as_str()),
            ("TRACELINK_CLUSTER_LEASE_TTL_MS", "3000"),
            ("TRACELINK_CLUSTER_QUERY_TIMEOUT_MS", "1000"),
            ("TRACELINK_STORAGE_TRACE_IDLE_MS", "300"),
            ("TRACELINK_STORAGE_COMMIT_INTERVAL_MS", "200"),
        ];
        all_env.extend_from_slice(env);
        let process = common::spawn_binary_with_args(work, &data_dir, &all_env, args);
        Node {
            id: id.to_owned(),
            data_dir,
            process: Some(process),
        }
    }

    fn http(&self) -> SocketAddr {
        self.process.as_ref().unwrap().http
    }

    fn otlp_http(&self) -> SocketAddr {
        self.process.as_ref().unwrap().otlp_http
    }

    fn kill9(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill9();
        }
    }

    fn terminate(&mut self) {
        if let Some(process) = self.process.take() {
            assert!(process.terminate().success());
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(process) = &self.process {
                for line in process.drain_log() {
                    eprintln!("{}: {line}", self.id);
                }
            }
        }
        self.kill9();
    }
}

/// `tracelink cluster status --json`, as an operator runs it.
fn cluster_status(work: &Path, nats: &Nats) -> Option<Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_tracelink"))
        .args(["cluster", "status", "--json"])
        .current_dir(work)
        .env("TRACELINK_CLUSTER_NATS_URLS", nats.urls())
        .env("TRACELINK_CLUSTER_NODE_ID", "operator")
        .env("TRACELINK_CLUSTER_PARTITIONS", PARTITIONS.to_string())
        .env("TRACELINK_STORAGE_DATA_DIR", work.join("operator"))
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    output
        .status
        .success()
        .then(|| serde_json::from_slice(&output.stdout).ok())
        .flatten()
}

/// Partition → owner, once exactly `nodes` are live and own every partition between
/// them, each its even share.
async fn wait_for_owners(work: &Path, nats: &Nats, nodes: &[&str]) -> BTreeMap<u32, String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(status) = cluster_status(work, nats) {
            let live: BTreeSet<&str> = status["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|node| node["node_id"].as_str().unwrap())
                .collect();
            let owners: BTreeMap<u32, String> = status["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|partition| {
                    Some((
                        partition["partition"].as_u64()? as u32,
                        partition["owner"].as_str()?.to_owned(),
                    ))
                })
                .collect();
            let share = (PARTITIONS as usize).div_ceil(nodes.len());
            let balanced = nodes.iter().all(|node| {
                let owned = owners.values().filter(|owner| owner == node).count();
                owned > 0 && owned <= share
            });
            if live == nodes.iter().copied().collect()
                && owners.len() == PARTITIONS as usize
                && owners.values().all(|owner| nodes.contains(&owner.as_str()))
                && balanced
            {
                return owners;
            }
            last = Some(status);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("partitions never settled on {nodes:?}; last status: {last:?}");
}

async fn export_spans(otlp_http: SocketAddr, services: &[&Service]) -> Result<(), String> {
    for service in services {
        service.provider.force_flush().unwrap();
        let spans = service.memory.get_finished_spans().unwrap();
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("http://{otlp_http}/v1/traces"))
            .build()
            .unwrap();
        exporter.set_resource(&service.resource);
        exporter
            .export(spans)
            .await
            .map_err(|error| error.to_string())?;
        service.memory.reset();
    }
    Ok(())
}

/// An error log line of payments for each trace, sent by the SDK's OTLP log exporter.
async fn export_logs(otlp_http: SocketAddr, payments: &Service, trace_ids: &[String]) {
    let memory = InMemoryLogExporter::default();
    let provider = SdkLoggerProvider::builder()
        .with_resource(payments.resource.clone())
        .with_simple_exporter(memory.clone())
        .build();
    let logger = provider.logger("payments");
    for trace_id in trace_ids {
        let mut record = logger.create_log_record();
        record.set_severity_number(Severity::Error);
        record.set_severity_text("ERROR");
        record.set_body(format!("card declined in trace {trace_id}").into());
        record.set_timestamp(SystemTime::now());
        record.set_trace_context(
            TraceId::from_hex(trace_id).unwrap(),
            SpanId::from_hex("00000000000000aa").unwrap(),
            Some(TraceFlags::SAMPLED),
        );
        logger.emit(record);
    }
    let emitted = memory.get_emitted_logs().unwrap();
    let data: Vec<_> = emitted
        .iter()
        .map(|log| (&log.record, &log.instrumentation))
        .collect();
    let exporter = opentelemetry_otlp::LogExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("http://{otlp_http}/v1/logs"))
        .build()
        .unwrap();
    let mut exporter = exporter;
    exporter.set_resource(&payments.resource);
    exporter.export(LogBatch::new(&data)).await.unwrap();
}

async fn get_json(http: SocketAddr, path: &str) -> (u16, Value) {
    let response = reqwest::get(format!("http://{http}{path}")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The span ids of a trace as a node returns it (Tempo's trace by id), each as often as
/// it is returned.
async fn span_ids(http: SocketAddr, trace_id: &str) -> Vec<String> {
    let (status, body) = get_json(http, &format!("/api/traces/{trace_id}")).await;
    if status != 200 {
        return Vec::new();
    }
    let mut ids: Vec<String> = body["batches"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|batch| batch["scopeSpans"].as_array().unwrap().iter())
        .flat_map(|scope| scope["spans"].as_array().unwrap().iter())
        .map(|span| span["spanId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Wait until `http` returns each trace whole: its three spans (gateway's two and
/// payments' one), each once.
async fn assert_whole(http: SocketAddr, trace_ids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for trace_id in trace_ids {
        loop {
            let ids = span_ids(http, trace_id).await;
            let distinct: BTreeSet<&String> = ids.iter().collect();
            assert_eq!(
                distinct.len(),
                ids.len(),
                "a span twice in {trace_id}: {ids:?}"
            );
            if ids.len() == 3 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{http} never returned trace {trace_id} whole (has {ids:?})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn checkouts(gateway: &Service, payments: &Service, count: u64, first: u64) -> Vec<String> {
    let base = UNIX_EPOCH
        + Duration::from_secs(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
                - 600,
        );
    (first..first + count)
        .map(|index| sdk::checkout(gateway, payments, base, index))
        .collect()
}

/// A sample of a node's `/metrics` without labels (0 when absent).
async fn metric(http: SocketAddr, name: &str) -> u64 {
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .map(|value| value.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or(0)
}

/// The `traceID`s of a list of traces (Tempo's search, Jaeger's).
fn traces_in(list: &Value) -> BTreeSet<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|trace| trace["traceID"].as_str().unwrap())
        .collect()
}

/// Acked spans a node has indexed.
async fn spans_indexed(http: SocketAddr) -> u64 {
    metric(http, "tracelink_spans_indexed_total").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_on_one_node_and_logs_on_another_are_whole_on_every_node_even_without_a_nats_server()
{
    let work = common::temp_dir();
    let mut nats = Nats::start();
    // node2 also tails a log file: its lines go to the partitions of their traces too.
    let logs_dir = work.path().join("logs");
    std::fs::create_dir_all(&logs_dir).unwrap();
    let tail_config = common::write_tail_config(work.path(), &logs_dir.join("*.log"), 50);
    let nodes: Vec<Node> = ["node1", "node2", "node3"]
        .iter()
        .map(|id| {
            let args: &[&str] = match *id {
                "node2" => &["--config", &tail_config],
                _ => &[],
            };
            Node::start_with(work.path(), &nats, id, work.path().join(id), args)
        })
        .collect();
    wait_for_owners(work.path(), &nats, &["node1", "node2", "node3"]).await;

    let gateway = sdk::service("gateway");
    let payments = sdk::service("payments");
    let trace_ids = checkouts(&gateway, &payments, 6, 0);
    export_spans(nodes[0].otlp_http(), &[&gateway, &payments])
        .await
        .unwrap();
    export_logs(nodes[1].otlp_http(), &payments, &trace_ids).await;
    let lines: String = trace_ids
        .iter()
        .map(|trace_id| {
            format!(
                "{{\"level\":\"warn\",\"service\":\"gateway\",\"message\":\"tailed: retrying {trace_id}\",\"trace_id\":\"{trace_id}\"}}\n"
            )
        })
        .collect();
    std::fs::write(logs_dir.join("gateway.log"), lines).unwrap();

    for node in &nodes {
        assert_whole(node.http(), &trace_ids).await;
    }
    // The join from any node finds the trace's logs, which another node received.
    for node in &nodes {
        for trace_id in &trace_ids {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let (status, joined) =
                    get_json(node.http(), &format!("/api/join/trace/{trace_id}")).await;
                let has = |message: String| {
                    joined["logs"]
                        .as_array()
                        .is_some_and(|logs| logs.iter().any(|log| log["message"] == message))
                };
                let found = status == 200
                    && has(format!("card declined in trace {trace_id}"))
                    && has(format!("tailed: retrying {trace_id}"));
                if found {
                    assert_eq!(joined["logs"].as_array().unwrap().len(), 2, "{joined}");
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} never joined trace {trace_id} to its log: {joined}",
                    node.id
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    // Each trace and its logs, OTLP's and the tailed file's, are whole on one node.
    let client = reqwest::Client::new();
    for trace_id in &trace_ids {
        let mut holders = Vec::new();
        for node in &nodes {
            let spans = client
                .get(format!(
                    "http://{}/internal/cluster/v1/traces/{trace_id}",
                    node.http()
                ))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let logs: Vec<Value> = client
                .post(format!("http://{}/internal/cluster/v1/logs", node.http()))
                .json(&serde_json::json!({"trace_id": trace_id, "limit": 100}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if !spans.is_empty() || !logs.is_empty() {
                assert_eq!(
                    logs.len(),
                    2,
                    "{} holds part of {trace_id}: {logs:?}",
                    node.id
                );
                holders.push(node.id.clone());
            }
        }
        assert_eq!(holders.len(), 1, "{trace_id} is on {holders:?}");
    }

    // Searches from any node find every trace, whichever node holds it: Tempo's (as
    // Grafana sends it), Jaeger's and Zipkin's.
    let wanted: BTreeSet<&str> = trace_ids.iter().map(String::as_str).collect();
    for node in &nodes {
        let (status, found) = get_json(
            node.http(),
            "/api/search?q=%7Bresource.service.name%3D%22payments%22%7D&limit=20&start=0&end=4000000000",
        )
        .await;
        assert_eq!(status, 200, "{found}");
        assert_eq!(
            traces_in(&found["traces"]),
            wanted,
            "Tempo search on {}",
            node.id
        );
        let (_, jaeger) =
            get_json(node.http(), "/jaeger/api/traces?service=gateway&limit=20").await;
        assert_eq!(
            traces_in(&jaeger["data"]),
            wanted,
            "Jaeger search on {}",
            node.id
        );
        let (_, zipkin) =
            get_json(node.http(), "/api/v2/traces?serviceName=payments&limit=20").await;
        assert_eq!(
            zipkin.as_array().unwrap().len(),
            6,
            "Zipkin search on {}",
            node.id
        );
    }

    // The page's search lists every node's traces.
    for node in &nodes {
        let html = reqwest::get(format!("http://{}/search?service=payments", node.http()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for trace_id in &trace_ids {
            assert!(
                html.contains(trace_id.as_str()),
                "the page on {} lacks {trace_id}",
                node.id
            );
        }
    }

    // The service graph's edges add up over the nodes (Jaeger's dependencies).
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    for node in &nodes {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, links) = get_json(
                node.http(),
                &format!(
                    "/jaeger/api/dependencies?endTs={}&lookback=7200000",
                    now_ms + 60_000
                ),
            )
            .await;
            let calls: u64 = links["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|link| link["parent"] == "gateway" && link["child"] == "payments")
                .map(|link| link["callCount"].as_u64().unwrap())
                .sum();
            if calls == 6 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "dependencies on {}: {calls} calls: {links}",
                node.id
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // TraceQL metrics count every node's spans.
    for node in &nodes {
        let (status, counted) = get_json(
            node.http(),
            "/api/metrics/query?q=%7Bresource.service.name%3D%22payments%22%7D%20%7C%20count_over_time()&since=1h",
        )
        .await;
        assert_eq!(status, 200, "{counted}");
        let total: f64 = counted["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|series| series["value"].as_f64().unwrap())
            .sum();
        assert_eq!(total, 6.0, "count_over_time on {}: {counted}", node.id);
        // Averages and quantiles too are exact over every node's spans: Charge took 100,
        // 200, … 600 ms, two on each node or so.
        for (function, expected) in [
            ("avg_over_time(duration)", 0.35),
            ("quantile_over_time(duration,0.5)", 0.35),
            ("quantile_over_time(duration,0.9)", 0.55),
            ("max_over_time(duration)", 0.6),
        ] {
            let (status, answered) = get_json(
                node.http(),
                &format!(
                    "/api/metrics/query?q=%7Bresource.service.name%3D%22payments%22%7D%20%7C%20{}&since=1h",
                    function.replace('(', "%28").replace(')', "%29").replace(',', "%2C")
                ),
            )
            .await;
            assert_eq!(status, 200, "{answered}");
            let series = answered["series"].as_array().unwrap();
            assert_eq!(series.len(), 1, "{function} on {}: {answered}", node.id);
            let value = series[0]["value"].as_f64().unwrap();
            assert!(
                (value - expected).abs() < 1e-9 && answered.get("status").is_none(),
                "{function} on {}: {answered}",
                node.id
            );
        }
    }

    // Latency quantiles and the services view merge every node's hdrhistograms: each
    // node observed only the spans of its own partitions.
    for node in &nodes {
        // A span's latency observation that will carry an exemplar waits for its
        // trace's sampling decision: wait for all six.
        let deadline = Instant::now() + Duration::from_secs(30);
        let latency = loop {
            let (status, latency) = get_json(
                node.http(),
                "/api/metrics/latency?service=payments&window=1h",
            )
            .await;
            assert_eq!(status, 200, "latency on {}: {latency}", node.id);
            if latency["operations"][0]["count"] == 6 || Instant::now() > deadline {
                break latency;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let charge = &latency["operations"][0];
        assert_eq!(
            (
                &charge["span_name"],
                &charge["count"],
                &charge["error_rate"]
            ),
            (&json!("Charge"), &json!(6), &json!(0.5)),
            "latency on {}: {latency}",
            node.id
        );
        // Charge took 100, 200, … 600 ms: the slowest of all nodes' calls is known.
        let max = charge["max_ms"].as_f64().unwrap();
        assert!((595.0..=606.0).contains(&max), "{latency}");
        let page = reqwest::get(format!("http://{}/services?window=60m", node.http()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            page.contains("payments</span></a></td><td>6</td>") && page.contains(">6 calls"),
            "services page of {}: {page}",
            node.id
        );
    }

    // Which service is slow, which one failed: from every node, over every node's traces
    // and error logs.
    for node in &nodes {
        let (status, diagnosis) = get_json(node.http(), "/api/diagnose").await;
        assert_eq!(status, 200, "{diagnosis}");
        assert_eq!(
            diagnosis["window"]["traces"], 6,
            "diagnose on {}: {diagnosis}",
            node.id
        );
        assert_eq!(
            diagnosis["window"]["error_logs"], 6,
            "diagnose on {}: {diagnosis}",
            node.id
        );
    }

    // ... which each node alone does not: every trace is whole on exactly one node.
    let mut held = 0;
    for node in &nodes {
        let local = reqwest::Client::new()
            .get(format!(
                "http://{}/api/search?q=%7Bresource.service.name%3D%22payments%22%7D&limit=20&start=0&end=4000000000",
                node.http()
            ))
            .header("tracelink-scope", "local")
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        held += local["traces"].as_array().unwrap().len();
    }
    assert_eq!(held, 6);

    // A node that does not answer in time is named, not hidden: Tempo's PARTIAL.
    let frozen = nodes[2].process.as_ref().unwrap().pid().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &frozen])
        .status()
        .unwrap()
        .success());
    let asked = trace_ids
        .iter()
        .map(|trace_id| format!("/api/v2/traces/{trace_id}"))
        .collect::<Vec<_>>();
    let asked = asked.iter().map(|path| get_json(nodes[0].http(), path));
    let answers = futures_util::future::join_all(asked).await;
    let search = reqwest::get(format!("http://{}/api/search/tags", nodes[0].http()))
        .await
        .unwrap();
    assert!(Command::new("kill")
        .args(["-CONT", &frozen])
        .status()
        .unwrap()
        .success());
    // The traces node3 holds are not found, and the answer says why.
    for (status, answer) in &answers {
        match status {
            200 => {
                assert_eq!(answer["status"], "PARTIAL", "{answer}");
                assert!(
                    answer["message"].as_str().unwrap().contains("node3"),
                    "{answer}"
                );
            }
            404 => assert!(answer.to_string().contains("node3"), "{answer}"),
            other => panic!("status {other}: {answer}"),
        }
    }
    assert!(answers.iter().any(|(status, _)| *status == 200));
    assert_eq!(search.status(), 200);
    assert_eq!(search.headers()["tracelink-partial"], "node3");

    // One NATS server of three dies: ingest and queries go on (a client retries what is
    // refused while JetStream elects new leaders, as OTLP exporters do).
    nats.kill9(0);
    let more = checkouts(&gateway, &payments, 6, 6);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut target = 0;
    loop {
        match export_spans(nodes[target % 3].otlp_http(), &[&gateway, &payments]).await {
            Ok(()) => break,
            Err(error) => {
                assert!(Instant::now() < deadline, "ingest never resumed: {error}");
                target += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    for node in &nodes {
        assert_whole(node.http(), &trace_ids).await;
        assert_whole(node.http(), &more).await;
    }

    // Without JetStream nothing can be acked: 503 with Retry-After, not a lost ack.
    nats.kill9(1);
    nats.kill9(2);
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", nodes[0].otlp_http()))
        .header("content-type", "application/json")
        .body(r#"{"resourceSpans":[{"resource":{},"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"x","startTimeUnixNano":"1","endTimeUnixNano":"2"}]}]}]}"#)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_nothing_and_a_node_back_with_its_data_serves_it_again() {
    let work = common::temp_dir();
    let nats = Nats::start();
    let mut nodes: Vec<Node> = ["node1", "node2", "node3"]
        .iter()
        .map(|id| Node::start(work.path(), &nats, id, work.path().join(id)))
        .collect();
    let before = wait_for_owners(work.path(), &nats, &["node1", "node2", "node3"]).await;

    // Ingest on node1 and node2 before and after node3 is killed with SIGKILL.
    let gateway = sdk::service("gateway");
    let payments = sdk::service("payments");
    let mut acked = Vec::new();
    for round in 0..10u64 {
        if round == 5 {
            nodes[2].kill9();
        }
        let trace_ids = checkouts(&gateway, &payments, 4, round * 4);
        export_spans(
            nodes[(round % 2) as usize].otlp_http(),
            &[&gateway, &payments],
        )
        .await
        .unwrap();
        acked.extend(trace_ids);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // node3's partitions move to the survivors, who read them again from the stream.
    let after = wait_for_owners(work.path(), &nats, &["node1", "node2"]).await;
    assert!(before.values().any(|owner| owner == "node3"));
    // Each node's /metrics covers what it owns.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let owned = metric(nodes[0].http(), "tracelink_cluster_partitions_owned").await
            + metric(nodes[1].http(), "tracelink_cluster_partitions_owned").await;
        if owned == u64::from(PARTITIONS) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the survivors' metrics own {owned} partitions"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for node in &nodes[..2] {
        assert_whole(node.http(), &acked).await;
    }
    // Every acked span is indexed exactly once among the survivors: what node3 held is
    // indexed again by the new owners, nothing twice by them.
    let expected = acked.len() as u64 * 3;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let indexed = spans_indexed(nodes[0].http()).await + spans_indexed(nodes[1].http()).await;
        assert!(
            indexed <= expected,
            "{indexed} spans indexed for {expected} acked"
        );
        if indexed == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {indexed} of {expected} spans indexed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The stream forgets what is older than its replay window (here: purged at once).
    // What node1 alone indexed then lives only in node1's partitions: gone from queries
    // while node1 is away, served again once it is back with its data directory.
    let addresses: Vec<async_nats::ServerAddr> = nats
        .urls()
        .split(',')
        .map(|url| url.parse().unwrap())
        .collect();
    let client = async_nats::connect(addresses).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    jetstream
        .get_stream(tracelink::cluster::STREAM)
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    let only_node1: Vec<String> = acked
        .iter()
        .filter(|trace_id| {
            let id = tracelink::model::TraceId::parse(trace_id).unwrap();
            let partition = tracelink::cluster::trace_partition(&id, PARTITIONS);
            before[&partition] == "node1" && after[&partition] == "node1"
        })
        .cloned()
        .collect();
    assert!(
        !only_node1.is_empty(),
        "no trace stayed on node1: {before:?} {after:?}"
    );
    nodes[0].terminate();
    wait_for_owners(work.path(), &nats, &["node2"]).await;
    for trace_id in &only_node1 {
        assert!(span_ids(nodes[1].http(), trace_id).await.is_empty());
    }
    let data_dir = nodes[0].data_dir.clone();
    nodes[0] = Node::start(work.path(), &nats, "node1", data_dir);
    wait_for_owners(work.path(), &nats, &["node1", "node2"]).await;
    assert_whole(nodes[1].http(), &only_node1).await;
    assert_whole(nodes[0].http(), &acked).await;
}

/// Until `node` holds the lease of every partition (its own `/metrics` say so: the
/// registry may still name it from before a restart).
async fn owns_all(node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(node.http(), "tracelink_cluster_partitions_owned").await != u64::from(PARTITIONS) {
        assert!(
            Instant::now() < deadline,
            "{} never owned every partition",
            node.id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every partition's consumer lag (messages not yet delivered, or delivered and not acked).
fn total_lag(work: &Path, nats: &Nats) -> u64 {
    let status = cluster_status(work, nats).expect("cluster status");
    status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|partition| partition["lag"].as_u64())
        .sum()
}

/// Every stored copy of each span of a trace on a node (the head's and every
/// partition's, duplicates not folded), through the internal route peers use.
async fn stored_spans(http: SocketAddr, trace_id: &str) -> usize {
    let body = reqwest::get(format!(
        "http://{http}/internal/cluster/v1/traces/{trace_id}"
    ))
    .await
    .unwrap()
    .bytes()
    .await
    .unwrap();
    let mut rest = &body[..];
    let mut count = 0;
    while rest.len() >= 4 {
        let length = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        rest = &rest[4 + length..];
        count += 1;
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_is_acked_once_committed_and_an_owner_back_from_a_crash_stores_nothing_twice() {
    let work = common::temp_dir();
    let nats = Nats::start();
    // Traces stay in the head for ten minutes: nothing is committed until shutdown.
    let held = [
        ("TRACELINK_STORAGE_TRACE_IDLE_MS", "600000"),
        ("TRACELINK_STORAGE_TRACE_MAX_AGE_MS", "600000"),
    ];
    let data_dir = work.path().join("solo");
    let mut node = Node::start_configured(work.path(), &nats, "solo", data_dir.clone(), &[], &held);
    wait_for_owners(work.path(), &nats, &["solo"]).await;
    let gateway = sdk::service("gateway");
    let payments = sdk::service("payments");
    let trace_ids = checkouts(&gateway, &payments, 6, 0);
    export_spans(node.otlp_http(), &[&gateway, &payments])
        .await
        .unwrap();
    assert_whole(node.http(), &trace_ids).await;
    // Written to the owner's WAL and head, readable, but in no tantivy commit: the
    // stream still holds them for the partition (delivered, not acked).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(total_lag(work.path(), &nats) > 0);
    assert_eq!(spans_indexed(node.http()).await, 0);

    // kill -9 while they sit in the head; back with its data directory, the node
    // replays its WAL, and the stream delivers the unacked messages again: recognised
    // by the WAL's stream marks, not written twice.
    node.kill9();
    let mut node = Node::start_configured(work.path(), &nats, "solo", data_dir.clone(), &[], &held);
    owns_all(&node).await;
    assert_whole(node.http(), &trace_ids).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for trace_id in &trace_ids {
        assert_eq!(stored_spans(node.http(), trace_id).await, 3, "{trace_id}");
    }
    // On SIGTERM every trace leaves the head and is committed, and all is acked.
    node.terminate();
    let node = Node::start_configured(work.path(), &nats, "solo", data_dir, &[], &held);
    owns_all(&node).await;
    assert_whole(node.http(), &trace_ids).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while total_lag(work.path(), &nats) > 0 {
        assert!(Instant::now() < deadline, "messages never acked");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for trace_id in &trace_ids {
        assert_eq!(stored_spans(node.http(), trace_id).await, 3, "{trace_id}");
    }
    assert_eq!(spans_indexed(node.http()).await, 0);
}
