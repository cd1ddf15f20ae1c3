//! How an assembling trace holds its spans: where each span's payload lies in the
//! write-ahead log and under which resource and scope (each distinct one once), 16 bytes a
//! span. The bytes themselves stay in the log (fsynced before the span was acked, and in
//! the page cache as a rule) and are read back when the trace leaves or is asked for; the
//! fields sampling and the index need are read from them then.

use std::sync::Arc;

use bytes::Bytes;

use crate::ingest::otlp_wire::stored_span;
use crate::model::{Envelope, Span, TraceId};
use crate::wal::WalFiles;

/// A trace's spans as the head holds them while they assemble. What the spans of a trace
/// share is kept once here rather than in each [`HeldSpan`]: the head is most of ingest's
/// memory, and its bound (`limits.ingest_queue_spans`) with the trace idle time sets how
/// fast ingest can go.
#[derive(Default)]
pub(super) struct HeldSpans {
    envelopes: Vec<Arc<Envelope>>,
    pub(super) spans: Vec<HeldSpan>,
    /// The start of the first and of the latest WAL record a span came in (spans are
    /// pushed in log order, so these are the lowest and the highest).
    first_wal_start: u64,
    last_wal_start: u64,
    /// The earliest start of a span held.
    earliest_start: u64,
}

/// One span as the head holds it: 16 bytes (`a_held_span_is_16_bytes`).
pub(super) struct HeldSpan {
    /// Log position of the span's payload (a one-span `ResourceSpans`) and its length.
    payload_at: u64,
    payload_len: u32,
    envelope: u16,
}

/// The bytes between two span payloads of one WAL record: the next one's length prefix.
pub(super) const PAYLOAD_GAP: u64 = 4;

/// Where a span's payload lies in the log: 12 bytes, since the head keeps one for every
/// span of a trace that left and is not committed yet.
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(4))]
pub(super) struct Place {
    at: u64,
    len: u32,
}

// === impl HeldSpans ===

impl HeldSpans {
    pub(super) fn len(&self) -> usize {
        self.spans.len()
    }

    /// Keep `span`, whose payload lies at log position `payload_at`; `more_spans` says
    /// how many spans of this trace the batch brings, so the vector grows once by that
    /// much.
    pub(super) fn push(&mut self, wal_start: u64, payload_at: u64, span: &Span, more_spans: usize) {
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
        if self.spans.is_empty() {
            self.first_wal_start = wal_start;
            self.earliest_start = span.start_time_unix_nano;
        }
        self.last_wal_start = self.last_wal_start.max(wal_start);
        self.earliest_start = self.earliest_start.min(span.start_time_unix_nano);
        self.spans.push(HeldSpan {
            payload_at,
            payload_len: span.payload.len() as u32,
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

    pub(super) fn place(held: &HeldSpan) -> Place {
        Place {
            at: held.payload_at,
            len: held.payload_len,
        }
    }

    /// Where every span's payload lies, in order.
    pub(super) fn places(&self) -> impl Iterator<Item = Place> + '_ {
        self.spans.iter().map(Self::place)
    }

    pub(super) fn earliest_start(&self) -> Option<u64> {
        (!self.spans.is_empty()).then_some(self.earliest_start)
    }

    pub(super) fn first_wal_start(&self) -> Option<u64> {
        (!self.spans.is_empty()).then_some(self.first_wal_start)
    }

    /// The start of the latest WAL record a span came in (0 when empty).
    pub(super) fn last_wal_start(&self) -> u64 {
        self.last_wal_start
    }

    /// The whole spans again, for sampling and the index, read from their payloads
    /// (`payloads[i]` for `spans[i]`; a span whose payload could not be read is left out).
    pub(super) fn into_spans(self, trace_id: TraceId, payloads: Vec<Option<Bytes>>) -> Vec<Span> {
        let HeldSpans {
            envelopes, spans, ..
        } = self;
        spans
            .into_iter()
            .zip(payloads)
            .filter_map(|(held, payload)| {
                match stored_span(payload?, &envelopes[held.envelope as usize]) {
                    Ok(span) => Some(span),
                    Err(error) => {
                        tracing::error!(%trace_id, %error, "a span read back from the write-ahead log does not decode");
                        None
                    }
                }
            })
            .collect()
    }
}

/// Read the payloads at `places`, coalescing back-to-back ones into one read; `None` where
/// the segment is gone or the read fails (logged). A segment goes only once a commit
/// holds everything in it (the head's replay position), so a span that is not read here
/// is in the index by then.
pub(super) fn read_payloads(files: &WalFiles, places: &[Place]) -> Vec<Option<Bytes>> {
    let slices = files.slices(places.iter().map(|place| (place.at, place.len)));
    let present: Vec<_> = slices.iter().flatten().cloned().collect();
    if present.len() < slices.len() {
        tracing::debug!(
            missing = slices.len() - present.len(),
            "spans read back after their write-ahead log segment was removed"
        );
    }
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
