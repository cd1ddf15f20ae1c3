//! How an assembling trace holds its spans: their own protobuf bytes in one buffer, each
//! distinct resource and scope once, and the fields sampling and the index need.

use std::sync::Arc;

use bytes::Bytes;

use super::HeadSpan;
use crate::model::{Envelope, Span, SpanId, TraceId};

/// A trace's spans as the head holds them while they assemble (most of ingest's memory):
/// each span's own protobuf bytes one after the other in one buffer, each distinct
/// resource and scope they came with once, and the fields sampling and the index need.
/// Whole `Span`s (with their one-span `ResourceSpans` payloads) are rebuilt when the
/// trace leaves.
#[derive(Default)]
pub(super) struct HeldSpans {
    buffer: Vec<u8>,
    envelopes: Vec<Arc<Envelope>>,
    pub(super) spans: Vec<HeldSpan>,
}

pub(super) struct HeldSpan {
    wal_start: u64,
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
    bytes: std::ops::Range<u32>,
}

// === impl HeldSpans ===

impl HeldSpans {
    pub(super) fn len(&self) -> usize {
        self.spans.len()
    }

    /// Keep `span`; `more_spans` and `more_bytes` say what else of this trace the batch
    /// brings, so the vectors grow once by that much.
    pub(super) fn push(
        &mut self,
        wal_start: u64,
        span: Span,
        more_spans: usize,
        more_bytes: usize,
    ) {
        if self.spans.len() == self.spans.capacity() {
            self.spans.reserve_exact(more_spans);
        }
        let own = &span.payload[span.span_bytes.clone()];
        if self.buffer.capacity() - self.buffer.len() < own.len() {
            self.buffer.reserve_exact(more_bytes.max(own.len()));
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
        let start = self.buffer.len();
        self.buffer.extend_from_slice(own);
        self.spans.push(HeldSpan {
            wal_start,
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
            bytes: start as u32..self.buffer.len() as u32,
        });
    }

    /// Distinct envelopes a trace may hold before it must leave.
    pub(super) fn envelopes_full(&self) -> bool {
        self.envelopes.len() >= u16::MAX as usize
    }

    pub(super) fn envelope_of(&self, held: &HeldSpan) -> &Arc<Envelope> {
        &self.envelopes[held.envelope as usize]
    }

    pub(super) fn payload(&self, held: &HeldSpan) -> Bytes {
        let range = held.bytes.start as usize..held.bytes.end as usize;
        self.envelope_of(held).wrap(&self.buffer[range]).0
    }

    pub(super) fn payloads(&self) -> impl Iterator<Item = Bytes> + '_ {
        self.spans.iter().map(|held| self.payload(held))
    }

    pub(super) fn first_wal_start(&self) -> Option<u64> {
        self.spans.iter().map(|held| held.wal_start).min()
    }

    /// The whole spans again, for sampling and the index.
    pub(super) fn into_spans(self, trace_id: TraceId) -> Vec<HeadSpan> {
        let HeldSpans {
            buffer,
            envelopes,
            spans,
        } = self;
        spans
            .into_iter()
            .map(|held| {
                let envelope = envelopes[held.envelope as usize].clone();
                let range = held.bytes.start as usize..held.bytes.end as usize;
                let (payload, span_bytes) = envelope.wrap(&buffer[range]);
                HeadSpan {
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
                        span_bytes,
                    },
                }
            })
            .collect()
    }
}
