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
pub mod lines;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use checkpoint::{fingerprint, marker_at, marker_of, Checkpoint, FINGERPRINT_BYTES, MARKER_BYTES};
use lines::{split, LineRules};

use crate::config::{LogSourceConfig, LogsConfig, ReadFrom};
use crate::ingest::logline::parse_line;
use crate::model::{LogRecord, LogSource};
use crate::pipeline::{TailSender, TailedBatch};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Checkpoints kept for files no longer seen (to recognise rotated copies); oldest go first.
const MAX_KNOWN_FILES: usize = 20_000;

/// Counters and gauges of the tailer, read by `/metrics`.
#[derive(Default)]
pub struct TailStats {
    pub lines_read: AtomicU64,
    pub lines_truncated: AtomicU64,
    pub parse_errors: AtomicU64,
    pub files_open: AtomicU64,
    /// Bytes written but not yet read, per path.
    pub lag_bytes: Mutex<BTreeMap<String, u64>>,
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

    /// Decide whether a file seen at `path` is content already known (a rename or a copy)
    /// or a new file, and where to start reading it.
    fn identify(&mut self, source: usize, path: &Path, metadata: &fs::Metadata) -> Option<Tracked> {
        let mut file = File::open(path).ok()?;
        let gzip = starts_with_gzip_magic(&mut file);
        let first_line = if gzip {
            first_line_of(flate2::read::GzDecoder::new(File::open(path).ok()?))
        } else {
            file.seek(SeekFrom::Start(0)).ok()?;
            first_line_of(&mut file)
        }?;
        let fingerprint = fingerprint(&first_line);
        let (dev, ino) = (metadata.dev(), metadata.ino());
        let mut candidates: Vec<(String, Checkpoint)> = self
            .known
            .iter()
            .filter(|(_, checkpoint)| checkpoint.fingerprint == fingerprint)
            .map(|(key, checkpoint)| (key.clone(), checkpoint.clone()))
            .collect();
        candidates.sort_by_key(|(_, checkpoint)| !(checkpoint.dev == dev && checkpoint.ino == ino));
        for (key, checkpoint) in &candidates {
            if self.active.contains_key(key) {
                // A copy of a file still followed (copytruncate before the truncation):
                // wait; once the original is truncated, the copy continues its checkpoint.
                return None;
            }
            let same_content = if gzip {
                gzip_marker_at(path, checkpoint.offset).ok().flatten() == Some(checkpoint.marker)
            } else {
                marker_at(&mut file, checkpoint.offset).ok().flatten() == Some(checkpoint.marker)
            };
            if same_content {
                tracing::debug!(path = %path.display(), %key, offset = checkpoint.offset, "known content; resuming");
                let mut resumed = checkpoint.clone();
                resumed.path = path.display().to_string();
                resumed.dev = dev;
                resumed.ino = ino;
                resumed.gzip = gzip;
                return Some(self.tracked(key.clone(), source, resumed, file, metadata.len()));
            }
        }
        let read_from = if self.checkpoints_damaged {
            self.config.on_damaged_checkpoints
        } else {
            self.config.sources[source].read_from
        };
        let read_from_end =
            self.first_scan && candidates.is_empty() && read_from == ReadFrom::End && !gzip;
        let offset = if read_from_end {
            end_of_last_line(&mut file, metadata.len()).unwrap_or(0)
        } else {
            0
        };
        let marker = if offset == 0 {
            marker_of(&[])
        } else {
            marker_at(&mut file, offset)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        let mut key = format!("{fingerprint:016x}-{dev:x}-{ino:x}");
        let mut suffix = 1;
        while self.known.contains_key(&key)
            && !candidates
                .iter()
                .any(|(candidate, c)| candidate == &key && c.dev == dev && c.ino == ino)
        {
            key = format!("{fingerprint:016x}-{dev:x}-{ino:x}-{suffix}");
            suffix += 1;
        }
        tracing::debug!(path = %path.display(), %key, offset, candidates = candidates.len(), "new file");
        let checkpoint = Checkpoint {
            fingerprint,
            offset,
            marker,
            path: path.display().to_string(),
            dev,
            ino,
            skipping: false,
            gzip,
        };
        Some(self.tracked(key, source, checkpoint, file, metadata.len()))
    }

    fn tracked(
        &self,
        key: String,
        source: usize,
        checkpoint: Checkpoint,
        file: File,
        size: u64,
    ) -> Tracked {
        Tracked {
            key,
            source,
            checkpoint,
            file: Some(file),
            last_size: size,
            last_modified: None,
            last_growth: Instant::now(),
            seen: true,
            seen_unchanged: false,
        }
    }

    fn read(&mut self, tracked: &mut Tracked) -> io::Result<Outcome> {
        if tracked.checkpoint.gzip {
            return self.read_gzip(tracked);
        }
        if tracked.file.is_none() {
            if !tracked.seen {
                return Ok(Outcome::Done);
            }
            let file = File::open(&tracked.checkpoint.path)?;
            let metadata = file.metadata()?;
            if (metadata.dev(), metadata.ino()) != (tracked.checkpoint.dev, tracked.checkpoint.ino)
            {
                return Ok(Outcome::Done);
            }
            if metadata.len() == tracked.checkpoint.offset {
                return Ok(Outcome::Idle);
            }
            tracked.file = Some(file);
        }
        let Some(file) = tracked.file.as_mut() else {
            return Ok(Outcome::Done);
        };
        let metadata = file.metadata()?;
        let size = metadata.len();
        let modified = metadata.modified().ok();
        let offset = tracked.checkpoint.offset;
        if size < offset {
            return Ok(Outcome::Rewritten);
        }
        if size != tracked.last_size || modified != tracked.last_modified {
            if size != tracked.last_size {
                tracked.last_growth = Instant::now();
            }
            tracked.last_size = size;
            tracked.last_modified = modified;
            if offset > 0 && marker_at(file, offset)? != Some(tracked.checkpoint.marker) {
                return Ok(Outcome::Rewritten);
            }
        }
        if size == offset {
            if !tracked.seen {
                // Deleted or renamed away, and read to its end: close it.
                return Ok(Outcome::Done);
            }
            if tracked.last_growth.elapsed() >= self.config.idle_close {
                tracked.file = None;
            }
            return Ok(Outcome::Idle);
        }
        let source = &self.config.sources[tracked.source];
        let want = (size - offset).min(self.read_budget(source) as u64) as usize;
        let mut data = vec![0u8; want];
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut data)?;
        if offset == 0 {
            // Nothing read yet, so no marker to check: the first line must still be the
            // one the file was identified by (it may have been truncated and rewritten
            // since, by copytruncate for instance).
            let first_line_end = data.iter().position(|byte| *byte == b'\n');
            if let Some(end) = first_line_end {
                if fingerprint(&data[..=end]) != tracked.checkpoint.fingerprint {
                    return Ok(Outcome::Rewritten);
                }
            }
        }
        let idle = tracked.last_growth.elapsed() >= source.multiline_timeout;
        let rules = LineRules {
            max_line_bytes: source.max_line_bytes,
            multiline: source.multiline,
            flush_pending: idle || !tracked.seen,
        };
        let result = split(&data, offset, tracked.checkpoint.skipping, &rules);
        if result.consumed == 0 && result.groups.is_empty() {
            return Ok(Outcome::Idle);
        }
        let new_offset = offset + result.consumed as u64;
        let marker = if result.consumed as u64 >= MARKER_BYTES || offset == 0 {
            marker_of(&data[..result.consumed])
        } else {
            marker_at(file, new_offset)?.unwrap_or_default()
        };
        self.emit(tracked, result.groups, new_offset, marker, result.skipping)?;
        Ok(Outcome::Progress)
    }

    fn read_budget(&self, source: &LogSourceConfig) -> usize {
        self.config
            .max_read_bytes_per_pass
            .max(source.max_line_bytes + 1)
    }

    /// gzip files are complete: decompress, skip what was read, read the rest.
    fn read_gzip(&mut self, tracked: &mut Tracked) -> io::Result<Outcome> {
        let offset = tracked.checkpoint.offset;
        let source = &self.config.sources[tracked.source];
        let budget = self.read_budget(source);
        let mut decoder = flate2::read::GzDecoder::new(File::open(&tracked.checkpoint.path)?);
        io::copy(&mut (&mut decoder).take(offset), &mut io::sink())?;
        let mut data = Vec::new();
        (&mut decoder).take(budget as u64).read_to_end(&mut data)?;
        if data.is_empty() {
            return Ok(Outcome::Done);
        }
        let rules = LineRules {
            max_line_bytes: source.max_line_bytes,
            multiline: source.multiline,
            flush_pending: true,
        };
        let result = split(&data, offset, tracked.checkpoint.skipping, &rules);
        if result.consumed == 0 {
            return Ok(Outcome::Done);
        }
        let new_offset = offset + result.consumed as u64;
        let marker = if result.consumed as u64 >= MARKER_BYTES || offset == 0 {
            marker_of(&data[..result.consumed])
        } else {
            gzip_marker_at(Path::new(&tracked.checkpoint.path), new_offset)?.unwrap_or_default()
        };
        self.emit(tracked, result.groups, new_offset, marker, result.skipping)?;
        Ok(Outcome::Progress)
    }

    /// Hand records and the checkpoint after them to the indexer (blocks while it is
    /// behind).
    fn emit(
        &mut self,
        tracked: &mut Tracked,
        groups: Vec<lines::Group>,
        new_offset: u64,
        marker: u32,
        skipping: bool,
    ) -> io::Result<()> {
        let source = &self.config.sources[tracked.source];
        let observed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos() as u64)
            .unwrap_or_default();
        let fallback_service = source.service.clone().unwrap_or_else(|| {
            Path::new(&tracked.checkpoint.path)
                .file_stem()
                .map(|stem| {
                    stem.to_string_lossy()
                        .split('.')
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                })
                .unwrap_or_default()
        });
        let mut records = Vec::with_capacity(groups.len());
        let mut truncated = 0;
        let mut parse_errors = 0;
        for group in groups {
            let parsed = parse_line(&group.text, source.format, &source.fields);
            let mut attributes = parsed.attributes;
            if group.truncated {
                truncated += 1;
                attributes.insert("log.truncated".into(), serde_json::Value::Bool(true));
            }
            if parsed.parse_error.is_some() {
                parse_errors += 1;
            }
            let mut record = LogRecord {
                id: String::new(),
                time: String::new(),
                time_unix_nano: parsed.time_unix_nano.unwrap_or(observed),
                service: parsed.service.unwrap_or_else(|| fallback_service.clone()),
                level: parsed.level,
                message: parsed.message,
                trace_id: parsed.trace_id,
                trace_id_low64_only: parsed.trace_id_low64_only,
                span_id: parsed.span_id,
                attributes,
                stream: parsed.stream,
                source: Some(LogSource {
                    path: tracked.checkpoint.path.clone(),
                    offset: group.offset,
                }),
                parse_error: parsed.parse_error,
            };
            // The checkpoint key, not the fingerprint alone: two files may share a first
            // line, never a key.
            record.assign_id(LogRecord::file_id(
                fingerprint(tracked.key.as_bytes()),
                group.offset,
            ));
            records.push(record);
        }
        self.stats
            .lines_read
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        self.stats
            .lines_truncated
            .fetch_add(truncated, Ordering::Relaxed);
        self.stats
            .parse_errors
            .fetch_add(parse_errors, Ordering::Relaxed);
        tracked.checkpoint.offset = new_offset;
        tracked.checkpoint.marker = marker;
        tracked.checkpoint.skipping = skipping;
        let value = serde_json::to_value(&tracked.checkpoint).map_err(io::Error::other)?;
        let sent = self.sender.send(TailedBatch {
            records,
            checkpoint_key: tracked.key.clone(),
            checkpoint: Some(value),
        });
        if !sent {
            self.stop.store(true, Ordering::SeqCst);
            return Err(io::Error::other("pipeline closed"));
        }
        self.known
            .insert(tracked.key.clone(), tracked.checkpoint.clone());
        self.forget_oldest();
        Ok(())
    }

    fn forget_oldest(&mut self) {
        while self.known.len() > MAX_KNOWN_FILES {
            let Some(key) = self
                .known
                .keys()
                .find(|key| !self.active.contains_key(*key))
                .cloned()
            else {
                return;
            };
            self.known.remove(&key);
            if !self.sender.send(TailedBatch {
                records: Vec::new(),
                checkpoint_key: key,
                checkpoint: None,
            }) {
                return;
            }
        }
    }

    /// Files behind their writers, and by how much (files read to their end are left
    /// out, so thousands of idle files cost nothing here).
    fn publish_lag(&self) {
        let mut lag = BTreeMap::new();
        for tracked in self.active.values() {
            let behind = tracked.last_size.saturating_sub(tracked.checkpoint.offset);
            if behind > 0 {
                lag.insert(tracked.checkpoint.path.clone(), behind);
            }
        }
        if let Ok(mut shared) = self.stats.lag_bytes.lock() {
            *shared = lag;
        }
    }
}

fn starts_with_gzip_magic(file: &mut File) -> bool {
    let mut magic = [0u8; 2];
    file.seek(SeekFrom::Start(0)).is_ok()
        && file.read_exact(&mut magic).is_ok()
        && magic == GZIP_MAGIC
}

/// The first line, if it is complete (a file is not read before its first newline).
fn first_line_of(reader: impl Read) -> Option<Vec<u8>> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(reader.take(FINGERPRINT_BYTES as u64 * 64));
    reader.read_until(b'\n', &mut line).ok()?;
    if line.last() != Some(&b'\n') {
        return None;
    }
    Some(line)
}

/// The marker at `offset` of a gzip file's decompressed stream.
fn gzip_marker_at(path: &Path, offset: u64) -> io::Result<Option<u32>> {
    let mut decoder = flate2::read::GzDecoder::new(File::open(path)?);
    let start = offset.saturating_sub(MARKER_BYTES);
    io::copy(&mut (&mut decoder).take(start), &mut io::sink())?;
    let mut window = Vec::new();
    (&mut decoder)
        .take(offset - start)
        .read_to_end(&mut window)?;
    if (window.len() as u64) < offset - start {
        return Ok(None);
    }
    Ok(Some(marker_of(&window)))
}

/// Offset just past the last newline, for `read_from = "end"`.
fn end_of_last_line(file: &mut File, size: u64) -> io::Result<u64> {
    let mut position = size;
    let mut chunk = vec![0u8; 64 * 1024];
    while position > 0 {
        let start = position.saturating_sub(chunk.len() as u64);
        let len = (position - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk[..len])?;
        if let Some(index) = chunk[..len].iter().rposition(|byte| *byte == b'\n') {
            return Ok(start + index as u64 + 1);
        }
        position = start;
    }
    Ok(0)
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
