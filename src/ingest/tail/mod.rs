//! The file tailer: finds files by polling their globs (a `notify` event only wakes the
//! scan early), knows a file by its content (first-line fingerprint plus an offset marker;
//! device and inode are hints), and reads complete lines into log records.
//!
//! Runs on its own thread. For each file and pass it sends the records it read together
//! with the file's new checkpoint to the pipeline's indexer, which makes both durable in
//! the same logs commit: after a crash the tailer resumes from the committed checkpoints,
//! so every complete line is indexed exactly once. When indexing falls behind, the send
//! blocks and the tailer stops reading: the file is its buffer.
//!
//! Rotation by rename keeps the old handle and drains it; a renamed file that still
//! matches a glob is recognised and not read again; truncation (size below the offset, or
//! different bytes before it) starts the file again as new content; a copy made by
//! copytruncate carries the old fingerprint and marker and continues from the saved
//! offset; a deleted file is read to its end before its handle is closed; gzip'd rotated
//! files are read through a decoder and recognised as already read.

pub mod checkpoint;
pub mod k8s;
pub mod lines;
mod reader;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use checkpoint::Checkpoint;

use crate::config::LogsConfig;
use crate::ingest::logline::{LineFormat, Wrapper};
use crate::pipeline::TailSender;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Checkpoints kept for files no longer seen (to recognise rotated copies); oldest go first.
const MAX_KNOWN_FILES: usize = 20_000;

/// Counters and gauges of the tailer, read by `/metrics`.
#[derive(Default)]
pub struct TailStats {
    pub lines_read: AtomicU64,
    /// Records by what their line was read as and the wrapper it came in, indexed
    /// `[LineFormat as usize][Wrapper as usize]` (see [`TailStats::count_line`]).
    pub lines_by_format: [[AtomicU64; 3]; 4],
    pub lines_truncated: AtomicU64,
    pub parse_errors: AtomicU64,
    pub files_open: AtomicU64,
    /// Bytes written but not yet read, per path.
    pub lag_bytes: Mutex<BTreeMap<String, u64>>,
}

impl TailStats {
    pub fn count_line(&self, format: LineFormat, wrapper: Wrapper) {
        self.lines_by_format[format as usize][wrapper as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn lines(&self, format: LineFormat, wrapper: Wrapper) -> u64 {
        self.lines_by_format[format as usize][wrapper as usize].load(Ordering::Relaxed)
    }
}

/// A running tailer; dropping it does not stop it, [`TailerHandle::stop`] does.
pub struct TailerHandle {
    stop: Arc<AtomicBool>,
    wake: Sender<()>,
    thread: Option<JoinHandle<()>>,
    pub stats: Arc<TailStats>,
}

impl TailerHandle {
    /// Stop after the current pass and wait for the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.send(());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("tailer thread panicked");
            }
        }
    }
}

/// Start tailing. `committed` is the checkpoint map of the last logs commit.
pub fn spawn(
    config: LogsConfig,
    sender: TailSender,
    committed: &BTreeMap<String, serde_json::Value>,
    checkpoints_damaged: bool,
) -> io::Result<TailerHandle> {
    let mut known = BTreeMap::new();
    for (key, value) in committed {
        match serde_json::from_value::<Checkpoint>(value.clone()) {
            Ok(checkpoint) => {
                known.insert(key.clone(), checkpoint);
            }
            Err(error) => {
                tracing::warn!(%key, %error, "ignoring a damaged file checkpoint; that file is read again from its start")
            }
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (wake, woken) = mpsc::channel();
    let stats = Arc::new(TailStats::default());
    let tailer = Tailer {
        config,
        sender,
        known,
        active: HashMap::new(),
        by_inode: HashMap::new(),
        finished_gzip: HashSet::new(),
        first_scan: true,
        checkpoints_damaged,
        stop: stop.clone(),
        stats: stats.clone(),
    };
    let watcher_wake = wake.clone();
    let thread = std::thread::Builder::new()
        .name("tracelink-tailer".into())
        .spawn(move || tailer.run(woken, watcher_wake))?;
    Ok(TailerHandle {
        stop,
        wake,
        thread: Some(thread),
        stats,
    })
}

struct Tracked {
    key: String,
    source: usize,
    checkpoint: Checkpoint,
    file: Option<File>,
    last_size: u64,
    /// With the size, what tells that a file changed since the last pass: a truncation
    /// followed by regrowth to the same size still changes the modification time.
    last_modified: Option<SystemTime>,
    last_growth: Instant,
    seen: bool,
    /// This scan found it at the size and time of the last read, read to its end:
    /// nothing to do (thousands of idle files then cost one stat each per scan).
    seen_unchanged: bool,
}

struct Tailer {
    config: LogsConfig,
    sender: TailSender,
    /// Every checkpoint: committed ones and those sent since.
    known: BTreeMap<String, Checkpoint>,
    /// Files being followed, by checkpoint key.
    active: HashMap<String, Tracked>,
    by_inode: HashMap<(u64, u64), String>,
    /// gzip files read to their end: (device, inode, size).
    finished_gzip: HashSet<(u64, u64, u64)>,
    first_scan: bool,
    /// The committed checkpoints could not be read; files found by the first scan start
    /// where `logs.on_damaged_checkpoints` says.
    checkpoints_damaged: bool,
    stop: Arc<AtomicBool>,
    stats: Arc<TailStats>,
}

enum Outcome {
    Progress,
    Idle,
    /// Shorter than the offset, or other bytes before it: new content.
    Rewritten,
    /// Read to the end and no longer reachable (deleted, renamed away, finished gzip).
    Done,
}

impl Tailer {
    fn run(mut self, woken: Receiver<()>, wake: Sender<()>) {
        let _watcher = self.watch(wake);
        while !self.stop.load(Ordering::SeqCst) {
            // Out of disk space: the files keep the lines until there is room again.
            if self.sender.paused() {
                let _ = woken.recv_timeout(self.config.poll_interval);
                continue;
            }
            if let Err(stopped) = self.scan() {
                tracing::info!(reason = stopped, "tailer stops");
                return;
            }
            match woken.recv_timeout(self.config.poll_interval) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => while woken.try_recv().is_ok() {},
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Filesystem events only wake the next scan early; polling is what finds files.
    fn watch(&self, wake: Sender<()>) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher;
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Our own opens and reads are events too (inotify's access events): waking on
                // them would turn polling into a busy loop.
                let wakes = event.is_ok_and(|event| {
                    matches!(
                        event.kind,
                        notify::EventKind::Create(_)
                            | notify::EventKind::Remove(_)
                            | notify::EventKind::Any
                    ) || matches!(
                        event.kind,
                        notify::EventKind::Modify(notify::event::ModifyKind::Data(_))
                            | notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
                            | notify::EventKind::Modify(notify::event::ModifyKind::Any)
                    )
                });
                if wakes {
                    let _ = wake.send(());
                }
            })
            .map_err(|error| tracing::debug!(%error, "no filesystem events; polling only"))
            .ok()?;
        for source in &self.config.sources {
            for pattern in &source.paths {
                let dir = static_prefix(pattern.as_str());
                if let Err(error) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
                    tracing::debug!(dir = %dir.display(), %error, "cannot watch; polling only");
                }
            }
        }
        Some(watcher)
    }

    fn scan(&mut self) -> Result<(), &'static str> {
        for tracked in self.active.values_mut() {
            tracked.seen = false;
            tracked.seen_unchanged = false;
        }
        let found = self.discover();
        let mut new_paths = Vec::new();
        for (source, path, metadata) in found {
            let inode = (metadata.dev(), metadata.ino());
            if let Some(key) = self.by_inode.get(&inode).cloned() {
                if let Some(tracked) = self.active.get_mut(&key) {
                    // An inode number freed by a deleted file can be given to a new one
                    // while the old handle is still open: then this path is new content.
                    let deleted = tracked
                        .file
                        .as_ref()
                        .and_then(|file| file.metadata().ok())
                        .is_some_and(|open| open.nlink() == 0);
                    if !deleted {
                        tracked.seen = true;
                        tracked.seen_unchanged = metadata.len() == tracked.last_size
                            && metadata.modified().ok() == tracked.last_modified
                            && tracked.checkpoint.offset >= metadata.len();
                        if Path::new(&tracked.checkpoint.path) != path {
                            tracked.checkpoint.path = path.display().to_string();
                        }
                        continue;
                    }
                    self.by_inode.remove(&inode);
                }
            }
            if self
                .finished_gzip
                .contains(&(inode.0, inode.1, metadata.len()))
            {
                continue;
            }
            new_paths.push((source, path, metadata));
        }
        // Read what is followed first: a truncated original frees its identity before
        // a copy of it (copytruncate) is identified.
        self.read_active()?;
        for (source, path, metadata) in new_paths {
            if let Some(tracked) = self.identify(source, &path, &metadata) {
                self.by_inode.insert(
                    (tracked.checkpoint.dev, tracked.checkpoint.ino),
                    tracked.key.clone(),
                );
                self.active.insert(tracked.key.clone(), tracked);
            }
        }
        self.read_active()?;
        self.first_scan = false;
        self.publish_lag();
        Ok(())
    }

    fn discover(&self) -> Vec<(usize, PathBuf, fs::Metadata)> {
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        for (index, source) in self.config.sources.iter().enumerate() {
            for pattern in &source.paths {
                let Ok(paths) = glob::glob(pattern.as_str()) else {
                    continue;
                };
                for path in paths.flatten() {
                    let excluded = |candidate: &Path| {
                        source
                            .exclude
                            .iter()
                            .any(|exclude| exclude.matches_path(candidate))
                    };
                    if excluded(&path) {
                        continue;
                    }
                    // A file reached twice (two globs, a symlink) is one inode; only links
                    // need resolving, for the exclude globs to see where they lead.
                    let Ok(link) = fs::symlink_metadata(&path) else {
                        continue;
                    };
                    if link.file_type().is_symlink() {
                        match fs::canonicalize(&path) {
                            Ok(target) if !excluded(&target) => {}
                            _ => continue,
                        }
                    }
                    let metadata = if link.file_type().is_symlink() {
                        match fs::metadata(&path) {
                            Ok(metadata) => metadata,
                            Err(_) => continue,
                        }
                    } else {
                        link
                    };
                    if metadata.is_file() && seen.insert((metadata.dev(), metadata.ino())) {
                        found.push((index, path, metadata));
                    }
                }
            }
        }
        found
    }

    fn read_active(&mut self) -> Result<(), &'static str> {
        let keys: Vec<String> = self
            .active
            .iter()
            .filter(|(_, tracked)| {
                !tracked.seen_unchanged
                    || tracked.file.is_some()
                        && tracked.last_growth.elapsed() >= self.config.idle_close
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in keys {
            let Some(mut tracked) = self.active.remove(&key) else {
                continue;
            };
            // One pass per file per scan keeps reading fair between files.
            match self.read(&mut tracked) {
                Ok(Outcome::Progress | Outcome::Idle) => {
                    self.active.insert(key, tracked);
                }
                Ok(outcome @ (Outcome::Rewritten | Outcome::Done)) => {
                    tracing::debug!(
                        path = %tracked.checkpoint.path,
                        key = %tracked.key,
                        rewritten = matches!(outcome, Outcome::Rewritten),
                        "file left"
                    );
                    let inode = (tracked.checkpoint.dev, tracked.checkpoint.ino);
                    if self.by_inode.get(&inode) == Some(&tracked.key) {
                        self.by_inode.remove(&inode);
                    }
                    if tracked.checkpoint.gzip {
                        if let Ok(metadata) = fs::metadata(&tracked.checkpoint.path) {
                            self.finished_gzip.insert((
                                metadata.dev(),
                                metadata.ino(),
                                metadata.len(),
                            ));
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(path = %tracked.checkpoint.path, %error, "reading a tailed file failed; retrying next pass");
                    self.active.insert(key, tracked);
                }
            }
            if self.stop.load(Ordering::SeqCst) {
                return Err("stop requested or pipeline closed");
            }
        }
        self.stats.files_open.store(
            self.active
                .values()
                .filter(|tracked| tracked.file.is_some())
                .count() as u64,
            Ordering::Relaxed,
        );
        Ok(())
    }
}

/// The directory part of a glob before its first wildcard, to watch for events.
fn static_prefix(pattern: &str) -> PathBuf {
    let mut prefix = PathBuf::new();
    for component in Path::new(pattern).components() {
        let text = component.as_os_str().to_string_lossy();
        if text.contains(['*', '?', '[', '{']) {
            break;
        }
        prefix.push(component);
    }
    if prefix.is_file() || prefix.as_os_str().is_empty() {
        prefix.pop();
    }
    prefix
}
