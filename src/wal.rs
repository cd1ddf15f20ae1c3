//! Write-ahead log: append, group-commit fsync, replay, truncation.
//!
//! Takes encoded batches from the pipeline's WAL thread (the only writer) and gives out
//! positions: a position is a byte offset in one endless log, cut into segment files named
//! after the position of their first byte (`00000000000000001234.wal`). A batch is acked
//! only after [`Wal::sync`] returned, and one sync covers every batch appended before it,
//! so concurrent requests share one fsync.
//!
//! Record layout: `len: u32 LE | crc32(kind, payload): u32 LE | kind: u8 | payload`.
//! On open, records after the committed position are replayed in order; a torn record at
//! the end of the last segment (a crash mid-write, never acked) is cut off.
//!
//! [`WalFiles`] is the reading side shared with the head: a read-only handle on every live
//! segment, so that spans still assembling are read back from the log (from the page
//! cache, as a rule) instead of being held twice, on disk and in memory.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, IoSlice, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const HEADER_BYTES: u64 = 9;
const SEGMENT_SUFFIX: &str = ".wal";
/// A record larger than this is treated as corruption rather than allocated.
const MAX_RECORD_BYTES: u32 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("wal io on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// fsync failed: what was written since the last sync cannot be trusted.
    #[error("wal fsync of {path} failed: {source}")]
    Fsync { path: PathBuf, source: io::Error },
}

impl WalError {
    /// A write (not an fsync) that failed for want of space (ENOSPC, EDQUOT).
    pub fn is_disk_full(&self) -> bool {
        match self {
            WalError::Io { source, .. } => {
                source.kind() == io::ErrorKind::StorageFull
                    || source.kind() == io::ErrorKind::QuotaExceeded
            }
            WalError::Fsync { .. } => false,
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a record holds; the pipeline decodes the payload accordingly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    Spans = 1,
    Logs = 2,
    /// In a cluster, after the records of a stream message: the partition and stream
    /// sequence they came from, so that a message written before a crash is recognised
    /// when the stream delivers it again.
    Stream = 3,
}

impl RecordKind {
    fn from_byte(byte: u8) -> Option<RecordKind> {
        match byte {
            1 => Some(RecordKind::Spans),
            2 => Some(RecordKind::Logs),
            3 => Some(RecordKind::Stream),
            _ => None,
        }
    }
}

/// One replayed record and the position just past it.
#[derive(Debug)]
pub struct Record {
    pub kind: RecordKind,
    pub payload: Vec<u8>,
    /// Where the record starts: replaying from here includes it.
    pub start_position: u64,
    pub end_position: u64,
}

/// The appending side of the log; owned by one thread.
pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    segment_path: PathBuf,
    segment_start: u64,
    writer: BufWriter<File>,
    position: u64,
    /// The position the last fsync made durable.
    synced_position: u64,
    unsynced: bool,
    files: Arc<WalFiles>,
}

impl Wal {
    /// Open the log in `dir`, replay every record that ends after `committed` into
    /// `on_record`, cut a torn tail, and return the log ready to append after the last
    /// valid record.
    pub fn open(
        files: Arc<WalFiles>,
        committed: u64,
        segment_bytes: u64,
        mut on_record: impl FnMut(Record),
    ) -> Result<Wal, WalError> {
        let dir = files.dir.as_path();
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let segments = list_segments(dir)?;
        for (start, path) in &segments {
            files.add(*start, path)?;
        }
        let mut next_position = committed;
        for (index, (start, path)) in segments.iter().enumerate() {
            let next_start = segments.get(index + 1).map(|(start, _)| *start);
            if next_start.is_some_and(|next_start| next_start <= committed) {
                continue;
            }
            let is_last = next_start.is_none();
            let valid_end = replay_segment(path, *start, committed, &mut on_record)?;
            let file_len = fs::metadata(path).map_err(io_error(path))?.len();
            if valid_end - start < file_len {
                if is_last {
                    tracing::warn!(
                        path = %path.display(),
                        valid_bytes = valid_end - start,
                        file_bytes = file_len,
                        "cutting torn tail of write-ahead log"
                    );
                    let file = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(io_error(path))?;
                    file.set_len(valid_end - start).map_err(io_error(path))?;
                    file.sync_all().map_err(io_error(path))?;
                } else {
                    tracing::error!(
                        path = %path.display(),
                        valid_bytes = valid_end - start,
                        "corrupt record inside write-ahead log segment; rest of segment skipped"
                    );
                }
            }
            next_position = next_position.max(valid_end);
        }
        let (segment_path, writer) = create_segment(dir, next_position)?;
        files.add(next_position, &segment_path)?;
        Ok(Wal {
            dir: dir.to_owned(),
            segment_bytes,
            segment_path,
            segment_start: next_position,
            writer,
            position: next_position,
            synced_position: next_position,
            unsynced: false,
            files,
        })
    }

    /// Buffer one record; returns the position just past it. Not durable until
    /// [`Wal::sync`].
    pub fn append(&mut self, kind: RecordKind, payload: &[u8]) -> Result<u64, WalError> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|len| *len <= MAX_RECORD_BYTES)
            .ok_or_else(|| WalError::Io {
                path: self.segment_path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "record too large"),
            })?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&[kind as u8]);
        crc.update(payload);
        let mut header = [0u8; HEADER_BYTES as usize];
        header[..4].copy_from_slice(&len.to_le_bytes());
        header[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
        header[8] = kind as u8;
        let path = &self.segment_path;
        if payload.len() >= DIRECT_WRITE_BYTES {
            // A big record (a request's spans) goes to the kernel from where it lies, after
            // what the buffer holds: copying it through the buffer first was an eighth of
            // this thread's time at full rate.
            self.writer.flush().map_err(io_error(path))?;
            write_all_vectored(
                self.writer.get_mut(),
                &mut [IoSlice::new(&header), IoSlice::new(payload)],
            )
            .map_err(io_error(path))?;
        } else {
            self.writer.write_all(&header).map_err(io_error(path))?;
            self.writer.write_all(payload).map_err(io_error(path))?;
        }
        self.position += HEADER_BYTES + u64::from(len);
        self.unsynced = true;
        Ok(self.position)
    }

    /// Make every appended record durable, then roll to a new segment if this one is full.
    pub fn sync(&mut self) -> Result<(), WalError> {
        if self.unsynced {
            let path = &self.segment_path;
            self.writer.flush().map_err(io_error(path))?;
            self.writer
                .get_ref()
                .sync_data()
                .map_err(|source| WalError::Fsync {
                    path: path.clone(),
                    source,
                })?;
            self.unsynced = false;
            self.synced_position = self.position;
        }
        if self.position - self.segment_start >= self.segment_bytes {
            // A new segment that cannot be made now (no space) is tried again after the
            // next sync; this one takes the records meanwhile.
            match create_segment(&self.dir, self.position) {
                Ok((segment_path, writer)) => {
                    self.files.add(self.position, &segment_path)?;
                    self.segment_path = segment_path;
                    self.writer = writer;
                    self.segment_start = self.position;
                }
                Err(error) => {
                    tracing::warn!(%error, "new write-ahead log segment not made; the current one goes on")
                }
            }
        }
        Ok(())
    }

    /// After an append or a flush failed (nothing of it was fsynced): cut the segment back
    /// to the last fsynced record and go on from there, as if the failed records had never
    /// been appended.
    pub fn discard_unsynced(&mut self) -> Result<(), WalError> {
        let path = self.segment_path.clone();
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_error(&path))?;
        // The old writer's buffer is dropped unwritten (`into_parts` does not flush).
        let old = std::mem::replace(
            &mut self.writer,
            BufWriter::with_capacity(WRITE_BUFFER_BYTES, file),
        );
        let _ = old.into_parts();
        let keep = self.synced_position - self.segment_start;
        self.writer
            .get_mut()
            .set_len(keep)
            .map_err(io_error(&path))?;
        self.position = self.synced_position;
        self.unsynced = false;
        Ok(())
    }

    pub fn position(&self) -> u64 {
        self.position
    }
}

/// Where bytes lie in the log: an open segment and an offset in it. Holding one keeps the
/// segment readable even after it is deleted (the handle outlives the name).
#[derive(Clone)]
pub struct WalSlice {
    file: Arc<File>,
    offset: u64,
    len: u32,
}

/// Read-only handles on the log's live segments, shared by the writer (which adds and
/// removes segments) and the readers of spans still assembling.
pub struct WalFiles {
    dir: PathBuf,
    /// Segment start position → read-only handle.
    segments: Mutex<BTreeMap<u64, Arc<File>>>,
}

// === impl WalFiles ===

impl WalFiles {
    pub fn new(dir: &Path) -> WalFiles {
        WalFiles {
            dir: dir.to_owned(),
            segments: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn add(&self, start: u64, path: &Path) -> Result<(), WalError> {
        let file = File::open(path).map_err(io_error(path))?;
        crate::lock(&self.segments).insert(start, Arc::new(file));
        Ok(())
    }

    /// Slices of many positions, under one lock.
    pub fn slices(&self, places: impl Iterator<Item = (u64, u32)>) -> Vec<Option<WalSlice>> {
        let segments = crate::lock(&self.segments);
        places
            .map(|(position, len)| {
                let (start, file) = segments.range(..=position).next_back()?;
                Some(WalSlice {
                    file: file.clone(),
                    offset: position - start,
                    len,
                })
            })
            .collect()
    }

    /// Delete the segments every record of which ends at or before `committed`. The
    /// newest segment is always kept: it is the one being appended to. Readers holding a
    /// slice of a deleted segment can still read it.
    pub fn remove_segments_below(&self, committed: u64) -> Result<usize, WalError> {
        let segments = list_segments(&self.dir)?;
        let mut removed = 0;
        for pair in segments.windows(2) {
            let (start, path) = &pair[0];
            let (next_start, _) = &pair[1];
            if *next_start <= committed {
                fs::remove_file(path).map_err(io_error(path))?;
                crate::lock(&self.segments).remove(start);
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Read slices, one read for each run of slices that lie back to back in one segment, or
/// separated only by `gap` bytes (the length prefix between span payloads). Every slice
/// comes back as its own `Bytes`, sharing the run's buffer.
pub fn read_slices(slices: &[WalSlice], gap: u64) -> io::Result<Vec<bytes::Bytes>> {
    let mut out = Vec::with_capacity(slices.len());
    let mut run_start = 0;
    while run_start < slices.len() {
        let first = &slices[run_start];
        let mut run_end = run_start + 1;
        let mut end = first.offset + u64::from(first.len);
        while let Some(next) = slices.get(run_end) {
            if !Arc::ptr_eq(&next.file, &first.file) || next.offset != end + gap {
                break;
            }
            end = next.offset + u64::from(next.len);
            run_end += 1;
        }
        let mut buffer = vec![0u8; (end - first.offset) as usize];
        first.file.read_exact_at(&mut buffer, first.offset)?;
        let buffer = bytes::Bytes::from(buffer);
        for slice in &slices[run_start..run_end] {
            let from = (slice.offset - first.offset) as usize;
            out.push(buffer.slice(from..from + slice.len as usize));
        }
        run_start = run_end;
    }
    Ok(out)
}

/// Where a record's payload starts, given where the record starts.
pub fn payload_position(record_start: u64) -> u64 {
    record_start + HEADER_BYTES
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let Some(start) = name
            .to_str()
            .and_then(|name| name.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|stem| stem.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push((start, entry.path()));
    }
    segments.sort();
    Ok(segments)
}

/// The appending side's buffer: records go to the kernel when it fills or at each sync.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// Records at least this long are written past the buffer.
const DIRECT_WRITE_BYTES: usize = 64 << 10;

/// Write every byte of `slices`, in as few calls as the kernel allows.
fn write_all_vectored(file: &mut File, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut slices, written),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

fn create_segment(dir: &Path, start: u64) -> Result<(PathBuf, BufWriter<File>), WalError> {
    let path = dir.join(format!("{start:020}{SEGMENT_SUFFIX}"));
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_error(&path))?;
    // The new file's directory entry must be durable before any ack relies on it.
    File::open(dir)
        .and_then(|dir_handle| dir_handle.sync_all())
        .map_err(io_error(dir))?;
    Ok((path, BufWriter::with_capacity(WRITE_BUFFER_BYTES, file)))
}

/// Read one segment; hand over records ending after `committed`; return the position just
/// past the last valid record.
fn replay_segment(
    path: &Path,
    start: u64,
    committed: u64,
    on_record: &mut impl FnMut(Record),
) -> Result<u64, WalError> {
    let file = File::open(path).map_err(io_error(path))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut position = start;
    loop {
        let mut header = [0u8; HEADER_BYTES as usize];
        if !read_exact_or_eof(&mut reader, &mut header).map_err(io_error(path))? {
            return Ok(position);
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let expected_crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let Some(kind) = RecordKind::from_byte(header[8]) else {
            return Ok(position);
        };
        if len > MAX_RECORD_BYTES {
            return Ok(position);
        }
        let mut payload = vec![0u8; len as usize];
        if !read_exact_or_eof(&mut reader, &mut payload).map_err(io_error(path))? {
            return Ok(position);
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&[header[8]]);
        crc.update(&payload);
        if crc.finalize() != expected_crc {
            return Ok(position);
        }
        let start_position = position;
        position += HEADER_BYTES + u64::from(len);
        if position > committed {
            on_record(Record {
                kind,
                payload,
                start_position,
                end_position: position,
            });
        }
    }
}

/// Fill `buf` completely, or report a clean or torn end of file as `false`.
fn read_exact_or_eof(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay_all(dir: &Path, committed: u64) -> (Wal, Vec<Record>) {
        let mut records = Vec::new();
        let files = Arc::new(WalFiles::new(dir));
        let wal = Wal::open(files, committed, 1 << 20, |record| records.push(record)).unwrap();
        (wal, records)
    }

    #[test]
    fn appended_records_replay_after_their_committed_position() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, records) = replay_all(dir.path(), 0);
        assert!(records.is_empty());
        let first = wal.append(RecordKind::Spans, b"one").unwrap();
        let second = wal.append(RecordKind::Spans, b"two").unwrap();
        wal.sync().unwrap();
        drop(wal);

        let (_, records) = replay_all(dir.path(), 0);
        let payloads: Vec<_> = records.iter().map(|r| r.payload.clone()).collect();
        assert_eq!(payloads, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(records[1].end_position, second);

        let (wal, records) = replay_all(dir.path(), first);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].payload, b"two");
        assert_eq!(wal.position(), second);
    }

    #[test]
    fn big_records_written_past_the_buffer_keep_their_place() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = replay_all(dir.path(), 0);
        let big: Vec<u8> = (0..DIRECT_WRITE_BYTES * 3)
            .map(|index| (index % 251) as u8)
            .collect();
        let payloads = [
            b"small before".to_vec(),
            big.clone(),
            b"small after".to_vec(),
            big[..DIRECT_WRITE_BYTES].to_vec(),
        ];
        let ends: Vec<u64> = payloads
            .iter()
            .map(|payload| wal.append(RecordKind::Spans, payload).unwrap())
            .collect();
        wal.sync().unwrap();
        drop(wal);
        let (wal, records) = replay_all(dir.path(), 0);
        let replayed: Vec<_> = records.iter().map(|r| r.payload.clone()).collect();
        assert_eq!(replayed, payloads);
        let replayed_ends: Vec<u64> = records.iter().map(|r| r.end_position).collect();
        assert_eq!(replayed_ends, ends);
        assert_eq!(wal.position(), ends[3]);
    }

    #[test]
    fn torn_tail_is_cut_and_appends_continue_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = replay_all(dir.path(), 0);
        let end = wal.append(RecordKind::Spans, b"kept").unwrap();
        wal.sync().unwrap();
        drop(wal);
        let segment = list_segments(dir.path()).unwrap()[0].1.clone();
        let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
        file.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(file);

        let (mut wal, records) = replay_all(dir.path(), 0);
        assert_eq!(records.len(), 1);
        assert_eq!(wal.position(), end);
        let next = wal.append(RecordKind::Spans, b"after").unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (_, records) = replay_all(dir.path(), 0);
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].end_position, next);
    }

    #[test]
    fn flipped_bit_stops_replay_at_the_damaged_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = replay_all(dir.path(), 0);
        wal.append(RecordKind::Spans, b"good").unwrap();
        wal.append(RecordKind::Spans, b"damaged").unwrap();
        wal.sync().unwrap();
        drop(wal);
        let segment = list_segments(dir.path()).unwrap()[0].1.clone();
        let mut bytes = fs::read(&segment).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        fs::write(&segment, bytes).unwrap();
        let (_, records) = replay_all(dir.path(), 0);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].payload, b"good");
    }

    #[test]
    fn segments_roll_over_and_old_ones_are_removed_once_committed() {
        let dir = tempfile::tempdir().unwrap();
        let files = Arc::new(WalFiles::new(dir.path()));
        let mut wal = Wal::open(files.clone(), 0, 64, |_| {}).unwrap();
        let mut ends = Vec::new();
        for index in 0..10u8 {
            ends.push(wal.append(RecordKind::Spans, &[index; 60]).unwrap());
            wal.sync().unwrap();
        }
        assert!(list_segments(dir.path()).unwrap().len() >= 10);
        let removed = files.remove_segments_below(ends[6]).unwrap();
        assert_eq!(removed, 7);
        drop(wal);
        let (_, records) = replay_all(dir.path(), ends[6]);
        let firsts: Vec<u8> = records.iter().map(|r| r.payload[0]).collect();
        assert_eq!(firsts, vec![7, 8, 9]);
    }
}
