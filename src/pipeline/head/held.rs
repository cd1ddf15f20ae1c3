//! How an assembling trace holds its spans: where each span's payload lies in the
//! write-ahead log, each distinct resource and scope once, and the few fields sampling,
//! the index and the join need. The bytes themselves stay in the log (fsynced before the
//! span was acked, and in the page cache as a rule) and are read back when the trace
//! leaves or is asked for.

use std::sync::Arc;

use bytes::Bytes;

use super::HeadSpan;
use crate::model::{Envelope, Span, SpanId, TraceId};
use crate::wal::{WalFiles, WalSlice};

/// A trace's spans as the head holds them while they assemble.
#[derive(Default)]
pub(super) struct HeldSpans {
    envelopes: Vec<Arc<Envelope>>,
    pub(super) spans: Vec<HeldSpan>,
}

pub(super) struct HeldSpan {
    wal_start: u64,
    /// Log position of the span's payload (a one-span `ResourceSpans`) and its length.
    payload_at: u64,
    payload_len: u32,
    span_id: SpanId,
    parent_span_id: Option<SpanId>,
    name: Box<str>,
    kind: i32,
    status_code: i32,
    pub(super) start_time_unix_nano: u64,
    duration_nanos: u64,
    has_exception: bool,
    randomness: Option<u64>,
    envelope: u16,
}

/// The bytes between two span payloads of one WAL record: the next one's length prefix.
pub(super) const PAYLOAD_GAP: u64 = 4;

// === impl HeldSpans ===

impl HeldSpans {
    pub(super) fn len(&self) -> usize {
        self.spans.len()
    }

    /// Keep `span`, whose payload lies at log position `payload_at`; `more_spans` says
    /// how many spans of this trace the batch brings, so the vector grows once by that
    /// much.
    pub(super) fn push(&mut self, wal_start: u64, payload_at: u64, span: Span, more_spans: usize) {
        if self.spans.len() == self.spans.capacity() {
            self.spans.reserve_exact(more_spans);
        }
        let envelope = match self
            .envelopes
            .iter()
            .rposition(|known| Arc::ptr_eq(known, &span.envelope) || **known == *span.envelope)
        {
            Some(index) => index,
            None => {
                self.envelopes.push(span.envelope.clone());
                self.envelopes.len() - 1
            }
        };
        self.spans.push(HeldSpan {
            wal_start,
            payload_at,
            payload_len: span.payload.len() as u32,
            span_id: span.span_id,
            parent_span_id: span.parent_span_id,
            name: span.name.into_boxed_str(),
            kind: span.kind,
            status_code: span.status_code,
            start_time_unix_nano: span.start_time_unix_nano,
            duration_nanos: span.duration_nanos,
            has_exception: span.has_exception,
            randomness: span.randomness,
            envelope: envelope as u16,
        });
    }

    /// Distinct envelopes a trace may hold before it must leave.
    pub(super) fn envelopes_full(&self) -> bool {
        self.envelopes.len() >= u16::MAX as usize
    }

    pub(super) fn envelope_of(&self, held: &HeldSpan) -> &Arc<Envelope> {
        &self.envelopes[held.envelope as usize]
    }

    /// Where one span's payload lies, while its segment is live.
    pub(super) fn slice(held: &HeldSpan, files: &WalFiles) -> Option<WalSlice> {
        files.slice(held.payload_at, held.payload_len)
    }

    /// Where every span's payload lies, in order; `None` for a span whose segment is gone
    /// (which the replay position forbids while the span assembles).
    pub(super) fn slices(&self, files: &WalFiles) -> Vec<Option<WalSlice>> {
        self.spans
            .iter()
            .map(|held| Self::slice(held, files))
            .collect()
    }

    pub(super) fn first_wal_start(&self) -> Option<u64> {
        self.spans.iter().map(|held| held.wal_start).min()
    }

    /// The whole spans again, for sampling and the index, with their payloads read back
    /// (`payloads[i]` for `spans[i]`; a span whose payload could not be read is left out).
    pub(super) fn into_spans(
        self,
        trace_id: TraceId,
        payloads: Vec<Option<Bytes>>,
    ) -> Vec<HeadSpan> {
        let HeldSpans { envelopes, spans } = self;
        spans
            .into_iter()
            .zip(payloads)
            .filter_map(|(held, payload)| {
                let payload = payload?;
                let envelope = envelopes[held.envelope as usize].clone();
                Some(HeadSpan {
                    wal_start: held.wal_start,
                    span: Span {
                        trace_id,
                        span_id: held.span_id,
                        parent_span_id: held.parent_span_id,
                        service: envelope.service().clone(),
                        name: held.name.into_string(),
                        kind: held.kind,
                        status_code: held.status_code,
                        start_time_unix_nano: held.start_time_unix_nano,
                        duration_nanos: held.duration_nanos,
                        has_exception: held.has_exception,
                        randomness: held.randomness,
                        payload,
                        envelope,
                    },
                })
            })
            .collect()
    }
}

/// Read the payloads at `slices`, coalescing back-to-back ones into one read; `None` where
/// a slice is missing or its read fails (logged).
pub(super) fn read_payloads(slices: &[Option<WalSlice>]) -> Vec<Option<Bytes>> {
    let present: Vec<WalSlice> = slices.iter().flatten().cloned().collect();
    let mut read = match crate::wal::read_slices(&present, PAYLOAD_GAP) {
        Ok(read) => read.into_iter(),
        Err(error) => {
            tracing::error!(%error, "reading assembling spans back from the write-ahead log failed");
            return vec![None; slices.len()];
        }
    };
    slices
        .iter()
        .map(|slice| slice.as_ref().and_then(|_| read.next()))
        .collect()
}
