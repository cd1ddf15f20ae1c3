//! Model test of the tailer, against the real binary: random sequences of writes,
//! rename rotations, copytruncate rotations, deletions of rotated files, `kill -9` and
//! graceful restarts. Afterwards the indexed records must be exactly the lines written:
//! each once, none lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    Write(usize),
    RenameRotate,
    CopyTruncate,
    DeleteRotated,
    Crash,
    Restart,
    Pause(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1usize..300).prop_map(Step::Write),
        2 => Just(Step::RenameRotate),
        2 => Just(Step::CopyTruncate),
        1 => Just(Step::DeleteRotated),
        1 => Just(Step::Crash),
        1 => Just(Step::Restart),
        2 => (0u64..150).prop_map(Step::Pause),
    ]
}

struct World {
    dir: tempfile::TempDir,
    logs: PathBuf,
    data: PathBuf,
    config: String,
    next_seq: usize,
    rotations: usize,
    rotated: Vec<PathBuf>,
    process: Option<common::Process>,
    /// Everything the processes logged, to explain a failure.
    log: Vec<String>,
}

impl World {
    fn new() -> World {
        let dir = common::temp_dir();
        let logs = dir.path().join("logs");
        fs::create_dir_all(&logs).unwrap();
        let data = common::data_path(&dir);
        let config = common::write_tail_config(dir.path(), &logs.join("app.log*"), 30);
        let mut world = World {
            dir,
            logs,
            data,
            config,
            next_seq: 0,
            rotations: 0,
            rotated: Vec::new(),
            process: None,
            log: Vec::new(),
        };
        world.start();
        world
    }

    fn start(&mut self) {
        let process = common::spawn_binary_with_args(
            self.dir.path(),
            &self.data,
            &[("RUST_LOG", "info,tracelink::ingest::tail=debug")],
            &["--config", &self.config],
        );
        self.process = Some(process);
    }

    fn app(&self) -> PathBuf {
        self.logs.join("app.log")
    }

    fn write(&mut self, count: usize) {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.app())
            .unwrap();
        let mut text = String::new();
        for _ in 0..count {
            text.push_str(&format!(
                "{{\"msg\":\"model\",\"seq\":{},\"service\":\"model\"}}\n",
                self.next_seq
            ));
            self.next_seq += 1;
        }
        file.write_all(text.as_bytes()).unwrap();
    }

    fn rotate_name(&mut self) -> PathBuf {
        self.rotations += 1;
        self.logs.join(format!("app.log.{}", self.rotations))
    }

    fn indexed_seqs(&self) -> Vec<u64> {
        common::indexed_logs(&self.data)
            .iter()
            .map(|record| record.attributes["seq"].as_u64().unwrap())
            .collect()
    }

    fn wait_until_all_indexed(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.indexed_seqs().len() < self.next_seq && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    fn apply(&mut self, step: &Step) {
        match step {
            Step::Write(count) => self.write(*count),
            Step::RenameRotate => {
                if self.app().exists() {
                    let target = self.rotate_name();
                    fs::rename(self.app(), &target).unwrap();
                    self.rotated.push(target);
                }
            }
            Step::CopyTruncate => {
                if self.app().exists() {
                    let target = self.rotate_name();
                    fs::copy(self.app(), &target).unwrap();
                    File::create(self.app()).unwrap();
                    self.rotated.push(target);
                }
            }
            Step::DeleteRotated => {
                // Only what is fully indexed may go: lines deleted unread are gone for
                // any tailer.
                if let Some(oldest) = self.rotated.first().cloned() {
                    self.wait_until_all_indexed();
                    fs::remove_file(&oldest).unwrap();
                    self.rotated.remove(0);
                }
            }
            Step::Crash => {
                if let Some(process) = self.process.take() {
                    self.log.extend(process.drain_log());
                    process.kill9();
                }
                self.start();
            }
            Step::Restart => {
                if let Some(process) = self.process.take() {
                    std::thread::sleep(Duration::from_millis(50));
                    self.log.extend(process.drain_log());
                    assert_eq!(process.terminate().code(), Some(0));
                }
                self.start();
            }
            Step::Pause(millis) => std::thread::sleep(Duration::from_millis(*millis)),
        }
    }

    fn finish(mut self) -> (usize, Vec<u64>) {
        self.wait_until_all_indexed();
        std::thread::sleep(Duration::from_millis(300));
        if let Some(process) = self.process.take() {
            self.log.extend(process.drain_log());
            assert_eq!(process.terminate().code(), Some(0));
        }
        let mut seqs = self.indexed_seqs();
        seqs.sort();
        if seqs != (0..self.next_seq as u64).collect::<Vec<_>>() {
            for line in &self.log {
                eprintln!("tracelink: {line}");
            }
        }
        (self.next_seq, seqs)
    }
}

fn logs_dir(world: &World) -> &Path {
    &world.logs
}

proptest! {
    // 8 cases in CI; `TAILER_MODEL_CASES=200` for a longer hunt.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("TAILER_MODEL_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(8),
        max_shrink_iters: 0,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_written_line_is_indexed_exactly_once(steps in proptest::collection::vec(step(), 4..14)) {
        let mut world = World::new();
        world.write(5);
        for step in &steps {
            world.apply(step);
        }
        let files: BTreeSet<String> = fs::read_dir(logs_dir(&world))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let (written, seqs) = world.finish();
        let expected: Vec<u64> = (0..written as u64).collect();
        prop_assert_eq!(seqs, expected, "steps {:?}, files {:?}", steps, files);
    }
}

/// See: a model-test failure where the content of a file that was copytruncated and
/// then renamed was indexed twice.
#[test]
fn copytruncate_then_rename_then_restart_reads_once() {
    for _ in 0..5 {
        let mut world = World::new();
        world.write(5);
        let steps = [
            Step::Write(151),
            Step::Crash,
            Step::CopyTruncate,
            Step::DeleteRotated,
            Step::Write(177),
            Step::CopyTruncate,
            Step::Write(152),
            Step::Write(99),
            Step::RenameRotate,
            Step::Write(238),
            Step::Restart,
            Step::Pause(71),
        ];
        for step in &steps {
            world.apply(step);
        }
        let (written, seqs) = world.finish();
        assert_eq!(seqs, (0..written as u64).collect::<Vec<_>>());
    }
}
