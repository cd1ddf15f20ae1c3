//! The one path every decoded span takes: WAL (fsync, then ack) → head → indexer → tantivy.
//!
//! Takes `Vec<Span>` from the protocol handlers through [`Pipeline::submit_spans`] and
//! answers once the batch is durable. Two threads do the work: the WAL thread appends
//! every waiting batch, fsyncs once for all of them (group commit), fills the head buffer
//! and acks; the indexer thread adds documents to tantivy and commits every
//! `commit_interval` (or `commit_max_spans`), storing the WAL position the commit covers
//! in its payload, then evicts the head and deletes WAL segments below that position.
//!
//! Backpressure: a semaphore counts spans accepted but not yet in a tantivy commit
//! (`ingest_queue_spans`), which bounds the channels, tantivy's buffers and the head buffer
//! together; when it has no room, ingest is refused at once (429 or `UNAVAILABLE`) and a
//! counter goes up. The indexer commits early once half the queue waits for a commit.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::config::Config;
use crate::model::Span;
use crate::store::Storage;
use crate::wal::{self, RecordKind, Wal};

/// Why a batch was not accepted. Nothing of a refused batch is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("ingest queue is full")]
    Overloaded,
    #[error("batch of {spans} spans is larger than the whole ingest queue ({capacity})")]
    BatchTooLarge { spans: usize, capacity: usize },
    #[error("write-ahead log replay is still running")]
    NotReady,
    #[error("service is shutting down")]
    ShuttingDown,
    #[error("write-ahead log write failed")]
    WalFailed,
}

/// Counters of the pipeline, read by `/metrics`.
#[derive(Default)]
pub struct PipelineStats {
    pub spans_accepted: AtomicU64,
    pub spans_refused_overload: AtomicU64,
    pub spans_indexed: AtomicU64,
    pub wal_bytes: AtomicU64,
    pub wal_fsyncs: AtomicU64,
    pub commits: AtomicU64,
}

struct WalJob {
    spans: Vec<Span>,
    permit: OwnedSemaphorePermit,
    ack: oneshot::Sender<Result<(), SubmitError>>,
}

struct IndexJob {
    wal_position: u64,
    spans: Vec<Span>,
    /// Released by the commit that makes the spans durable in tantivy; `None` for
    /// replayed batches.
    permit: Option<OwnedSemaphorePermit>,
}

pub struct Pipeline {
    storage: Arc<Storage>,
    wal_dir: PathBuf,
    config: Config,
    queue: Arc<Semaphore>,
    ready: AtomicBool,
    wal_sender: Mutex<Option<Sender<WalJob>>>,
    index_sender: Mutex<Option<SyncSender<IndexJob>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    pub stats: Arc<PipelineStats>,
}

impl Pipeline {
    /// Start the indexer thread. Ingest is refused (`NotReady`) until
    /// [`Pipeline::replay_and_start`] has replayed the WAL.
    pub fn new(
        storage: Arc<Storage>,
        config: &Config,
    ) -> Result<Arc<Pipeline>, crate::store::StoreError> {
        let committed = storage.spans.committed_wal_position()?;
        let writer = storage.spans.writer(config.index_memory_bytes)?;
        let (index_sender, index_receiver) = mpsc::sync_channel(256);
        let stats = Arc::new(PipelineStats::default());
        let indexer = Indexer {
            storage: storage.clone(),
            writer,
            wal_dir: config.data_dir.join("wal"),
            commit_interval: config.commit_interval,
            commit_max_spans: config
                .commit_max_spans
                .min(config.ingest_queue_spans / 2)
                .max(1),
            committed,
            held_permits: Vec::new(),
            stats: stats.clone(),
        };
        let indexer_thread = std::thread::Builder::new()
            .name("tracelink-indexer".into())
            .spawn(move || indexer.run(index_receiver))?;
        Ok(Arc::new(Pipeline {
            storage,
            wal_dir: config.data_dir.join("wal"),
            config: config.clone(),
            queue: Arc::new(Semaphore::new(config.ingest_queue_spans)),
            ready: AtomicBool::new(false),
            wal_sender: Mutex::new(None),
            index_sender: Mutex::new(Some(index_sender)),
            threads: Mutex::new(vec![indexer_thread]),
            stats,
        }))
    }

    /// Replay the WAL from the committed position into the head and the indexer, then
    /// start the WAL thread and accept ingest. Blocking: run it on a blocking thread.
    pub fn replay_and_start(&self) -> Result<u64, wal::WalError> {
        let committed = self
            .storage
            .spans
            .committed_wal_position()
            .unwrap_or_default();
        let Some(index_sender) = lock(&self.index_sender).clone() else {
            return Ok(0);
        };
        let mut replayed_spans = 0u64;
        let wal = Wal::open(
            &self.wal_dir,
            committed,
            self.config.wal_segment_bytes,
            |record| match record.kind {
                RecordKind::Spans => {
                    let spans = decode_span_record(&record.payload);
                    replayed_spans += spans.len() as u64;
                    self.storage.head.insert(record.end_position, &spans);
                    let job = IndexJob {
                        wal_position: record.end_position,
                        spans,
                        permit: None,
                    };
                    if index_sender.send(job).is_err() {
                        tracing::error!("indexer stopped during replay");
                    }
                }
            },
        )?;
        let (wal_sender, wal_receiver) = mpsc::channel();
        let writer = WalWriter {
            wal,
            storage: self.storage.clone(),
            index_sender,
            stats: self.stats.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("tracelink-wal".into())
            .spawn(move || writer.run(wal_receiver))
            .map_err(|source| wal::WalError::Io {
                path: self.wal_dir.clone(),
                source,
            })?;
        lock(&self.threads).push(thread);
        *lock(&self.wal_sender) = Some(wal_sender);
        self.ready.store(true, Ordering::SeqCst);
        Ok(replayed_spans)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Make a batch durable. Returns once it is fsynced in the WAL and readable.
    pub async fn submit_spans(&self, spans: Vec<Span>) -> Result<(), SubmitError> {
        if spans.is_empty() {
            return Ok(());
        }
        if !self.is_ready() {
            return Err(SubmitError::NotReady);
        }
        let capacity = self.config.ingest_queue_spans;
        if spans.len() > capacity {
            return Err(SubmitError::BatchTooLarge {
                spans: spans.len(),
                capacity,
            });
        }
        let count = spans.len();
        let permit = match self.queue.clone().try_acquire_many_owned(count as u32) {
            Ok(permit) => permit,
            Err(_) => {
                self.stats
                    .spans_refused_overload
                    .fetch_add(count as u64, Ordering::Relaxed);
                return Err(SubmitError::Overloaded);
            }
        };
        let (ack, acked) = oneshot::channel();
        {
            let sender = lock(&self.wal_sender);
            let Some(sender) = sender.as_ref() else {
                return Err(SubmitError::ShuttingDown);
            };
            sender
                .send(WalJob { spans, permit, ack })
                .map_err(|_| SubmitError::WalFailed)?;
        }
        acked.await.map_err(|_| SubmitError::WalFailed)??;
        self.stats
            .spans_accepted
            .fetch_add(count as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Spans accepted and not yet handed to tantivy.
    pub fn queue_depth(&self) -> usize {
        self.config.ingest_queue_spans - self.queue.available_permits()
    }

    /// Stop accepting, let the WAL thread drain, make the indexer do its final commit,
    /// and wait for both. Blocking: run it on a blocking thread.
    pub fn shutdown(&self) {
        self.ready.store(false, Ordering::SeqCst);
        lock(&self.wal_sender).take();
        lock(&self.index_sender).take();
        let threads: Vec<_> = lock(&self.threads).drain(..).collect();
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("pipeline thread panicked");
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A WAL span record: each span's payload, prefixed by its length (u32 LE).
fn encode_span_record(spans: &[Span], out: &mut Vec<u8>) {
    out.clear();
    for span in spans {
        out.extend_from_slice(&(span.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&span.payload);
    }
}

fn decode_span_record(record: &[u8]) -> Vec<Span> {
    let shared = Bytes::copy_from_slice(record);
    let mut spans = Vec::new();
    let mut offset = 0;
    while offset + 4 <= shared.len() {
        let len = u32::from_le_bytes([
            shared[offset],
            shared[offset + 1],
            shared[offset + 2],
            shared[offset + 3],
        ]) as usize;
        offset += 4;
        if offset + len > shared.len() {
            tracing::error!("span record in the write-ahead log is cut short");
            break;
        }
        match Span::from_payload(shared.slice(offset..offset + len)) {
            Ok(span) => spans.push(span),
            Err(error) => tracing::error!(%error, "span in the write-ahead log does not decode"),
        }
        offset += len;
    }
    spans
}

// === impl WalWriter ===

/// Owns the WAL file; the only writer.
struct WalWriter {
    wal: Wal,
    storage: Arc<Storage>,
    index_sender: SyncSender<IndexJob>,
    stats: Arc<PipelineStats>,
}

impl WalWriter {
    fn run(mut self, jobs: Receiver<WalJob>) {
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
                encode_span_record(&job.spans, &mut buffer);
                match self.wal.append(RecordKind::Spans, &buffer) {
                    Ok(position) => positions.push(position),
                    Err(error) => {
                        tracing::error!(%error, "write-ahead log append failed");
                        failed = true;
                        break;
                    }
                }
            }
            if !failed {
                if let Err(error) = self.wal.sync() {
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
            for (job, position) in group.into_iter().zip(positions) {
                self.storage.head.insert(position, &job.spans);
                let _ = job.ack.send(Ok(()));
                let index_job = IndexJob {
                    wal_position: position,
                    spans: job.spans,
                    permit: Some(job.permit),
                };
                if self.index_sender.send(index_job).is_err() {
                    tracing::error!("indexer has stopped; spans stay in the WAL for replay");
                }
            }
        }
    }
}

// === impl Indexer ===

/// Owns the tantivy writer; the only committer.
struct Indexer {
    storage: Arc<Storage>,
    writer: tantivy::IndexWriter,
    wal_dir: PathBuf,
    commit_interval: Duration,
    commit_max_spans: usize,
    committed: u64,
    /// Queue room of the spans added since the last commit, given back by the next one.
    held_permits: Vec<OwnedSemaphorePermit>,
    stats: Arc<PipelineStats>,
}

impl Indexer {
    fn run(mut self, jobs: Receiver<IndexJob>) {
        let mut covered = self.committed;
        let mut pending_spans = 0usize;
        let mut last_commit = Instant::now();
        loop {
            let wait = self.commit_interval.saturating_sub(last_commit.elapsed());
            match jobs.recv_timeout(wait) {
                Ok(job) => {
                    for span in &job.spans {
                        let document = self.storage.spans.document(span);
                        if let Err(error) = self.writer.add_document(document) {
                            tracing::error!(%error, "tantivy refused a document; indexing stops, the WAL keeps the spans");
                            return;
                        }
                    }
                    self.stats
                        .spans_indexed
                        .fetch_add(job.spans.len() as u64, Ordering::Relaxed);
                    pending_spans += job.spans.len();
                    covered = job.wal_position;
                    self.held_permits.extend(job.permit);
                    if pending_spans >= self.commit_max_spans {
                        self.commit(covered);
                        pending_spans = 0;
                        last_commit = Instant::now();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if covered > self.committed {
                        self.commit(covered);
                        pending_spans = 0;
                    }
                    last_commit = Instant::now();
                }
                Err(RecvTimeoutError::Disconnected) => {
                    if covered > self.committed {
                        self.commit(covered);
                    }
                    return;
                }
            }
        }
    }

    fn commit(&mut self, covered: u64) {
        let started = Instant::now();
        if let Err(error) = self.storage.spans.commit(&mut self.writer, covered) {
            tracing::error!(%error, "tantivy commit failed; will retry with the next one");
            return;
        }
        self.committed = covered;
        self.storage.head.evict_through(covered);
        self.held_permits.clear();
        if let Err(error) = wal::remove_segments_below(&self.wal_dir, covered) {
            tracing::warn!(%error, "removing committed WAL segments failed");
        }
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            wal_position = covered,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "committed"
        );
    }
}
