//! How an assembling trace holds its spans: where each span's payload lies in the
//! write-ahead log, each distinct resource and scope once, and the few fields sampling,
//! the index and the join need. The bytes themselves stay in the log (fsynced before the
//! span was acked, and in the page cache as a rule) and are read back when the trace
//! leaves or is asked for.

use std::sync::Arc;

use bytes::Bytes;

use super::HeadSpan;
use crate::model::{Envelope, Span, SpanId, TraceId};
use crate::wal::WalFiles;

/// A trace's spans as the head holds them while they assemble.
#[derive(Default)]
pub(super) struct HeldSpans {
    envelopes: Vec<Arc<Envelope>>,
    /// Span names, each distinct one once (a trace repeats its operations): no allocation
    /// a span, which would also scatter small blocks over the allocator's pages.
    names: Vec<Box<str>>,
    pub(super) spans: Vec<HeldSpan>,
}

/// How many of a trace's latest distinct names a new span's name is compared with before
/// it is kept as a new one (bounds the search in traces of many distinct names).
const NAMES_SEARCHED: usize = 64;

/// `HeldSpan::randomness` when the span carried none.
const NO_RANDOMNESS: u64 = u64::MAX;

pub(super) struct HeldSpan {
    wal_start: u64,
    /// Log position of the span's payload (a one-span `ResourceSpans`) and its length.
    payload_at: u64,
    payload_len: u32,
    span_id: SpanId,
    parent_span_id: Option<SpanId>,
    kind: i32,
    status_code: i32,
    pub(super) start_time_unix_nano: u64,
    duration_nanos: u64,
    /// The `rv` randomness (56 bits), or [`NO_RANDOMNESS`].
    randomness: u64,
    name: u32,
    envelope: u16,
    has_exception: bool,
}

/// The bytes between two span payloads of one WAL record: the next one's length prefix.
pub(super) const PAYLOAD_GAP: u64 = 4;

/// Where a span's payload lies in the log.
#[derive(Debug, Clone, Copy)]
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
        self.spans.push(HeldSpan {
            wal_start,
            payload_at,
            payload_len: span.payload.len() as u32,
            span_id: span.span_id,
            parent_span_id: span.parent_span_id,
            kind: span.kind,
            status_code: span.status_code,
            start_time_unix_nano: span.start_time_unix_nano,
            duration_nanos: span.duration_nanos,
            randomness: span.randomness.unwrap_or(NO_RANDOMNESS),
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
        self.spans.iter().map(|held| held.wal_start).min()
    }

    /// The whole spans again, for sampling and the index, with their payloads read back
    /// (`payloads[i]` for `spans[i]`; a span whose payload could not be read is left out).
    pub(super) fn into_spans(
        self,
        trace_id: TraceId,
        payloads: Vec<Option<Bytes>>,
    ) -> Vec<HeadSpan> {
        let HeldSpans {
            envelopes,
            names,
            spans,
        } = self;
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
                        name: names[held.name as usize].to_string(),
                        kind: held.kind,
                        status_code: held.status_code,
                        start_time_unix_nano: held.start_time_unix_nano,
                        duration_nanos: held.duration_nanos,
                        has_exception: held.has_exception,
                        randomness: (held.randomness != NO_RANDOMNESS).then_some(held.randomness),
                        payload,
                        envelope,
                    },
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
