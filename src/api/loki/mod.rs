//! Loki's query API, enough for Grafana's Loki data source: `query_range`, `query`
//! (including the `vector(1)+vector(1)` health check), `labels` and label values. Stream
//! labels are `service_name`, `level` and, for container logs, `k8s_namespace_name`,
//! `k8s_pod_name` and `k8s_container_name`; each line is the record rendered as one JSON
//! object (message, level, trace and span ids, attributes), so Grafana's derived fields
//! and its default trace→logs filter (`|= "<traceId>"`) find the trace id in it.

pub mod logql;

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::logs::parse_query_trace_id;
use super::{ApiError, AppState};
use crate::ingest::logline::parse_time_text;
use crate::model::Level;
use crate::model::{LogRecord, LABEL_ATTRIBUTES};
use crate::store::{LogQuery, Storage};
use logql::{Aggregation, Expr, LogSelector, MatchOp, Matcher, MetricQuery, RangeFunction, Stage};

/// Records scanned at most to answer one query.
const MAX_SCANNED: usize = 200_000;
const HOUR_NANOS: u64 = 3_600_000_000_000;

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct LokiParams {
    pub query: String,
    pub limit: Option<usize>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub time: Option<String>,
    pub step: Option<String>,
    pub direction: Option<String>,
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or_default()
}

fn time_param(name: &str, value: Option<&str>, default: u64) -> Result<u64, ApiError> {
    match value.filter(|text| !text.is_empty()) {
        None => Ok(default),
        Some(text) => parse_time_text(text)
            .ok_or_else(|| ApiError::BadRequest(format!("{name} {text:?} is not a time"))),
    }
}

fn parse_expr(query: &str) -> Result<Expr, ApiError> {
    logql::parse(query).map_err(|error| ApiError::BadRequest(error.to_string()))
}

pub async fn query_range(
    State(state): State<AppState>,
    Query(params): Query<LokiParams>,
) -> Result<Json<Value>, ApiError> {
    let end = time_param("end", params.end.as_deref(), now_nanos())?;
    let start = time_param(
        "start",
        params.start.as_deref(),
        end.saturating_sub(HOUR_NANOS),
    )?;
    let expr = parse_expr(&params.query)?;
    let step_nanos = match params.step.as_deref().filter(|text| !text.is_empty()) {
        Some(text) => logql::parse_duration(text)
            .ok_or_else(|| ApiError::BadRequest(format!("step {text:?} is not a duration")))?
            .as_nanos() as u64,
        None => ((end.saturating_sub(start)) / 250).max(1_000_000_000),
    }
    .max(1_000_000);
    let limit = params.limit.unwrap_or(100).clamp(1, 5000);
    let forward = params.direction.as_deref() == Some("forward");
    let storage = state.storage.clone();
    tokio::task::spawn_blocking(move || match expr {
        Expr::Logs(selector) => {
            let records = select(&storage, &selector, start, end, limit, forward)?;
            Ok(streams_response(&records))
        }
        Expr::Metric(metric) => {
            let steps: Vec<u64> = (0..)
                .map(|index| start + index * step_nanos)
                .take_while(|time| *time <= end)
                .take(11_000)
                .collect();
            let series = evaluate(&storage, &metric, &steps)?;
            Ok(
                json!({"status": "success", "data": {"resultType": "matrix", "result": series
                .into_iter()
                .map(|(labels, values)| json!({"metric": labels, "values": values
                    .into_iter()
                    .map(|(time, value)| json!([time as f64 / 1e9, format_value(value)]))
                    .collect::<Vec<_>>()}))
                .collect::<Vec<_>>(), "stats": {}}}),
            )
        }
        Expr::Scalar(value) => Ok(
            json!({"status": "success", "data": {"resultType": "matrix", "result": [
            {"metric": {}, "values": [[end as f64 / 1e9, format_value(value)]]}], "stats": {}}}),
        ),
    })
    .await
    .map_err(|error| ApiError::Internal(error.to_string()))?
    .map(Json)
}

pub async fn query(
    State(state): State<AppState>,
    Query(params): Query<LokiParams>,
) -> Result<Json<Value>, ApiError> {
    let time = time_param("time", params.time.as_deref(), now_nanos())?;
    let expr = parse_expr(&params.query)?;
    let limit = params.limit.unwrap_or(100).clamp(1, 5000);
    let forward = params.direction.as_deref() == Some("forward");
    let storage = state.storage.clone();
    tokio::task::spawn_blocking(move || match expr {
        Expr::Scalar(value) => Ok(
            json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {}, "value": [time as f64 / 1e9, format_value(value)]}], "stats": {}}}),
        ),
        Expr::Logs(selector) => {
            let records = select(
                &storage,
                &selector,
                time.saturating_sub(HOUR_NANOS),
                time,
                limit,
                forward,
            )?;
            Ok(streams_response(&records))
        }
        Expr::Metric(metric) => {
            let series = evaluate(&storage, &metric, &[time])?;
            Ok(
                json!({"status": "success", "data": {"resultType": "vector", "result": series
                .into_iter()
                .filter_map(|(labels, values)| values.first().map(|(at, value)| json!({
                    "metric": labels, "value": [*at as f64 / 1e9, format_value(*value)]})))
                .collect::<Vec<_>>(), "stats": {}}}),
            )
        }
    })
    .await
    .map_err(|error| ApiError::Internal(error.to_string()))?
    .map(Json)
}

/// `service_name` and `level`, and the attribute labels some record has.
pub async fn labels(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let storage = state.storage.clone();
    let present = tokio::task::spawn_blocking(move || {
        let mut present = Vec::new();
        for (label, _) in LABEL_ATTRIBUTES {
            if !storage.logs.values_of(label)?.is_empty() {
                present.push(label);
            }
        }
        Ok::<_, crate::store::StoreError>(present)
    })
    .await
    .map_err(|error| ApiError::Internal(error.to_string()))??;
    let mut names = vec!["level", "service_name"];
    names.extend(present);
    names.sort_unstable();
    Ok(Json(json!({"status": "success", "data": names})))
}

pub async fn label_values(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let field = match name.as_str() {
        "service_name" => "service",
        "level" => "level",
        label if LABEL_ATTRIBUTES.iter().any(|(known, _)| *known == label) => label,
        _ => return Ok(Json(json!({"status": "success", "data": []}))),
    };
    let field = field.to_owned();
    let storage = state.storage.clone();
    let values = tokio::task::spawn_blocking(move || storage.logs.values_of(&field))
        .await
        .map_err(|error| ApiError::Internal(error.to_string()))??;
    Ok(Json(json!({"status": "success", "data": values})))
}

fn format_value(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

fn level_label(record: &LogRecord) -> &'static str {
    record.level.map_or("unknown", Level::as_str)
}

/// A label or extracted field of a record, as label filters see it.
fn field_value(record: &LogRecord, name: &str) -> Option<String> {
    match name {
        "service_name" | "service" => Some(record.service.clone()),
        "level" | "detected_level" => Some(level_label(record).to_owned()),
        "trace_id" | "traceID" | "traceId" => record.trace_id.map(|id| id.to_hex()),
        "span_id" | "spanID" | "spanId" => record.span_id.map(|id| id.to_hex()),
        "message" | "msg" => Some(record.message.clone()),
        "__error__" | "__error_details__" => Some(String::new()),
        label if label.starts_with("k8s_") => record
            .labels()
            .find(|(known, _)| *known == label)
            .map(|(_, value)| value.to_owned()),
        other => record.attributes.get(other).map(|value| match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        }),
    }
}

/// The line Loki would return: the record as one JSON object.
pub fn render_line(record: &LogRecord) -> String {
    let mut line = String::from("{");
    let mut push = |key: &str, value: &Value| {
        if line.len() > 1 {
            line.push(',');
        }
        line.push_str(&Value::String(key.to_owned()).to_string());
        line.push(':');
        line.push_str(&value.to_string());
    };
    push("message", &Value::String(record.message.clone()));
    push("level", &Value::String(level_label(record).to_owned()));
    if let Some(trace_id) = record.trace_id {
        push("trace_id", &Value::String(trace_id.to_hex()));
    }
    if let Some(span_id) = record.span_id {
        push("span_id", &Value::String(span_id.to_hex()));
    }
    for (key, value) in &record.attributes {
        push(key, value);
    }
    line.push('}');
    line
}

fn matcher_matches(matcher: &Matcher, record: &LogRecord) -> bool {
    let value = field_value(record, &matcher.label).unwrap_or_default();
    matcher.op.matches(&value)
}

fn record_matches(selector: &LogSelector, record: &LogRecord) -> bool {
    if !selector
        .matchers
        .iter()
        .all(|matcher| matcher_matches(matcher, record))
    {
        return false;
    }
    let needs_line = selector.stages.iter().any(|stage| {
        matches!(
            stage,
            Stage::Contains(_)
                | Stage::NotContains(_)
                | Stage::LineRegex(_)
                | Stage::NotLineRegex(_)
        )
    });
    let line = if needs_line {
        render_line(record)
    } else {
        String::new()
    };
    selector.stages.iter().all(|stage| match stage {
        Stage::Contains(text) => line.contains(text.as_str()),
        Stage::NotContains(text) => !line.contains(text.as_str()),
        Stage::LineRegex(pattern) => pattern.is_match(&line),
        Stage::NotLineRegex(pattern) => !pattern.is_match(&line),
        Stage::Passthrough => true,
        Stage::LabelFilter(matcher) => matcher_matches(matcher, record),
    })
}

/// Matching records in `[start, end]`, using the index for what it can answer.
fn select(
    storage: &Storage,
    selector: &LogSelector,
    start: u64,
    end: u64,
    limit: usize,
    forward: bool,
) -> Result<Vec<LogRecord>, ApiError> {
    let mut query = LogQuery {
        start_unix_nano: Some(start),
        end_unix_nano: Some(end),
        limit: MAX_SCANNED,
        oldest_first: forward,
        ..LogQuery::default()
    };
    let equal = |matcher: &Matcher| match &matcher.op {
        MatchOp::Equal(value) => Some((matcher.label.clone(), value.clone())),
        _ => None,
    };
    let label_filters = selector.stages.iter().filter_map(|stage| match stage {
        Stage::LabelFilter(matcher) => Some(matcher),
        _ => None,
    });
    for (label, value) in selector
        .matchers
        .iter()
        .chain(label_filters)
        .filter_map(equal)
    {
        match label.as_str() {
            "service_name" | "service" => query.service = Some(value),
            "level" => query.level = Level::parse(&value).or(query.level),
            label if LABEL_ATTRIBUTES.iter().any(|(known, _)| *known == label) => {
                query.labels.push((label.to_owned(), value));
            }
            "trace_id" | "traceID" | "traceId" => {
                let (trace_id, low_only) = parse_query_trace_id(&value)?;
                query.trace_id = Some(trace_id);
                query.trace_low64_only = low_only;
            }
            _ => {}
        }
    }
    let records = storage.search_logs(&query)?;
    Ok(records
        .into_iter()
        .filter(|record| record_matches(selector, record))
        .take(limit)
        .collect())
}

fn stream_labels(record: &LogRecord) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("service_name".to_owned(), record.service.clone()),
        ("level".to_owned(), level_label(record).to_owned()),
    ]);
    for (label, value) in record.labels() {
        labels.insert(label.to_owned(), value.to_owned());
    }
    labels
}

fn streams_response(records: &[LogRecord]) -> Value {
    let mut streams: Vec<(BTreeMap<String, String>, Vec<Value>)> = Vec::new();
    for record in records {
        let labels = stream_labels(record);
        let entry = json!([record.time_unix_nano.to_string(), render_line(record)]);
        match streams.iter_mut().find(|(existing, _)| *existing == labels) {
            Some((_, values)) => values.push(entry),
            None => streams.push((labels, vec![entry])),
        }
    }
    json!({"status": "success", "data": {"resultType": "streams", "result": streams
        .into_iter()
        .map(|(labels, values)| json!({"stream": labels, "values": values}))
        .collect::<Vec<_>>(), "stats": {}}})
}

type Labels = BTreeMap<String, String>;
/// A series' labels and its `(time in ns, value)` points.
type Series = (Labels, Vec<(u64, f64)>);

/// Per series, `(time, value)` at each step: counts (or rates) over the range window,
/// aggregated by the `by` labels when asked.
fn evaluate(
    storage: &Storage,
    metric: &MetricQuery,
    steps: &[u64],
) -> Result<Vec<Series>, ApiError> {
    let (Some(first), Some(last)) = (steps.first(), steps.last()) else {
        return Ok(Vec::new());
    };
    let range = metric.range.as_nanos() as u64;
    let records = select(
        storage,
        &metric.selector,
        first.saturating_sub(range),
        *last,
        MAX_SCANNED,
        true,
    )?;
    let mut per_stream: BTreeMap<BTreeMap<String, String>, Vec<u64>> = BTreeMap::new();
    for record in &records {
        per_stream
            .entry(stream_labels(record))
            .or_default()
            .push(record.time_unix_nano);
    }
    let window_seconds = (range as f64 / 1e9).max(1e-9);
    let stream_series: Vec<(BTreeMap<String, String>, Vec<f64>)> = per_stream
        .into_iter()
        .map(|(labels, mut times)| {
            times.sort_unstable();
            let values = steps
                .iter()
                .map(|step| {
                    let from = times.partition_point(|time| *time <= step.saturating_sub(range));
                    let to = times.partition_point(|time| time <= step);
                    let count = (to - from) as f64;
                    match metric.function {
                        RangeFunction::CountOverTime => count,
                        RangeFunction::Rate => count / window_seconds,
                    }
                })
                .collect();
            (labels, values)
        })
        .collect();
    let grouped: Vec<(BTreeMap<String, String>, Vec<f64>)> = match &metric.aggregation {
        None => stream_series,
        Some((aggregation, by)) => {
            let mut groups: BTreeMap<BTreeMap<String, String>, Vec<Vec<f64>>> = BTreeMap::new();
            for (labels, values) in stream_series {
                let key = labels
                    .into_iter()
                    .filter(|(label, _)| by.contains(label))
                    .collect();
                groups.entry(key).or_default().push(values);
            }
            groups
                .into_iter()
                .map(|(labels, members)| {
                    let values = (0..steps.len())
                        .map(|index| {
                            let column = members.iter().map(|values| values[index]);
                            match aggregation {
                                Aggregation::Sum => column.sum(),
                                Aggregation::Count => {
                                    column.filter(|value| *value > 0.0).count() as f64
                                }
                                Aggregation::Max => column.fold(0.0, f64::max),
                                Aggregation::Min => column.fold(f64::INFINITY, f64::min),
                                Aggregation::Avg => column.sum::<f64>() / members.len() as f64,
                            }
                        })
                        .collect();
                    (labels, values)
                })
                .collect()
        }
    };
    // Prometheus leaves out the points where a series has no samples.
    Ok(grouped
        .into_iter()
        .map(|(labels, values)| {
            let points = steps
                .iter()
                .zip(values)
                .filter(|(_, value)| *value > 0.0 && value.is_finite())
                .map(|(step, value)| (*step, value))
                .collect::<Vec<_>>();
            (labels, points)
        })
        .filter(|(_, points)| !points.is_empty())
        .collect())
}
