//! Trace search: the traces a TraceQL query matches, newest first, over the head (spans
//! searchable from the moment they are acked) and the committed fragments, through the
//! whole time range asked and with no cap but the limit. Candidates come newest first
//! (the head's traces and the index's fragments merged by start time); each is loaded
//! whole (every fragment and the head's spans, each span once) and checked exactly.

use std::collections::HashSet;

use opentelemetry_proto::tonic::trace::v1::ResourceSpans;

use crate::model::TraceId;
use crate::store::traces::FragmentHas;
use crate::store::{Storage, StoreError};

use super::traceql::eval::{Evaluator, Matched, TraceView};
use super::traceql::{
    CompareOp, FieldExpr, Intrinsic, Literal, Operand, Query, Scope, SpansetExpr, SpansetOp,
};

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
    let limit = request.limit.max(1);
    let mut traces = Vec::new();
    let (inspected_traces, inspected_spans) = scan(storage, request, |found| {
        traces.push(found);
        traces.len() < limit
    })?;
    traces.sort_by(|a, b| {
        b.trace
            .start()
            .cmp(&a.trace.start())
            .then(a.trace_id.0.cmp(&b.trace_id.0))
    });
    Ok(SearchResult {
        traces,
        inspected_traces,
        inspected_spans,
    })
}

/// Hand every trace the request matches to `visit`, newest first, until it returns
/// `false` (`request.limit` is not looked at). Returns the traces and spans inspected.
/// Blocking.
pub fn scan(
    storage: &Storage,
    request: &SearchRequest,
    mut visit: impl FnMut(FoundTrace) -> bool,
) -> Result<(u64, u64), StoreError> {
    let mut inspected = (0u64, 0u64);
    let mut evaluator = Evaluator::default();
    let mut seen: HashSet<TraceId> = HashSet::new();
    let head = storage.head.trace_starts();
    let mut head = head
        .into_iter()
        .filter(|(_, start)| request.end_unix_nano.is_none_or(|end| *start <= end))
        .peekable();
    let mut offset = 0;
    let required = required_terms(&request.query.spansets);
    // `Ok(false)` once `visit` wants no more.
    let mut inspect = |trace_id: TraceId, inspected: &mut (u64, u64)| -> Result<bool, StoreError> {
        if !seen.insert(trace_id) {
            return Ok(true);
        }
        let Some(batches) = storage.find_trace_local(&trace_id)? else {
            return Ok(true);
        };
        let trace = TraceView::from_batches(&batches);
        inspected.0 += 1;
        inspected.1 += trace.spans.len() as u64;
        let start = trace.start();
        let end = start + trace.duration_nanos();
        let duration = trace.duration_nanos();
        let in_range = request.start_unix_nano.is_none_or(|from| end >= from)
            && request.end_unix_nano.is_none_or(|to| start <= to)
            && request.min_duration_nanos.is_none_or(|min| duration >= min)
            && request.max_duration_nanos.is_none_or(|max| duration <= max);
        if !in_range {
            return Ok(true);
        }
        Ok(match evaluator.eval(&request.query, &trace) {
            Some(matched) => visit(FoundTrace {
                trace_id,
                trace,
                matched,
            }),
            None => true,
        })
    };
    loop {
        let (page, scanned) = storage.traces.fragments_newest_first(
            request.start_unix_nano,
            request.end_unix_nano,
            &required,
            offset,
            PAGE,
        )?;
        offset += PAGE;
        for (trace_id, start) in &page {
            while let Some((head_trace, _)) = head.next_if(|(_, head_start)| head_start >= start) {
                if !inspect(head_trace, &mut inspected)? {
                    return Ok(inspected);
                }
            }
            if !inspect(*trace_id, &mut inspected)? {
                return Ok(inspected);
            }
        }
        if scanned < PAGE {
            for (head_trace, _) in head.by_ref() {
                if !inspect(head_trace, &mut inspected)? {
                    return Ok(inspected);
                }
            }
            return Ok(inspected);
        }
    }
}

/// Index terms that one fragment of every matching trace holds: those a spanset filter's
/// top-level `&&` conditions require of one span (`resource.service.name = "x"`,
/// `name = "x"`, `status = …`, `kind = …`), which lie in that span's fragment; for `&&`
/// and structural operators between spansets those of one side; nothing for `||`. The
/// candidates are the traces of fragments holding them all, each still loaded whole and
/// checked exactly.
fn required_terms(expr: &SpansetExpr) -> Vec<FragmentHas> {
    fn from_condition(condition: &FieldExpr, out: &mut Vec<FragmentHas>) {
        match condition {
            FieldExpr::And(left, right) => {
                from_condition(left, out);
                from_condition(right, out);
            }
            FieldExpr::Compare(operand, CompareOp::Eq, literal) => {
                let has = match (operand, literal) {
                    (Operand::Attribute(Scope::Resource, key), Literal::String(service))
                        if key == "service.name" =>
                    {
                        Some(FragmentHas::Service(service.clone()))
                    }
                    (Operand::Intrinsic(Intrinsic::Name), Literal::String(name)) => {
                        Some(FragmentHas::SpanName(name.clone()))
                    }
                    (Operand::Intrinsic(Intrinsic::Status), Literal::Status(code)) => {
                        Some(FragmentHas::StatusCode(*code as u64))
                    }
                    (Operand::Intrinsic(Intrinsic::Kind), Literal::Kind(kind)) => {
                        Some(FragmentHas::Kind(*kind as u64))
                    }
                    _ => None,
                };
                out.extend(has);
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    match expr {
        SpansetExpr::Filter(Some(condition)) => from_condition(condition, &mut out),
        SpansetExpr::Filter(None) => {}
        SpansetExpr::Binary(_, SpansetOp::Or, _) => {}
        // Each side's span may lie in another fragment of the trace: narrow by one side
        // (the one that says more), which some fragment of every match satisfies.
        SpansetExpr::Binary(left, _, right) => {
            let (left, right) = (required_terms(left), required_terms(right));
            out = if left.len() >= right.len() {
                left
            } else {
                right
            };
        }
    }
    out
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
                .find_trace_local(&trace.trace_id)
                .map(Option::unwrap_or_default)
        })
        .collect()
}
