//! The service's own health, read at scrape time from the pipeline's and the tailer's
//! counters: records accepted, refused and indexed, WAL bytes and fsyncs, commits, queue
//! depth, head size, index and WAL size on disk, tailer lag and reading counters.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::store::partitions::{partition_name, DropReason};
use prometheus_client::metrics::MetricType;

use crate::ingest::logline::{LineFormat, Wrapper};
use crate::ingest::tail::TailStats;
use crate::pipeline::{Pipeline, PipelineStats};
use crate::store::Storage;

/// Tailed files whose lag is reported one by one; the rest are summed under `other`.
const MAX_LAG_SERIES: usize = 100;

pub struct OwnMetrics {
    pub stats: Arc<PipelineStats>,
    pub pipeline: Weak<Pipeline>,
    pub storage: Weak<Storage>,
    pub data_dir: PathBuf,
    pub tail: Arc<Mutex<Option<Arc<TailStats>>>>,
    /// In a cluster, the partitions this node owns.
    pub ownership: Option<Arc<crate::cluster::owner::Ownership>>,
}

impl std::fmt::Debug for OwnMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnMetrics")
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> std::fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

impl Collector for OwnMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let stats = &self.stats;
        let load = |value: &std::sync::atomic::AtomicU64| value.load(Ordering::Relaxed);
        counter(
            &mut encoder,
            "tracelink_spans_accepted",
            "Spans acked (in the fsynced WAL)",
            load(&stats.spans_accepted),
        )?;
        counter(
            &mut encoder,
            "tracelink_log_records_accepted",
            "OTLP log records acked (in the fsynced WAL)",
            load(&stats.logs_accepted),
        )?;
        counter(
            &mut encoder,
            "tracelink_records_refused_overload",
            "Spans and log records refused because the ingest queue was full",
            load(&stats.records_refused_overload),
        )?;
        counter(
            &mut encoder,
            "tracelink_requests_refused_overload",
            "Ingest requests refused before decoding because the ingest queue was full",
            load(&stats.requests_refused_undecoded),
        )?;
        counter(
            &mut encoder,
            "tracelink_spans_indexed",
            "Spans of kept traces added to the tantivy traces index",
            load(&stats.spans_indexed),
        )?;
        if let Some(ownership) = &self.ownership {
            // What this node received and the stream acked; what it owns is counted by
            // the metrics above, so that Prometheus sums the nodes.
            counter(
                &mut encoder,
                "tracelink_cluster_spans_published",
                "Spans this node received and the cluster's stream acked",
                load(&stats.spans_published),
            )?;
            counter(
                &mut encoder,
                "tracelink_cluster_log_records_published",
                "Log records this node received and the cluster's stream acked",
                load(&stats.logs_published),
            )?;
            gauge(
                &mut encoder,
                "tracelink_cluster_partitions_owned",
                "Partitions of the cluster's stream this node owns now",
                crate::lock(&ownership.partitions).len() as i64,
            )?;
        }
        counter(
            &mut encoder,
            "tracelink_trace_fragments_indexed",
            "Trace fragments (one tantivy document each) added to the traces index",
            load(&stats.fragments_indexed),
        )?;
        counter(
            &mut encoder,
            "tracelink_log_records_indexed",
            "Log records added to the tantivy logs index",
            load(&stats.logs_indexed),
        )?;
        counter(
            &mut encoder,
            "tracelink_wal_bytes",
            "Bytes appended to the write-ahead log",
            load(&stats.wal_bytes),
        )?;
        counter(
            &mut encoder,
            "tracelink_wal_fsyncs",
            "Write-ahead log fsyncs (group commits)",
            load(&stats.wal_fsyncs),
        )?;
        counter(
            &mut encoder,
            "tracelink_commits",
            "tantivy commits",
            load(&stats.commits),
        )?;
        if let Some(pipeline) = self.pipeline.upgrade() {
            gauge(
                &mut encoder,
                "tracelink_ingest_queue_depth",
                "Records accepted and not yet committed to tantivy",
                pipeline.queue_depth() as i64,
            )?;
            let disk = &pipeline.disk;
            let free = disk.free_bytes.load(std::sync::atomic::Ordering::Relaxed);
            if free != u64::MAX {
                gauge(
                    &mut encoder,
                    "tracelink_storage_free_bytes",
                    "Free space on the data directory's filesystem, as last read",
                    free.min(i64::MAX as u64) as i64,
                )?;
            }
            gauge(
                &mut encoder,
                "tracelink_ingest_paused_disk",
                "1 while ingest is refused for want of disk space",
                i64::from(disk.refusal().is_some()),
            )?;
            counter(
                &mut encoder,
                "tracelink_ingest_refused_disk",
                "Ingest requests refused for want of disk space",
                load(&disk.refused_requests),
            )?;
            counter(
                &mut encoder,
                "tracelink_disk_full_episodes",
                "Times ingest stopped for want of disk space",
                load(&disk.episodes),
            )?;
            let mut metric = encoder.encode_descriptor(
                "tracelink_redactions",
                "Values redacted before they were written, by rule",
                None,
                MetricType::Counter,
            )?;
            for (rule, count) in pipeline.redactor().counts() {
                let labels = [("rule", rule.as_str())];
                ConstCounter::new(count).encode(metric.encode_family(&labels)?)?;
            }
            counter(
                &mut encoder,
                "tracelink_values_truncated",
                "String values cut to limits.max_attribute_bytes before they were written",
                load(&pipeline.redactor().truncated),
            )?;
        }
        if let Some(storage) = self.storage.upgrade() {
            gauge(
                &mut encoder,
                "tracelink_head_spans",
                "Spans served from the head buffer (acked, not yet committed)",
                storage.head.len() as i64,
            )?;
        }
        let mut metric = encoder.encode_descriptor(
            "tracelink_storage_bytes",
            "Bytes on disk, per index and partition (the WAL as index \"wal\")",
            None,
            MetricType::Gauge,
        )?;
        let wal = crate::store::dir_bytes(&self.data_dir.join("wal")) as i64;
        ConstGauge::new(wal)
            .encode(metric.encode_family(&[("index", "wal"), ("partition", "")])?)?;
        if let Some(storage) = self.storage.upgrade() {
            let sizes = [
                ("traces", storage.traces.sizes()),
                ("logs", storage.logs.sizes()),
            ];
            for (index, partitions) in &sizes {
                for (start, bytes) in partitions {
                    let name = partition_name(*start);
                    let labels = [("index", *index), ("partition", name.as_str())];
                    ConstGauge::new(*bytes as i64).encode(metric.encode_family(&labels)?)?;
                }
            }
            let mut metric = encoder.encode_descriptor(
                "tracelink_storage_partitions",
                "Partitions of each index",
                None,
                MetricType::Gauge,
            )?;
            for (index, partitions) in &sizes {
                ConstGauge::new(partitions.len() as i64)
                    .encode(metric.encode_family(&[("index", *index)])?)?;
            }
            for (name, help, pick) in [
                (
                    "tracelink_storage_oldest_partition_timestamp_seconds",
                    "Start of the oldest partition's window",
                    0,
                ),
                (
                    "tracelink_storage_newest_partition_timestamp_seconds",
                    "Start of the newest partition's window",
                    1,
                ),
            ] {
                let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for (index, partitions) in &sizes {
                    let chosen = if pick == 0 {
                        partitions.first()
                    } else {
                        partitions.last()
                    };
                    if let Some((start, _)) = chosen {
                        ConstGauge::new(*start)
                            .encode(metric.encode_family(&[("index", *index)])?)?;
                    }
                }
            }
            let mut metric = encoder.encode_descriptor(
                "tracelink_storage_partitions_dropped",
                "Partitions dropped by retention, by why: age (retention.*_max_age) or disk (retention.max_disk_bytes)",
                None,
                MetricType::Counter,
            )?;
            for reason in DropReason::ALL {
                for (index, dropped) in [
                    ("traces", storage.traces.dropped(reason)),
                    ("logs", storage.logs.dropped(reason)),
                ] {
                    let labels = [("index", index), ("reason", reason.as_str())];
                    ConstCounter::new(dropped).encode(metric.encode_family(&labels)?)?;
                }
            }
        }
        let tail = self.tail.lock().ok().and_then(|tail| tail.clone());
        if let Some(tail) = tail {
            counter(
                &mut encoder,
                "tracelink_tailer_lines_read",
                "Records read from tailed files",
                load(&tail.lines_read),
            )?;
            let mut metric = encoder.encode_descriptor(
                "tracelink_tailer_lines",
                "Records read from tailed files, by what their line was read as and the container runtime's wrapper around it",
                None,
                MetricType::Counter,
            )?;
            for format in LineFormat::ALL {
                for wrapper in Wrapper::ALL {
                    let labels = [("format", format.as_str()), ("wrapper", wrapper.as_str())];
                    ConstCounter::new(tail.lines(format, wrapper))
                        .encode(metric.encode_family(&labels)?)?;
                }
            }
            counter(
                &mut encoder,
                "tracelink_tailer_lines_truncated",
                "Lines cut at max_line_bytes",
                load(&tail.lines_truncated),
            )?;
            counter(
                &mut encoder,
                "tracelink_tailer_parse_errors",
                "Lines kept as text because they did not parse as their format",
                load(&tail.parse_errors),
            )?;
            gauge(
                &mut encoder,
                "tracelink_tailer_files_open",
                "Tailed files with an open handle",
                load(&tail.files_open) as i64,
            )?;
            let lag = tail
                .lag_bytes
                .lock()
                .map(|lag| lag.clone())
                .unwrap_or_default();
            let mut metric = encoder.encode_descriptor(
                "tracelink_tailer_lag_bytes",
                "Bytes written to a tailed file and not yet read",
                None,
                MetricType::Gauge,
            )?;
            let mut other = 0u64;
            for (index, (path, bytes)) in lag.iter().enumerate() {
                if index < MAX_LAG_SERIES {
                    let labels = [("path", path.as_str())];
                    ConstGauge::new(*bytes as i64).encode(metric.encode_family(&labels)?)?;
                } else {
                    other += bytes;
                }
            }
            if lag.len() > MAX_LAG_SERIES {
                let labels = [("path", "other")];
                ConstGauge::new(other as i64).encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
