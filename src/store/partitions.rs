//! Time partitions: each index (traces, logs) is a set of tantivy indexes, one per window
//! of `storage.partition_hours`, in directories named by the window's start
//! (`traces/20261202T050000Z`). The indexer writes into the partition of the current
//! window (by the time it writes, as Loki and Tempo place data by ingestion), queries read
//! them all, and retention drops a partition whole: out of the list first (new queries
//! stop seeing it), renamed to `….dropping` (a restart finishes what a crash interrupted),
//! and deleted once the queries still holding it are done.
//!
//! The commit payload (WAL position, the tailer's checkpoints) is read from the newest
//! partition that has one; the indexer commits a new partition as soon as it opens it, so
//! every partition but the newest may be dropped without losing it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::{CommitPayload, StoreError};

/// Name suffix of a partition being deleted.
const DROPPING: &str = ".dropping";
/// How long a dropped partition waits for the queries that still read it.
const DROP_GRACE: Duration = Duration::from_secs(60);

/// A tantivy index kept in partitions (traces, logs).
pub trait PartitionIndex: Sized + Send + Sync + 'static {
    fn open(dir: &Path) -> Result<Self, StoreError>;

    /// Its index and reader.
    fn tantivy(&self) -> (&tantivy::Index, &tantivy::IndexReader);

    /// The payload of its last commit, `None` before the first.
    fn commit_payload(&self) -> Result<Option<CommitPayload>, StoreError> {
        match self.tantivy().0.load_metas()?.payload {
            Some(text) => Ok(Some(CommitPayload::parse(Some(&text))?)),
            None => Ok(None),
        }
    }

    /// Whether anything was ever committed (its payload may not be readable).
    fn has_commit(&self) -> Result<bool, StoreError> {
        Ok(self.tantivy().0.load_metas()?.payload.is_some())
    }

    /// Make what its directory holds now visible to searches.
    fn reload(&self) -> Result<(), StoreError> {
        Ok(self.tantivy().1.reload()?)
    }

    /// Its writer (one indexing thread: the indexer thread is the only writer).
    fn writer(&self, memory_bytes: usize) -> Result<tantivy::IndexWriter, StoreError> {
        Ok(self.tantivy().0.writer_with_num_threads(1, memory_bytes)?)
    }

    /// Commit what the writer holds with `payload`, and make it visible to searches
    /// before returning.
    fn commit(
        &self,
        writer: &mut tantivy::IndexWriter,
        payload: &CommitPayload,
    ) -> Result<(), StoreError> {
        let mut prepared = writer.prepare_commit()?;
        prepared.set_payload(&payload.render());
        prepared.commit()?;
        self.reload()
    }
}

/// One window's index.
pub struct Partition<I> {
    /// Unix seconds of the window's start.
    pub start: i64,
    pub dir: PathBuf,
    pub index: I,
}

impl<I> Partition<I> {
    /// The partition's name: its window's start, `20261202T050000Z`.
    pub fn name(&self) -> String {
        partition_name(self.start)
    }
}

/// Why a partition was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Older than the retention age.
    Age,
    /// Storage grew past `retention.max_disk_bytes`.
    Disk,
}

impl DropReason {
    pub const ALL: [DropReason; 2] = [DropReason::Age, DropReason::Disk];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Age => "age",
            DropReason::Disk => "disk",
        }
    }
}

/// The partitions of one index, oldest first.
pub struct Partitions<I> {
    root: PathBuf,
    window_secs: i64,
    list: RwLock<Vec<Arc<Partition<I>>>>,
    dropped: [AtomicU64; 2],
}

pub fn partition_name(start: i64) -> String {
    chrono::DateTime::from_timestamp(start, 0)
        .map(|time| time.format("%Y%m%dT%H%M%SZ").to_string())
        .unwrap_or_else(|| start.to_string())
}

fn parse_partition_name(name: &str) -> Option<i64> {
    chrono::NaiveDateTime::parse_from_str(name, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|time| time.and_utc().timestamp())
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or(0)
}

impl<I: PartitionIndex> Partitions<I> {
    /// Open every partition under `root`, finishing interrupted drops and moving an index
    /// of an earlier version (made directly in `root`) into a partition of its own.
    pub fn open(root: &Path, window: Duration) -> Result<Partitions<I>, StoreError> {
        Partitions::open_as(root, window, false)
    }

    /// Open the committed partitions beside the process that owns them (a test, a tool):
    /// nothing is moved, deleted or created, partitions not yet committed are left out.
    pub fn open_read_only(root: &Path, window: Duration) -> Result<Partitions<I>, StoreError> {
        Partitions::open_as(root, window, true)
    }

    fn open_as(
        root: &Path,
        window: Duration,
        read_only: bool,
    ) -> Result<Partitions<I>, StoreError> {
        let window_secs = (window.as_secs() as i64).max(1);
        if !read_only {
            migrate_unpartitioned(root, window_secs)?;
            std::fs::create_dir_all(root)?;
        }
        let mut list = Vec::new();
        let entries = match std::fs::read_dir(root) {
            Ok(entries) => entries,
            Err(error) if read_only && error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Partitions {
                    root: root.to_owned(),
                    window_secs,
                    list: RwLock::new(list),
                    dropped: Default::default(),
                })
            }
            Err(error) => return Err(error.into()),
        };
        for entry in entries {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(DROPPING) {
                if !read_only {
                    tracing::info!(path = %entry.path().display(), "finishing an interrupted partition drop");
                    remove_dir_all(&entry.path())?;
                }
                continue;
            }
            if read_only && !entry.path().join("meta.json").exists() {
                continue;
            }
            let Some(start) = parse_partition_name(&name) else {
                tracing::warn!(path = %entry.path().display(), "not a partition; left alone");
                continue;
            };
            let dir = entry.path();
            list.push(Arc::new(Partition {
                start,
                index: I::open(&dir)?,
                dir,
            }));
        }
        list.sort_by_key(|partition| partition.start);
        Ok(Partitions {
            root: root.to_owned(),
            window_secs,
            list: RwLock::new(list),
            dropped: Default::default(),
        })
    }

    /// Every partition, newest first: what a query reads (the list it gets stays readable
    /// while it runs, whatever retention does).
    pub fn newest_first(&self) -> Vec<Arc<Partition<I>>> {
        let list = self
            .list
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        list.iter().rev().cloned().collect()
    }

    pub fn window_secs(&self) -> i64 {
        self.window_secs
    }

    /// The start of the window holding `unix_secs`.
    pub fn window_start(&self, unix_secs: i64) -> i64 {
        unix_secs.div_euclid(self.window_secs) * self.window_secs
    }

    /// The newest partition, when it is the window of `unix_secs` or later (a clock set
    /// back does not open partitions out of order); `None` when that window has none yet.
    pub fn current(&self, unix_secs: i64) -> Option<Arc<Partition<I>>> {
        let list = self
            .list
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        list.last()
            .filter(|newest| newest.start >= self.window_start(unix_secs))
            .cloned()
    }

    /// The partition to write into at `unix_secs`, opened when its window has none.
    pub fn current_or_open(&self, unix_secs: i64) -> Result<Arc<Partition<I>>, StoreError> {
        if let Some(current) = self.current(unix_secs) {
            return Ok(current);
        }
        let start = self.window_start(unix_secs);
        let dir = self.root.join(partition_name(start));
        let partition = Arc::new(Partition {
            start,
            index: I::open(&dir)?,
            dir,
        });
        let mut list = self
            .list
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        list.push(partition.clone());
        Ok(partition)
    }

    /// The payload of the newest commit of any partition.
    pub fn committed(&self) -> Result<Option<CommitPayload>, StoreError> {
        for partition in self.newest_first() {
            if let Some(payload) = partition.index.commit_payload()? {
                return Ok(Some(payload));
            }
        }
        Ok(None)
    }

    /// Take a partition out of the list and delete it once no query reads it. The newest
    /// partition is never dropped. Returns whether it was.
    pub fn drop_partition(&self, start: i64, reason: DropReason) -> bool {
        let removed = {
            let mut list = self
                .list
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let Some(position) = list.iter().position(|partition| partition.start == start) else {
                return false;
            };
            if position + 1 == list.len() {
                return false;
            }
            list.remove(position)
        };
        self.dropped[reason as usize].fetch_add(1, Ordering::Relaxed);
        let name = removed.name();
        let dropping = self.root.join(format!("{name}{DROPPING}"));
        if let Err(error) = std::fs::rename(&removed.dir, &dropping) {
            tracing::error!(path = %removed.dir.display(), %error, "cannot rename a dropped partition; it is deleted in place");
        }
        tracing::info!(partition = %name, reason = reason.as_str(), "partition dropped");
        let spawned = std::thread::Builder::new()
            .name("tracelink-drop".into())
            .spawn(move || {
                let waiting = Instant::now();
                while Arc::strong_count(&removed) > 1 && waiting.elapsed() < DROP_GRACE {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let path = if dropping.exists() {
                    dropping
                } else {
                    removed.dir.clone()
                };
                drop(removed);
                if let Err(error) = remove_dir_all(&path) {
                    tracing::error!(path = %path.display(), %error, "cannot delete a dropped partition");
                }
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start deleting a dropped partition; the next start does");
        }
        true
    }

    /// Partitions dropped since start, for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    /// `(start, bytes)` of every partition, oldest first.
    pub fn sizes(&self) -> Vec<(i64, u64)> {
        let mut sizes: Vec<(i64, u64)> = self
            .newest_first()
            .iter()
            .map(|partition| (partition.start, super::dir_bytes(&partition.dir)))
            .collect();
        sizes.reverse();
        sizes
    }
}

/// Delete a directory tree; one already gone (deleted by the other of a drop's thread
/// and a start finishing it) is no error.
fn remove_dir_all(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// An index written directly in `root` by a version without partitions becomes the
/// partition of the window its last commit was made in: `root` is renamed aside, then
/// into the new `root`; each step is one rename, and a start after a crash between them
/// finishes the move.
fn migrate_unpartitioned(root: &Path, window_secs: i64) -> Result<(), StoreError> {
    let aside = root.with_extension("unpartitioned");
    if root.join("meta.json").exists() {
        std::fs::rename(root, &aside)?;
    }
    if !aside.exists() {
        return Ok(());
    }
    let modified = std::fs::metadata(aside.join("meta.json"))
        .and_then(|metadata| metadata.modified())
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or_else(unix_now, |elapsed| elapsed.as_secs() as i64);
    let start = modified.div_euclid(window_secs) * window_secs;
    std::fs::create_dir_all(root)?;
    let target = root.join(partition_name(start));
    tracing::info!(from = %root.display(), to = %target.display(), "index of an earlier version moved into a partition");
    std::fs::rename(&aside, target)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LogIndex;

    #[test]
    fn names_round_trip_and_windows_align() {
        assert_eq!(partition_name(1_764_651_600), "20251202T050000Z");
        assert_eq!(
            parse_partition_name("20251202T050000Z"),
            Some(1_764_651_600)
        );
        assert_eq!(parse_partition_name("traces"), None);
        let dir = tempfile::tempdir().unwrap();
        let partitions: Partitions<LogIndex> =
            Partitions::open(&dir.path().join("logs"), Duration::from_secs(3600)).unwrap();
        assert_eq!(partitions.window_start(1_764_653_000), 1_764_651_600);
    }

    #[test]
    fn partitions_open_in_order_and_a_drop_is_finished_by_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("logs");
        let window = Duration::from_secs(10);
        {
            let partitions: Partitions<LogIndex> = Partitions::open(&root, window).unwrap();
            for at in [100, 125, 101, 131] {
                partitions.current_or_open(at).unwrap();
            }
            let starts: Vec<i64> = partitions.newest_first().iter().map(|p| p.start).collect();
            assert_eq!(
                starts,
                vec![130, 120, 100],
                "the window of 101 was open already"
            );
            // A clock set back writes into the newest partition.
            assert_eq!(partitions.current_or_open(50).unwrap().start, 130);
            assert!(
                !partitions.drop_partition(130, DropReason::Age),
                "never the newest"
            );
            let held = partitions.newest_first();
            assert!(partitions.drop_partition(100, DropReason::Disk));
            assert_eq!(partitions.dropped(DropReason::Disk), 1);
            assert_eq!(partitions.newest_first().len(), 2);
            // A query that held it still reads it.
            assert_eq!(held[2].index.num_docs(), 0);
            let dropping = root.join(format!("{}{DROPPING}", partition_name(100)));
            assert!(dropping.exists());
            drop(held);
            while dropping.exists() {
                std::thread::sleep(Duration::from_millis(10));
            }
            // A crash in the middle of a drop: the renamed directory is left behind.
            std::fs::rename(
                root.join(partition_name(120)),
                root.join(format!("{}{DROPPING}", partition_name(120))),
            )
            .unwrap();
        }
        let partitions: Partitions<LogIndex> = Partitions::open(&root, window).unwrap();
        let starts: Vec<i64> = partitions.newest_first().iter().map(|p| p.start).collect();
        assert_eq!(starts, vec![130]);
        let left: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec![partition_name(130)]);
    }

    #[test]
    fn a_read_only_open_changes_nothing_and_reads_only_committed_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("logs");
        let window = Duration::from_secs(10);
        let missing: Partitions<LogIndex> = Partitions::open_read_only(&root, window).unwrap();
        assert!(missing.newest_first().is_empty());
        assert!(!root.exists(), "nothing created");
        let owner: Partitions<LogIndex> = Partitions::open(&root, window).unwrap();
        owner.current_or_open(100).unwrap();
        std::fs::create_dir_all(root.join(partition_name(110))).unwrap();
        std::fs::create_dir_all(root.join(format!("{}{DROPPING}", partition_name(90)))).unwrap();
        let reader: Partitions<LogIndex> = Partitions::open_read_only(&root, window).unwrap();
        let starts: Vec<i64> = reader.newest_first().iter().map(|p| p.start).collect();
        assert_eq!(starts, vec![100], "the empty directory is no partition yet");
        assert!(root
            .join(format!("{}{DROPPING}", partition_name(90)))
            .exists());
        assert!(!root.join(partition_name(110)).join("meta.json").exists());
    }

    #[test]
    fn an_index_of_an_earlier_version_becomes_a_partition() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("logs");
        {
            let index = LogIndex::open(&root).unwrap();
            let mut writer = index.writer(16 << 20).unwrap();
            let payload = CommitPayload {
                wal_position: 77,
                ..CommitPayload::default()
            };
            index.commit(&mut writer, &payload).unwrap();
        }
        let partitions: Partitions<LogIndex> =
            Partitions::open(&root, Duration::from_secs(3600)).unwrap();
        assert_eq!(partitions.newest_first().len(), 1);
        assert_eq!(partitions.committed().unwrap().unwrap().wal_position, 77);
        assert!(!root.join("meta.json").exists());
    }
}
