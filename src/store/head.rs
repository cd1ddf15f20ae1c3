//! The head buffer: spans that are acked (in the WAL) but not yet in a tantivy commit.
//!
//! Filled by the pipeline's WAL thread right after each fsync and before the ack, so a
//! trace can be read back the moment its spans are acknowledged; emptied by the indexer
//! thread after a commit is visible to searches. Its size is bounded by the commit policy
//! (`commit_interval_ms`, `commit_max_spans`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;

use crate::model::{Span, TraceId};

#[derive(Default)]
pub struct Head {
    inner: Mutex<HeadInner>,
}

#[derive(Default)]
struct HeadInner {
    /// Per trace: (WAL end position of the batch, stored payload).
    by_trace: HashMap<TraceId, Vec<(u64, Bytes)>>,
    /// Insertion order, for eviction by position.
    order: VecDeque<(u64, TraceId)>,
    spans: usize,
}

impl Head {
    /// Add one acked batch, whose WAL record ends at `wal_position`.
    pub fn insert(&self, wal_position: u64, spans: &[Span]) {
        let mut inner = self.lock();
        for span in spans {
            inner
                .by_trace
                .entry(span.trace_id)
                .or_default()
                .push((wal_position, span.payload.clone()));
            inner.order.push_back((wal_position, span.trace_id));
        }
        inner.spans += spans.len();
    }

    /// Drop everything at or below a committed (and searchable) WAL position.
    pub fn evict_through(&self, wal_position: u64) {
        let mut inner = self.lock();
        while let Some((position, trace_id)) = inner.order.front().copied() {
            if position > wal_position {
                break;
            }
            inner.order.pop_front();
            let mut removed = 0;
            if let Some(entries) = inner.by_trace.get_mut(&trace_id) {
                let before = entries.len();
                entries.retain(|(entry_position, _)| *entry_position > wal_position);
                removed = before - entries.len();
                if entries.is_empty() {
                    inner.by_trace.remove(&trace_id);
                }
            }
            inner.spans -= removed;
        }
    }

    pub fn trace_payloads(&self, trace_id: &TraceId) -> Vec<Bytes> {
        let inner = self.lock();
        inner
            .by_trace
            .get(trace_id)
            .map(|entries| entries.iter().map(|(_, payload)| payload.clone()).collect())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.lock().spans
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HeadInner> {
        // A panic while holding this lock leaves consistent data (every mutation is
        // completed before unlock or not started), so poisoning is ignored.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;

    fn span(trace: u8, id: u8) -> Span {
        let otlp = OtlpSpan {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            ..Default::default()
        };
        Span::from_otlp(None, "", None, "", otlp).unwrap()
    }

    #[test]
    fn eviction_keeps_what_is_not_yet_committed() {
        let head = Head::default();
        head.insert(10, &[span(1, 1), span(2, 2)]);
        head.insert(20, &[span(1, 3)]);
        assert_eq!(head.trace_payloads(&TraceId([1; 16])).len(), 2);
        head.evict_through(10);
        assert_eq!(
            head.trace_payloads(&TraceId([1; 16])),
            vec![span(1, 3).payload]
        );
        assert!(head.trace_payloads(&TraceId([2; 16])).is_empty());
        assert_eq!(head.len(), 1);
        head.evict_through(20);
        assert!(head.is_empty());
    }
}
