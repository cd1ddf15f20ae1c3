//! The tailer against real files that are written, renamed, truncated, deleted and
//! compressed while tracelink runs (and while it is stopped or killed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracelink::config::{RawConfig, RawLogSource};
use tracelink::model::LogRecord;

use common::TestServer;

fn source(paths: &[&Path]) -> RawLogSource {
    RawLogSource {
        paths: paths
            .iter()
            .map(|path| path.display().to_string())
            .collect(),
        ..RawLogSource::default()
    }
}

fn tail_config(raw: &mut RawConfig, sources: Vec<RawLogSource>) {
    raw.logs.poll_interval_ms = 50;
    raw.logs.sources = sources;
    raw.storage.commit_interval_ms = 100;
}

fn append(path: &Path, text: &str) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

fn json_lines(prefix: &str, range: std::ops::Range<usize>) -> String {
    range
        .map(|seq| format!("{{\"level\":\"info\",\"msg\":\"{prefix} line\",\"seq\":{seq},\"service\":\"{prefix}\"}}\n"))
        .collect()
}

async fn wait_for(data: &Path, count: usize) -> Vec<LogRecord> {
    let data = data.to_owned();
    tokio::task::spawn_blocking(move || common::wait_for_indexed_logs(&data, count))
        .await
        .unwrap()
}

/// Give the tailer time to see (and not index) something.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(800)).await;
}

fn seqs(records: &[LogRecord], service: &str) -> Vec<u64> {
    let mut seqs: Vec<u64> = records
        .iter()
        .filter(|record| record.service == service)
        .map(|record| record.attributes["seq"].as_u64().unwrap())
        .collect();
    seqs.sort();
    seqs
}

fn assert_exactly(records: &[LogRecord], service: &str, count: usize) {
    let seqs = seqs(records, service);
    assert_eq!(
        seqs,
        (0..count as u64).collect::<Vec<_>>(),
        "{service}: each line exactly once"
    );
    let mut ids: Vec<&str> = records.iter().map(|record| record.id.as_str()).collect();
    ids.sort();
    let total = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), total, "ids are unique");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_excludes_and_reads_a_file_reached_twice_once() {
    let dir = common::temp_dir();
    let logs = dir.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    // 1,000 matching files and 100 excluded ones.
    for index in 0..1000 {
        append(
            &logs.join(format!("app-{index}.log")),
            &json_lines("many", index * 2..index * 2 + 2),
        );
    }
    for index in 0..100 {
        append(
            &logs.join(format!("skip-{index}.log")),
            &json_lines("excluded", 0..1),
        );
    }
    std::os::unix::fs::symlink(logs.join("app-0.log"), logs.join("link.log")).unwrap();
    let data = common::data_path(&dir);
    let glob = logs.join("*.log");
    let server = TestServer::start(&data, |raw| {
        let mut source = source(&[&glob, &logs.join("app-*.log")]);
        source.exclude = vec![logs.join("skip-*").display().to_string()];
        tail_config(raw, vec![source]);
    })
    .await;
    let records = wait_for(&data, 2000).await;
    settle().await;
    let records = if records.len() == 2000 {
        common::indexed_logs(&data)
    } else {
        records
    };
    assert_exactly(&records, "many", 2000);
    assert!(records.iter().all(|record| record.service != "excluded"));
    // Files that appear later are read from their beginning.
    append(&logs.join("late.log"), &json_lines("late", 0..3));
    let records = wait_for(&data, 2003).await;
    assert_exactly(&records, "late", 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_rotation_and_copytruncate_lose_and_duplicate_nothing() {
    let dir = common::temp_dir();
    let logs = dir.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    let app = logs.join("app.log");
    let data = common::data_path(&dir);
    let glob = logs.join("app*");
    let server = TestServer::start(&data, |raw| tail_config(raw, vec![source(&[&glob])])).await;

    // Rename rotation: the renamed file still matches the glob and is not read again.
    append(&app, &json_lines("rot", 0..500));
    wait_for(&data, 500).await;
    append(&app, &json_lines("rot", 500..600));
    fs::rename(&app, logs.join("app.log.1")).unwrap();
    append(&app, &json_lines("rot", 600..1000));
    let records = wait_for(&data, 1000).await;
    settle().await;
    assert_exactly(&common::indexed_logs(&data), "rot", 1000);
    drop(records);

    // copytruncate: copy (matching the glob), truncate, and at once write more bytes
    // than the old offset.
    let copy_app = logs.join("app-copy.log");
    append(&copy_app, &json_lines("ct", 0..300));
    wait_for(&data, 1300).await;
    append(&copy_app, &json_lines("ct", 300..350));
    fs::copy(&copy_app, logs.join("app-copy-20261127.log")).unwrap();
    File::create(&copy_app).unwrap();
    append(&copy_app, &json_lines("ct", 350..1000));
    wait_for(&data, 2000).await;
    settle().await;
    assert_exactly(&common::indexed_logs(&data), "ct", 1000);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_lines_long_lines_deleted_files_and_encodings() {
    let dir = common::temp_dir();
    let logs = dir.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    let data = common::data_path(&dir);
    let glob = logs.join("*.log");
    let start = |data: PathBuf, glob: PathBuf| async move {
        TestServer::start(&data, |raw| {
            let mut source = source(&[&glob]);
            source.max_line_bytes = 1024 * 1024;
            tail_config(raw, vec![source]);
        })
        .await
    };
    let server = start(data.clone(), glob.clone()).await;

    // A partial last line is never indexed, not even across a restart.
    let partial = logs.join("partial.log");
    append(&partial, "{\"msg\":\"a\",\"seq\":0,\"service\":\"partial\"");
    settle().await;
    assert!(common::indexed_logs(&data).is_empty());

    // 50 lines, one 5 MiB line, 25 lines → 76 records, the long one cut and flagged.
    let long = logs.join("long.log");
    append(&long, &json_lines("long", 0..50));
    append(&long, &format!("{}\n", "x".repeat(5 * 1024 * 1024)));
    append(&long, &json_lines("long", 50..75));
    let records = wait_for(&data, 76).await;
    let long_records: Vec<&LogRecord> = records
        .iter()
        .filter(|r| r.source.as_ref().unwrap().path.ends_with("long.log"))
        .collect();
    assert_eq!(long_records.len(), 76);
    let cut: Vec<&&LogRecord> = long_records
        .iter()
        .filter(|r| r.attributes.contains_key("log.truncated"))
        .collect();
    assert_eq!(cut.len(), 1);
    assert_eq!(cut[0].message.len(), 1024 * 1024);

    // Deleted right after writing: once the tailer follows a file, every line written
    // to it is read, even those still unread when it is removed.
    let doomed = logs.join("doomed.log");
    append(&doomed, &json_lines("doomed", 0..10));
    wait_for(&data, 76 + 10).await;
    append(&doomed, &json_lines("doomed", 10..2000));
    fs::remove_file(&doomed).unwrap();

    // CRLF and invalid UTF-8.
    let crlf = logs.join("crlf.log");
    let mut bytes = b"level=warn msg=\"windows line\" service=crlf\r\n".to_vec();
    bytes.extend_from_slice(b"level=warn msg=\"bad \xff byte\" service=crlf\n");
    fs::write(&crlf, bytes).unwrap();

    let records = wait_for(&data, 76 + 2 + 2000).await;
    server.stop().await;

    let doomed_seqs = seqs(&records, "doomed");
    assert_eq!(doomed_seqs.len(), 2000, "a deleted file is read to its end");
    let crlf_messages: Vec<&str> = records
        .iter()
        .filter(|r| r.service == "crlf")
        .map(|r| r.message.as_str())
        .collect();
    assert!(crlf_messages.contains(&"windows line"));
    assert!(crlf_messages.contains(&"bad \u{fffd} byte"));

    // Restart, complete the partial line: exactly one record; nothing else read again.
    let server = start(data.clone(), glob.clone()).await;
    append(&partial, "}\n");
    wait_for(&data, 76 + 2 + 2000 + 1).await;
    settle().await;
    let records = common::indexed_logs(&data);
    assert_eq!(records.len(), 76 + 2 + 2000 + 1);
    assert_exactly(&records, "partial", 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_first_lines_gzip_rotation_and_multiline_traces() {
    let dir = common::temp_dir();
    let logs = dir.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    let data = common::data_path(&dir);
    let header = "{\"msg\":\"service starting\",\"service\":\"header\",\"seq\":0}\n";
    append(&logs.join("a.log"), header);
    append(&logs.join("a.log"), &json_lines("first", 0..10));
    append(&logs.join("b.log"), header);
    append(&logs.join("b.log"), &json_lines("second", 0..20));
    let java = logs.join("java.txt");
    let mut trace = String::from("2024-05-01 10:00:00 ERROR OrderService TraceID: 4bf92f3577b34da6a3ce929d0e0e4736 failed to save order\n");
    trace.push_str("java.lang.IllegalStateException: connection closed\n");
    for frame in 0..26 {
        trace.push_str(&format!(
            "\tat com.shop.orders.Repo.save{frame}(Repo.java:{frame})\n"
        ));
    }
    trace.push_str("Caused by: java.net.SocketException: reset\n\t... 12 more\n");
    append(&java, &trace);
    let glob = logs.join("*.log*");
    let text_glob = logs.join("*.txt");
    let server = TestServer::start(&data, |raw| {
        let mut text = source(&[&text_glob]);
        text.format = tracelink::ingest::logline::Format::Text;
        text.service = Some("orders".into());
        text.multiline_timeout_ms = 200;
        tail_config(raw, vec![source(&[&glob]), text]);
    })
    .await;
    let records = wait_for(&data, 2 + 10 + 20 + 2).await;
    assert_eq!(
        seqs(&records, "first").len(),
        10,
        "same first line, both files read whole"
    );
    assert_eq!(seqs(&records, "second").len(), 20);
    assert_eq!(records.iter().filter(|r| r.service == "header").count(), 2);
    // The Java exception's first line is one record with the whole trace inside; its
    // own first line is a separate record.
    let orders: Vec<&LogRecord> = records.iter().filter(|r| r.service == "orders").collect();
    assert_eq!(
        orders.len(),
        2,
        "{:?}",
        orders.iter().map(|r| &r.message).collect::<Vec<_>>()
    );
    let exception = orders
        .iter()
        .find(|r| r.message.starts_with("java.lang"))
        .unwrap();
    assert_eq!(exception.message.lines().count(), 29);
    let first = orders
        .iter()
        .find(|r| r.message.contains("failed to save"))
        .unwrap();
    assert_eq!(
        first.trace_id.unwrap().to_hex(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );

    // Rotate a.log by compressing it: already read, so nothing new.
    let a = logs.join("a.log");
    let compressed = logs.join("a.log.1.gz");
    let mut encoder = flate2::write::GzEncoder::new(
        File::create(&compressed).unwrap(),
        flate2::Compression::default(),
    );
    encoder.write_all(&fs::read(&a).unwrap()).unwrap();
    encoder.finish().unwrap();
    fs::remove_file(&a).unwrap();
    // A gzip'd file never seen before is read.
    let fresh = logs.join("old.log.3.gz");
    let mut encoder = flate2::write::GzEncoder::new(
        File::create(&fresh).unwrap(),
        flate2::Compression::default(),
    );
    encoder
        .write_all(json_lines("gz", 0..40).as_bytes())
        .unwrap();
    encoder.finish().unwrap();
    let records = wait_for(&data, 34 + 40).await;
    settle().await;
    let records_now = common::indexed_logs(&data);
    assert_eq!(records_now.len(), 34 + 40, "{}", records.len());
    assert_exactly(&records_now, "gz", 40);
    assert_eq!(seqs(&records_now, "first").len(), 10);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_from_end_and_container_wrappers() {
    let dir = common::temp_dir();
    let logs = dir.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    let data = common::data_path(&dir);
    let old = logs.join("old.log");
    append(&old, &json_lines("old", 0..5));
    let docker = logs.join("docker.log");
    let inner = "16:51:24.967 INFO  UserController TraceID: 2f18e2a8b1c94c6e9f1b4b2a7c5de7cd SpanID: 547f1c2d3e4a1a25 [getUser]";
    let server = TestServer::start(&data, |raw| {
        let mut source = source(&[&logs.join("*.log")]);
        source.read_from = tracelink::config::ReadFrom::End;
        tail_config(raw, vec![source]);
    })
    .await;
    settle().await;
    append(&old, &json_lines("old", 5..8));
    append(
        &docker,
        &format!(
            "{}\n",
            serde_json::json!({"log": format!("{inner}\n"), "stream": "stdout", "time": "2023-01-29T08:51:24.968139185Z"})
        ),
    );
    append(
        &docker,
        "2023-01-29T08:51:25.000000000Z stderr P {\"level\":\"error\",\"msg\":\"split \n",
    );
    append(&docker, "2023-01-29T08:51:25.000000001Z stderr F record\",\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\"}\n");
    let records = wait_for(&data, 3 + 2).await;
    let old_seqs = seqs(&records, "old");
    assert_eq!(
        old_seqs,
        vec![5, 6, 7],
        "lines present at start are skipped with read_from = end"
    );
    let wrapped: BTreeMap<String, &LogRecord> = records
        .iter()
        .filter(|r| r.source.as_ref().unwrap().path.ends_with("docker.log"))
        .map(|r| (r.message.clone(), r))
        .collect();
    let docker_record = wrapped[inner];
    assert_eq!(docker_record.stream.as_deref(), Some("stdout"));
    assert_eq!(
        docker_record.trace_id.unwrap().to_hex(),
        "2f18e2a8b1c94c6e9f1b4b2a7c5de7cd"
    );
    assert_eq!(docker_record.time_unix_nano, 1_674_982_284_968_139_185);
    let joined = wrapped["split record"];
    assert_eq!(joined.stream.as_deref(), Some("stderr"));
    assert_eq!(joined.level.map(|level| level.as_str()), Some("error"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_writing_and_rotation_indexes_every_line_exactly_once() {
    let dir = common::temp_dir();
    let logs = dir.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    let data = common::data_path(&dir);
    let config_arg = common::write_tail_config(dir.path(), &logs.join("app.log*"), 50);
    let app = logs.join("app.log");
    let start =
        || common::spawn_binary_with_args(dir.path(), &data, &[], &["--config", &config_arg]);

    append(&app, &json_lines("crash", 0..20_000));
    let process = start();
    tokio::time::sleep(Duration::from_millis(300)).await;
    fs::rename(&app, logs.join("app.log.1")).unwrap();
    append(&app, &json_lines("crash", 20_000..30_000));
    process.kill9();
    append(&app, &json_lines("crash", 30_000..40_000));

    let process = start();
    tokio::time::sleep(Duration::from_millis(200)).await;
    fs::rename(logs.join("app.log.1"), logs.join("app.log.2")).unwrap();
    fs::rename(&app, logs.join("app.log.1")).unwrap();
    append(&app, &json_lines("crash", 40_000..50_000));
    process.kill9();

    let process = start();
    wait_for(&data, 50_000).await;
    settle().await;
    assert_eq!(process.terminate().code(), Some(0));
    let records = common::indexed_logs(&data);
    assert_exactly(&records, "crash", 50_000);
    assert_eq!(records.len(), 50_000, "{}", records.len());
}

/// Replace the payload of the logs index's last commit (where the file checkpoints live)
/// with something that is not a checkpoint store.
fn damage_checkpoints(data: &Path) {
    let mut partitions: Vec<_> = fs::read_dir(data.join("logs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    partitions.sort();
    let meta_path = partitions.last().unwrap().join("meta.json");
    let mut meta: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&meta_path).unwrap()).unwrap();
    assert!(meta["payload"].as_str().unwrap().contains("files"));
    meta["payload"] = serde_json::Value::String("{\"files\": [damaged".into());
    fs::write(&meta_path, meta.to_string()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_checkpoints_start_the_service_and_follow_the_configured_policy() {
    let dir = common::temp_dir();
    let logs = dir.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    let data = common::data_path(&dir);
    let app = logs.join("app.log");
    let glob = logs.join("*.log");
    let start = |policy: tracelink::config::ReadFrom| {
        let data = data.clone();
        let glob = glob.clone();
        async move {
            TestServer::start(&data, |raw| {
                tail_config(raw, vec![source(&[&glob])]);
                raw.logs.on_damaged_checkpoints = policy;
            })
            .await
        }
    };
    append(&app, &json_lines("damaged", 0..100));
    let server = start(tracelink::config::ReadFrom::Beginning).await;
    wait_for(&data, 100).await;
    server.stop().await;

    // Policy "end": the service starts, nothing is read twice, new lines are read.
    damage_checkpoints(&data);
    let server = start(tracelink::config::ReadFrom::End).await;
    settle().await;
    assert_eq!(common::indexed_logs(&data).len(), 100);
    append(&app, &json_lines("damaged", 100..150));
    wait_for(&data, 150).await;
    settle().await;
    assert_exactly(&common::indexed_logs(&data), "damaged", 150);
    server.stop().await;

    // Policy "beginning" (the default): nothing is lost; the file is read again.
    damage_checkpoints(&data);
    let server = start(tracelink::config::ReadFrom::Beginning).await;
    let records = wait_for(&data, 300).await;
    assert_eq!(records.len(), 300, "read again from the beginning");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_while_stopped_inode_reuse_truncation_and_two_rotations() {
    let dir = common::temp_dir();
    let logs = dir.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    let data = common::data_path(&dir);
    let glob = logs.join("*.log*");
    let start = || {
        let data = data.clone();
        let glob = glob.clone();
        async move { TestServer::start(&data, |raw| tail_config(raw, vec![source(&[&glob])])).await }
    };
    let reused = logs.join("reused.log");
    let truncated = logs.join("truncated.log");
    let rotated = logs.join("rotated.log");
    append(&reused, &json_lines("reused-old", 0..50));
    append(&truncated, &json_lines("truncated-old", 0..50));
    append(&rotated, &json_lines("rotated", 0..50));
    let server = start().await;
    wait_for(&data, 150).await;
    server.stop().await;

    // While stopped: a file is deleted and a new one (which may get its inode) takes
    // its name; another is truncated and regrown past its old offset; a third is rotated
    // twice, with lines written to every generation.
    let old_inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&reused).unwrap());
    fs::remove_file(&reused).unwrap();
    append(&reused, &json_lines("reused-new", 0..80));
    let new_inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&reused).unwrap());
    File::create(&truncated).unwrap();
    append(&truncated, &json_lines("truncated-new", 0..90));
    append(&rotated, &json_lines("rotated", 50..60));
    fs::rename(&rotated, logs.join("rotated.log.1")).unwrap();
    append(&rotated, &json_lines("rotated", 60..70));
    fs::rename(logs.join("rotated.log.1"), logs.join("rotated.log.2")).unwrap();
    fs::rename(&rotated, logs.join("rotated.log.1")).unwrap();
    append(&rotated, &json_lines("rotated", 70..80));

    let server = start().await;
    wait_for(&data, 150 + 80 + 90 + 30).await;
    settle().await;
    let records = common::indexed_logs(&data);
    assert_exactly(&records, "reused-old", 50);
    assert_exactly(&records, "reused-new", 80);
    assert_exactly(&records, "truncated-old", 50);
    assert_exactly(&records, "truncated-new", 90);
    assert_exactly(&records, "rotated", 80);
    assert_eq!(records.len(), 350, "inode {old_inode} → {new_inode}");
    server.stop().await;
}

/// See: Fluent Bit #11265. A fragment is never indexed, and after `kill -9` and a restart
/// the completed line is indexed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_line_survives_kill9_and_is_indexed_once_when_completed() {
    let dir = common::temp_dir();
    let logs = dir.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    let data = common::data_path(&dir);
    let config = common::write_tail_config(dir.path(), &logs.join("*.log"), 50);
    let app = logs.join("app.log");
    append(&app, "{\"msg\":\"whole\",\"seq\":0,\"service\":\"partial\"}\n{\"msg\":\"a\",\"seq\":1,\"service\":\"partial\"");
    let process = common::spawn_binary_with_args(dir.path(), &data, &[], &["--config", &config]);
    wait_for(&data, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        common::indexed_logs(&data).len(),
        1,
        "the fragment is not indexed"
    );
    process.kill9();
    let process = common::spawn_binary_with_args(dir.path(), &data, &[], &["--config", &config]);
    append(&app, "}\n");
    wait_for(&data, 2).await;
    settle().await;
    assert_eq!(process.terminate().code(), Some(0));
    assert_exactly(&common::indexed_logs(&data), "partial", 2);
}
