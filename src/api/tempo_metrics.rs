//! Tempo's TraceQL metrics API, as Grafana's Tempo data source and Traces Drilldown call
//! it: `GET /api/metrics/query_range?q=&start=&end=&step=&exemplars=` and the instant
//! `GET /api/metrics/query?q=&start=&end=`. `start`/`end` are unix seconds, milliseconds,
//! nanoseconds, floats or RFC 3339, or `since=15m` before now (the default range is the
//! last hour); `step` a Go duration or seconds. Answers carry only the fields of Tempo's
//! `QueryRangeResponse` / `QueryInstantResponse` protobufs in their JSON form (Grafana
//! decodes them with jsonpb, which refuses unknown fields): 64-bit integers as strings,
//! exemplars labelled `trace:id` and `span:id`. A bad query is a 400 with Tempo's
//! plain-text body.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query as QueryParams, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value as JsonValue};

use super::tempo_search::bad_request;
use super::AppState;
use crate::ingest::logline::parse_time_text;
use crate::query::metrics::{self, LabelValue, MetricsRequest, MetricsResult, Series};
use crate::query::traceql::{self, parse_duration};

const DEFAULT_RANGE_NANOS: u64 = 3_600_000_000_000;
const DEFAULT_EXEMPLARS: usize = 100;
const MAX_EXEMPLARS: usize = 1000;
const MAX_SERIES: usize = 1000;

pub async fn query_range(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    answer(state, params, false).await
}

pub async fn query_instant(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    answer(state, params, true).await
}

async fn answer(state: AppState, params: HashMap<String, String>, instant: bool) -> Response {
    let (request, text) = match request_from(&params, instant) {
        Ok(request) => request,
        Err(message) => return bad_request(message),
    };
    let storage = state.storage.clone();
    let result = super::blocking(move || {
        let mut accumulated = metrics::accumulate(&storage, &request)?;
        // In a cluster every node accumulates what it holds of the same request (times
        // resolved here, so that the intervals line up), and series are made of it all.
        let mut missing = Vec::new();
        if let Some(peers) = storage.peers.get() {
            let asked = PeerAsk {
                q: text,
                start_unix_nano: request.start_unix_nano,
                end_unix_nano: request.end_unix_nano,
                step_nanos: request.step_nanos,
            };
            let gathered =
                peers.post::<metrics::Accumulated>(crate::cluster::peers::METRICS_ROUTE, &asked);
            for theirs in gathered.answers {
                accumulated.merge(theirs);
            }
            missing = gathered.missing;
        }
        Ok((metrics::finish(&request, accumulated), missing))
    })
    .await;
    match result {
        Ok((result, missing)) => {
            let mut body = if instant {
                instant_json(&result)
            } else {
                range_json(&result)
            };
            if !missing.is_empty() {
                body["status"] = json!("PARTIAL");
                body["message"] = json!(super::tempo::partial_message(&missing));
            }
            let mut response = Json(body).into_response();
            super::tempo::mark_partial(&mut response, &missing);
            response
        }
        Err(error) => {
            tracing::error!(%error, "TraceQL metrics query failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// A metrics request as the node asked passes it on to the others.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct PeerAsk {
    q: String,
    start_unix_nano: u64,
    end_unix_nano: u64,
    step_nanos: Option<u64>,
}

/// What this node accumulates of another node's metrics request.
pub async fn peer_accumulate(
    State(state): State<AppState>,
    Json(asked): Json<PeerAsk>,
) -> Result<Json<metrics::Accumulated>, super::ApiError> {
    let query = traceql::parse(&asked.q)
        .map_err(|error| super::ApiError::BadRequest(format!("invalid TraceQL query: {error}")))?;
    let request = MetricsRequest {
        query,
        start_unix_nano: asked.start_unix_nano,
        end_unix_nano: asked.end_unix_nano.max(asked.start_unix_nano + 1),
        step_nanos: asked.step_nanos,
        exemplars: 0,
        max_series: MAX_SERIES,
    };
    let storage = state.storage.clone();
    Ok(Json(
        super::blocking(move || metrics::accumulate(&storage, &request))
            .await
            .map_err(super::ApiError::Internal)?,
    ))
}

/// The request, and its query's text.
fn request_from(
    params: &HashMap<String, String>,
    instant: bool,
) -> Result<(MetricsRequest, String), String> {
    let param = |name: &str| {
        params
            .get(name)
            .map(|value| value.trim())
            .filter(|value| !value.is_empty())
    };
    let text = param("q")
        .or_else(|| param("query"))
        .ok_or("invalid TraceQL query: the query (q) is empty")?;
    let query = traceql::parse(text).map_err(|error| format!("invalid TraceQL query: {error}"))?;
    traceql::eval::check_regexes(&query)
        .map_err(|error| format!("invalid TraceQL query: {error}"))?;
    if query.metrics().is_none() {
        return Err(format!(
            "invalid TraceQL query: {text:?} is not a metrics query; end it with a metrics function such as `| rate()`"
        ));
    }
    let time = |name: &str| -> Result<Option<u64>, String> {
        param(name)
            .map(|text| {
                parse_time_text(text)
                    .ok_or_else(|| format!("invalid {name}: {text:?} is not a time"))
            })
            .transpose()
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or_default();
    let (start, end) = match param("since") {
        Some(since) => {
            let range = parse_duration(since)
                .ok_or_else(|| format!("invalid since: {since:?} is not a duration"))?;
            (now.saturating_sub(range), now)
        }
        None => {
            let end = time("end")?.unwrap_or(now);
            let start = time("start")?.unwrap_or(end.saturating_sub(DEFAULT_RANGE_NANOS));
            (start, end)
        }
    };
    if end <= start {
        return Err(format!(
            "invalid start and end: end ({end}) must be after start ({start})"
        ));
    }
    let step_nanos = if instant {
        None
    } else {
        Some(match param("step") {
            None => metrics::default_step_nanos(start, end),
            Some(text) => step(text).ok_or_else(|| {
                format!("invalid step: {text:?} is neither a duration nor seconds")
            })?,
        })
    };
    let exemplars = match param("exemplars") {
        None => DEFAULT_EXEMPLARS,
        Some(text) => text
            .parse::<usize>()
            .map_err(|_| format!("invalid exemplars: {text:?} is not a count"))?
            .min(MAX_EXEMPLARS),
    };
    Ok((
        MetricsRequest {
            query,
            start_unix_nano: start,
            end_unix_nano: end,
            step_nanos,
            exemplars,
            max_series: MAX_SERIES,
        },
        text.to_owned(),
    ))
}

/// A Go duration (`15s`) or seconds (`15`, `0.5`), positive.
fn step(text: &str) -> Option<u64> {
    let nanos = match text.parse::<f64>() {
        Ok(seconds) if seconds > 0.0 && seconds.is_finite() => (seconds * 1e9).round() as u64,
        Ok(_) => return None,
        Err(_) => parse_duration(text)?,
    };
    (nanos > 0).then_some(nanos)
}

fn any_value(value: &LabelValue) -> JsonValue {
    match value {
        LabelValue::String(text) => json!({"stringValue": text}),
        LabelValue::Int(number) => json!({"intValue": number.to_string()}),
        LabelValue::Float(number) => json!({"doubleValue": number}),
        LabelValue::Bool(flag) => json!({"boolValue": flag}),
        LabelValue::Nil => json!({}),
    }
}

fn labels_json(labels: &[(String, LabelValue)]) -> Vec<JsonValue> {
    labels
        .iter()
        .map(|(key, value)| json!({"key": key, "value": any_value(value)}))
        .collect()
}

/// Prometheus's spelling of the labels, Tempo's `promLabels`.
fn prom_labels(labels: &[(String, LabelValue)]) -> String {
    let pairs: Vec<String> = labels
        .iter()
        .map(|(key, value)| {
            let text = match value {
                LabelValue::String(text) => text.clone(),
                LabelValue::Int(number) => number.to_string(),
                LabelValue::Float(number) => number.to_string(),
                LabelValue::Bool(flag) => flag.to_string(),
                LabelValue::Nil => "nil".to_owned(),
            };
            format!("{key}={text:?}")
        })
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

fn millis(unix_nano: u64) -> String {
    (unix_nano / 1_000_000).to_string()
}

fn series_json(series: &Series) -> JsonValue {
    let samples: Vec<JsonValue> = series
        .samples
        .iter()
        .map(|(at, value)| json!({"timestampMs": millis(*at), "value": value}))
        .collect();
    let exemplars: Vec<JsonValue> = series
        .exemplars
        .iter()
        .map(|exemplar| {
            json!({
                "labels": [
                    {"key": "trace:id", "value": {"stringValue": exemplar.trace_id.to_hex()}},
                    {"key": "span:id", "value": {"stringValue": exemplar.span_id.to_hex()}},
                ],
                "value": exemplar.value,
                "timestampMs": millis(exemplar.at_unix_nano),
            })
        })
        .collect();
    json!({
        "labels": labels_json(&series.labels),
        "promLabels": prom_labels(&series.labels),
        "samples": samples,
        "exemplars": exemplars,
    })
}

fn metrics_json(result: &MetricsResult) -> JsonValue {
    json!({
        "inspectedTraces": result.inspected_traces,
        "inspectedSpans": result.inspected_spans.to_string(),
        "totalJobs": 1,
        "completedJobs": 1,
    })
}

fn range_json(result: &MetricsResult) -> JsonValue {
    let mut body = json!({
        "series": result.series.iter().map(series_json).collect::<Vec<_>>(),
        "metrics": metrics_json(result),
    });
    if result.truncated {
        body["status"] = json!("PARTIAL");
        body["message"] = json!(format!(
            "only the first {MAX_SERIES} series are answered; narrow the query or its by()"
        ));
    }
    body
}

fn instant_json(result: &MetricsResult) -> JsonValue {
    let series: Vec<JsonValue> = result
        .series
        .iter()
        .filter_map(|series| {
            let (_, value) = series.samples.first()?;
            Some(json!({
                "labels": labels_json(&series.labels),
                "promLabels": prom_labels(&series.labels),
                "value": value,
            }))
        })
        .collect();
    let mut body = json!({"series": series, "metrics": metrics_json(result)});
    if result.truncated {
        body["status"] = json!("PARTIAL");
        body["message"] = json!(format!("only the first {MAX_SERIES} series are answered"));
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_durations_or_seconds() {
        assert_eq!(step("15s"), Some(15_000_000_000));
        assert_eq!(step("1m30s"), Some(90_000_000_000));
        assert_eq!(step("0.5"), Some(500_000_000));
        assert_eq!(step("60"), Some(60_000_000_000));
        assert_eq!(step("0"), None);
        assert_eq!(step("-5"), None);
        assert_eq!(step("soon"), None);
    }

    #[test]
    fn prom_labels_quote_values() {
        let labels = vec![
            (
                "resource.service.name".to_owned(),
                LabelValue::String("a\"b".into()),
            ),
            ("p".to_owned(), LabelValue::Float(0.9)),
        ];
        assert_eq!(
            prom_labels(&labels),
            r#"{resource.service.name="a\"b", p="0.9"}"#
        );
    }
}
