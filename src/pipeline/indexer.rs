//! The indexer thread: the only writer of both tantivy indexes and the only committer.
//!
//! Adds spans and log records in WAL order, and tailed lines with their file checkpoints;
//! commits both indexes every `commit_interval` (or once `commit_max_spans` records wait),
//! with the covered WAL position, and for the logs index the file checkpoints, in the
//! commit payloads. After a commit it gives the queue room back, evicts the head buffer and
//! deletes WAL segments below the lower of the two committed positions. Records at or
//! below an index's committed position (a replay after a crash between the two commits)
//! are skipped, so nothing is indexed twice.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;

use super::{Batch, IndexJob, PipelineStats};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::LogRecord;
use crate::store::{CommitPayload, Storage, StoreError};
use crate::wal;

pub(super) struct Indexer {
    storage: Arc<Storage>,
    span_writer: tantivy::IndexWriter,
    log_writer: tantivy::IndexWriter,
    wal_dir: PathBuf,
    commit_interval: Duration,
    commit_max_records: usize,
    committed_spans: u64,
    committed_logs: u64,
    /// The tailer's checkpoints, as they will be in the next logs commit.
    files: BTreeMap<String, serde_json::Value>,
    files_changed: bool,
    /// Queue room of the records added since the last commit, given back by the next one.
    held_permits: Vec<OwnedSemaphorePermit>,
    stats: Arc<PipelineStats>,
    metrics: Arc<Metrics>,
}

impl Indexer {
    pub(super) fn new(
        storage: Arc<Storage>,
        config: &Config,
        committed_spans: u64,
        logs_commit: CommitPayload,
        stats: Arc<PipelineStats>,
        metrics: Arc<Metrics>,
    ) -> Result<Indexer, StoreError> {
        let memory = config.index_memory_bytes / 2;
        Ok(Indexer {
            span_writer: storage.spans.writer(memory.max(16 << 20))?,
            log_writer: storage.logs.writer(memory.max(16 << 20))?,
            storage,
            wal_dir: config.data_dir.join("wal"),
            commit_interval: config.commit_interval,
            commit_max_records: config
                .commit_max_spans
                .min(config.ingest_queue_spans / 2)
                .max(1),
            committed_spans,
            committed_logs: logs_commit.wal_position,
            files: logs_commit.files,
            files_changed: false,
            held_permits: Vec::new(),
            stats,
            metrics,
        })
    }

    pub(super) fn run(mut self, jobs: Receiver<IndexJob>) {
        let mut covered = self.committed_spans.min(self.committed_logs);
        let mut pending = 0usize;
        let mut last_commit = Instant::now();
        loop {
            let wait = self.commit_interval.saturating_sub(last_commit.elapsed());
            match jobs.recv_timeout(wait) {
                Ok(job) => {
                    let added = match self.add(job, &mut covered) {
                        Ok(added) => added,
                        Err(error) => {
                            tracing::error!(%error, "tantivy refused a document; indexing stops, the WAL keeps the records");
                            return;
                        }
                    };
                    pending += added;
                    if pending >= self.commit_max_records {
                        self.commit(covered);
                        pending = 0;
                        last_commit = Instant::now();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.has_uncommitted(covered) {
                        self.commit(covered);
                        pending = 0;
                    }
                    last_commit = Instant::now();
                }
                Err(RecvTimeoutError::Disconnected) => {
                    if self.has_uncommitted(covered) {
                        self.commit(covered);
                    }
                    return;
                }
            }
        }
    }

    fn has_uncommitted(&self, covered: u64) -> bool {
        covered > self.committed_spans || covered > self.committed_logs || self.files_changed
    }

    /// Add one job's documents; returns how many records it added.
    fn add(&mut self, job: IndexJob, covered: &mut u64) -> Result<usize, StoreError> {
        match job {
            IndexJob::Wal {
                wal_position,
                batch,
                permit,
            } => {
                *covered = (*covered).max(wal_position);
                self.held_permits.extend(permit);
                match batch {
                    Batch::Spans(spans) => {
                        if wal_position <= self.committed_spans {
                            return Ok(0);
                        }
                        for span in &spans {
                            self.span_writer
                                .add_document(self.storage.spans.document(span))?;
                        }
                        self.stats
                            .spans_indexed
                            .fetch_add(spans.len() as u64, Ordering::Relaxed);
                        Ok(spans.len())
                    }
                    Batch::Logs(mut records) => {
                        if wal_position <= self.committed_logs {
                            return Ok(0);
                        }
                        for (index, record) in records.iter_mut().enumerate() {
                            record.assign_id(LogRecord::wal_id(wal_position, index));
                        }
                        self.add_logs(&records)
                    }
                }
            }
            IndexJob::Tailed(tailed) => {
                let added = self.add_logs(&tailed.records)?;
                match tailed.checkpoint {
                    Some(checkpoint) => self.files.insert(tailed.checkpoint_key, checkpoint),
                    None => self.files.remove(&tailed.checkpoint_key),
                };
                self.files_changed = true;
                Ok(added)
            }
        }
    }

    fn add_logs(&mut self, records: &[LogRecord]) -> Result<usize, StoreError> {
        for record in records {
            self.log_writer
                .add_document(self.storage.logs.document(record)?)?;
        }
        self.stats
            .logs_indexed
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        self.metrics.record_logs(records);
        Ok(records.len())
    }

    fn commit(&mut self, covered: u64) {
        let started = Instant::now();
        if covered > self.committed_spans {
            if let Err(error) = self.storage.spans.commit(&mut self.span_writer, covered) {
                tracing::error!(%error, "spans commit failed; will retry with the next one");
                return;
            }
            self.committed_spans = covered;
            self.storage.head.evict_through(covered);
        }
        if covered > self.committed_logs || self.files_changed {
            let payload = CommitPayload {
                wal_position: covered,
                files: self.files.clone(),
            };
            if let Err(error) = self.storage.logs.commit(&mut self.log_writer, &payload) {
                tracing::error!(%error, "logs commit failed; will retry with the next one");
                return;
            }
            self.committed_logs = covered;
            self.files_changed = false;
        }
        self.held_permits.clear();
        let durable = self.committed_spans.min(self.committed_logs);
        if let Err(error) = wal::remove_segments_below(&self.wal_dir, durable) {
            tracing::warn!(%error, "removing committed WAL segments failed");
        }
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(
            wal_position = covered,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "committed"
        );
    }
}
