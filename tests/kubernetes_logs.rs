//! Container logs laid out as a Kubernetes node lays them out, in a temporary root:
//! `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log` written by the
//! runtime (CRI with split lines for one pod, Docker json-file for the other), the
//! `/var/log/containers/…` symlinks into them, a kubelet rotation (rename, new file, then
//! gzip of the rotated one) and a container restart (`1.log`, a new link). Every line is
//! indexed once, with its pod, namespace, container, restart count and service, and
//! Grafana's Loki data source finds the streams by their Kubernetes labels.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tracelink::config::RawLogSource;
use tracelink::model::{Level, LogRecord};

use common::TestServer;

const ORDERS_UID: &str = "5f0c4e2a-1b3d-4c5e-8f9a-0b1c2d3e4f5a";
const PAYMENTS_UID: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
const TRACE: &str = "69b89441c8d2a7f3e5b1d4c6a8e0ba19";

struct Node {
    root: PathBuf,
}

impl Node {
    fn pods(&self) -> PathBuf {
        self.root.join("var/log/pods")
    }

    fn containers(&self) -> PathBuf {
        self.root.join("var/log/containers")
    }

    fn container_dir(&self, namespace: &str, pod: &str, uid: &str, container: &str) -> PathBuf {
        let dir = self
            .pods()
            .join(format!("{namespace}_{pod}_{uid}"))
            .join(container);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The link the kubelet makes for a running container.
    fn link(&self, pod: &str, namespace: &str, container: &str, id: char, target: &Path) {
        fs::create_dir_all(self.containers()).unwrap();
        let id: String = std::iter::repeat_n(id, 64).collect();
        std::os::unix::fs::symlink(
            target,
            self.containers()
                .join(format!("{pod}_{namespace}_{container}-{id}.log")),
        )
        .unwrap();
    }
}

fn append(path: &Path, text: &str) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// Spring-style text lines (with `key=value` fragments in the message) in CRI's format,
/// every third one split by the runtime into a `P` part and an `F` part.
fn cri_lines(range: std::ops::Range<usize>) -> String {
    let mut out = String::new();
    for seq in range {
        let line = format!(
            "16:48:22.860 INFO  t.s.OrderServiceImpl#469 TraceID: {TRACE} SpanID: c5f856fd5edc297a [placeOrder][line {seq}][Response(status=1, msg=Success, data={seq})]"
        );
        let time = "2026-01-01T12:00:00.000000000Z";
        if seq % 3 == 0 {
            let (first, second) = line.split_at(line.len() / 2);
            out.push_str(&format!(
                "{time} stdout P {first}\n{time} stdout F {second}\n"
            ));
        } else {
            out.push_str(&format!("{time} stdout F {line}\n"));
        }
    }
    out
}

/// pino-style JSON lines in Docker's json-file format.
fn docker_lines(range: std::ops::Range<usize>) -> String {
    range
        .map(|seq| {
            let inner = format!(r#"{{"level":50,"msg":"card declined line {seq}","trace_id":"{TRACE}"}}"#);
            serde_json::json!({"log": format!("{inner}\n"), "stream": "stderr", "time": "2026-01-01T12:00:00.5Z"})
                .to_string()
                + "\n"
        })
        .collect()
}

fn seq_of(record: &LogRecord) -> usize {
    let at = record.message.find("line ").expect("a numbered line") + 5;
    record.message[at..]
        .split(|character: char| !character.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn gzip(path: &Path) {
    let bytes = fs::read(path).unwrap();
    let gz = PathBuf::from(format!("{}.gz", path.display()));
    let mut encoder = flate2::write::GzEncoder::new(
        fs::File::create(&gz).unwrap(),
        flate2::Compression::default(),
    );
    encoder.write_all(&bytes).unwrap();
    encoder.finish().unwrap();
    fs::remove_file(path).unwrap();
}

async fn wait_for(data: &Path, count: usize) -> Vec<LogRecord> {
    let data = data.to_owned();
    tokio::task::spawn_blocking(move || common::wait_for_indexed_logs(&data, count))
        .await
        .unwrap()
}

async fn get_json(server: &TestServer, path: &str, params: &[(&str, String)]) -> Value {
    reqwest::Client::new()
        .get(server.url(path))
        .query(params)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_logs_keep_their_traces_and_know_their_pods_through_rotation_and_restart() {
    let dir = common::temp_dir();
    let data = common::data_path(&dir);
    let node = Node {
        root: dir.path().join("node"),
    };
    let orders = node.container_dir("shop", "orders-7d9f8b6c5-x2x9z", ORDERS_UID, "orders");
    let payments = node.container_dir("shop", "payments-5c4b3a2d1-qwert", PAYMENTS_UID, "payments");
    append(&orders.join("0.log"), &cri_lines(0..30));
    append(&payments.join("0.log"), &docker_lines(0..20));
    node.link(
        "orders-7d9f8b6c5-x2x9z",
        "shop",
        "orders",
        'a',
        &orders.join("0.log"),
    );
    node.link(
        "payments-5c4b3a2d1-qwert",
        "shop",
        "payments",
        'b',
        &payments.join("0.log"),
    );

    // What a collector on the node is told: the links, and the pods' files for what
    // rotation leaves behind. Both reach the current files: each is read once.
    let containers_glob = format!("{}/*.log", node.containers().display());
    let pods_glob = format!("{}/*/*/*.log*", node.pods().display());
    let server = TestServer::start(&data, |raw| {
        raw.logs.poll_interval_ms = 50;
        raw.storage.commit_interval_ms = 100;
        raw.logs.sources = vec![RawLogSource {
            paths: vec![containers_glob, pods_glob],
            ..RawLogSource::default()
        }];
    })
    .await;
    let records = wait_for(&data, 50).await;
    assert_eq!(records.len(), 50);

    // The kubelet rotates orders' log: more lines, rename, a new file, then gzip.
    append(&orders.join("0.log"), &cri_lines(30..40));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rotated = orders.join("0.log.20260101-120000");
    fs::rename(orders.join("0.log"), &rotated).unwrap();
    append(&orders.join("0.log"), &cri_lines(40..50));
    wait_for(&data, 70).await;
    gzip(&rotated);

    // The container restarts: 1.log, a new link; the old link goes.
    for entry in fs::read_dir(node.containers()).unwrap() {
        let path = entry.unwrap().path();
        if path.display().to_string().contains("_orders-") {
            fs::remove_file(path).unwrap();
        }
    }
    append(&orders.join("1.log"), &cri_lines(50..60));
    node.link(
        "orders-7d9f8b6c5-x2x9z",
        "shop",
        "orders",
        'c',
        &orders.join("1.log"),
    );
    append(&payments.join("0.log"), &docker_lines(20..25));

    wait_for(&data, 85).await;
    // Time for a line read twice to show.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let records = wait_for(&data, 85).await;

    let mut by_container: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for record in &records {
        let attribute = |key: &str| record.attributes.get(key).cloned().unwrap_or(Value::Null);
        let container = attribute("k8s.container.name");
        let container = container.as_str().expect("every line knows its container");
        assert_eq!(record.service, container, "the service is the container");
        assert_eq!(attribute("k8s.namespace.name"), "shop");
        assert_eq!(
            record.trace_id.map(|id| id.to_hex()).as_deref(),
            Some(TRACE),
            "no line loses its trace: {}",
            record.message
        );
        let seq = seq_of(record);
        match container {
            "orders" => {
                assert_eq!(attribute("k8s.pod.name"), "orders-7d9f8b6c5-x2x9z");
                assert_eq!(attribute("k8s.pod.uid"), ORDERS_UID);
                let restart = if seq >= 50 { 1 } else { 0 };
                assert_eq!(
                    attribute("k8s.container.restart_count"),
                    restart,
                    "line {seq}"
                );
                assert_eq!(record.level, Some(Level::Info));
                assert_eq!(record.stream.as_deref(), Some("stdout"));
                assert!(
                    record.message.starts_with("16:48:22.860 INFO"),
                    "CRI parts joined, text kept whole: {}",
                    record.message
                );
                assert_eq!(record.span_id.unwrap().to_hex(), "c5f856fd5edc297a");
            }
            "payments" => {
                assert_eq!(attribute("k8s.pod.name"), "payments-5c4b3a2d1-qwert");
                assert_eq!(record.level, Some(Level::Error));
                assert_eq!(record.stream.as_deref(), Some("stderr"));
            }
            other => panic!("unexpected container {other}"),
        }
        by_container
            .entry(container.to_owned())
            .or_default()
            .push(seq);
    }
    for seqs in by_container.values_mut() {
        seqs.sort();
    }
    assert_eq!(
        by_container["orders"],
        (0..60).collect::<Vec<_>>(),
        "every orders line once"
    );
    assert_eq!(
        by_container["payments"],
        (0..25).collect::<Vec<_>>(),
        "every payments line once"
    );

    // Grafana's Loki data source: labels, label values, a stream selector on them.
    let labels = get_json(&server, "/loki/api/v1/labels", &[]).await;
    assert!(labels["data"]
        .as_array()
        .unwrap()
        .contains(&Value::from("k8s_pod_name")));
    let pods = get_json(&server, "/loki/api/v1/label/k8s_pod_name/values", &[]).await;
    assert_eq!(
        pods["data"],
        serde_json::json!(["orders-7d9f8b6c5-x2x9z", "payments-5c4b3a2d1-qwert"])
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let body = get_json(
        &server,
        "/loki/api/v1/query_range",
        &[
            (
                "query",
                r#"{k8s_namespace_name="shop", k8s_container_name="payments"}"#.to_owned(),
            ),
            (
                "start",
                (now - 400 * 86_400 * 1_000_000_000u128).to_string(),
            ),
            ("end", (now + 86_400 * 1_000_000_000u128).to_string()),
            ("limit", "1000".to_owned()),
        ],
    )
    .await;
    let streams = body["data"]["result"].as_array().unwrap();
    let lines: usize = streams
        .iter()
        .map(|stream| {
            assert_eq!(stream["stream"]["k8s_pod_name"], "payments-5c4b3a2d1-qwert");
            assert_eq!(stream["stream"]["service_name"], "payments");
            stream["values"].as_array().unwrap().len()
        })
        .sum();
    assert_eq!(lines, 25);

    // What detection chose, per wrapper.
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"tracelink_tailer_lines_total{format="text",wrapper="cri"} 60"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tracelink_tailer_lines_total{format="json",wrapper="docker"} 25"#),
        "{metrics}"
    );
    server.stop().await;
}
