//! The WAL thread: the only writer of the write-ahead log.
//!
//! Takes every waiting batch, appends them all, fsyncs once (group commit), then fills the
//! head buffer, acks, and hands the batches to the indexer, in WAL order.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use super::{Batch, IndexJob, PipelineStats, SubmitError, WalJob};
use crate::metrics::Metrics;
use crate::store::Storage;
use crate::wal::Wal;

pub(super) struct WalWriter {
    wal: Wal,
    storage: Arc<Storage>,
    index_sender: SyncSender<IndexJob>,
    stats: Arc<PipelineStats>,
    metrics: Arc<Metrics>,
}

impl WalWriter {
    pub(super) fn new(
        wal: Wal,
        storage: Arc<Storage>,
        index_sender: SyncSender<IndexJob>,
        stats: Arc<PipelineStats>,
        metrics: Arc<Metrics>,
    ) -> WalWriter {
        WalWriter {
            wal,
            storage,
            index_sender,
            stats,
            metrics,
        }
    }

    pub(super) fn run(mut self, jobs: Receiver<WalJob>) {
        let mut buffer = Vec::new();
        while let Ok(first) = jobs.recv() {
            let mut group = vec![first];
            while group.len() < 4096 {
                match jobs.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            let before = self.wal.position();
            let mut positions = Vec::with_capacity(group.len());
            let mut failed = false;
            for job in &group {
                job.batch.encode(&mut buffer);
                match self.wal.append(job.batch.kind(), &buffer) {
                    Ok(position) => positions.push(position),
                    Err(error) => {
                        tracing::error!(%error, "write-ahead log append failed");
                        failed = true;
                        break;
                    }
                }
            }
            if !failed {
                let fsync_started = std::time::Instant::now();
                let synced = self.wal.sync();
                self.metrics
                    .fsync_seconds
                    .observe(fsync_started.elapsed().as_secs_f64());
                if let Err(error) = synced {
                    tracing::error!(%error, "write-ahead log fsync failed");
                    failed = true;
                }
            }
            if failed {
                // Nothing of this group is acked; the WAL is left for replay to judge and
                // ingest stops until a restart.
                for job in group {
                    let _ = job.ack.send(Err(SubmitError::WalFailed));
                }
                return;
            }
            self.stats
                .wal_bytes
                .fetch_add(self.wal.position() - before, Ordering::Relaxed);
            self.stats.wal_fsyncs.fetch_add(1, Ordering::Relaxed);
            // Metrics before the acks: once a client has its answer, the span is in the
            // metrics and its exemplar opens a stored trace (the head holds it).
            for job in &group {
                if let Batch::Spans(spans) = &job.batch {
                    self.metrics.record_spans(spans);
                }
            }
            let mut acked = Vec::with_capacity(group.len());
            for (job, position) in group.into_iter().zip(positions) {
                if let Batch::Spans(spans) = &job.batch {
                    self.storage.head.insert(position, spans);
                }
                let _ = job.ack.send(Ok(()));
                acked.push((job.batch, job.permit, position));
            }
            for (batch, permit, position) in acked {
                let index_job = IndexJob::Wal {
                    wal_position: position,
                    batch,
                    permit: Some(permit),
                };
                if self.index_sender.send(index_job).is_err() {
                    tracing::error!("indexer has stopped; records stay in the WAL for replay");
                }
            }
        }
    }
}
