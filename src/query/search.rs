//! Trace search: the traces a TraceQL query matches, newest first, over the head (spans
//! searchable from the moment they are acked) and the committed fragments, through the
//! whole time range asked and with no cap but the limit. Candidates come newest first
//! (the head's traces and the index's fragments merged by start time); each is loaded
//! whole (every fragment and the head's spans, each span once) and checked exactly.

use std::collections::HashSet;

use opentelemetry_proto::tonic::trace::v1::ResourceSpans;

use crate::model::TraceId;
use crate::store::{Storage, StoreError};

use super::traceql::eval::{Evaluator, Matched, TraceView};
use super::traceql::Query;

/// Fragments read from the index per page.
const PAGE: usize = 256;

pub struct SearchRequest {
    pub query: Query,
    /// Traces to return.
    pub limit: usize,
    /// Traces that started at or before `end` and ended at or after `start` (ns).
    pub start_unix_nano: Option<u64>,
    pub end_unix_nano: Option<u64>,
    /// Bounds on the trace's duration (latest end − earliest start), ns.
    pub min_duration_nanos: Option<u64>,
    pub max_duration_nanos: Option<u64>,
}

pub struct FoundTrace {
    pub trace_id: TraceId,
    pub trace: TraceView,
    pub matched: Matched,
}

pub struct SearchResult {
    /// Newest first (by the trace's earliest span).
    pub traces: Vec<FoundTrace>,
    pub inspected_traces: u64,
    pub inspected_spans: u64,
}

/// Run a search. Blocking (tantivy reads): call it from a blocking thread.
pub fn search(storage: &Storage, request: &SearchRequest) -> Result<SearchResult, StoreError> {
    let mut result = SearchResult {
        traces: Vec::new(),
        inspected_traces: 0,
        inspected_spans: 0,
    };
    let mut evaluator = Evaluator::default();
    let mut seen: HashSet<TraceId> = HashSet::new();
    let head = storage.head.trace_starts();
    let mut head = head
        .into_iter()
        .filter(|(_, start)| request.end_unix_nano.is_none_or(|end| *start <= end))
        .peekable();
    let mut offset = 0;
    let limit = request.limit.max(1);
    let mut inspect = |trace_id: TraceId, result: &mut SearchResult| -> Result<(), StoreError> {
        if !seen.insert(trace_id) {
            return Ok(());
        }
        let Some(batches) = storage.find_trace(&trace_id)? else {
            return Ok(());
        };
        let trace = TraceView::from_batches(&batches);
        result.inspected_traces += 1;
        result.inspected_spans += trace.spans.len() as u64;
        let start = trace.start();
        let end = start + trace.duration_nanos();
        let duration = trace.duration_nanos();
        let in_range = request.start_unix_nano.is_none_or(|from| end >= from)
            && request.end_unix_nano.is_none_or(|to| start <= to)
            && request.min_duration_nanos.is_none_or(|min| duration >= min)
            && request.max_duration_nanos.is_none_or(|max| duration <= max);
        if !in_range {
            return Ok(());
        }
        if let Some(matched) = evaluator.eval(&request.query, &trace) {
            result.traces.push(FoundTrace {
                trace_id,
                trace,
                matched,
            });
        }
        Ok(())
    };
    'pages: loop {
        let (page, scanned) = storage.traces.fragments_newest_first(
            request.start_unix_nano,
            request.end_unix_nano,
            offset,
            PAGE,
        )?;
        offset += PAGE;
        for (trace_id, start) in &page {
            while let Some((head_trace, _)) = head.next_if(|(_, head_start)| head_start >= start) {
                inspect(head_trace, &mut result)?;
                if result.traces.len() >= limit {
                    break 'pages;
                }
            }
            inspect(*trace_id, &mut result)?;
            if result.traces.len() >= limit {
                break 'pages;
            }
        }
        if scanned < PAGE {
            for (head_trace, _) in head.by_ref() {
                inspect(head_trace, &mut result)?;
                if result.traces.len() >= limit {
                    break 'pages;
                }
            }
            break;
        }
    }
    result.traces.sort_by(|a, b| {
        b.trace
            .start()
            .cmp(&a.trace.start())
            .then(a.trace_id.0.cmp(&b.trace_id.0))
    });
    Ok(result)
}

/// [`search`], then every matching trace whole, as OTLP batches (for APIs that answer
/// with full traces: Jaeger's and Zipkin's searches). Blocking.
pub fn search_traces(
    storage: &Storage,
    request: &SearchRequest,
) -> Result<Vec<Vec<ResourceSpans>>, StoreError> {
    search(storage, request)?
        .traces
        .iter()
        .map(|trace| {
            storage
                .find_trace(&trace.trace_id)
                .map(Option::unwrap_or_default)
        })
        .collect()
}
