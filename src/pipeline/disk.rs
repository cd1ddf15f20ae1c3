//! The disk guard: ingest stops before the data directory's filesystem is full, and when
//! a write fails for want of space, and starts again by itself when space returns.
//!
//! Free space is read (statvfs) every [`CHECK_INTERVAL`]; below `storage.min_free_bytes`
//! every ingest request is refused with 503 + `Retry-After` (gRPC `UNAVAILABLE`) before
//! it is decoded and the tailer pauses (its files are its buffer), while queries go on.
//! A WAL write that fails with ENOSPC (the check came too late, or another process filled
//! the disk) is cut back to the last fsynced record and refused the same way, acking
//! nothing of it. An fsync failure is not that: nothing written since the last sync can be
//! trusted, so the WAL thread stops acking until a restart replays the log (Postgres's
//! lesson; see the WAL writer).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::lock;

/// How often free space is read.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

pub struct DiskGuard {
    dir: PathBuf,
    min_free_bytes: u64,
    /// Why ingest is refused now, if it is.
    refusing: Mutex<Option<String>>,
    pub free_bytes: AtomicU64,
    /// Requests refused for want of space.
    pub refused_requests: AtomicU64,
    /// Times ingest stopped for want of space.
    pub episodes: AtomicU64,
}

impl DiskGuard {
    pub fn new(dir: PathBuf, min_free_bytes: u64) -> DiskGuard {
        DiskGuard {
            dir,
            min_free_bytes,
            refusing: Mutex::new(None),
            free_bytes: AtomicU64::new(u64::MAX),
            refused_requests: AtomicU64::new(0),
            episodes: AtomicU64::new(0),
        }
    }

    /// Read free space; refuse or resume accordingly.
    pub fn check(&self) {
        let free = match rustix::fs::statvfs(&self.dir) {
            Ok(stat) => stat.f_bavail.saturating_mul(stat.f_frsize),
            Err(error) => {
                tracing::warn!(dir = %self.dir.display(), %error, "free space not read");
                return;
            }
        };
        self.free_bytes.store(free, Ordering::Relaxed);
        if free < self.min_free_bytes {
            self.refuse(format!(
                "free space on {} is {free} bytes, below storage.min_free_bytes ({})",
                self.dir.display(),
                self.min_free_bytes
            ));
        } else {
            let mut refusing = lock(&self.refusing);
            if let Some(reason) = refusing.take() {
                tracing::info!(free_bytes = free, previously = %reason, "disk space is back; ingest resumes");
            }
        }
    }

    /// A write failed for want of space: refuse until the next check finds room.
    pub fn write_failed(&self, error: &str) {
        self.refuse(format!("a write to {} failed: {error}", self.dir.display()));
    }

    fn refuse(&self, reason: String) {
        let mut refusing = lock(&self.refusing);
        if refusing.is_none() {
            tracing::error!(%reason, "ingest paused until there is space again");
            self.episodes.fetch_add(1, Ordering::Relaxed);
        }
        *refusing = Some(reason);
    }

    /// Why ingest is refused now, if it is.
    pub fn refusal(&self) -> Option<String> {
        lock(&self.refusing).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_below_the_floor_and_resumes_above_it() {
        let dir = tempfile::tempdir().unwrap();
        let guard = DiskGuard::new(dir.path().to_owned(), u64::MAX);
        guard.check();
        let reason = guard.refusal().unwrap();
        assert!(reason.contains("storage.min_free_bytes"), "{reason}");
        assert!(guard.free_bytes.load(Ordering::Relaxed) > 0);
        let guard = DiskGuard::new(dir.path().to_owned(), 0);
        guard.write_failed("No space left on device");
        assert!(guard.refusal().unwrap().contains("No space left"));
        guard.check();
        assert_eq!(guard.refusal(), None);
        assert_eq!(guard.episodes.load(Ordering::Relaxed), 1);
    }
}
