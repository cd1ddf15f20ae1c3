//! What the tailer remembers of a file: its identity (a fingerprint of the first line),
//! how far it was read, and an offset marker (a checksum of the bytes just before that
//! offset) that tells the same content from a different file with the same first line.
//! Checkpoints live in the logs index's commit payload, so they are durable exactly when
//! the lines they cover are.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use serde::{Deserialize, Serialize};

/// Bytes before the offset that the marker covers.
pub const MARKER_BYTES: u64 = 64;
/// The part of the first line that makes the fingerprint.
pub const FINGERPRINT_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub fingerprint: u64,
    /// Bytes consumed (of the decompressed stream for gzip files).
    pub offset: u64,
    pub marker: u32,
    /// Last path the file was seen at; device and inode are hints only.
    pub path: String,
    pub dev: u64,
    pub ino: u64,
    /// Inside a line longer than `max_line_bytes`, whose head was already indexed.
    #[serde(default)]
    pub skipping: bool,
    #[serde(default)]
    pub gzip: bool,
}

/// Fingerprint of a file's first line (up to `FINGERPRINT_BYTES`): two CRC-32s with
/// different seeds, so that colliding first lines are rarer than with one.
pub fn fingerprint(first_line: &[u8]) -> u64 {
    let head = &first_line[..first_line.len().min(FINGERPRINT_BYTES)];
    let mut low = crc32fast::Hasher::new();
    low.update(head);
    let mut high = crc32fast::Hasher::new_with_initial(0x9e37_79b9);
    high.update(head);
    high.update(&(head.len() as u32).to_le_bytes());
    (u64::from(high.finalize()) << 32) | u64::from(low.finalize())
}

/// Checksum of the bytes just before `offset` in `bytes` (a window starting at
/// `window_start` of the file).
pub fn marker_of(bytes_before_offset: &[u8]) -> u32 {
    let start = bytes_before_offset
        .len()
        .saturating_sub(MARKER_BYTES as usize);
    crc32fast::hash(&bytes_before_offset[start..])
}

/// The marker at `offset` of a plain file, or `None` when the file is shorter.
pub fn marker_at(file: &mut File, offset: u64) -> io::Result<Option<u32>> {
    let start = offset.saturating_sub(MARKER_BYTES);
    let mut buffer = vec![0u8; (offset - start) as usize];
    file.seek(SeekFrom::Start(start))?;
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => return Ok(None),
            read => filled += read,
        }
    }
    Ok(Some(marker_of(&buffer)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_tell_same_first_lines_apart() {
        assert_eq!(
            fingerprint(b"same first line"),
            fingerprint(b"same first line")
        );
        assert_ne!(
            fingerprint(b"same first line"),
            fingerprint(b"other first line")
        );
        assert_ne!(
            marker_of(b"line one\nline two\n"),
            marker_of(b"line one\nline 2!\n")
        );
        assert_eq!(marker_of(b""), crc32fast::hash(b""));
    }
}
