//! Reading one file: deciding what a path is (known content, a copy, or a new file), reading
//! complete lines from the saved offset (plain or gzip), and handing the records with the
//! file's new checkpoint to the indexer.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::checkpoint::{
    fingerprint, marker_at, marker_of, Checkpoint, FINGERPRINT_BYTES, MARKER_BYTES,
};
use super::lines::{self, split, LineRules};
use super::{Outcome, Tailer, Tracked, GZIP_MAGIC, MAX_KNOWN_FILES};
use crate::config::{LogSourceConfig, ReadFrom};
use crate::ingest::logline::parse_line_as;
use crate::model::{LogRecord, LogSource};
use crate::pipeline::TailedBatch;

impl Tailer {
    /// Decide whether a file seen at `path` is content already known (a rename or a copy)
    /// or a new file, and where to start reading it.
    pub(super) fn identify(
        &mut self,
        source: usize,
        path: &Path,
        metadata: &fs::Metadata,
    ) -> Option<Tracked> {
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

    pub(super) fn read(&mut self, tracked: &mut Tracked) -> io::Result<Outcome> {
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
        let k8s = super::k8s::k8s_file_resolved(Path::new(&tracked.checkpoint.path));
        let fallback_service = source
            .service
            .clone()
            .or_else(|| k8s.as_ref().map(|k8s| k8s.container.clone()))
            .unwrap_or_else(|| {
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
            let parsed = parse_line_as(
                &group.text,
                source.format,
                source.regex.as_ref(),
                &source.fields,
            );
            self.stats.count_line(parsed.format, parsed.wrapper);
            let mut attributes = parsed.attributes;
            for (key, value) in k8s.iter().flat_map(|k8s| k8s.attributes()) {
                attributes.entry(key.to_owned()).or_insert(value);
            }
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
    pub(super) fn publish_lag(&self) {
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
