//! Tempo's search, `GET /api/search`, as Grafana's Tempo data source calls it: `q`
//! (TraceQL) or the legacy `tags` (logfmt), `minDuration`, `maxDuration`, `limit`, `spss`,
//! `start`, `end` (unix seconds). Answers in Tempo's JSON (camelCase, 64-bit integers as
//! strings, Grafana's typed structs satisfied); a bad request is a 400 with Tempo's
//! plain-text body. Newest traces first, over the whole range asked.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Query as QueryParams, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value as JsonValue};

use super::AppState;
use crate::query::search::{search as run_search, FoundTrace, SearchRequest};
use crate::query::traceql::eval::{SpanView, Value};
use crate::query::traceql::{
    self, parse_duration, CompareOp, FieldExpr, Intrinsic, Literal, Operand, Query, Scope,
    SpansetExpr, Stage,
};

const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 256 * 1024;
const DEFAULT_SPSS: usize = 3;
const MAX_SPSS: usize = 100;
const NO_ROOT: &str = "<root span not yet received>";

/// Tempo's 400: the message as plain text.
pub(super) fn bad_request(message: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, message.into()).into_response()
}

pub async fn search(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    let request = match request_from(&params) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let (request, spss) = request;
    let storage = state.storage.clone();
    let searched =
        super::blocking(move || run_search(&storage, &request).map(|found| (found, request))).await;
    let (found, request) = match searched {
        Ok(found) => found,
        Err(error) => {
            tracing::error!(%error, "search failed");
            return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
        }
    };
    let shown = shown_operands(&request.query);
    let traces: Vec<JsonValue> = found
        .traces
        .iter()
        .map(|trace| trace_json(trace, spss, &shown))
        .collect();
    let mut metrics = serde_json::Map::new();
    if found.inspected_traces > 0 {
        metrics.insert("inspectedTraces".into(), json!(found.inspected_traces));
        metrics.insert(
            "inspectedSpans".into(),
            json!(found.inspected_spans.to_string()),
        );
    }
    metrics.insert("completedJobs".into(), json!(1));
    metrics.insert("totalJobs".into(), json!(1));
    Json(json!({"traces": traces, "metrics": metrics})).into_response()
}

type Rejection = Box<Response>;

fn request_from(params: &HashMap<String, String>) -> Result<(SearchRequest, usize), Rejection> {
    let param = |name: &str| {
        params
            .get(name)
            .map(|value| value.trim())
            .filter(|v| !v.is_empty())
    };
    let q = param("q");
    let tags = param("tags");
    if q.is_some() && tags.is_some() {
        return Err(Box::new(bad_request(
            "invalid request: can't specify tags and q in the same query",
        )));
    }
    let query = match (q, tags) {
        (Some(text), _) => {
            let query = traceql::parse(text).map_err(|error| {
                Box::new(bad_request(format!("invalid TraceQL query: {error}")))
            })?;
            traceql::eval::check_regexes(&query).map_err(|error| {
                Box::new(bad_request(format!("invalid TraceQL query: {error}")))
            })?;
            if query.metrics().is_some() {
                return Err(Box::new(bad_request(
                    "invalid TraceQL query: a metrics query is answered by /api/metrics/query_range, not search",
                )));
            }
            query
        }
        (None, Some(tags)) => legacy_tags(tags).map_err(|error| Box::new(bad_request(error)))?,
        (None, None) => Query {
            spansets: SpansetExpr::Filter(None),
            stages: Vec::new(),
        },
    };
    let number = |name: &str| -> Result<Option<u64>, Rejection> {
        param(name)
            .map(|text| {
                text.parse::<u64>().map_err(|_| {
                    Box::new(bad_request(format!(
                        "invalid {name}: {text:?} is not a non-negative integer"
                    )))
                })
            })
            .transpose()
    };
    let limit = match number("limit")? {
        None => DEFAULT_LIMIT,
        Some(0) => {
            return Err(Box::new(bad_request(
                "invalid limit: must be a positive number",
            )))
        }
        Some(limit) if limit as usize > MAX_LIMIT => {
            return Err(Box::new(bad_request(format!(
                "limit {limit} exceeds max limit {MAX_LIMIT}"
            ))))
        }
        Some(limit) => limit as usize,
    };
    let spss = match number("spss")? {
        None | Some(0) => DEFAULT_SPSS,
        Some(spss) if spss as usize > MAX_SPSS => {
            return Err(Box::new(bad_request(format!(
                "spans per span set exceeds {MAX_SPSS}. received {spss}"
            ))))
        }
        Some(spss) => spss as usize,
    };
    let start = number("start")?.filter(|start| *start > 0);
    let end = number("end")?.filter(|end| *end > 0);
    if let (Some(start), Some(end)) = (start, end) {
        if end <= start {
            return Err(Box::new(bad_request(format!(
                "http parameter start must be before end. received start={start} end={end}"
            ))));
        }
    }
    let duration = |name: &str| -> Result<Option<u64>, Rejection> {
        param(name)
            .map(|text| {
                parse_duration(text).ok_or_else(|| {
                    Box::new(bad_request(format!(
                        "invalid {name}: {text:?} is not a duration such as 100ms"
                    )))
                })
            })
            .transpose()
    };
    let request = SearchRequest {
        query,
        limit,
        start_unix_nano: start.map(|seconds| seconds.saturating_mul(1_000_000_000)),
        end_unix_nano: end.map(|seconds| {
            seconds
                .saturating_mul(1_000_000_000)
                .saturating_add(999_999_999)
        }),
        min_duration_nanos: duration("minDuration")?,
        max_duration_nanos: duration("maxDuration")?,
    };
    Ok((request, spss))
}

/// Legacy `tags=service.name=checkout http.status_code=500`: every pair must hold on one
/// span (as a spanset filter with `&&`); `name` and `status` are the intrinsics, other
/// keys the span's or its resource's attribute, compared as text or as the number it
/// spells.
fn legacy_tags(text: &str) -> Result<Query, String> {
    let pairs = crate::ingest::logline::logfmt_fields(text)
        .ok_or_else(|| format!("invalid tags: {text:?} is not logfmt"))?;
    let mut terms = Vec::new();
    for (key, value) in pairs {
        let value = match value {
            serde_json::Value::String(text) => text,
            _ => return Err(format!("invalid tags: {key} has no value")),
        };
        let term = match key.as_str() {
            "name" => FieldExpr::Compare(
                Operand::Intrinsic(Intrinsic::Name),
                CompareOp::Eq,
                Literal::String(value),
            ),
            "status" | "status.code" => {
                let code = match value.as_str() {
                    "error" | "2" | "STATUS_CODE_ERROR" => 2,
                    "ok" | "1" | "STATUS_CODE_OK" => 1,
                    "unset" | "0" | "STATUS_CODE_UNSET" => 0,
                    other => return Err(format!("invalid tags: status {other:?}")),
                };
                FieldExpr::Compare(
                    Operand::Intrinsic(Intrinsic::Status),
                    CompareOp::Eq,
                    Literal::Status(code),
                )
            }
            _ => FieldExpr::equals_text(Operand::Attribute(Scope::Unscoped, key.clone()), &value),
        };
        terms.push(term);
    }
    Ok(Query {
        spansets: SpansetExpr::Filter(FieldExpr::all(terms)),
        stages: Vec::new(),
    })
}

/// Operands whose values a result shows on its spans: those the conditions name and
/// those `select(…)` asks for, less the intrinsics Tempo leaves out.
fn shown_operands(query: &Query) -> Vec<Operand> {
    fn field(expr: &FieldExpr, out: &mut Vec<Operand>) {
        match expr {
            FieldExpr::And(left, right) | FieldExpr::Or(left, right) => {
                field(left, out);
                field(right, out);
            }
            FieldExpr::Compare(operand, _, _) => out.push(operand.clone()),
            FieldExpr::Constant(_) => {}
        }
    }
    fn spansets(expr: &SpansetExpr, out: &mut Vec<Operand>) {
        match expr {
            SpansetExpr::Filter(Some(condition)) => field(condition, out),
            SpansetExpr::Filter(None) => {}
            SpansetExpr::Binary(left, _, right) => {
                spansets(left, out);
                spansets(right, out);
            }
        }
    }
    let mut out = Vec::new();
    spansets(&query.spansets, &mut out);
    for stage in &query.stages {
        if let Stage::Select(operands) = stage {
            out.extend(operands.iter().cloned());
        }
    }
    out.retain(|operand| {
        !matches!(
            operand,
            Operand::Intrinsic(
                Intrinsic::Name
                    | Intrinsic::Duration
                    | Intrinsic::TraceDuration
                    | Intrinsic::RootName
                    | Intrinsic::RootServiceName
            )
        )
    });
    let mut distinct = Vec::new();
    for operand in out {
        if !distinct.contains(&operand) {
            distinct.push(operand);
        }
    }
    distinct
}

fn any_value(value: &Value) -> JsonValue {
    match value {
        Value::String(text) => json!({"stringValue": text}),
        Value::Int(number) => json!({"intValue": number.to_string()}),
        Value::Float(number) => json!({"doubleValue": number}),
        Value::Bool(flag) => json!({"boolValue": flag}),
    }
}

fn span_attributes(span: &SpanView, shown: &[Operand]) -> Vec<JsonValue> {
    let mut attributes = Vec::new();
    for operand in shown {
        let (key, value) = match operand {
            Operand::Attribute(scope, key) => {
                let find = |attributes: &[(String, Value)]| {
                    attributes
                        .iter()
                        .find(|(name, _)| name == key)
                        .map(|(_, value)| value.clone())
                };
                let value = match scope {
                    Scope::Span => find(&span.attributes),
                    Scope::Resource => find(&span.resource),
                    Scope::Unscoped => find(&span.attributes).or_else(|| find(&span.resource)),
                };
                let Some(value) = value else { continue };
                (key.clone(), value)
            }
            Operand::Intrinsic(Intrinsic::Status) => (
                "status".to_owned(),
                Value::String(
                    match span.status_code {
                        2 => "error",
                        1 => "ok",
                        _ => "unset",
                    }
                    .to_owned(),
                ),
            ),
            Operand::Intrinsic(Intrinsic::Kind) => (
                "kind".to_owned(),
                Value::String(
                    traceql::KINDS
                        .get(span.kind as usize)
                        .unwrap_or(&"unspecified")
                        .to_string(),
                ),
            ),
            Operand::Intrinsic(Intrinsic::StatusMessage) => (
                "statusMessage".to_owned(),
                Value::String(span.status_message.clone()),
            ),
            Operand::Intrinsic(_) => continue,
        };
        attributes.push(json!({"key": key, "value": any_value(&value)}));
    }
    attributes
}

fn trace_json(found: &FoundTrace, spss: usize, shown: &[Operand]) -> JsonValue {
    let trace = &found.trace;
    let root = trace.root();
    let mut object = serde_json::Map::new();
    object.insert("traceID".into(), json!(found.trace_id.to_hex()));
    object.insert(
        "rootServiceName".into(),
        json!(root.map_or(NO_ROOT.to_owned(), |root| root.service.to_string())),
    );
    if let Some(root) = root {
        object.insert("rootTraceName".into(), json!(root.name));
    }
    object.insert("startTimeUnixNano".into(), json!(trace.start().to_string()));
    let duration_ms = (trace.duration_nanos() / 1_000_000).min(u64::from(u32::MAX));
    if duration_ms > 0 {
        object.insert("durationMs".into(), json!(duration_ms));
    }
    let spans: Vec<JsonValue> = found
        .matched
        .spans
        .iter()
        .take(spss)
        .map(|index| {
            let span = &trace.spans[*index];
            let mut span_json = serde_json::Map::new();
            span_json.insert("spanID".into(), json!(crate::model::to_hex(&span.span_id)));
            span_json.insert("name".into(), json!(span.name));
            span_json.insert(
                "startTimeUnixNano".into(),
                json!(span.start_time_unix_nano.to_string()),
            );
            span_json.insert(
                "durationNanos".into(),
                json!(span.duration_nanos.to_string()),
            );
            let attributes = span_attributes(span, shown);
            if !attributes.is_empty() {
                span_json.insert("attributes".into(), json!(attributes));
            }
            JsonValue::Object(span_json)
        })
        .collect();
    let span_set = json!({"spans": spans, "matched": found.matched.spans.len()});
    object.insert("spanSet".into(), span_set.clone());
    object.insert("spanSets".into(), json!([span_set]));
    let mut stats: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for span in &trace.spans {
        let entry = stats.entry(&span.service).or_default();
        entry.0 += 1;
        if span.status_code == 2 {
            entry.1 += 1;
        }
    }
    let service_stats: serde_json::Map<String, JsonValue> = stats
        .into_iter()
        .map(|(service, (spans, errors))| {
            let mut stat = serde_json::Map::new();
            stat.insert("spanCount".into(), json!(spans));
            if errors > 0 {
                stat.insert("errorCount".into(), json!(errors));
            }
            (service.to_owned(), JsonValue::Object(stat))
        })
        .collect();
    object.insert("serviceStats".into(), JsonValue::Object(service_stats));
    JsonValue::Object(object)
}
