//! The join: from a log record or a trace id to the whole story in one answer: the
//! analysed trace (span tree, slowest span, root cause, findings), every log record of the
//! trace, and how each operation's latency compares with its recent calls.
//!
//! `GET /api/join/trace/{trace_id}` (any accepted spelling, Datadog decimal included) and
//! `GET /api/join/log/{log_id}`. A record without a trace id is joined by inference: spans
//! of its service that were running when it was written, errors first; the answer says
//! `"join": "inferred"` and the rule used.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::Json;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use serde_json::{json, Value};

use super::logs::parse_query_trace_id;
use super::metrics::sample_json;
use super::{ApiError, AppState};
use crate::analysis::{self, Normal, SpanInput};
use crate::cluster::latency::LatencyAsk;
use crate::ingest::otlp_logs::any_value_json;
use crate::metrics::latency::{Minutes, OperationKey, WindowStats};
use crate::metrics::names::normalise_span_name;
use crate::model::{service_name, to_hex, LogRecord, Span, TraceId};
use crate::store::{LogQuery, Storage};

/// The window the join compares a trace's operations with.
const WINDOW_MINUTES: u64 = 60;
/// How far before a log record an inferred span may have started.
const INFER_LOOKBACK_NANOS: u64 = 10 * 60 * 1_000_000_000;

/// The spans of a trace as analysis takes them.
pub(crate) fn spans_of(batches: &[ResourceSpans]) -> Vec<SpanInput> {
    let mut spans = Vec::new();
    for batch in batches {
        let service = service_name(batch.resource.as_ref()).to_owned();
        for scope in &batch.scope_spans {
            for span in &scope.spans {
                let attributes = span
                    .attributes
                    .iter()
                    .map(|attribute| {
                        let value = attribute
                            .value
                            .as_ref()
                            .map(any_value_json)
                            .unwrap_or(Value::Null);
                        (attribute.key.clone(), value)
                    })
                    .collect();
                let events = span
                    .events
                    .iter()
                    .map(|event| {
                        let attributes: serde_json::Map<String, Value> = event
                            .attributes
                            .iter()
                            .map(|attribute| {
                                let value = attribute.value.as_ref().map(any_value_json).unwrap_or(Value::Null);
                                (attribute.key.clone(), value)
                            })
                            .collect();
                        json!({"name": event.name, "time_unix_nano": event.time_unix_nano, "attributes": attributes})
                    })
                    .collect();
                let status = span.status.clone().unwrap_or_default();
                spans.push(SpanInput {
                    span_id: to_hex(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty())
                        .then(|| to_hex(&span.parent_span_id)),
                    service: service.clone(),
                    name: span.name.clone(),
                    kind: span.kind,
                    status_code: status.code,
                    status_message: status.message,
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano,
                    attributes,
                    events,
                });
            }
        }
    }
    spans
}

/// Recent traces of a parent operation looked at to tell calls that usually overlap from
/// calls that always run one after the other.
const SEQUENTIAL_HISTORY_TRACES: usize = 20;
/// Comparable traces below which nothing is said either way.
const SEQUENTIAL_MIN_HISTORY: usize = 5;

/// Keep a `sequential_calls` finding only where those calls usually overlap in the recent
/// traces of the same parent operation (then running one after the other here cost
/// time); calls that always run in sequence probably depend on each other, and go.
fn judge_sequential_calls(
    storage: &Storage,
    trace_id: &TraceId,
    spans: &[SpanInput],
    findings: &mut Vec<analysis::Finding>,
) -> Result<(), ApiError> {
    let by_id: HashMap<&str, &SpanInput> = spans
        .iter()
        .map(|span| (span.span_id.as_str(), span))
        .collect();
    let mut judged = Vec::with_capacity(findings.len());
    for mut finding in findings.drain(..) {
        if finding.kind != "sequential_calls" {
            judged.push(finding);
            continue;
        }
        let calls: Vec<&SpanInput> = finding
            .span_ids
            .iter()
            .filter_map(|id| by_id.get(id.as_str()).copied())
            .collect();
        let Some(parent) = calls
            .first()
            .and_then(|call| call.parent_span_id.as_deref())
            .and_then(|id| by_id.get(id).copied())
        else {
            judged.push(finding);
            continue;
        };
        let identities: Vec<(&str, &str)> = calls
            .iter()
            .map(|call| (call.service.as_str(), call.name.as_str()))
            .collect();
        let query = crate::query::traceql::parse(&format!(
            "{{ resource.service.name = \"{}\" && name = \"{}\" }}",
            quote(&parent.service),
            quote(&parent.name)
        ))
        .map_err(|error| ApiError::Internal(error.to_string()))?;
        let end = parent.start_unix_nano;
        let request = crate::query::search::SearchRequest {
            query,
            limit: SEQUENTIAL_HISTORY_TRACES + 1,
            start_unix_nano: Some(end.saturating_sub(3_600_000_000_000)),
            end_unix_nano: Some(end),
            min_duration_nanos: None,
            max_duration_nanos: None,
        };
        let (mut comparable, mut overlapped) = (0usize, 0usize);
        for found in crate::query::search::search(storage, &request)?.traces {
            if found.trace_id == *trace_id || comparable >= SEQUENTIAL_HISTORY_TRACES {
                continue;
            }
            let Some(batches) = storage.find_trace(&found.trace_id)? else {
                continue;
            };
            let earlier = spans_of(&batches);
            for other_parent in earlier
                .iter()
                .filter(|span| span.service == parent.service && span.name == parent.name)
            {
                let mut intervals: Vec<(u64, u64)> = earlier
                    .iter()
                    .filter(|span| {
                        span.parent_span_id.as_deref() == Some(other_parent.span_id.as_str())
                            && identities.contains(&(span.service.as_str(), span.name.as_str()))
                    })
                    .map(|span| (span.start_unix_nano, span.end_unix_nano))
                    .collect();
                if intervals.len() < 2 {
                    continue;
                }
                intervals.sort_unstable();
                comparable += 1;
                if intervals.windows(2).any(|pair| pair[1].0 < pair[0].1) {
                    overlapped += 1;
                }
            }
        }
        if comparable < SEQUENTIAL_MIN_HISTORY {
            finding.message.push_str(&format!(
                " (only {comparable} recent trace(s) of {} / {} to tell whether they usually overlap)",
                parent.service, parent.name
            ));
            judged.push(finding);
        } else if overlapped * 2 >= comparable {
            finding.message.push_str(&format!(
                "; they overlapped in {overlapped} of the {comparable} recent traces of {} / {}",
                parent.service, parent.name
            ));
            judged.push(finding);
        }
    }
    *findings = judged;
    Ok(())
}

fn operation_key(span: &SpanInput) -> OperationKey {
    OperationKey {
        service: span.service.to_string(),
        span_name: normalise_span_name(&span.name),
        span_kind: span.kind,
    }
}

fn quote(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The analysed trace, its logs and its operations' metrics; `None` if it is unknown.
pub(crate) fn join_trace(state: &AppState, trace_id: &TraceId) -> Result<Option<Value>, ApiError> {
    let storage: &Storage = &state.storage;
    let Some(batches) = storage.find_trace(trace_id)? else {
        return Ok(None);
    };
    let spans = spans_of(&batches);
    let now = crate::metrics::latency::current_minute();
    // What is usual: the operation's calls in the hour before this trace's minute, so
    // that an incident's own calls do not make themselves normal.
    let trace_minute = spans
        .iter()
        .map(|span| span.start_unix_nano / 60_000_000_000)
        .min()
        .unwrap_or(now);
    let mut stats: HashMap<OperationKey, WindowStats> = HashMap::new();
    let mut normals: HashMap<OperationKey, Normal> = HashMap::new();
    // Each operation's recent calls and its calls in the hour before, of every node.
    let ask = LatencyAsk {
        operations: spans.iter().map(operation_key).collect(),
        minutes: vec![
            Minutes::last(Some(WINDOW_MINUTES), now),
            Minutes::Between(
                trace_minute.saturating_sub(WINDOW_MINUTES),
                trace_minute.saturating_sub(1),
            ),
        ],
        ..LatencyAsk::default()
    };
    let metrics = &state.pipeline.metrics;
    let merged = crate::cluster::latency::gather(storage, metrics, ask);
    for (key, windows) in merged.operations {
        let mut windows = windows.into_iter();
        let (Some(window), Some(history)) = (windows.next(), windows.next()) else {
            continue;
        };
        let history = history.stats();
        let (median_ms, mad_ms) = history.median_and_mad_ms();
        normals.insert(
            key.clone(),
            Normal {
                count: history.count,
                median_ms,
                mad_ms,
            },
        );
        stats.insert(key, window.stats());
    }
    let rank = |span: &SpanInput| normals.get(&operation_key(span)).copied();
    let mut trace = analysis::analyze(&trace_id.to_hex(), &spans, &rank);
    judge_sequential_calls(storage, trace_id, &spans, &mut trace.analysis.findings)?;

    let mut logs = storage.search_logs(&LogQuery {
        trace_id: Some(*trace_id),
        limit: 5000,
        oldest_first: true,
        ..LogQuery::default()
    })?;
    logs.sort_by_key(|record| record.time_unix_nano);

    // One entry per operation, with this trace's slowest call of it.
    let mut operations: Vec<(OperationKey, u64)> = Vec::new();
    for span in &spans {
        let key = operation_key(span);
        let duration = span.end_unix_nano.saturating_sub(span.start_unix_nano);
        match operations.iter_mut().find(|(existing, _)| *existing == key) {
            Some((_, longest)) => *longest = (*longest).max(duration),
            None => operations.push((key, duration)),
        }
    }
    let metrics: Vec<Value> = operations
        .iter()
        .map(|(key, duration)| {
            let window = stats.get(key);
            let mut exemplars: Vec<Value> = Vec::new();
            if let Some(window) = window {
                exemplars.extend(window.slowest.iter().map(sample_json));
                exemplars.extend(window.band_samples.iter().map(sample_json));
            }
            json!({
                "service": key.service,
                "span_name": key.span_name,
                "span_kind": format!("{:?}", crate::metrics::SpanKindLabel::from_otlp(key.span_kind)),
                "window": format!("{WINDOW_MINUTES}m"),
                "count": window.map_or(0, |window| window.count),
                "error_rate": window.map_or(0.0, WindowStats::error_rate),
                "p50_ms": window.map(|window| window.p50_ms),
                "p90_ms": window.map(|window| window.p90_ms),
                "p99_ms": window.map(|window| window.p99_ms),
                "this_duration_ms": *duration as f64 / 1e6,
                "percentile_rank": window.map(|window| window.percentile_rank(duration / 1000)),
                "normal": normals.get(key).map(|normal| json!({
                    "calls_before": normal.count,
                    "median_ms": normal.median_ms,
                    "mad_ms": normal.mad_ms,
                })),
                "verdict": match normals.get(key).and_then(|normal| normal.is_slow(*duration as f64 / 1e6)) {
                    Some(true) => "slow",
                    Some(false) => "normal",
                    None => "not enough history",
                },
                "exemplars": exemplars,
            })
        })
        .collect();
    let root = trace.spans.first();
    let (service, name) = root
        .map(|span| {
            (
                quote(&span.service),
                quote(&normalise_span_name(&span.name)),
            )
        })
        .unwrap_or_default();
    let selector = format!(r#"service="{service}",span_name="{name}""#);
    Ok(Some(json!({
        "trace": trace,
        "logs": logs,
        "metrics": metrics,
        "links": {
            "promql": {
                "latency_p99": format!("histogram_quantile(0.99, sum by (le) (rate(traces_spanmetrics_latency_bucket{{{selector}}}[5m])))"),
                "error_rate": format!(r#"sum(rate(traces_spanmetrics_calls_total{{{selector},status_code="STATUS_CODE_ERROR"}}[5m])) / sum(rate(traces_spanmetrics_calls_total{{{selector}}}[5m]))"#),
            },
            "trace": format!("/api/v2/traces/{}", trace_id.to_hex()),
            "logs": format!("/api/logs?trace_id={}", trace_id.to_hex()),
        },
    })))
}

/// Why tail sampling dropped a trace, while the decision cache remembers it.
fn dropped_reason(state: &AppState, trace_id: &TraceId) -> Option<String> {
    let decision = state.storage.head.decision(trace_id)?;
    (!decision.keep).then(|| state.pipeline.sampler.reason_name(decision.reason))
}

/// A trace id given with only its low 64 bits: the full id a log record of it carries,
/// else the 64-bit id itself.
pub(crate) fn resolve_trace_id(
    storage: &Storage,
    trace_id: TraceId,
    low_only: bool,
) -> Result<TraceId, ApiError> {
    if !low_only {
        return Ok(trace_id);
    }
    if let Some(stored) = storage
        .traces
        .trace_ids_with_low64(trace_id.low_u64())?
        .into_iter()
        .next()
    {
        return Ok(stored);
    }
    let found = storage.search_logs(&LogQuery {
        trace_id: Some(trace_id),
        trace_low64_only: true,
        limit: 50,
        ..LogQuery::default()
    })?;
    Ok(found
        .iter()
        .filter(|record| !record.trace_id_low64_only)
        .find_map(|record| record.trace_id)
        .unwrap_or(trace_id))
}

pub async fn by_trace(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (trace_id, low_only) = parse_query_trace_id(&raw_id)?;
    tokio::task::spawn_blocking(move || {
        let trace_id = resolve_trace_id(&state.storage, trace_id, low_only)?;
        let joined = join_trace(&state, &trace_id)?.ok_or_else(|| {
            ApiError::NotFound(match dropped_reason(&state, &trace_id) {
                Some(reason) => format!("trace {trace_id} was dropped by tail sampling ({reason})"),
                None => format!("trace {trace_id} not found"),
            })
        })?;
        Ok(Json(joined))
    })
    .await
    .map_err(|error| ApiError::Internal(error.to_string()))?
}

/// Spans of the record's service running when it was written, errors first, then the
/// tightest fit.
fn infer_candidates(storage: &Storage, record: &LogRecord) -> Result<Vec<Span>, ApiError> {
    let time = record.time_unix_nano;
    let from = time.saturating_sub(INFER_LOOKBACK_NANOS);
    let mut payloads = storage
        .head
        .service_spans_between(&record.service, from, time, 2000);
    payloads.extend(
        storage
            .traces
            .service_fragments_between(&record.service, from, time, 500)?,
    );
    let mut candidates: Vec<Span> = payloads
        .into_iter()
        .filter_map(|payload| Span::from_payload(payload).ok())
        .filter(|span| {
            *span.service == *record.service
                && span.start_time_unix_nano <= time
                && time <= span.start_time_unix_nano + span.duration_nanos
        })
        .collect();
    // A trace just committed may still be in the head too: each span once.
    let mut seen = std::collections::HashSet::new();
    candidates.retain(|span| seen.insert((span.trace_id, span.span_id)));
    candidates.sort_by_key(|span| {
        (
            span.status_code != 2,
            span.duration_nanos,
            std::cmp::Reverse(span.start_time_unix_nano),
        )
    });
    candidates.truncate(5);
    Ok(candidates)
}

pub async fn by_log(
    State(state): State<AppState>,
    Path(log_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    tokio::task::spawn_blocking(move || {
        let record = state
            .storage
            .log_by_id(&log_id)?
            .ok_or_else(|| ApiError::NotFound(format!("log record {log_id} not found")))?;
        if let Some(trace_id) = record.trace_id {
            let trace_id = resolve_trace_id(&state.storage, trace_id, record.trace_id_low64_only)?;
            let mut joined = join_trace(&state, &trace_id)?.unwrap_or_else(|| {
                match dropped_reason(&state, &trace_id) {
                    Some(reason) => json!({"trace": null, "logs": [], "metrics": [],
                        "sampling": {"decision": "drop", "reason": reason}, "findings": [{
                        "kind": "trace_dropped_by_sampling",
                        "span_ids": [],
                        "message": format!(
                            "the record names trace {trace_id}, which tail sampling dropped ({reason}); its spans are counted in the metrics but not stored"
                        ),
                    }]}),
                    None => json!({"trace": null, "logs": [], "metrics": [], "findings": [{
                        "kind": "trace_not_stored",
                        "span_ids": [],
                        "message": format!("the record names trace {trace_id}, which tracelink has not received"),
                    }]}),
                }
            });
            joined["log"] = serde_json::to_value(&record).unwrap_or(Value::Null);
            joined["join"] = json!("trace_id");
            return Ok(Json(joined));
        }
        let candidates = infer_candidates(&state.storage, &record)?;
        let rule = format!(
            "spans of service {:?} running at the record's time ({}), errors first, then the shortest",
            record.service, record.time
        );
        let best = candidates.first().map(|span| span.trace_id);
        let mut joined = match best {
            Some(trace_id) => join_trace(&state, &trace_id)?.unwrap_or(Value::Null),
            None => json!({"trace": null, "logs": [], "metrics": []}),
        };
        joined["log"] = serde_json::to_value(&record).unwrap_or(Value::Null);
        joined["join"] = json!("inferred");
        joined["rule"] = json!(rule);
        joined["candidates"] = candidates
            .iter()
            .map(|span| json!({
                "trace_id": span.trace_id.to_hex(),
                "span_id": span.span_id.to_hex(),
                "name": span.name,
                "error": span.status_code == 2,
                "start_time_unix_nano": span.start_time_unix_nano,
                "duration_ms": span.duration_nanos as f64 / 1e6,
            }))
            .collect();
        Ok(Json(joined))
    })
    .await
    .map_err(|error| ApiError::Internal(error.to_string()))?
}
