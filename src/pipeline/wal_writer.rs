//! The WAL thread: the only writer of the write-ahead log.
//!
//! Takes every waiting batch, appends them all, fsyncs once (group commit), then observes
//! the spans in the metrics, adds them to the head, acks, and hands log records to the
//! indexer, in WAL order, followed by the position the whole group reached.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::disk::DiskGuard;
use super::{Batch, IndexJob, IngestQueue, PipelineStats, SubmitError, WalJob};
use crate::metrics::Metrics;
use crate::store::Storage;
use crate::wal::Wal;

pub(super) struct WalWriter {
    wal: Wal,
    storage: Arc<Storage>,
    index_sender: SyncSender<IndexJob>,
    queue: Arc<IngestQueue>,
    stats: Arc<PipelineStats>,
    metrics: Arc<Metrics>,
    disk: Arc<DiskGuard>,
    stream_marks: super::StreamMarks,
}

impl WalWriter {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        wal: Wal,
        storage: Arc<Storage>,
        index_sender: SyncSender<IndexJob>,
        queue: Arc<IngestQueue>,
        stats: Arc<PipelineStats>,
        metrics: Arc<Metrics>,
        disk: Arc<DiskGuard>,
        stream_marks: super::StreamMarks,
    ) -> WalWriter {
        WalWriter {
            stream_marks,
            wal,
            storage,
            index_sender,
            queue,
            stats,
            metrics,
            disk,
        }
    }

    pub(super) fn run(mut self, jobs: Receiver<WalJob>) {
        let mut buffer = Vec::new();
        let mut offsets = Vec::new();
        // A `Through` the indexer had no room for (it is committing): positions only grow,
        // so the next one stands for it, and ingest never waits on a commit for it.
        let mut through_due = None;
        loop {
            let first = match through_due {
                None => match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                },
                Some(wal_position) => match jobs.recv_timeout(THROUGH_RETRY) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => {
                        through_due = self.send_through(wal_position);
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        if self
                            .index_sender
                            .send(IndexJob::Through { wal_position })
                            .is_err()
                        {
                            tracing::error!(
                                "indexer has stopped; records stay in the WAL for replay"
                            );
                        }
                        return;
                    }
                },
            };
            let mut group = vec![first];
            while group.len() < 4096 {
                match jobs.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            let before = self.wal.position();
            let mut positions = Vec::with_capacity(group.len());
            let mut failed = None;
            for job in &group {
                let start = self.wal.position();
                job.batch.encode(&mut buffer, &mut offsets);
                let payload_start = crate::wal::payload_position(start);
                let payload_at: Vec<u64> = offsets
                    .iter()
                    .map(|offset| payload_start + offset)
                    .collect();
                let appended = self
                    .wal
                    .append(job.batch.kind(), &buffer)
                    .and_then(|end| match job.mark {
                        // The mark after the records: a crash that tears it off leaves
                        // the message to be written again, never skipped.
                        Some(mark) => self
                            .wal
                            .append(crate::wal::RecordKind::Stream, &mark.encode())
                            .map(|past_mark| (end, past_mark)),
                        None => Ok((end, end)),
                    });
                match appended {
                    Ok((end, past)) => positions.push((start, end, past, payload_at)),
                    Err(error) => {
                        failed = Some(error);
                        break;
                    }
                }
            }
            if failed.is_none() {
                let fsync_started = Instant::now();
                let synced = self.wal.sync();
                self.metrics
                    .fsync_seconds
                    .observe(fsync_started.elapsed().as_secs_f64());
                failed = synced.err();
            }
            if let Some(error) = failed {
                // A write that found no space: nothing of the group reached an fsync, so
                // the log is cut back to the last one, the group refused (the clients
                // retry), and the disk guard holds ingest until there is room.
                if error.is_disk_full() {
                    match self.wal.discard_unsynced() {
                        Ok(()) => {
                            tracing::warn!(%error, "write-ahead log is out of space; the group is refused");
                            self.disk.write_failed(&error.to_string());
                            let reason = self.disk.refusal().unwrap_or_default();
                            for job in group {
                                self.queue.release(job.batch.len());
                                self.disk
                                    .refused_requests
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let _ = job.ack.send(Err(SubmitError::DiskFull(reason.clone())));
                            }
                            continue;
                        }
                        Err(cut) => {
                            tracing::error!(%cut, "write-ahead log could not be cut back after a failed write");
                        }
                    }
                }
                // Anything else (an fsync failure above all): what was written cannot be
                // trusted, nothing of this group is acked, and ingest stops until a
                // restart replays the log.
                tracing::error!(%error, "write-ahead log failed; ingest stops until a restart");
                for job in group {
                    self.queue.release(job.batch.len());
                    let _ = job.ack.send(Err(SubmitError::WalFailed));
                }
                return;
            }
            self.stats
                .wal_bytes
                .fetch_add(self.wal.position() - before, Ordering::Relaxed);
            self.stats.wal_fsyncs.fetch_add(1, Ordering::Relaxed);
            // Metrics and the head before the acks: once a client has its answer, the span
            // is in the metrics and its trace is readable by id.
            let now = Instant::now();
            let mut logs = Vec::new();
            for (job, (start, end, past, payload_at)) in group.into_iter().zip(positions) {
                match job.batch {
                    Batch::Spans(spans) => {
                        let exemplars = self.metrics.record_spans(&spans, end);
                        let inserted = self.storage.head.insert(
                            start,
                            end,
                            spans,
                            &payload_at,
                            exemplars,
                            now,
                        );
                        self.queue.release(inserted.late_dropped as usize);
                        self.metrics
                            .record_late_spans(inserted.late_kept, inserted.late_dropped);
                        if !inserted.settled_dropped.is_empty() {
                            self.metrics.settle(inserted.settled_dropped, false);
                        }
                    }
                    Batch::Logs(records) => logs.push((end, records)),
                }
                if let Some(mark) = job.mark {
                    super::note_mark(&self.stream_marks, mark, past);
                }
                let _ = job.ack.send(Ok(past));
            }
            for (end, records) in logs {
                let job = IndexJob::Logs {
                    wal_position: end,
                    reserved: records.len(),
                    records,
                };
                if self.index_sender.send(job).is_err() {
                    tracing::error!("indexer has stopped; records stay in the WAL for replay");
                }
            }
            through_due = self.send_through(self.wal.position());
        }
    }

    /// Tell the indexer every record up to `wal_position` is handed over, if it has room;
    /// the position if it had none.
    fn send_through(&self, wal_position: u64) -> Option<u64> {
        match self
            .index_sender
            .try_send(IndexJob::Through { wal_position })
        {
            Ok(()) => None,
            Err(TrySendError::Full(_)) => Some(wal_position),
            Err(TrySendError::Disconnected(_)) => {
                tracing::error!("indexer has stopped; records stay in the WAL for replay");
                None
            }
        }
    }
}

/// How long the WAL thread waits for work before offering a held-back `Through` again.
const THROUGH_RETRY: Duration = Duration::from_millis(20);
