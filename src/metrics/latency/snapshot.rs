//! Snapshots of the latency histograms, written by the indexer (every 10 s and at
//! shutdown) and read at start, so that start-up needs no scan of the index: JSON with
//! every histogram V2-serialised and base64'd, and the WAL position the snapshot covers.

use hdrhistogram::serialization::{Deserializer, V2Serializer};
use hdrhistogram::Histogram;

use std::collections::BTreeMap;

use super::{
    new_histogram, ClosedMinute, LatencyHistograms, Minute, Operation, OperationKey, TraceSample,
};
use crate::model::TraceId;

/// What a snapshot file holds: every operation, its histograms V2+DEFLATE-serialised.
#[derive(serde::Serialize, serde::Deserialize)]
struct Snapshot {
    observed_through: u64,
    operations: Vec<SnapshotOperation>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotOperation {
    service: String,
    span_name: String,
    span_kind: i32,
    cumulative: String,
    cumulative_errors: u64,
    slowest_ever: Option<(String, u64)>,
    clamped: u64,
    minutes: Vec<SnapshotMinute>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotMinute {
    minute: u64,
    histogram: String,
    errors: u64,
    samples: Vec<(String, u64)>,
    slowest: Option<(String, u64)>,
}

fn sample_out(sample: &TraceSample) -> (String, u64) {
    (sample.trace_id.to_hex(), sample.duration_us)
}

fn sample_in((trace_id, duration_us): &(String, u64)) -> Option<TraceSample> {
    Some(TraceSample {
        trace_id: TraceId::parse(trace_id).ok()?,
        duration_us: *duration_us,
    })
}

pub(super) fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(super) fn unb64(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|error| error.to_string())
}

pub(super) fn decompress_strict(bytes: &[u8]) -> Result<Histogram<u64>, String> {
    let mut reader = bytes;
    Deserializer::new()
        .deserialize::<u64, _>(&mut reader)
        .map_err(|error| format!("{error:?}"))
}

/// V2 without DEFLATE: what the snapshot writes while it holds the lock (the format
/// reader takes both).
fn serialize_plain<T: hdrhistogram::Counter>(histogram: &Histogram<T>) -> Vec<u8> {
    super::serialize_with(V2Serializer::new(), histogram)
}

impl LatencyHistograms {
    /// Everything, serialised: JSON, histograms base64, closed minutes as they are kept
    /// (V2+DEFLATE), the cumulative and current ones plain V2 (faster under the lock).
    pub fn snapshot(&self) -> Vec<u8> {
        let operations = self
            .operations
            .iter()
            .map(|(key, operation)| {
                let mut minutes: Vec<SnapshotMinute> = operation
                    .closed
                    .iter()
                    .map(|closed| SnapshotMinute {
                        minute: closed.minute,
                        histogram: b64(&closed.compressed),
                        errors: closed.errors,
                        samples: closed.samples.iter().map(sample_out).collect(),
                        slowest: closed.slowest.as_ref().map(sample_out),
                    })
                    .collect();
                if let Some(current) = &operation.current {
                    minutes.push(SnapshotMinute {
                        minute: current.minute,
                        histogram: b64(&serialize_plain(&current.histogram)),
                        errors: current.errors,
                        samples: current.samples.iter().map(sample_out).collect(),
                        slowest: current.slowest.as_ref().map(sample_out),
                    });
                }
                SnapshotOperation {
                    service: key.service.clone(),
                    span_name: key.span_name.clone(),
                    span_kind: key.span_kind,
                    cumulative: b64(&serialize_plain(&operation.cumulative)),
                    cumulative_errors: operation.cumulative_errors,
                    slowest_ever: operation.slowest_ever.as_ref().map(sample_out),
                    clamped: operation.clamped,
                    minutes,
                }
            })
            .collect();
        serde_json::to_vec(&Snapshot {
            observed_through: self.observed_through,
            operations,
        })
        .unwrap_or_default()
    }

    /// Rebuild from [`LatencyHistograms::snapshot`]'s bytes; the last minute becomes the
    /// current one again.
    pub fn restore(bytes: &[u8]) -> Result<LatencyHistograms, String> {
        let snapshot: Snapshot =
            serde_json::from_slice(bytes).map_err(|error| error.to_string())?;
        let mut operations = BTreeMap::new();
        for saved in snapshot.operations {
            let mut operation = Operation::new();
            operation.cumulative = decompress_strict(&unb64(&saved.cumulative)?)?;
            operation.cumulative_errors = saved.cumulative_errors;
            operation.slowest_ever = saved.slowest_ever.as_ref().and_then(sample_in);
            operation.clamped = saved.clamped;
            let count = saved.minutes.len();
            for (index, minute) in saved.minutes.into_iter().enumerate() {
                let samples = minute.samples.iter().filter_map(sample_in).collect();
                let slowest = minute.slowest.as_ref().and_then(sample_in);
                if index + 1 == count {
                    let wide = decompress_strict(&unb64(&minute.histogram)?)?;
                    let mut histogram = new_histogram::<u32>();
                    for value in wide.iter_recorded() {
                        let _ = histogram.record_n(
                            value.value_iterated_to(),
                            value.count_at_value().min(u64::from(u32::MAX)) as u32,
                        );
                    }
                    operation.current = Some(Minute {
                        minute: minute.minute,
                        histogram,
                        errors: minute.errors,
                        samples,
                        slowest,
                    });
                } else {
                    operation.closed.push_back(ClosedMinute {
                        minute: minute.minute,
                        compressed: unb64(&minute.histogram)?,
                        errors: minute.errors,
                        samples,
                        slowest,
                    });
                }
            }
            operations.insert(
                OperationKey {
                    service: saved.service,
                    span_name: saved.span_name,
                    span_kind: saved.span_kind,
                },
                operation,
            );
        }
        Ok(LatencyHistograms {
            operations,
            observed_through: snapshot.observed_through,
        })
    }
}
