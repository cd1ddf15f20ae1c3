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
use crate::lock;
use crate::metrics::latency::{current_minute, OperationKey};
use crate::metrics::names::normalise_span_name;
use crate::metrics::Metrics;
use crate::model::{LogRecord, Span};
use crate::store::{CommitPayload, Storage, StoreError};

/// How often the latency histograms are written out (and at shutdown). WAL segments
/// are kept back to the last snapshot, so a restart observes what came after it again.
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(10);
/// How often the dependency links are written out (and at shutdown).
const DEPENDENCIES_INTERVAL: Duration = Duration::from_secs(300);

/// What the indexer shares with the rest of the pipeline.
pub(super) struct Shared {
    pub queue: Arc<IngestQueue>,
    pub stats: Arc<PipelineStats>,
    pub metrics: Arc<Metrics>,
    pub sampler: Arc<Sampler>,
}

pub(super) struct Indexer {
    storage: Arc<Storage>,
    trace_writer: tantivy::IndexWriter,
    log_writer: tantivy::IndexWriter,
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
        let memory = config.index_memory_bytes / 2;
        let snapshot_position = lock(&shared.metrics.latency).observed_position();
        Ok(Indexer {
            trace_writer: storage.traces.writer(memory.max(16 << 20))?,
            log_writer: storage.logs.writer(memory.max(16 << 20))?,
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
            shared,
        })
    }

    pub(super) fn run(mut self, jobs: Receiver<IndexJob>) {
        let mut last_cycle = Instant::now();
        loop {
            let wait = self.commit_interval.saturating_sub(last_cycle.elapsed());
            match jobs.recv_timeout(wait) {
                Ok(job) => {
                    if let Err(error) = self.add(job) {
                        tracing::error!(%error, "tantivy refused a document; indexing stops, the WAL keeps the records");
                        return;
                    }
                    if self.records_pending >= self.commit_max_records {
                        self.cycle(false);
                        last_cycle = Instant::now();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.cycle(false);
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
                    record.assign_id(LogRecord::wal_id(wal_position, index));
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
        for record in records {
            self.log_writer
                .add_document(self.storage.logs.document(record)?)?;
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

    /// Send the traces that are due through sampling, then commit and tidy up.
    fn cycle(&mut self, everything: bool) {
        let leaving = self.storage.head.take_leaving(Instant::now(), everything);
        if let Err(error) = self.seal(leaving) {
            // Without a commit the replay position stays where it was, so the WAL keeps
            // every trace not yet committed for the next start.
            tracing::error!(%error, "tantivy refused a trace; nothing is committed, the WAL keeps it for replay");
            return;
        }
        self.commit();
        if everything || self.last_snapshot.elapsed() >= SNAPSHOT_INTERVAL {
            self.snapshot(everything);
        }
        self.remove_wal_segments();
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
        for mut trace in leaving {
            let spans = trace.read_spans();
            let views: Vec<&Span> = spans.iter().map(|held| &held.span).collect();
            metrics.record_trace_edges(&views);
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
                let document = self.storage.traces.document(&spans, &mut self.scratch);
                self.trace_writer.add_document(document)?;
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
        Ok(())
    }

    fn commit(&mut self) {
        let started = Instant::now();
        let mut committed_any = false;
        let replay_from = self.storage.head.replay_from();
        if self.fragments_pending > 0 || replay_from > self.committed_spans {
            match self
                .storage
                .traces
                .commit(&mut self.trace_writer, replay_from)
            {
                Ok(()) => {
                    self.committed_spans = replay_from;
                    self.fragments_pending = 0;
                    let released = self.storage.head.committed();
                    self.shared.queue.release(released);
                    committed_any = true;
                }
                Err(error) => {
                    tracing::error!(%error, "traces commit failed; will retry with the next one");
                }
            }
        }
        if self.logs_covered > self.committed_logs || self.files_changed {
            let payload = CommitPayload {
                wal_position: self.logs_covered,
                files: self.files.clone(),
            };
            match self.storage.logs.commit(&mut self.log_writer, &payload) {
                Ok(()) => {
                    self.committed_logs = self.logs_covered;
                    self.files_changed = false;
                    self.shared
                        .queue
                        .release(std::mem::take(&mut self.logs_reserved));
                    committed_any = true;
                }
                Err(error) => {
                    tracing::error!(%error, "logs commit failed; will retry with the next one");
                }
            }
        }
        self.records_pending = 0;
        if !committed_any {
            return;
        }
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
