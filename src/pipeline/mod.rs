//! The one path every decoded record takes: WAL (fsync, then ack) → metrics → head
//! (traces assembled) → tail sampling → indexer → tantivy. Tailed log lines skip the WAL
//! (the file is the log) and reach the indexer with the file checkpoint that covers them.
//!
//! Takes `Vec<Span>` and `Vec<LogRecord>` from the protocol handlers through
//! [`Pipeline::submit`] and answers once the batch is durable. Two threads do the work:
//! the WAL thread ([`wal_writer`]) appends every waiting batch, fsyncs once for all of them
//! (group commit), observes the spans in the metrics, adds them to the [`head`] and acks;
//! the indexer thread ([`indexer`]) takes the traces that are due to leave the head, has
//! them [`sample`]d, writes each kept one as one document per trace fragment, adds log
//! records, and commits both indexes every `commit_interval`, storing in the commit
//! payloads the WAL position replay must start from (the oldest span still assembling)
//! and, for the logs index, the tailer's checkpoints.
//!
//! Backpressure: [`IngestQueue`] counts records accepted and not yet in a tantivy commit
//! (spans waiting in the head included), which bounds the channels, the head and
//! tantivy's buffers together; when it has no room, ingest is refused at once (429 or
//! `UNAVAILABLE`) and a counter goes up. The tailer instead blocks on a bounded channel:
//! its file is its buffer.

pub mod disk;
pub mod head;
mod indexer;
pub mod sample;
mod wal_writer;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::config::Config;
use crate::lock;
use crate::metrics::Metrics;
use crate::model::{LogRecord, Span};
use crate::store::{CommitPayload, Storage, StoreError};
use crate::wal::{self, RecordKind, Wal};

/// Why a batch was not accepted. Nothing of a refused batch is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("ingest queue is full")]
    Overloaded,
    #[error("batch of {records} records is larger than the whole ingest queue ({capacity})")]
    BatchTooLarge { records: usize, capacity: usize },
    #[error("write-ahead log replay is still running")]
    NotReady,
    #[error("service is shutting down")]
    ShuttingDown,
    #[error("write-ahead log write failed")]
    WalFailed,
    /// The disk guard refuses ingest (503 / `UNAVAILABLE`, retried later).
    #[error("ingest is paused: {0}")]
    DiskFull(String),
    /// The cluster's stream did not take the batch (503 / `UNAVAILABLE`, retried later).
    #[error("cluster stream unavailable: {0}")]
    Cluster(String),
    /// One record is larger than a message of the cluster's stream may be (413).
    #[error("a record of {bytes} bytes is larger than the cluster's messages may be ({limit})")]
    RecordTooLarge { bytes: usize, limit: usize },
}

/// Counters of the pipeline, read by `/metrics`.
#[derive(Default)]
pub struct PipelineStats {
    pub spans_accepted: AtomicU64,
    pub logs_accepted: AtomicU64,
    pub records_refused_overload: AtomicU64,
    /// Requests refused before decoding because the queue was full (their records are
    /// not counted: they were never read).
    pub requests_refused_undecoded: AtomicU64,
    pub spans_indexed: AtomicU64,
    pub logs_indexed: AtomicU64,
    pub wal_bytes: AtomicU64,
    pub wal_fsyncs: AtomicU64,
    pub commits: AtomicU64,
    pub fragments_indexed: AtomicU64,
    /// In a cluster: records this node received and the stream acked.
    pub spans_published: AtomicU64,
    pub logs_published: AtomicU64,
}

/// Records accepted and not yet in a tantivy commit (or dropped by sampling), against
/// `limits.ingest_queue_spans`.
pub struct IngestQueue {
    used: AtomicUsize,
    capacity: usize,
}

impl IngestQueue {
    pub fn new(capacity: usize) -> IngestQueue {
        IngestQueue {
            used: AtomicUsize::new(0),
            capacity,
        }
    }

    /// Room for `count` more, or `false` and nothing reserved.
    pub fn try_reserve(&self, count: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + count <= self.capacity).then_some(used + count)
            })
            .is_ok()
    }

    /// Count records that are already durable (replayed from the WAL), room or not.
    pub fn force_reserve(&self, count: usize) {
        self.used.fetch_add(count, Ordering::AcqRel);
    }

    pub fn release(&self, count: usize) {
        if count == 0 {
            return;
        }
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(count))
            });
    }

    pub fn depth(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// Records of one request, all of one kind.
#[derive(Debug, Clone)]
pub enum Batch {
    Spans(Vec<Span>),
    Logs(Vec<LogRecord>),
}

impl Batch {
    pub fn len(&self) -> usize {
        match self {
            Batch::Spans(spans) => spans.len(),
            Batch::Logs(records) => records.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn kind(&self) -> RecordKind {
        match self {
            Batch::Spans(_) => RecordKind::Spans,
            Batch::Logs(_) => RecordKind::Logs,
        }
    }

    /// The WAL payload: span payloads each prefixed by their length (u32 LE), or the
    /// records as a JSON array. `span_offsets` gets where each span's payload starts in
    /// it.
    fn encode(&self, out: &mut Vec<u8>, span_offsets: &mut Vec<u64>) {
        out.clear();
        span_offsets.clear();
        match self {
            Batch::Spans(spans) => {
                for span in spans {
                    span_offsets.push(out.len() as u64 + 4);
                    crate::store::traces::append_payload(out, &span.payload);
                }
            }
            Batch::Logs(records) => {
                if let Err(error) = serde_json::to_writer(&mut *out, records) {
                    tracing::error!(%error, "log records do not serialise");
                }
            }
        }
    }

    /// A replayed record; for spans, also where each decoded span's payload starts in it.
    pub(crate) fn decode(kind: RecordKind, payload: &[u8]) -> (Batch, Vec<u64>) {
        match kind {
            RecordKind::Spans => {
                let (spans, offsets) = decode_spans(payload);
                (Batch::Spans(spans), offsets)
            }
            RecordKind::Logs => {
                let records = serde_json::from_slice(payload).unwrap_or_else(|error| {
                    tracing::error!(%error, "log records in the write-ahead log do not decode");
                    Vec::new()
                });
                (Batch::Logs(records), Vec::new())
            }
            // A stream mark holds no records.
            RecordKind::Stream => (Batch::Spans(Vec::new()), Vec::new()),
        }
    }
}

/// Read a snapshot written by the indexer and hand it to `install`; one that is missing
/// starts empty, one that cannot be read or understood too, and says so.
fn restore_snapshot<T>(
    path: &std::path::Path,
    what: &str,
    parse: impl FnOnce(&[u8]) -> Result<T, String>,
    install: impl FnOnce(T),
) {
    match std::fs::read(path) {
        Ok(bytes) => match parse(&bytes) {
            Ok(restored) => install(restored),
            Err(problem) => {
                tracing::warn!(path = %path.display(), %problem, "{what} not understood; it starts empty")
            }
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "{what} not read; it starts empty")
        }
    }
}

/// The nice value of the indexing threads: below the query and ingest threads (0), so
/// that the scheduler runs those first, yet with a share of the CPU the indexer keeps
/// when it has to catch up (a nice-5 thread weighs a third of a nice-0 one).
const INDEXER_NICE: i32 = 5;

fn decode_spans(record: &[u8]) -> (Vec<Span>, Vec<u64>) {
    crate::store::traces::split_payload_at(record)
        .into_iter()
        .filter_map(|(offset, payload)| match Span::from_payload(payload) {
            Ok(span) => Some((span, offset as u64)),
            Err(error) => {
                tracing::error!(%error, "span in the write-ahead log does not decode");
                None
            }
        })
        .unzip()
}

/// Tailed lines and the checkpoint of their file after them, applied atomically by the
/// indexer: the commit that holds the lines holds the checkpoint. `checkpoint: None`
/// forgets the file.
#[derive(Debug, Clone)]
pub struct TailedBatch {
    pub records: Vec<LogRecord>,
    pub checkpoint_key: String,
    pub checkpoint: Option<serde_json::Value>,
}

enum IndexJob {
    /// Log records of the WAL record ending at `wal_position`; `reserved` queue room is
    /// given back by the commit that holds them.
    Logs {
        wal_position: u64,
        records: Vec<LogRecord>,
        reserved: usize,
    },
    /// Every WAL record up to here has been handed over (span records to the head).
    Through {
        wal_position: u64,
    },
    Tailed(TailedBatch),
}

struct WalJob {
    batch: Batch,
    /// The stream message the batch is from (a partition this node owns in a cluster).
    mark: Option<StreamMark>,
    /// The WAL position past the batch's records (and its mark), once fsynced.
    ack: oneshot::Sender<Result<u64, SubmitError>>,
}

/// Where a batch came from in the cluster's stream: its partition and sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamMark {
    pub partition: u32,
    pub sequence: u64,
}

impl StreamMark {
    /// A [`RecordKind::Stream`] record's payload: partition (u32 LE), sequence (u64 LE).
    fn encode(&self) -> [u8; 12] {
        let mut bytes = [0; 12];
        bytes[..4].copy_from_slice(&self.partition.to_le_bytes());
        bytes[4..].copy_from_slice(&self.sequence.to_le_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<StreamMark> {
        Some(StreamMark {
            partition: u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?),
            sequence: u64::from_le_bytes(bytes.get(4..12)?.try_into().ok()?),
        })
    }
}

/// The tailer's way into the indexer; `send` blocks while the indexer is behind.
#[derive(Clone)]
pub struct TailSender {
    sender: SyncSender<IndexJob>,
    disk: Arc<disk::DiskGuard>,
    redactor: Arc<crate::redact::Redactor>,
    /// In a cluster, lines go to the stream (their partition's owner indexes them) and
    /// only the checkpoint to the local indexer, once the stream has acked them.
    cluster: Option<(ClusterSlot, tokio::runtime::Handle)>,
}

/// The cluster connection, once joined.
pub type ClusterSlot = Arc<std::sync::OnceLock<Arc<crate::cluster::Cluster>>>;

impl TailSender {
    /// Whether the tailer should leave its files unread for now (no space to index them).
    pub fn paused(&self) -> bool {
        self.disk.refusal().is_some()
    }

    /// `false` once the pipeline has shut down. In a cluster, blocks until the stream
    /// has the lines (the file is their buffer meanwhile).
    pub fn send(&self, mut batch: TailedBatch) -> bool {
        for record in &mut batch.records {
            self.redactor.log(record);
        }
        if let Some((slot, runtime)) = &self.cluster {
            let records = Batch::Logs(std::mem::take(&mut batch.records));
            let mut said = false;
            loop {
                let published = match slot.get() {
                    Some(cluster) => runtime.block_on(cluster.publish(&records)),
                    None => Err(crate::cluster::ClusterError::Nats("not joined yet".into())),
                };
                match published {
                    Ok(()) => break,
                    Err(error) => {
                        if !said {
                            tracing::warn!(%error, "tailed lines wait for the cluster's stream");
                            said = true;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(500));
                    }
                }
            }
        }
        self.sender.send(IndexJob::Tailed(batch)).is_ok()
    }
}

pub struct Pipeline {
    storage: Arc<Storage>,
    wal_dir: PathBuf,
    config: Config,
    queue: Arc<IngestQueue>,
    ready: AtomicBool,
    /// Where replay starts for the traces index (the oldest span assembling at its last
    /// commit) and up to where the logs index holds the WAL's log records.
    committed_spans: u64,
    committed_logs: u64,
    /// The tailer's file checkpoints as of the last logs commit, read once at start.
    committed_files: BTreeMap<String, serde_json::Value>,
    /// They could not be read: the tailer follows `logs.on_damaged_checkpoints`.
    pub checkpoints_damaged: bool,
    wal_sender: Mutex<Option<Sender<WalJob>>>,
    index_sender: Mutex<Option<SyncSender<IndexJob>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    pub stats: Arc<PipelineStats>,
    pub metrics: Arc<Metrics>,
    /// Free space on the data directory, and whether ingest waits for it.
    pub disk: Arc<disk::DiskGuard>,
    pub sampler: Arc<sample::Sampler>,
    /// Set when `[cluster]` is configured: ingest goes to the cluster's stream once joined.
    cluster_mode: bool,
    pub cluster: ClusterSlot,
    /// The WAL position below which everything is in a tantivy commit (or was dropped by
    /// sampling): what a cluster's partition consumers ack by.
    durable: Arc<tokio::sync::watch::Sender<u64>>,
    /// Per partition, the last stream message written: (sequence, WAL position past it).
    stream_marks: StreamMarks,
}

/// Per partition of a cluster's stream, the last message written here: its sequence, and
/// the WAL position past it. Kept in the WAL (a [`RecordKind::Stream`] record after each
/// message) and, for what commits hold, in `cluster/stream-marks.json`, written after
/// each commit.
pub(crate) type StreamMarks = Arc<Mutex<HashMap<u32, (u64, u64)>>>;

/// Where the stream marks of committed messages are kept.
pub fn stream_marks_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("cluster").join("stream-marks.json")
}

/// Remember `mark` if it is the partition's latest.
fn note_mark(marks: &StreamMarks, mark: StreamMark, position: u64) {
    let mut marks = lock(marks);
    let known = marks.entry(mark.partition).or_default();
    if mark.sequence > known.0 {
        *known = (mark.sequence, position);
    }
}

/// Where the latency histograms are snapshotted, under the data dir.
pub fn latency_snapshot_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("metrics").join("latency.json")
}

/// The dependency links, written with the latency snapshot.
pub fn dependencies_snapshot_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("metrics").join("dependencies.json")
}

impl Pipeline {
    /// Load the latency snapshot and start the indexer thread. Ingest is refused
    /// (`NotReady`) until [`Pipeline::replay_and_start`] has replayed the WAL.
    pub fn new(
        storage: Arc<Storage>,
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Pipeline>, StoreError> {
        let committed_spans = storage.traces.committed_wal_position()?;
        let mut checkpoints_damaged = false;
        let logs_commit = match storage.logs.committed_payload() {
            Ok(commit) => commit,
            Err(StoreError::Payload(problem)) => {
                tracing::error!(
                    %problem,
                    policy = ?config.logs.on_damaged_checkpoints,
                    "the tailer's file checkpoints are damaged; tailed files are read again as logs.on_damaged_checkpoints says"
                );
                checkpoints_damaged = true;
                CommitPayload {
                    wal_position: committed_spans,
                    files: BTreeMap::new(),
                }
            }
            Err(other) => return Err(other),
        };
        restore_snapshot(
            &latency_snapshot_path(&config.data_dir),
            "latency snapshot",
            crate::metrics::latency::LatencyHistograms::restore,
            |restored| *lock(&metrics.latency) = restored,
        );
        restore_snapshot(
            &dependencies_snapshot_path(&config.data_dir),
            "dependency links snapshot",
            crate::metrics::dependencies::Dependencies::restore,
            |restored| *lock(&metrics.dependencies) = restored,
        );
        let (index_sender, index_receiver) = mpsc::sync_channel(256);
        let stats = Arc::new(PipelineStats::default());
        let queue = Arc::new(IngestQueue::new(config.ingest_queue_spans));
        let sampler = Arc::new(sample::Sampler::new(config.sampling.clone()));
        let durable = Arc::new(tokio::sync::watch::Sender::new(
            committed_spans.min(logs_commit.wal_position),
        ));
        let stream_marks: StreamMarks = Arc::default();
        restore_snapshot(
            &stream_marks_path(&config.data_dir),
            "stream marks",
            |bytes| {
                serde_json::from_slice::<HashMap<u32, (u64, u64)>>(bytes).map_err(|e| e.to_string())
            },
            |restored| *lock(&stream_marks) = restored,
        );
        let shared = indexer::Shared {
            queue: queue.clone(),
            stats: stats.clone(),
            metrics: metrics.clone(),
            sampler: sampler.clone(),
            durable: durable.clone(),
            stream_marks: stream_marks.clone(),
        };
        // The indexer is made on its own thread, after that thread has lowered its
        // priority, so that tantivy's indexing, compressing and merging threads (which
        // inherit it) give way to queries and to acking ingest: trace by id stays fast
        // while the index catches up.
        let (made, made_result) = mpsc::sync_channel(1);
        let (indexer_storage, indexer_config, indexer_logs) =
            (storage.clone(), config.clone(), logs_commit.clone());
        let indexer_thread = std::thread::Builder::new()
            .name("tracelink-indexer".into())
            .spawn(move || {
                crate::lower_thread_priority(
                    INDEXER_NICE,
                    "indexer (it runs at the queries' priority)",
                );
                match indexer::Indexer::new(
                    indexer_storage,
                    &indexer_config,
                    committed_spans,
                    indexer_logs,
                    shared,
                ) {
                    Ok(indexer) => {
                        let _ = made.send(Ok(()));
                        indexer.run(index_receiver);
                    }
                    Err(error) => {
                        let _ = made.send(Err(error));
                    }
                }
            })?;
        made_result
            .recv()
            .map_err(|_| std::io::Error::other("the indexer thread ended before it started"))??;
        Ok(Arc::new(Pipeline {
            storage,
            wal_dir: config.data_dir.join("wal"),
            config: config.clone(),
            queue,
            ready: AtomicBool::new(false),
            committed_spans,
            committed_logs: logs_commit.wal_position,
            committed_files: logs_commit.files,
            checkpoints_damaged,
            wal_sender: Mutex::new(None),
            index_sender: Mutex::new(Some(index_sender)),
            threads: Mutex::new(vec![indexer_thread]),
            stats,
            metrics,
            sampler,
            cluster_mode: config.cluster.is_some(),
            cluster: Arc::default(),
            durable,
            stream_marks,
            disk: Arc::new(disk::DiskGuard::new(
                config.data_dir.clone(),
                config.min_free_bytes,
            )),
        }))
    }

    /// Replay the WAL from the lowest position anything still needs: span records from
    /// the traces index's replay position go back into the head (spans a commit already
    /// holds are recognised and skipped), log records past the logs commit go to the
    /// indexer, and spans past the latency snapshot are observed again. Then start the
    /// WAL thread and accept ingest. Blocking.
    pub fn replay_and_start(&self) -> Result<u64, wal::WalError> {
        let Some(index_sender) = lock(&self.index_sender).clone() else {
            return Ok(0);
        };
        let observed = lock(&self.metrics.latency).observed_position();
        let from = self.committed_spans.min(self.committed_logs).min(observed);
        let already_indexed = match self.storage.traces.spans_from_wal(self.committed_spans) {
            Ok(seen) => seen,
            Err(error) => {
                tracing::error!(%error, "cannot read which replayed spans are indexed; replaying all");
                Default::default()
            }
        };
        let mut replayed = 0u64;
        let now = std::time::Instant::now();
        let wal = Wal::open(
            self.storage.wal_files.clone(),
            from,
            self.config.wal_segment_bytes,
            |record| match Batch::decode(record.kind, &record.payload) {
                _ if record.kind == RecordKind::Stream => {
                    if let Some(mark) = StreamMark::decode(&record.payload) {
                        note_mark(&self.stream_marks, mark, record.end_position);
                    }
                }
                (Batch::Spans(spans), offsets) => {
                    if record.end_position > observed {
                        self.metrics.replay_latency(&spans, record.end_position);
                    }
                    if record.start_position < self.committed_spans {
                        return;
                    }
                    let payload_start = wal::payload_position(record.start_position);
                    let (spans, payload_at): (Vec<Span>, Vec<u64>) = spans
                        .into_iter()
                        .zip(offsets)
                        .filter(|(span, _)| {
                            !already_indexed.contains(&(span.trace_id, span.span_id))
                        })
                        .map(|(span, offset)| (span, payload_start + offset))
                        .unzip();
                    replayed += spans.len() as u64;
                    self.queue.force_reserve(spans.len());
                    self.storage.head.insert(
                        record.start_position,
                        record.end_position,
                        spans,
                        &payload_at,
                        Vec::new(),
                        now,
                    );
                }
                (Batch::Logs(records), _) => {
                    if record.end_position <= self.committed_logs {
                        return;
                    }
                    replayed += records.len() as u64;
                    self.queue.force_reserve(records.len());
                    let job = IndexJob::Logs {
                        wal_position: record.end_position,
                        reserved: records.len(),
                        records,
                    };
                    if index_sender.send(job).is_err() {
                        tracing::error!("indexer stopped during replay");
                    }
                }
            },
        )?;
        self.storage.head.received_through(wal.position());
        let _ = index_sender.send(IndexJob::Through {
            wal_position: wal.position(),
        });
        let (wal_sender, wal_receiver) = mpsc::channel();
        let writer = wal_writer::WalWriter::new(
            wal,
            self.storage.clone(),
            index_sender,
            self.queue.clone(),
            self.stats.clone(),
            self.metrics.clone(),
            self.disk.clone(),
            self.stream_marks.clone(),
        );
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
        Ok(replayed)
    }

    /// What redacts records before the WAL.
    pub fn redactor(&self) -> &crate::redact::Redactor {
        &self.config.redactor
    }

    /// `[cluster]` is configured and the cluster not joined yet.
    pub fn cluster_waiting(&self) -> bool {
        self.cluster_mode && self.cluster.get().is_none()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The tailer's checkpoints as of the last logs commit.
    pub fn committed_files(&self) -> &BTreeMap<String, serde_json::Value> {
        &self.committed_files
    }

    /// A sender for the tailer, `None` once shut down.
    pub fn tail_sender(&self) -> Option<TailSender> {
        lock(&self.index_sender).clone().map(|sender| TailSender {
            sender,
            disk: self.disk.clone(),
            redactor: self.config.redactor.clone(),
            cluster: self
                .cluster_mode
                .then(|| tokio::runtime::Handle::try_current().ok())
                .flatten()
                .map(|runtime| (self.cluster.clone(), runtime)),
        })
    }

    pub async fn submit_spans(&self, spans: Vec<Span>) -> Result<(), SubmitError> {
        self.submit(Batch::Spans(spans)).await
    }

    pub async fn submit_logs(&self, records: Vec<LogRecord>) -> Result<(), SubmitError> {
        self.submit(Batch::Logs(records)).await
    }

    /// Refuse a request before its body is decoded when no record could be taken now
    /// (not ready, or the queue is full): a client retrying against a full queue then
    /// costs no decoding.
    pub fn check_room(&self) -> Result<(), SubmitError> {
        if self.cluster_mode {
            // The room that counts is the stream's, which answers for itself.
            return match self.cluster.get() {
                Some(_) => Ok(()),
                None => Err(SubmitError::Cluster("not joined yet".into())),
            };
        }
        if !self.is_ready() {
            return Err(SubmitError::NotReady);
        }
        if let Some(reason) = self.disk.refusal() {
            self.disk.refused_requests.fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::DiskFull(reason));
        }
        if self.queue.depth() >= self.config.ingest_queue_spans {
            self.stats
                .requests_refused_undecoded
                .fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::Overloaded);
        }
        Ok(())
    }

    /// Make a batch durable. Returns once it is fsynced in the WAL (and, for spans,
    /// readable by trace id); in a cluster, once the stream has acked every record.
    pub async fn submit(&self, mut batch: Batch) -> Result<(), SubmitError> {
        if batch.is_empty() {
            return Ok(());
        }
        // Log records are redacted here, before the WAL (spans were, as they were decoded).
        if let Batch::Logs(records) = &mut batch {
            for record in records {
                self.config.redactor.log(record);
            }
        }
        if self.cluster_mode {
            let Some(cluster) = self.cluster.get() else {
                return Err(SubmitError::Cluster("not joined yet".into()));
            };
            let accepted = match &batch {
                Batch::Spans(_) => &self.stats.spans_published,
                Batch::Logs(_) => &self.stats.logs_published,
            };
            return match cluster.publish(&batch).await {
                Ok(()) => {
                    accepted.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    Ok(())
                }
                Err(crate::cluster::ClusterError::TooLarge { bytes, limit }) => {
                    Err(SubmitError::RecordTooLarge { bytes, limit })
                }
                Err(error) => Err(SubmitError::Cluster(error.to_string())),
            };
        }
        self.write(batch, None).await.map(drop)
    }

    /// The longest a record written waits for a tantivy commit to hold it (its trace's
    /// longest stay in the head, then a commit), under normal load.
    pub fn longest_hold(&self) -> std::time::Duration {
        self.config.trace_max_age + self.config.trace_idle + self.config.commit_interval
    }

    /// Where everything below is in a tantivy commit (or dropped by sampling), as it
    /// advances.
    pub fn durable(&self) -> tokio::sync::watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// The last message of a partition written here (held by the WAL, or by a commit
    /// when the WAL has gone past it): its stream sequence, and the WAL position past it.
    pub fn stream_mark(&self, partition: u32) -> Option<(u64, u64)> {
        lock(&self.stream_marks).get(&partition).copied()
    }

    /// Write a batch through the local WAL into the head (ingest on one node, or a
    /// message of a partition this node owns in a cluster, `mark`ed with where it came
    /// from). The WAL position past it once fsynced (0 for an empty batch).
    pub(crate) async fn write(
        &self,
        batch: Batch,
        mark: Option<StreamMark>,
    ) -> Result<u64, SubmitError> {
        if batch.is_empty() {
            return Ok(0);
        }
        if !self.is_ready() {
            return Err(SubmitError::NotReady);
        }
        let capacity = self.config.ingest_queue_spans;
        let count = batch.len();
        if count > capacity {
            return Err(SubmitError::BatchTooLarge {
                records: count,
                capacity,
            });
        }
        if !self.queue.try_reserve(count) {
            self.stats
                .records_refused_overload
                .fetch_add(count as u64, Ordering::Relaxed);
            return Err(SubmitError::Overloaded);
        }
        let accepted = match &batch {
            Batch::Spans(_) => &self.stats.spans_accepted,
            Batch::Logs(_) => &self.stats.logs_accepted,
        };
        let (ack, acked) = oneshot::channel();
        let sent = {
            let sender = lock(&self.wal_sender);
            match sender.as_ref() {
                None => Err(SubmitError::ShuttingDown),
                Some(sender) => sender
                    .send(WalJob { batch, mark, ack })
                    .map_err(|_| SubmitError::WalFailed),
            }
        };
        if let Err(error) = sent {
            self.queue.release(count);
            return Err(error);
        }
        match acked.await {
            Ok(Ok(position)) => {
                accepted.fetch_add(count as u64, Ordering::Relaxed);
                Ok(position)
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(SubmitError::WalFailed),
        }
    }

    /// Records accepted and not yet committed to tantivy (or dropped by sampling).
    pub fn queue_depth(&self) -> usize {
        self.queue.depth()
    }

    /// Stop accepting, let the WAL thread drain, make the indexer send every trace in the
    /// head through sampling and do its final commit, and wait for both. Blocking: run it
    /// on a blocking thread.
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
