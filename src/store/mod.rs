//! Storage: the tantivy traces and logs indexes plus the head, and trace reads across
//! them.
//!
//! Query handlers call [`Storage::find_trace`] from a blocking thread. The head is read
//! before the index: a commit makes fragments searchable before the head lets go of
//! them, so reading in this order never misses an acked span (it may see one twice;
//! duplicates are folded by span id, which also folds client retries and fragments).

pub mod logs;
pub mod partitions;
pub mod tags;
pub mod traces;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use opentelemetry_proto::tonic::trace::v1::ResourceSpans;

pub use logs::{LogIndex, LogQuery};
pub use partitions::{Partition, Partitions};
pub use traces::TraceIndex;

use crate::pipeline::head::{Head, HeadLimits};
use crate::wal::WalFiles;

use crate::model::{LogRecord, Span, TraceId};
use bytes::Bytes;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("tantivy: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("opening index directory: {0}")]
    Directory(#[from] tantivy::directory::error::OpenDirectoryError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("stored data is not understood: {0}")]
    Payload(String),
}

/// What a tantivy commit covers: the WAL position, and for the logs index the tailer's
/// file checkpoints (owned and interpreted by the tailer).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CommitPayload {
    pub wal_position: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, serde_json::Value>,
}

impl CommitPayload {
    pub fn parse(payload: Option<&str>) -> Result<CommitPayload, StoreError> {
        match payload {
            None => Ok(CommitPayload::default()),
            Some(text) => serde_json::from_str(text)
                .map_err(|error| StoreError::Payload(format!("commit payload {text:?}: {error}"))),
        }
    }

    pub fn render(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| format!("{{\"wal_position\":{}}}", self.wal_position))
    }
}

/// Bytes of the files under `path` (an index, its partitions, the WAL directory).
pub fn dir_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| {
                    let metadata = entry.metadata().ok()?;
                    Some(if metadata.is_dir() {
                        dir_bytes(&entry.path())
                    } else {
                        metadata.len()
                    })
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Open (or create) a tantivy index with the zstd doc store, and its reader. Reloads are
/// explicit, right after each commit, so the head buffer is only evicted once searches
/// already see what it held.
fn open_index(
    dir: &Path,
    schema: tantivy::schema::Schema,
) -> Result<(tantivy::Index, tantivy::IndexReader), StoreError> {
    std::fs::create_dir_all(dir)?;
    let settings = tantivy::IndexSettings {
        docstore_compression: tantivy::store::Compressor::Zstd(tantivy::store::ZstdCompressor {
            compression_level: Some(3),
        }),
        // tantivy makes a zstd context per block: 64 KiB blocks make a quarter as many
        // (and compress the repeated resources of neighbouring fragments better), at the
        // price of decompressing 64 KiB to read one trace.
        docstore_blocksize: 64 * 1024,
        ..tantivy::IndexSettings::default()
    };
    let index = tantivy::Index::builder()
        .schema(schema)
        .settings(settings)
        .open_or_create(tantivy::directory::MmapDirectory::open(dir)?)?;
    let reader = index
        .reader_builder()
        .reload_policy(tantivy::ReloadPolicy::Manual)
        .try_into()?;
    Ok((index, reader))
}

pub struct Storage {
    pub traces: Partitions<TraceIndex>,
    pub logs: Partitions<LogIndex>,
    pub head: Head,
    /// The write-ahead log's segments (`wal/`), read by the head for spans assembling.
    pub wal_files: Arc<WalFiles>,
    /// In a cluster, the other nodes: reads by trace id and log searches ask them too.
    pub peers: std::sync::OnceLock<Arc<crate::cluster::peers::Peers>>,
}

impl Storage {
    /// Open the indexes under `data_dir` (`traces/`, `logs/`), partitioned by windows of
    /// `partition`. Spans indexed one document each by earlier versions (`spans/`) are
    /// not read.
    pub fn open(
        data_dir: &Path,
        partition: std::time::Duration,
        head_limits: HeadLimits,
    ) -> Result<Storage, StoreError> {
        if data_dir.join("spans").exists() {
            tracing::warn!(
                path = %data_dir.join("spans").display(),
                "an index of single spans from an earlier version is not read; traces are stored in traces/"
            );
        }
        let wal_files = Arc::new(WalFiles::new(&data_dir.join("wal")));
        Ok(Storage {
            traces: Partitions::open(&data_dir.join("traces"), partition)?,
            logs: Partitions::open(&data_dir.join("logs"), partition)?,
            head: Head::new(head_limits, wal_files.clone()),
            wal_files,
            peers: std::sync::OnceLock::new(),
        })
    }

    /// The stored span payloads of a trace on this node: the head's, then every
    /// partition's.
    pub fn local_trace_payloads(&self, trace_id: &TraceId) -> Result<Vec<Bytes>, StoreError> {
        let mut payloads = self.head.trace_payloads(trace_id);
        payloads.extend(self.traces.trace_payloads(trace_id)?);
        Ok(payloads)
    }

    /// Every stored span of a trace, on every node of a cluster; see
    /// [`Storage::find_trace_reporting`].
    pub fn find_trace(&self, trace_id: &TraceId) -> Result<Option<Vec<ResourceSpans>>, StoreError> {
        Ok(self.find_trace_reporting(trace_id)?.0)
    }

    /// Every stored span of a trace (on this node and, in a cluster, on every other live
    /// node), and the nodes that did not answer.
    pub fn find_trace_reporting(
        &self,
        trace_id: &TraceId,
    ) -> Result<(Option<Vec<ResourceSpans>>, Vec<String>), StoreError> {
        let (payloads, missing) = self.trace_payloads_reporting(trace_id)?;
        Ok((merge_payloads(trace_id, payloads), missing))
    }

    /// The stored span payloads of a trace on every node of a cluster (duplicates
    /// included; see [`merge_payloads`]), and the nodes that did not answer.
    pub fn trace_payloads_reporting(
        &self,
        trace_id: &TraceId,
    ) -> Result<(Vec<Bytes>, Vec<String>), StoreError> {
        let mut payloads = self.local_trace_payloads(trace_id)?;
        let mut missing = Vec::new();
        if let Some(peers) = self.peers.get() {
            let gathered = peers.trace_payloads(trace_id);
            payloads.extend(gathered.answers);
            missing = gathered.missing;
        }
        Ok((payloads, missing))
    }

    /// The trace as this node alone holds it (searches, which run on every node).
    pub fn find_trace_local(
        &self,
        trace_id: &TraceId,
    ) -> Result<Option<Vec<ResourceSpans>>, StoreError> {
        Ok(merge_payloads(
            trace_id,
            self.local_trace_payloads(trace_id)?,
        ))
    }

    /// Log records matching `query`, newest first, on every node of a cluster (each
    /// record once), and the nodes that did not answer.
    pub fn search_logs_reporting(
        &self,
        query: &logs::LogQuery,
    ) -> Result<(Vec<LogRecord>, Vec<String>), StoreError> {
        let mut records = self.logs.search(query)?;
        let Some(peers) = self.peers.get() else {
            return Ok((records, Vec::new()));
        };
        let gathered = peers.logs(query);
        records.extend(gathered.answers);
        logs::sort_newest_first(&mut records);
        records.dedup_by(|a, b| !a.id.is_empty() && a.id == b.id);
        records.truncate(query.limit.max(1));
        Ok((records, gathered.missing))
    }

    /// A log record by its id, here or on another node of a cluster.
    pub fn log_by_id(&self, id: &str) -> Result<Option<LogRecord>, StoreError> {
        if let Some(record) = self.logs.get(id)? {
            return Ok(Some(record));
        }
        Ok(self.peers.get().and_then(|peers| peers.log(id)))
    }

    /// Log records matching `query`, on every node of a cluster.
    pub fn search_logs(&self, query: &logs::LogQuery) -> Result<Vec<LogRecord>, StoreError> {
        Ok(self.search_logs_reporting(query)?.0)
    }
}

/// Spans' payloads as OTLP groups them by resource and scope, each span once, spans
/// ordered by start time. `None` when there are none.
pub(crate) fn merge_payloads(
    trace_id: &TraceId,
    payloads: Vec<Bytes>,
) -> Option<Vec<ResourceSpans>> {
    if payloads.is_empty() {
        return None;
    }
    let mut seen_span_ids = HashSet::new();
    let mut batches: Vec<ResourceSpans> = Vec::new();
    for payload in payloads {
        let single = match Span::decode_payload(&payload) {
            Ok(single) => single,
            Err(error) => {
                tracing::error!(trace_id = %trace_id, %error, "stored span does not decode");
                continue;
            }
        };
        merge_single(&mut batches, single, &mut seen_span_ids);
    }
    for batch in &mut batches {
        for scope in &mut batch.scope_spans {
            scope
                .spans
                .sort_by_key(|span| (span.start_time_unix_nano, span.span_id.clone()));
        }
    }
    Some(batches)
}

/// Add a one-span `ResourceSpans` to the groups, unless its span id was seen already.
fn merge_single(
    batches: &mut Vec<ResourceSpans>,
    single: ResourceSpans,
    seen_span_ids: &mut HashSet<Vec<u8>>,
) {
    let ResourceSpans {
        resource,
        scope_spans,
        schema_url,
    } = single;
    for scope_spans in scope_spans {
        let mut spans = scope_spans.spans;
        spans.retain(|span| seen_span_ids.insert(span.span_id.clone()));
        if spans.is_empty() {
            continue;
        }
        let batch_index = match batches
            .iter()
            .position(|batch| batch.resource == resource && batch.schema_url == schema_url)
        {
            Some(index) => index,
            None => {
                batches.push(ResourceSpans {
                    resource: resource.clone(),
                    scope_spans: Vec::new(),
                    schema_url: schema_url.clone(),
                });
                batches.len() - 1
            }
        };
        let batch = &mut batches[batch_index];
        match batch.scope_spans.iter_mut().find(|existing| {
            existing.scope == scope_spans.scope && existing.schema_url == scope_spans.schema_url
        }) {
            Some(existing) => existing.spans.extend(spans),
            None => batch
                .scope_spans
                .push(opentelemetry_proto::tonic::trace::v1::ScopeSpans {
                    scope: scope_spans.scope,
                    spans,
                    schema_url: scope_spans.schema_url,
                }),
        }
    }
}
