//! The indexer thread: the only writer of both tantivy indexes and the only committer.
//!
//! Every `commit_interval` (or once `commit_max_spans` records wait) it takes the traces
//! that are due to leave the head, has each sampled (a later fragment follows the decision
//! its trace already has), writes every kept one as one document, lets go of the dropped
//! ones, and commits: the traces index with the WAL position replay must start from (the
//! oldest span still assembling), the logs index with the WAL position its records reach
//! and the tailer's file checkpoints. Then it gives the queue room back, lets the head
//! forget what the commit holds, snapshots the latency histograms now and then, and
//! deletes the WAL segments nothing needs any more. Log records at or below the logs
//! commit (a replay after a crash between the two commits) are skipped, so nothing is
//! indexed twice.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::head::LeavingTrace;
use super::sample::Sampler;
use super::{IndexJob, IngestQueue, PipelineStats};
use crate::config::Config;
use crate::config::RetentionConfig;
use crate::lock;
use crate::metrics::latency::{current_minute, OperationKey};
use crate::metrics::names::normalise_span_name;
use crate::metrics::{EdgeTally, Metrics};
use crate::model::{LogRecord, Span};
use crate::store::partitions::{unix_now, DropReason, PartitionIndex};
use crate::store::{
    CommitPayload, LogIndex, Partition, Partitions, Storage, StoreError, TraceIndex,
};

/// How often the latency histograms are written out (and at shutdown). WAL segments
/// are kept back to the last snapshot, so a restart observes what came after it again.
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(10);
/// How often the dependency links are written out (and at shutdown).
const DEPENDENCIES_INTERVAL: Duration = Duration::from_secs(300);
/// How often the size of the data directory is held against `retention.max_disk_bytes`.
const DISK_CAP_INTERVAL: Duration = Duration::from_secs(5);

/// The partition being written and its writer.
struct Writing<I> {
    partition: Arc<Partition<I>>,
    writer: tantivy::IndexWriter,
}

impl<I: PartitionIndex> Writing<I> {
    /// The writer of the partition of `now`'s window. A partition opened for it is
    /// committed at once with `payload`, so the newest partition always holds the last
    /// payload and every older one may be dropped.
    fn open(
        partitions: &Partitions<I>,
        now: i64,
        memory_bytes: usize,
        payload: &CommitPayload,
    ) -> Result<Writing<I>, StoreError> {
        let partition = partitions.current_or_open(now)?;
        let mut writer = partition.index.writer(memory_bytes)?;
        if !partition.index.has_commit()? {
            partition.index.commit(&mut writer, payload)?;
        }
        Ok(Writing { partition, writer })
    }

    /// A writer whose window has passed (and that holds nothing uncommitted): its merges
    /// finish on a thread of their own, then searches see the merged segments.
    fn retire(self) {
        let Writing { partition, writer } = self;
        let spawned = std::thread::Builder::new()
            .name("tracelink-retire".into())
            .spawn(move || {
                if let Err(error) = writer.wait_merging_threads() {
                    tracing::warn!(partition = %partition.name(), %error, "merges of a finished partition failed; its segments stay as they are");
                }
                if let Err(error) = partition.index.reload() {
                    tracing::warn!(partition = %partition.name(), %error, "reloading a finished partition failed");
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start a thread to finish a partition's merges");
        }
    }
}

/// Drop the partitions of `partitions` whose window ended more than `max_age` before
/// `now` (never the newest).
fn expire<I: PartitionIndex>(partitions: &Partitions<I>, max_age: Duration, now: i64) {
    let max_age = max_age.as_secs() as i64;
    for partition in partitions.newest_first().iter().skip(1) {
        if partition.start + partitions.window_secs() + max_age <= now {
            partitions.drop_partition(partition.start, DropReason::Age);
        }
    }
}

/// What the indexer shares with the rest of the pipeline.
pub(super) struct Shared {
    pub queue: Arc<IngestQueue>,
    pub stats: Arc<PipelineStats>,
    pub metrics: Arc<Metrics>,
    pub sampler: Arc<Sampler>,
    /// Told the WAL position below which everything is committed after each commit.
    pub durable: Arc<tokio::sync::watch::Sender<u64>>,
    /// Written out after each commit when they changed.
    pub stream_marks: super::StreamMarks,
}

pub(super) struct Indexer {
    storage: Arc<Storage>,
    traces: Writing<TraceIndex>,
    logs: Writing<LogIndex>,
    /// Memory budget of each writer.
    writer_memory: usize,
    retention: RetentionConfig,
    last_disk_check: Instant,
    data_dir: PathBuf,
    commit_interval: Duration,
    commit_max_records: usize,
    /// Replay position stored with the last traces commit.
    committed_spans: u64,
    /// WAL position stored with the last logs commit, and the one the next will store.
    committed_logs: u64,
    logs_covered: u64,
    /// The tailer's checkpoints, as they will be in the next logs commit.
    files: BTreeMap<String, serde_json::Value>,
    files_changed: bool,
    /// Queue room of the log records added since the last commit.
    logs_reserved: usize,
    /// Documents added since the last commit.
    fragments_pending: usize,
    records_pending: usize,
    /// The observed WAL position of the last latency snapshot written.
    snapshot_position: u64,
    last_snapshot: Instant,
    last_dependencies: Instant,
    scratch: Vec<u8>,
    /// The stream marks as last written out.
    written_marks: std::collections::HashMap<u32, (u64, u64)>,
    shared: Shared,
}

impl Indexer {
    pub(super) fn new(
        storage: Arc<Storage>,
        config: &Config,
        committed_spans: u64,
        logs_commit: CommitPayload,
        shared: Shared,
    ) -> Result<Indexer, StoreError> {
        let writer_memory = (config.index_memory_bytes / 2).max(16 << 20);
        let snapshot_position = lock(&shared.metrics.latency).observed_position();
        let now = unix_now();
        let traces_payload = CommitPayload {
            wal_position: committed_spans,
            ..CommitPayload::default()
        };
        Ok(Indexer {
            traces: Writing::open(&storage.traces, now, writer_memory, &traces_payload)?,
            logs: Writing::open(&storage.logs, now, writer_memory, &logs_commit)?,
            writer_memory,
            retention: config.retention.clone(),
            last_disk_check: Instant::now(),
            storage,
            data_dir: config.data_dir.clone(),
            commit_interval: config.commit_interval,
            commit_max_records: config
                .commit_max_spans
                .min(config.ingest_queue_spans / 2)
                .max(1),
            committed_spans,
            committed_logs: logs_commit.wal_position,
            logs_covered: logs_commit.wal_position,
            files: logs_commit.files,
            files_changed: false,
            logs_reserved: 0,
            fragments_pending: 0,
            records_pending: 0,
            snapshot_position,
            last_snapshot: Instant::now(),
            last_dependencies: Instant::now(),
            scratch: Vec::new(),
            written_marks: std::collections::HashMap::new(),
            shared,
        })
    }

    pub(super) fn run(mut self, jobs: Receiver<IndexJob>) {
        let mut last_cycle = Instant::now();
        // A pass stopped at its size bound: the rest of what is due goes at once.
        let mut more_due = false;
        loop {
            let wait = if more_due {
                Duration::ZERO
            } else {
                self.commit_interval.saturating_sub(last_cycle.elapsed())
            };
            match jobs.recv_timeout(wait) {
                Ok(job) => {
                    if let Err(error) = self.add(job) {
                        tracing::error!(%error, "tantivy refused a document; indexing stops, the WAL keeps the records");
                        return;
                    }
                    if self.records_pending >= self.commit_max_records {
                        more_due = self.cycle(false);
                        last_cycle = Instant::now();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    more_due = self.cycle(false);
                    last_cycle = Instant::now();
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.cycle(true);
                    return;
                }
            }
        }
    }

    fn add(&mut self, job: IndexJob) -> Result<(), StoreError> {
        match job {
            IndexJob::Logs {
                wal_position,
                mut records,
                reserved,
            } => {
                self.logs_covered = self.logs_covered.max(wal_position);
                self.logs_reserved += reserved;
                if wal_position <= self.committed_logs {
                    return Ok(());
                }
                for (index, record) in records.iter_mut().enumerate() {
                    // A record from a cluster's stream came with its id (the stream's
                    // sequence), the same on whichever node indexes it.
                    let id = match record.id.is_empty() {
                        true => LogRecord::wal_id(wal_position, index),
                        false => std::mem::take(&mut record.id),
                    };
                    record.assign_id(id);
                }
                self.add_logs(&records)
            }
            IndexJob::Through { wal_position } => {
                self.logs_covered = self.logs_covered.max(wal_position);
                self.storage.head.received_through(wal_position);
                Ok(())
            }
            IndexJob::Tailed(tailed) => {
                self.add_logs(&tailed.records)?;
                match tailed.checkpoint {
                    Some(checkpoint) => self.files.insert(tailed.checkpoint_key, checkpoint),
                    None => self.files.remove(&tailed.checkpoint_key),
                };
                self.files_changed = true;
                Ok(())
            }
        }
    }

    fn add_logs(&mut self, records: &[LogRecord]) -> Result<(), StoreError> {
        let index = &self.logs.partition.index;
        for record in records {
            self.logs.writer.add_document(index.document(record)?)?;
        }
        self.records_pending += records.len();
        self.shared
            .stats
            .logs_indexed
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        let head = &self.storage.head;
        let sampler = &self.shared.sampler;
        let stored_trace = |trace_id: &crate::model::TraceId| {
            !sampler.may_drop()
                || head
                    .decision(trace_id)
                    .is_some_and(|decision| decision.keep)
        };
        self.shared.metrics.record_logs(records, &stored_trace);
        Ok(())
    }

    /// Send the traces that are due through sampling (at most `commit_max_records`
    /// spans' worth), then commit and tidy up. Returns whether the pass stopped at that
    /// bound, so more may be due.
    fn cycle(&mut self, everything: bool) -> bool {
        let leaving = self.storage.head.take_leaving_at_most(
            Instant::now(),
            everything,
            self.commit_max_records,
        );
        let taken: usize = leaving.iter().map(LeavingTrace::len).sum();
        if let Err(error) = self.seal(leaving) {
            // Without a commit the replay position stays where it was, so the WAL keeps
            // every trace not yet committed for the next start.
            tracing::error!(%error, "tantivy refused a trace; nothing is committed, the WAL keeps it for replay");
            return false;
        }
        let committed = self.commit();
        if everything || self.last_snapshot.elapsed() >= SNAPSHOT_INTERVAL {
            self.snapshot(everything);
        }
        self.remove_wal_segments();
        if committed && !everything {
            self.roll();
            self.retain();
        }
        !everything && taken >= self.commit_max_records
    }

    /// Start the partitions of a new window once the current one has passed (right after
    /// a commit that left nothing pending).
    fn roll(&mut self) {
        let now = unix_now();
        if self.storage.traces.current(now).is_none() {
            let payload = CommitPayload {
                wal_position: self.committed_spans,
                ..CommitPayload::default()
            };
            match Writing::open(&self.storage.traces, now, self.writer_memory, &payload) {
                Ok(next) => std::mem::replace(&mut self.traces, next).retire(),
                Err(error) => {
                    tracing::error!(%error, "cannot open a new traces partition; writing on into the last one")
                }
            }
        }
        if self.storage.logs.current(now).is_none() {
            let payload = CommitPayload {
                wal_position: self.committed_logs,
                files: self.files.clone(),
            };
            match Writing::open(&self.storage.logs, now, self.writer_memory, &payload) {
                Ok(next) => std::mem::replace(&mut self.logs, next).retire(),
                Err(error) => {
                    tracing::error!(%error, "cannot open a new logs partition; writing on into the last one")
                }
            }
        }
    }

    /// Drop partitions past their age, then, when the data directory is over
    /// `retention.max_disk_bytes`, the oldest partitions of either index until it fits.
    fn retain(&mut self) {
        let now = unix_now();
        expire(&self.storage.traces, self.retention.traces_max_age, now);
        expire(&self.storage.logs, self.retention.logs_max_age, now);
        let Some(cap) = self.retention.max_disk_bytes else {
            return;
        };
        if self.last_disk_check.elapsed() < DISK_CAP_INTERVAL {
            return;
        }
        self.last_disk_check = Instant::now();
        let traces = self.storage.traces.sizes();
        let logs = self.storage.logs.sizes();
        let mut total = crate::store::dir_bytes(&self.data_dir.join("wal"))
            + traces
                .iter()
                .chain(&logs)
                .map(|(_, bytes)| bytes)
                .sum::<u64>();
        // Oldest first, each index's newest left out: (start, bytes, is traces).
        let mut candidates: Vec<(i64, u64, bool)> = traces[..traces.len().saturating_sub(1)]
            .iter()
            .map(|(start, bytes)| (*start, *bytes, true))
            .chain(
                logs[..logs.len().saturating_sub(1)]
                    .iter()
                    .map(|(start, bytes)| (*start, *bytes, false)),
            )
            .collect();
        candidates.sort();
        for (start, bytes, is_traces) in candidates {
            if total <= cap {
                return;
            }
            let dropped = if is_traces {
                self.storage.traces.drop_partition(start, DropReason::Disk)
            } else {
                self.storage.logs.drop_partition(start, DropReason::Disk)
            };
            if dropped {
                total = total.saturating_sub(bytes);
            }
        }
        if total > cap {
            tracing::warn!(
                total,
                cap,
                "storage is over retention.max_disk_bytes with only the partitions being written left"
            );
        }
    }

    fn seal(&mut self, leaving: Vec<LeavingTrace>) -> Result<(), StoreError> {
        if leaving.is_empty() {
            return Ok(());
        }
        let now_minute = current_minute();
        let metrics = self.shared.metrics.clone();
        let mut p99_cache: HashMap<(String, String, i32), Option<u64>> = HashMap::new();
        let mut p99_us = |span: &Span| {
            *p99_cache
                .entry((span.service.to_string(), span.name.clone(), span.kind))
                .or_insert_with(|| {
                    let key = OperationKey {
                        service: span.service.to_string(),
                        span_name: normalise_span_name(&span.name),
                        span_kind: span.kind,
                    };
                    lock(&metrics.latency)
                        .stats(&key, Some(60), now_minute)
                        .filter(|window| window.count > 0)
                        .map(|window| (window.p99_ms * 1000.0) as u64)
                })
        };
        let head = &self.storage.head;
        let mut edges = EdgeTally::default();
        let mut sealed = Ok(());
        for mut trace in leaving {
            let wal_last = trace.wal_last();
            let spans = trace.read_spans();
            let views: Vec<&Span> = spans.iter().collect();
            metrics.tally_trace_edges(&mut edges, &views);
            let earlier = trace.decided.or_else(|| head.decision(&trace.trace_id));
            let decision = match earlier {
                Some(decision) => decision,
                None => {
                    let decision = self.shared.sampler.decide(&views, &mut p99_us);
                    head.decide(trace.trace_id, decision);
                    metrics.record_decision(
                        decision.keep,
                        self.shared.sampler.reason_name(decision.reason),
                    );
                    decision
                }
            };
            if decision.keep {
                let document =
                    self.traces
                        .partition
                        .index
                        .document(&spans, wal_last, &mut self.scratch);
                if let Err(error) = self.traces.writer.add_document(document) {
                    sealed = Err(error.into());
                    break;
                }
                self.fragments_pending += 1;
                self.records_pending += spans.len();
                self.shared
                    .stats
                    .spans_indexed
                    .fetch_add(spans.len() as u64, Ordering::Relaxed);
                self.shared
                    .stats
                    .fragments_indexed
                    .fetch_add(1, Ordering::Relaxed);
                metrics.settle(trace.exemplars, true);
            } else {
                let released = head.dropped(&trace.trace_id);
                self.shared.queue.release(released);
                metrics.settle(trace.exemplars, false);
            }
        }
        // The calls of every trace that left, kept or not (and those that did before a
        // write failed).
        metrics.record_edges(edges);
        sealed
    }

    /// Commit both indexes as far as they have something new; false when a commit failed.
    fn commit(&mut self) -> bool {
        let started = Instant::now();
        let mut committed_any = false;
        let mut failed = false;
        let replay_from = self.storage.head.replay_from();
        if self.fragments_pending > 0 || replay_from > self.committed_spans {
            let payload = CommitPayload {
                wal_position: replay_from,
                ..CommitPayload::default()
            };
            match self
                .traces
                .partition
                .index
                .commit(&mut self.traces.writer, &payload)
            {
                Ok(()) => {
                    self.committed_spans = replay_from;
                    self.fragments_pending = 0;
                    let released = self.storage.head.committed();
                    self.shared.queue.release(released);
                    committed_any = true;
                }
                Err(error) => {
                    failed = true;
                    tracing::error!(%error, "traces commit failed; will retry with the next one");
                }
            }
        }
        if self.logs_covered > self.committed_logs || self.files_changed {
            let payload = CommitPayload {
                wal_position: self.logs_covered,
                files: self.files.clone(),
            };
            match self
                .logs
                .partition
                .index
                .commit(&mut self.logs.writer, &payload)
            {
                Ok(()) => {
                    self.committed_logs = self.logs_covered;
                    self.files_changed = false;
                    self.shared
                        .queue
                        .release(std::mem::take(&mut self.logs_reserved));
                    committed_any = true;
                }
                Err(error) => {
                    failed = true;
                    tracing::error!(%error, "logs commit failed; will retry with the next one");
                }
            }
        }
        self.records_pending = 0;
        if !committed_any {
            return !failed;
        }
        self.write_stream_marks();
        self.shared
            .durable
            .send_replace(self.committed_spans.min(self.committed_logs));
        self.shared.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.shared
            .metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(
            replay_from,
            logs_position = self.committed_logs,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "committed"
        );
        !failed
    }

    /// Write the latency histograms, atomically (temporary file, fsync, rename).
    /// Also the dependency links, every [`DEPENDENCIES_INTERVAL`] and on `last` (they
    /// are a week of minutes: written less often, a crash loses the links since).
    fn snapshot(&mut self, last: bool) {
        self.last_snapshot = Instant::now();
        let links_due = last || self.last_dependencies.elapsed() >= DEPENDENCIES_INTERVAL;
        let (bytes, position, links) = {
            // Under the latency lock, which span observation holds while it records
            // links: the two snapshots cover the same spans.
            let latency = lock(&self.shared.metrics.latency);
            let links = links_due.then(|| lock(&self.shared.metrics.dependencies).snapshot());
            (latency.snapshot(), latency.observed_position(), links)
        };
        if let Some(links) = links {
            self.last_dependencies = Instant::now();
            let path = super::dependencies_snapshot_path(&self.data_dir);
            if let Err(error) = write_atomically(&path, &links) {
                tracing::warn!(path = %path.display(), %error, "dependency links snapshot not written");
            }
        }
        if position == self.snapshot_position && position != 0 {
            return;
        }
        let path = super::latency_snapshot_path(&self.data_dir);
        match write_atomically(&path, &bytes) {
            Ok(()) => self.snapshot_position = position,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "latency snapshot not written")
            }
        }
    }

    /// Keep the stream marks of what this commit holds (every mark noted so far: the
    /// WAL writer notes a message's mark before the indexer can commit it), so that a
    /// message committed and not yet acked when the node stops is recognised when the
    /// stream delivers it again, after the WAL has gone past it. Only when they changed.
    fn write_stream_marks(&mut self) {
        let marks = lock(&self.shared.stream_marks).clone();
        if marks.is_empty() || marks == self.written_marks {
            return;
        }
        let path = super::stream_marks_path(&self.data_dir);
        match serde_json::to_vec(&marks) {
            Ok(bytes) => match write_atomically(&path, &bytes) {
                Ok(()) => self.written_marks = marks,
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "stream marks not written")
                }
            },
            Err(error) => tracing::warn!(%error, "stream marks do not serialise"),
        }
    }

    fn remove_wal_segments(&self) {
        let needed = self
            .committed_spans
            .min(self.committed_logs)
            .min(self.snapshot_position);
        if let Err(error) = self.storage.wal_files.remove_segments_below(needed) {
            tracing::warn!(%error, "removing committed WAL segments failed");
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let temporary = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(dir)?.sync_all()
}
