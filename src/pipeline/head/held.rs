//! How an assembling trace holds its spans: where each span's payload lies in the
//! write-ahead log, each distinct resource and scope once, and the few fields sampling,
//! the index and the join need. The bytes themselves stay in the log (fsynced before the
//! span was acked, and in the page cache as a rule) and are read back when the trace
//! leaves or is asked for.

use std::sync::Arc;

use bytes::Bytes;

use crate::model::{Envelope, Span, SpanId, TraceId};
use crate::wal::WalFiles;

/// A trace's spans as the head holds them while they assemble. What spans of a trace
/// share is kept once here rather than in each [`HeldSpan`] (the head is most of ingest's
/// memory): the WAL positions replay and the index ask of a fragment are its first and
/// last record's, and the sampling randomness is the trace's.
#[derive(Default)]
pub(super) struct HeldSpans {
    envelopes: Vec<Arc<Envelope>>,
    /// Span names, each distinct one once (a trace repeats its operations): no allocation
    /// a span, which would also scatter small blocks over the allocator's pages.
    names: Vec<Box<str>>,
    pub(super) spans: Vec<HeldSpan>,
    /// The start of the first and of the latest WAL record a span came in (spans are
    /// pushed in log order, so these are the lowest and the highest).
    first_wal_start: u64,
    last_wal_start: u64,
    /// The first `rv` randomness a span of the trace carried (the sampler reads the
    /// first one).
    randomness: Option<u64>,
}

/// How many of a trace's latest distinct names a new span's name is compared with before
/// it is kept as a new one (bounds the search in traces of many distinct names).
const NAMES_SEARCHED: usize = 64;

/// One span as the head holds it: 56 bytes (`held_span_is_56_bytes`).
pub(super) struct HeldSpan {
    /// Log position of the span's payload (a one-span `ResourceSpans`) and its length.
    payload_at: u64,
    payload_len: u32,
    span_id: SpanId,
    parent_span_id: Option<SpanId>,
    /// The span kind and status code clamped to `0..=255`: what the index and the
    /// sampler read of them (the index clamps them to `0..=7`; the payload keeps the
    /// original).
    kind: u8,
    status_code: u8,
    pub(super) start_time_unix_nano: u64,
    duration_nanos: u64,
    name: u32,
    envelope: u16,
    has_exception: bool,
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
        let searched_from = self.names.len().saturating_sub(NAMES_SEARCHED);
        let name = match self.names[searched_from..]
            .iter()
            .rposition(|known| **known == *span.name)
        {
            Some(index) => searched_from + index,
            None => {
                self.names.push(span.name.into_boxed_str());
                self.names.len() - 1
            }
        };
        if self.spans.is_empty() {
            self.first_wal_start = wal_start;
        }
        self.last_wal_start = self.last_wal_start.max(wal_start);
        self.randomness = self.randomness.or(span.randomness);
        self.spans.push(HeldSpan {
            payload_at,
            payload_len: span.payload.len() as u32,
            span_id: span.span_id,
            parent_span_id: span.parent_span_id,
            kind: span.kind.clamp(0, u8::MAX.into()) as u8,
            status_code: span.status_code.clamp(0, u8::MAX.into()) as u8,
            start_time_unix_nano: span.start_time_unix_nano,
            duration_nanos: span.duration_nanos,
            name: name as u32,
            envelope: envelope as u16,
            has_exception: span.has_exception,
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
        self.spans
            .iter()
            .map(|held| held.start_time_unix_nano)
            .min()
    }

    pub(super) fn first_wal_start(&self) -> Option<u64> {
        (!self.spans.is_empty()).then_some(self.first_wal_start)
    }

    /// The start of the latest WAL record a span came in (0 when empty).
    pub(super) fn last_wal_start(&self) -> u64 {
        self.last_wal_start
    }

    /// The whole spans again, for sampling and the index, with their payloads read back
    /// (`payloads[i]` for `spans[i]`; a span whose payload could not be read is left out).
    pub(super) fn into_spans(self, trace_id: TraceId, payloads: Vec<Option<Bytes>>) -> Vec<Span> {
        let HeldSpans {
            envelopes,
            names,
            spans,
            first_wal_start: _,
            last_wal_start: _,
            randomness,
        } = self;
        spans
            .into_iter()
            .zip(payloads)
            .filter_map(|(held, payload)| {
                let payload = payload?;
                let envelope = envelopes[held.envelope as usize].clone();
                Some(Span {
                    trace_id,
                    span_id: held.span_id,
                    parent_span_id: held.parent_span_id,
                    service: envelope.service().clone(),
                    name: names[held.name as usize].to_string(),
                    kind: held.kind.into(),
                    status_code: held.status_code.into(),
                    start_time_unix_nano: held.start_time_unix_nano,
                    duration_nanos: held.duration_nanos,
                    has_exception: held.has_exception,
                    randomness,
                    payload,
                    envelope,
                })
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
