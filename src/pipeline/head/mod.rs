//! The head: acked spans assembled into traces, served by trace id until a tantivy commit
//! holds them. It holds where each span lies in the write-ahead log and under which
//! resource and scope, not the span's bytes: those are read back from the log when the
//! trace leaves (with the fields sampling and the index need) or is asked for, so memory
//! grows by 16 bytes a held span and ~450 a trace, whatever the spans' size.
//!
//! Filled by the WAL thread right after each fsync and before the ack (read your writes);
//! emptied by the indexer thread, which takes the traces that are due to leave (no span
//! for `trace_idle`, or for `trace_idle_after_root` once the root span is there,
//! assembling for `trace_max_age`, or past the per-trace limits: those leave at once), has them sampled, and writes the kept ones as one document per trace
//! fragment. A trace that left stays readable here until the commit that holds it (kept)
//! or its decision (dropped). Spans of a trace that already has a decision are late: they
//! follow it (dropped at once, or kept as a further fragment).
//!
//! The head also answers which WAL position replay must start from: the lowest record
//! position of any span still assembling (everything below it is in tantivy, dropped, or
//! not a span). One mutex guards it all; every operation is short.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::FastMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::sync::Arc;

use bytes::Bytes;

use super::sample::{Decision, DecisionCache};
use crate::lock;
use crate::metrics::PendingExemplar;
use crate::model::{Span, TraceId};
use crate::wal::WalFiles;

mod held;

use held::{read_payloads, HeldSpans, Place};

/// How long traces assemble and how large they may grow.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub trace_idle: Duration,
    /// Idle time after which a trace whose root span has arrived leaves.
    pub trace_idle_after_root: Duration,
    pub trace_max_age: Duration,
    pub max_spans_per_trace: usize,
    pub max_bytes_per_trace: usize,
    pub decision_cache_size: usize,
}

/// Why a trace left the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    Idle,
    MaxAge,
    /// Past `max_spans_per_trace` or `max_bytes_per_trace`.
    Full,
    Shutdown,
}

/// A trace (or a later fragment of one) on its way to sampling and the indexer. Its spans
/// are read back from the log only when the indexer comes to it ([`LeavingTrace::read_spans`]),
/// so a pass that lets many traces go never holds all their bytes at once.
pub struct LeavingTrace {
    pub trace_id: TraceId,
    held: HeldSpans,
    files: Arc<WalFiles>,
    /// Span-metric observations held back until the decision, so that exemplars only
    /// name kept traces.
    pub exemplars: Vec<PendingExemplar>,
    /// The decision already taken for an earlier fragment of this trace.
    pub decided: Option<Decision>,
    pub leave: Leave,
}

/// Traces a pass moves out of `open` under one hold of the head's lock.
const TRACES_PER_HOLD: usize = 2048;

/// How long before a window a leaving trace may have started and still hold spans in it.
const LEAVING_LOOKBACK_NANOS: u64 = 60_000_000_000;

// === impl LeavingTrace ===

impl LeavingTrace {
    /// Spans in this fragment.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.len() == 0
    }

    /// The start of the latest WAL record that brought a span of this fragment (what a
    /// replay from a later position need not look for in the index).
    pub fn wal_last(&self) -> u64 {
        self.held.last_wal_start()
    }

    /// The whole spans, read back from the log (outside the head's lock: ingest never
    /// waits on the reads). Once: a second call returns nothing.
    pub fn read_spans(&mut self) -> Vec<Span> {
        let places: Vec<Place> = self.held.places().collect();
        let payloads = read_payloads(&self.files, &places);
        let unread = payloads.iter().filter(|payload| payload.is_none()).count();
        if unread > 0 {
            // The replay position keeps every segment of a span that has not left: only a
            // failing disk gets here, and the span cannot be stored.
            tracing::error!(trace_id = %self.trace_id, unread, "spans of a leaving trace could not be read back from the write-ahead log");
        }
        std::mem::take(&mut self.held).into_spans(self.trace_id, payloads)
    }
}

/// What an insert did besides storing spans.
#[derive(Default)]
pub struct Inserted {
    /// Late spans of traces decided earlier, by that decision. Those of dropped traces
    /// are discarded at once: their queue room is free again.
    pub late_kept: u64,
    pub late_dropped: u64,
    /// Held-back observations of dropped traces' late spans, to record without exemplar.
    pub settled_dropped: Vec<PendingExemplar>,
}

struct OpenTrace {
    spans: HeldSpans,
    exemplars: Vec<PendingExemplar>,
    bytes: usize,
    first_seen: Instant,
    last_seen: Instant,
    /// Tells this trace's deadline entries from those of an earlier fragment.
    generation: u64,
    /// A span without parent (the root) has arrived.
    has_root: bool,
    decided: Option<Decision>,
}

#[derive(Default)]
struct HeadInner {
    /// Boxed: the table's slots stay small (a table grows by doubling, and while it
    /// rehashes the old one is still there; with the trace inline that was ~40 MiB of
    /// ingest's peak).
    open: FastMap<TraceId, Box<OpenTrace>>,
    /// Left the head, decision pending, or kept and waiting for the commit that holds
    /// them: still served by id, from the log.
    leaving: FastMap<TraceId, Vec<Place>>,
    /// The earliest span start of each leaving trace (for search).
    leaving_starts: FastMap<TraceId, u64>,
    /// Full traces, due to leave at the next pass.
    full: Vec<LeavingTrace>,
    /// Open traces in the order they opened, which is the log's order: (start of the
    /// record that brought the first span, trace id, generation). The first entry whose
    /// trace is still open is where replay must start; entries of traces that left are
    /// dropped when they reach the front.
    opened: VecDeque<(u64, TraceId, u64)>,
    /// When to look at a trace again: (deadline, trace id, generation).
    deadlines: BinaryHeap<Reverse<(Instant, TraceId, u64)>>,
    next_generation: u64,
    /// The end of the last WAL record inserted.
    received_through: u64,
    /// Spans in `open`, `full` and `leaving`.
    spans: usize,
    leaving_spans: usize,
}

pub struct Head {
    limits: HeadLimits,
    /// The log the held spans' bytes are read back from.
    files: Arc<WalFiles>,
    inner: Mutex<HeadInner>,
    decisions: Mutex<DecisionCache>,
}

impl Head {
    pub fn new(limits: HeadLimits, files: Arc<WalFiles>) -> Head {
        Head {
            limits,
            files,
            inner: Mutex::new(HeadInner::default()),
            decisions: Mutex::new(DecisionCache::new(limits.decision_cache_size)),
        }
    }

    /// Add the spans of one acked WAL record `[wal_start, wal_end)`, whose payloads lie at
    /// the log positions `payload_at` (one per span), with the span-metric observations
    /// held back for their traces' decisions.
    pub fn insert(
        &self,
        wal_start: u64,
        wal_end: u64,
        spans: Vec<Span>,
        payload_at: &[u64],
        exemplars: Vec<PendingExemplar>,
        now: Instant,
    ) -> Inserted {
        debug_assert_eq!(spans.len(), payload_at.len());
        let mut inserted = Inserted::default();
        let decisions = lock(&self.decisions);
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        inner.received_through = inner.received_through.max(wal_end);
        // How many spans from each position on belong to the same trace: a trace's spans
        // usually come together, and growing its vector by exactly that much keeps the
        // head free of doubling slack (the head is most of ingest's memory).
        let mut run_from = vec![1usize; spans.len()];
        for index in (0..spans.len()).rev() {
            run_from[index] = match run_from.get(index + 1) {
                Some(count) if spans[index].trace_id == spans[index + 1].trace_id => count + 1,
                _ => 1,
            };
        }
        for ((index, span), &payload_at) in spans.into_iter().enumerate().zip(payload_at) {
            let trace_id = span.trace_id;
            let bytes = span.payload.len();
            if !inner.open.contains_key(&trace_id) {
                let decided = decisions.get(&trace_id);
                match decided {
                    Some(decision) if !decision.keep => {
                        inserted.late_dropped += 1;
                        continue;
                    }
                    Some(_) => inserted.late_kept += 1,
                    None => {}
                }
                let generation = inner.next_generation;
                inner.next_generation += 1;
                inner.opened.push_back((wal_start, trace_id, generation));
                // The shorter idle time: a trace whose root comes in this batch is looked
                // at then; one without is pushed back to its own deadline.
                inner.deadlines.push(Reverse((
                    now + self
                        .limits
                        .trace_idle_after_root
                        .min(self.limits.trace_idle),
                    trace_id,
                    generation,
                )));
                inner.open.insert(
                    trace_id,
                    Box::new(OpenTrace {
                        spans: HeldSpans::default(),
                        exemplars: Vec::new(),
                        bytes: 0,
                        first_seen: now,
                        last_seen: now,
                        generation,
                        has_root: false,
                        decided,
                    }),
                );
            } else if let Some(decided) = inner.open.get(&trace_id).and_then(|open| open.decided) {
                if decided.keep {
                    inserted.late_kept += 1;
                }
            }
            let Some(open) = inner.open.get_mut(&trace_id) else {
                continue;
            };
            open.has_root |= span.parent_span_id.is_none();
            open.spans
                .push(wal_start, payload_at, &span, run_from[index]);
            open.bytes += bytes;
            open.last_seen = now;
            inner.spans += 1;
            if open.spans.len() >= self.limits.max_spans_per_trace
                || open.bytes >= self.limits.max_bytes_per_trace
                || open.spans.envelopes_full()
            {
                if let Some(full) = inner.open.remove(&trace_id) {
                    inner.full.push(self.leaving(trace_id, *full, Leave::Full));
                }
            }
        }
        for exemplar in exemplars {
            let trace_id = exemplar.trace_id();
            if let Some(open) = inner.open.get_mut(&trace_id) {
                open.exemplars.push(exemplar);
            } else if let Some(full) = inner
                .full
                .iter_mut()
                .rev()
                .find(|full| full.trace_id == trace_id)
            {
                full.exemplars.push(exemplar);
            } else {
                inserted.settled_dropped.push(exemplar);
            }
        }
        inserted
    }

    /// Take the traces that are due to leave at `now` (every trace when `everything`).
    /// They stay readable by id until [`Head::dropped`] or [`Head::committed`].
    pub fn take_leaving(&self, now: Instant, everything: bool) -> Vec<LeavingTrace> {
        self.take_leaving_at_most(now, everything, usize::MAX)
    }

    /// [`Head::take_leaving`], stopping once the traces taken hold `max_spans` spans
    /// (full traces are always taken; `everything` takes everything): a pass of bounded
    /// size, so the indexer commits and frees the queue's room as it goes instead of
    /// after sealing every trace that came due during a slow pass, and the lock is held
    /// for a bounded time.
    pub fn take_leaving_at_most(
        &self,
        now: Instant,
        everything: bool,
        max_spans: usize,
    ) -> Vec<LeavingTrace> {
        let mut out = Vec::new();
        let mut taken = 0usize;
        // The lock is taken once per chunk of traces, so ingest (and a query by id) waits
        // at most one chunk's work, however long the pass. Each trace moves from `open` to
        // `leaving` under one hold, so it is always found by id.
        let mut first = true;
        loop {
            let mut inner = lock(&self.inner);
            let inner = &mut *inner;
            let chunk_from = out.len();
            let mut done = true;
            if first {
                out.append(&mut inner.full);
                taken += out.iter().map(LeavingTrace::len).sum::<usize>();
                first = false;
            }
            if everything {
                inner.deadlines.clear();
                inner.opened.clear();
                let open = std::mem::take(&mut inner.open);
                out.extend(
                    open.into_iter()
                        .map(|(trace_id, trace)| self.leaving(trace_id, *trace, Leave::Shutdown)),
                );
            } else {
                while let Some(Reverse((deadline, trace_id, generation))) =
                    inner.deadlines.peek().copied()
                {
                    if deadline > now || taken >= max_spans {
                        break;
                    }
                    if out.len() - chunk_from >= TRACES_PER_HOLD {
                        done = false;
                        break;
                    }
                    inner.deadlines.pop();
                    let Some(open) = inner.open.get(&trace_id) else {
                        continue;
                    };
                    if open.generation != generation {
                        continue;
                    }
                    let idle = if open.has_root {
                        self.limits.trace_idle_after_root
                    } else {
                        self.limits.trace_idle
                    };
                    let idle_at = open.last_seen + idle;
                    let old_at = open.first_seen + self.limits.trace_max_age;
                    let due = idle_at.min(old_at);
                    if due > now {
                        inner.deadlines.push(Reverse((due, trace_id, generation)));
                        continue;
                    }
                    let leave = if old_at <= now && idle_at > now {
                        Leave::MaxAge
                    } else {
                        Leave::Idle
                    };
                    if let Some(open) = inner.open.remove(&trace_id) {
                        taken += open.spans.len();
                        out.push(self.leaving(trace_id, *open, leave));
                    }
                }
            }
            for trace in &out[chunk_from..] {
                inner
                    .leaving
                    .entry(trace.trace_id)
                    .or_default()
                    .extend(trace.held.places());
                if let Some(start) = trace.held.earliest_start() {
                    let earliest = inner.leaving_starts.entry(trace.trace_id).or_insert(start);
                    *earliest = (*earliest).min(start);
                }
                inner.leaving_spans += trace.held.len();
            }
            if done {
                return out;
            }
        }
    }

    fn leaving(&self, trace_id: TraceId, trace: OpenTrace, leave: Leave) -> LeavingTrace {
        LeavingTrace {
            trace_id,
            held: trace.spans,
            files: self.files.clone(),
            exemplars: trace.exemplars,
            decided: trace.decided,
            leave,
        }
    }

    /// Remember a trace's decision (for its late spans and for the join).
    pub fn decide(&self, trace_id: TraceId, decision: Decision) {
        lock(&self.decisions).insert(trace_id, decision);
    }

    /// The decision taken for a trace, while the cache remembers it.
    pub fn decision(&self, trace_id: &TraceId) -> Option<Decision> {
        lock(&self.decisions).get(trace_id)
    }

    /// Tail sampling dropped this trace (as far as the decision cache remembers).
    pub fn is_dropped(&self, trace_id: &TraceId) -> bool {
        self.decision(trace_id)
            .is_some_and(|decision| !decision.keep)
    }

    /// A leaving trace was dropped: it is no longer served. Returns the spans let go.
    pub fn dropped(&self, trace_id: &TraceId) -> usize {
        let mut inner = lock(&self.inner);
        inner.leaving_starts.remove(trace_id);
        let released = inner
            .leaving
            .remove(trace_id)
            .map_or(0, |payloads| payloads.len());
        inner.leaving_spans -= released;
        inner.spans -= released;
        released
    }

    /// A commit now holds (and searches see) every leaving trace that was kept; they leave
    /// the head. Call only after every leaving trace had its decision. Returns the spans
    /// let go.
    pub fn committed(&self) -> usize {
        let mut inner = lock(&self.inner);
        let released = inner.leaving_spans;
        inner.leaving.clear();
        inner.leaving_starts.clear();
        inner.leaving_spans = 0;
        inner.spans -= released;
        released
    }

    /// The WAL position replay must start from to rebuild what is still assembling: the
    /// lowest record start of an open or full trace's span, or, when there is none, the
    /// end of the last record inserted. Leaving traces are not counted: call it when
    /// every one of them is decided and the kept ones are in the writer.
    pub fn replay_from(&self) -> u64 {
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        while let Some(&(_, trace_id, generation)) = inner.opened.front() {
            if inner
                .open
                .get(&trace_id)
                .is_some_and(|open| open.generation == generation)
            {
                break;
            }
            inner.opened.pop_front();
        }
        let open = inner.opened.front().map(|(wal_start, _, _)| *wal_start);
        let full = inner
            .full
            .iter()
            .filter_map(|trace| trace.held.first_wal_start());
        open.into_iter()
            .chain(full)
            .min()
            .unwrap_or(inner.received_through)
    }

    /// Raise the replay start on an empty head: a replay that found nothing to assemble
    /// must not start from 0 next time.
    pub fn received_through(&self, wal_end: u64) {
        let mut inner = lock(&self.inner);
        inner.received_through = inner.received_through.max(wal_end);
    }

    /// Payloads of every span of a trace the head holds (assembling or leaving).
    pub fn trace_payloads(&self, trace_id: &TraceId) -> Vec<Bytes> {
        let inner = lock(&self.inner);
        let mut places = inner.leaving.get(trace_id).cloned().unwrap_or_default();
        if let Some(open) = inner.open.get(trace_id) {
            places.extend(open.spans.places());
        }
        for full in inner.full.iter().filter(|full| full.trace_id == *trace_id) {
            places.extend(full.held.places());
        }
        drop(inner);
        read_payloads(&self.files, &places)
            .into_iter()
            .flatten()
            .collect()
    }

    /// Payloads of the head's spans of `service` that started in `[from, to]`, newest
    /// first, at most `limit`: the head's share of the candidates for a log record
    /// without trace id (assembling, full, and left but not yet committed; committed
    /// traces are the index's share).
    pub fn service_spans_between(
        &self,
        service: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Vec<Bytes> {
        let inner = lock(&self.inner);
        let assembling = inner
            .open
            .values()
            .map(|trace| &trace.spans)
            .chain(inner.full.iter().map(|trace| &trace.held));
        // The head keeps a trace's earliest start, not each span's: the service's spans
        // of every trace that may hold spans in the window are read (the caller keeps
        // those running at the record's time).
        let mut found: Vec<(u64, Place)> = assembling
            .filter_map(|held| Some((held.earliest_start()?, held)))
            .filter(|(start, _)| {
                *start <= to && start.saturating_add(LEAVING_LOOKBACK_NANOS) >= from
            })
            .flat_map(|(start, held)| {
                held.spans
                    .iter()
                    .filter(|span| &**held.envelope_of(span).service() == service)
                    .map(move |span| (start, HeldSpans::place(span)))
            })
            .collect();
        // Traces that have left but are not committed yet: only where their spans lie is
        // kept, so every span of those that started in the window is read (the caller
        // keeps the service's). Without them a trace would be missing from the moment it
        // leaves until the commit that holds it is visible.
        found.extend(
            inner
                .leaving_starts
                .iter()
                .filter(|(_, start)| {
                    **start <= to && start.saturating_add(LEAVING_LOOKBACK_NANOS) >= from
                })
                .filter_map(|(trace_id, start)| Some((*start, inner.leaving.get(trace_id)?)))
                .flat_map(|(start, places)| places.iter().map(move |place| (start, *place))),
        );
        drop(inner);
        found.sort_by_key(|(start, _)| Reverse(*start));
        found.truncate(limit);
        let places: Vec<Place> = found.into_iter().map(|(_, place)| place).collect();
        read_payloads(&self.files, &places)
            .into_iter()
            .flatten()
            .collect()
    }

    /// Every trace the head holds (assembling, full or leaving) with its earliest span
    /// start, newest first: the head's share of a search's candidates.
    pub fn trace_starts(&self) -> Vec<(TraceId, u64)> {
        let inner = lock(&self.inner);
        let mut starts: FastMap<TraceId, u64> = FastMap::default();
        let mut note = |trace_id: TraceId, start: Option<u64>| {
            if let Some(start) = start {
                let earliest = starts.entry(trace_id).or_insert(start);
                *earliest = (*earliest).min(start);
            }
        };
        for (trace_id, open) in &inner.open {
            note(*trace_id, open.spans.earliest_start());
        }
        for full in &inner.full {
            note(full.trace_id, full.held.earliest_start());
        }
        for (trace_id, leaving) in &inner.leaving_starts {
            note(*trace_id, Some(*leaving));
        }
        drop(inner);
        let mut starts: Vec<(TraceId, u64)> = starts.into_iter().collect();
        starts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0 .0.cmp(&b.0 .0)));
        starts
    }

    /// Spans held, assembling and leaving.
    pub fn len(&self) -> usize {
        lock(&self.inner).spans
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Traces assembling.
    pub fn open_traces(&self) -> usize {
        lock(&self.inner).open.len()
    }
}

#[cfg(test)]
mod tests;
