//! Jaeger's query API under `/jaeger`, where Grafana's Jaeger data source and Jaeger UI
//! point: v1 (`/api/services`, `/api/services/{s}/operations`, `/api/operations`,
//! `/api/traces` search and `/api/traces/{id}`, in Jaeger's JSON model with processes,
//! references, typed tags and logs, and its error envelope) and v3 (`/api/v3/services`,
//! `/api/v3/operations`, `/api/v3/traces` and `/api/v3/traces/{id}` as OTLP JSON).
//! A search becomes a TraceQL plan: service, operation, tags and span durations all
//! held by one span, as Jaeger means them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::extract::{Path, Query as QueryParams, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use serde_json::{json, Value as JsonValue};

use super::{blocking, AppState};
use crate::model::{to_hex, TraceId};
use crate::query::search::{search_traces, SearchRequest};
use crate::query::traceql::{
    parse_duration, CompareOp, FieldExpr, Intrinsic, Literal, Operand, Query, Scope, SpansetExpr,
    KINDS,
};

const DEFAULT_LIMIT: usize = 100;

/// Jaeger v1's envelope around data or errors.
fn v1(status: StatusCode, data: JsonValue, errors: Option<(u16, String)>) -> Response {
    let total = data.as_array().map_or(0, Vec::len);
    let errors = errors.map(|(code, msg)| json!([{"code": code, "msg": msg}]));
    let body = json!({
        "data": if errors.is_some() { JsonValue::Null } else { data },
        "total": total,
        "limit": 0,
        "offset": 0,
        "errors": errors.unwrap_or(JsonValue::Null),
    });
    (status, Json(body)).into_response()
}

fn v1_error(status: StatusCode, message: impl Into<String>) -> Response {
    if status.is_server_error() {
        tracing::error!(error = %message.into(), "jaeger query failed");
        return v1(
            status,
            JsonValue::Null,
            Some((status.as_u16(), "internal error".into())),
        );
    }
    v1(
        status,
        JsonValue::Null,
        Some((status.as_u16(), message.into())),
    )
}

fn v3_error(status: StatusCode, message: impl Into<String>) -> Response {
    let message = if status.is_server_error() {
        tracing::error!(error = %message.into(), "jaeger query failed");
        "internal error".to_owned()
    } else {
        message.into()
    };
    (
        status,
        Json(json!({"error": {"httpCode": status.as_u16(), "message": message}})),
    )
        .into_response()
}

async fn operations_of(state: &AppState) -> Result<BTreeSet<(String, i32, String)>, String> {
    let storage = state.storage.clone();
    blocking(move || storage.traces.operations()).await
}

fn kind_name(kind: i32) -> &'static str {
    match kind {
        0 | 1 => "internal",
        other => KINDS.get(other as usize).unwrap_or(&"internal"),
    }
}

/// `GET /jaeger/api/services`
pub async fn services(State(state): State<AppState>) -> Response {
    match operations_of(&state).await {
        Ok(operations) => {
            let services: BTreeSet<&str> = operations.iter().map(|(s, _, _)| s.as_str()).collect();
            v1(StatusCode::OK, json!(services), None)
        }
        Err(error) => v1_error(StatusCode::INTERNAL_SERVER_ERROR, error),
    }
}

/// `GET /jaeger/api/services/{service}/operations`
pub async fn service_operations(
    State(state): State<AppState>,
    Path(service): Path<String>,
) -> Response {
    match operations_of(&state).await {
        Ok(operations) => {
            let names: BTreeSet<&str> = operations
                .iter()
                .filter(|(s, _, _)| *s == service)
                .map(|(_, _, name)| name.as_str())
                .collect();
            v1(StatusCode::OK, json!(names), None)
        }
        Err(error) => v1_error(StatusCode::INTERNAL_SERVER_ERROR, error),
    }
}

fn operation_list(
    operations: &BTreeSet<(String, i32, String)>,
    params: &HashMap<String, String>,
) -> Vec<JsonValue> {
    let service = params.get("service").map(String::as_str).unwrap_or("");
    let kind = params
        .get("spanKind")
        .map(String::as_str)
        .filter(|kind| !kind.is_empty());
    let mut seen = BTreeSet::new();
    operations
        .iter()
        .filter(|(s, _, _)| s == service)
        .filter(|(_, k, _)| kind.is_none_or(|kind| kind_name(*k) == kind))
        .filter(|(_, k, name)| seen.insert((name.clone(), kind_name(*k))))
        .map(|(_, k, name)| json!({"name": name, "spanKind": kind_name(*k)}))
        .collect()
}

/// `GET /jaeger/api/operations?service=&spanKind=`
pub async fn operations(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    match operations_of(&state).await {
        Ok(operations) => v1(
            StatusCode::OK,
            json!(operation_list(&operations, &params)),
            None,
        ),
        Err(error) => v1_error(StatusCode::INTERNAL_SERVER_ERROR, error),
    }
}

/// `GET /jaeger/api/v3/services`
pub async fn services_v3(State(state): State<AppState>) -> Response {
    match operations_of(&state).await {
        Ok(operations) => {
            let services: BTreeSet<&str> = operations.iter().map(|(s, _, _)| s.as_str()).collect();
            Json(json!({"services": services})).into_response()
        }
        Err(error) => v3_error(StatusCode::INTERNAL_SERVER_ERROR, error),
    }
}

/// `GET /jaeger/api/v3/operations?service=&spanKind=`
pub async fn operations_v3(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    match operations_of(&state).await {
        Ok(operations) => {
            Json(json!({"operations": operation_list(&operations, &params)})).into_response()
        }
        Err(error) => v3_error(StatusCode::INTERNAL_SERVER_ERROR, error),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// `GET /jaeger/api/dependencies?endTs=<ms>&lookback=<ms>` (a day back by default).
pub async fn dependencies(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    let number = |name: &str| -> Result<Option<u64>, String> {
        params
            .get(name)
            .filter(|value| !value.is_empty())
            .map(|value| {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("unable to parse param '{name}': {value:?}"))
            })
            .transpose()
    };
    let (end, lookback) = match (number("endTs"), number("lookback")) {
        (Ok(end), Ok(lookback)) => (end.unwrap_or_else(now_ms), lookback.unwrap_or(86_400_000)),
        (Err(message), _) | (_, Err(message)) => return v1_error(StatusCode::BAD_REQUEST, message),
    };
    let links = crate::lock(&state.pipeline.metrics.dependencies).links(end, lookback);
    let data: Vec<JsonValue> = links
        .into_iter()
        .map(|link| json!({"parent": link.parent, "child": link.child, "callCount": link.calls}))
        .collect();
    v1(StatusCode::OK, json!(data), None)
}

/// What a Jaeger search asks, whichever API it came by.
struct JaegerSearch {
    service: Option<String>,
    operation: Option<String>,
    tags: BTreeMap<String, String>,
    min_duration: Option<u64>,
    max_duration: Option<u64>,
    start: Option<u64>,
    end: Option<u64>,
    limit: usize,
}

/// The TraceQL plan of a Jaeger search: one span holds service, operation, tags and the
/// duration bounds.
fn plan(request: &JaegerSearch) -> Query {
    let mut terms = Vec::new();
    if let Some(service) = &request.service {
        terms.push(FieldExpr::Compare(
            Operand::Attribute(Scope::Resource, "service.name".into()),
            CompareOp::Eq,
            Literal::String(service.clone()),
        ));
    }
    if let Some(operation) = &request.operation {
        terms.push(FieldExpr::Compare(
            Operand::Intrinsic(Intrinsic::Name),
            CompareOp::Eq,
            Literal::String(operation.clone()),
        ));
    }
    for (key, value) in &request.tags {
        let mut term =
            FieldExpr::equals_text(Operand::Attribute(Scope::Unscoped, key.clone()), value);
        // Jaeger shows a failed span's status as the tag `error=true`.
        if key == "error" && value == "true" {
            term = FieldExpr::Or(
                Box::new(term),
                Box::new(FieldExpr::Compare(
                    Operand::Intrinsic(Intrinsic::Status),
                    CompareOp::Eq,
                    Literal::Status(2),
                )),
            );
        }
        terms.push(term);
    }
    if let Some(min) = request.min_duration {
        terms.push(FieldExpr::Compare(
            Operand::Intrinsic(Intrinsic::Duration),
            CompareOp::Ge,
            Literal::Duration(min),
        ));
    }
    if let Some(max) = request.max_duration {
        terms.push(FieldExpr::Compare(
            Operand::Intrinsic(Intrinsic::Duration),
            CompareOp::Le,
            Literal::Duration(max),
        ));
    }
    Query {
        spansets: SpansetExpr::Filter(FieldExpr::all(terms)),
        stages: Vec::new(),
    }
}

async fn run(state: &AppState, request: JaegerSearch) -> Result<Vec<Vec<ResourceSpans>>, String> {
    let storage = state.storage.clone();
    let search_request = SearchRequest {
        query: plan(&request),
        limit: request.limit,
        start_unix_nano: request.start,
        end_unix_nano: request.end,
        min_duration_nanos: None,
        max_duration_nanos: None,
    };
    blocking(move || search_traces(&storage, &search_request)).await
}

fn micros(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, String> {
    params
        .get(name)
        .filter(|value| !value.is_empty())
        .map(|value| {
            value
                .parse::<u64>()
                .map(|micros| micros.saturating_mul(1000))
                .map_err(|_| {
                    format!("unable to parse param '{name}': {value:?} is not µs since the epoch")
                })
        })
        .transpose()
}

fn go_duration(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, String> {
    params
        .get(name)
        .filter(|value| !value.is_empty())
        .map(|value| {
            parse_duration(value)
                .ok_or_else(|| format!("unable to parse param '{name}': {value:?}"))
        })
        .transpose()
}

/// `GET /jaeger/api/traces?service=&operation=&tags=&start=&end=&minDuration=&maxDuration=&limit=`
pub async fn find_traces(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    let parsed = (|| -> Result<JaegerSearch, String> {
        let service = params.get("service").filter(|s| !s.is_empty()).cloned();
        if service.is_none() {
            return Err("parameter 'service' is required".into());
        }
        let tags: BTreeMap<String, String> = match params.get("tags").filter(|t| !t.is_empty()) {
            Some(json) => {
                let map: BTreeMap<String, JsonValue> = serde_json::from_str(json)
                    .map_err(|error| format!("malformed 'tags' parameter: {error}"))?;
                map.into_iter()
                    .map(|(key, value)| {
                        let text = match value {
                            JsonValue::String(text) => text,
                            other => other.to_string(),
                        };
                        (key, text)
                    })
                    .collect()
            }
            None => BTreeMap::new(),
        };
        Ok(JaegerSearch {
            service,
            operation: params.get("operation").filter(|o| !o.is_empty()).cloned(),
            tags,
            min_duration: go_duration(&params, "minDuration")?,
            max_duration: go_duration(&params, "maxDuration")?,
            start: micros(&params, "start")?,
            end: micros(&params, "end")?,
            limit: params
                .get("limit")
                .and_then(|limit| limit.parse().ok())
                .filter(|limit| *limit > 0)
                .unwrap_or(DEFAULT_LIMIT),
        })
    })();
    let request = match parsed {
        Ok(request) => request,
        Err(message) => return v1_error(StatusCode::BAD_REQUEST, message),
    };
    match run(&state, request).await {
        Ok(traces) => {
            let data: Vec<JsonValue> = traces.iter().map(|batches| jaeger_trace(batches)).collect();
            v1(StatusCode::OK, json!(data), None)
        }
        Err(error) => v1_error(StatusCode::INTERNAL_SERVER_ERROR, error),
    }
}

async fn load(
    state: &AppState,
    raw_id: &str,
) -> Result<Option<Vec<ResourceSpans>>, (StatusCode, String)> {
    let trace_id = TraceId::parse(raw_id).map_err(|error| {
        (
            StatusCode::BAD_REQUEST,
            format!("malformed trace id {raw_id:?}: {error}"),
        )
    })?;
    let storage = state.storage.clone();
    blocking(move || storage.find_trace(&trace_id))
        .await
        .map_err(|error| (StatusCode::INTERNAL_SERVER_ERROR, error))
}

/// `GET /jaeger/api/traces/{id}`
pub async fn trace(State(state): State<AppState>, Path(raw_id): Path<String>) -> Response {
    match load(&state, &raw_id).await {
        Ok(Some(batches)) => v1(StatusCode::OK, json!([jaeger_trace(&batches)]), None),
        Ok(None) => v1_error(StatusCode::NOT_FOUND, "trace not found"),
        Err((status, message)) => v1_error(status, message),
    }
}

/// `GET /jaeger/api/v3/traces/{id}`
pub async fn trace_v3(State(state): State<AppState>, Path(raw_id): Path<String>) -> Response {
    match load(&state, &raw_id).await {
        Ok(Some(batches)) => Json(json!({"result": {"resourceSpans": batches}})).into_response(),
        Ok(None) => v3_error(StatusCode::NOT_FOUND, "trace not found"),
        Err((status, message)) => v3_error(status, message),
    }
}

/// The search of a v3 request (`query.service_name`… and the camelCase forms).
fn v3_search(params: &HashMap<String, String>) -> Result<JaegerSearch, String> {
    let param = |names: &[&str]| {
        names
            .iter()
            .find_map(|name| params.get(*name).filter(|value| !value.is_empty()).cloned())
    };
    let time = |names: &[&str]| -> Result<Option<u64>, String> {
        param(names)
            .map(|text| {
                // Grafana appends these unencoded: a `+` of the offset arrives as a space.
                let text = text.replace(' ', "+");
                chrono::DateTime::parse_from_rfc3339(&text)
                    .ok()
                    .and_then(|time| time.timestamp_nanos_opt())
                    .and_then(|nanos| u64::try_from(nanos).ok())
                    .ok_or_else(|| format!("malformed parameter {}: {text:?}", names[0]))
            })
            .transpose()
    };
    let start = time(&["query.start_time_min", "query.startTimeMin"])?;
    let end = time(&["query.start_time_max", "query.startTimeMax"])?;
    let (Some(start), Some(end)) = (start, end) else {
        return Err("query.start_time_min and query.start_time_max are required".into());
    };
    if start >= end {
        return Err("query.start_time_min must be before query.start_time_max".into());
    }
    let duration = |names: &[&str]| -> Result<Option<u64>, String> {
        param(names)
            .map(|text| {
                parse_duration(&text)
                    .ok_or_else(|| format!("malformed parameter {}: {text:?}", names[0]))
            })
            .transpose()
    };
    let tags = match param(&["query.attributes"]) {
        Some(json) => serde_json::from_str::<BTreeMap<String, String>>(&json)
            .map_err(|error| format!("malformed parameter query.attributes: {error}"))?,
        None => BTreeMap::new(),
    };
    Ok(JaegerSearch {
        service: param(&["query.service_name", "query.serviceName"]),
        operation: param(&["query.operation_name", "query.operationName"]),
        tags,
        min_duration: duration(&["query.duration_min", "query.durationMin"])?,
        max_duration: duration(&["query.duration_max", "query.durationMax"])?,
        start: Some(start),
        end: Some(end),
        limit: param(&[
            "query.search_depth",
            "query.searchDepth",
            "query.num_traces",
        ])
        .and_then(|limit| limit.parse().ok())
        .filter(|limit| *limit > 0)
        .unwrap_or(DEFAULT_LIMIT),
    })
}

/// `GET /jaeger/api/v3/traces?query.service_name=…` (and the camelCase forms).
pub async fn find_traces_v3(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    let request = match v3_search(&params) {
        Ok(request) => request,
        Err(message) => return v3_error(StatusCode::BAD_REQUEST, message),
    };
    match run(&state, request).await {
        Ok(traces) if traces.is_empty() => v3_error(StatusCode::NOT_FOUND, "No traces found"),
        Ok(traces) => {
            let batches: Vec<&ResourceSpans> = traces.iter().flatten().collect();
            Json(json!({"result": {"resourceSpans": batches}})).into_response()
        }
        Err(error) => v3_error(StatusCode::INTERNAL_SERVER_ERROR, error),
    }
}

/// `GET /jaeger/api/v3/trace-summaries?query.serviceName=…`: what Jaeger UI 2.20 lists,
/// one summary per trace (int64 values as decimal strings); an empty search is `[]`.
pub async fn trace_summaries(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    let request = match v3_search(&params) {
        Ok(request) => request,
        Err(message) => return v3_error(StatusCode::BAD_REQUEST, message),
    };
    match run(&state, request).await {
        Ok(traces) => {
            let summaries: Vec<JsonValue> = traces.iter().map(|batches| summary(batches)).collect();
            Json(json!({"summaries": summaries})).into_response()
        }
        Err(error) => v3_error(StatusCode::INTERNAL_SERVER_ERROR, error),
    }
}

fn summary(batches: &[ResourceSpans]) -> JsonValue {
    let mut trace_id = String::new();
    let mut start = u64::MAX;
    let mut end = 0u64;
    let mut spans = 0u64;
    let mut errors = 0u64;
    let mut ids = std::collections::HashSet::new();
    let mut parents = Vec::new();
    let mut services: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut root: Option<(u64, String, String)> = None;
    for batch in batches {
        let service = crate::model::service_name(batch.resource.as_ref()).to_owned();
        for span in batch.scope_spans.iter().flat_map(|scope| &scope.spans) {
            trace_id = to_hex(&span.trace_id);
            start = start.min(span.start_time_unix_nano);
            end = end.max(span.end_time_unix_nano);
            spans += 1;
            let failed = span.status.as_ref().is_some_and(|status| status.code == 2);
            errors += u64::from(failed);
            let entry = services.entry(service.clone()).or_default();
            entry.0 += 1;
            entry.1 += u64::from(failed);
            ids.insert(span.span_id.clone());
            let has_parent = span.parent_span_id.iter().any(|byte| *byte != 0);
            if has_parent {
                parents.push(span.parent_span_id.clone());
            } else if root
                .as_ref()
                .is_none_or(|(earliest, _, _)| span.start_time_unix_nano < *earliest)
            {
                root = Some((
                    span.start_time_unix_nano,
                    service.clone(),
                    span.name.clone(),
                ));
            }
        }
    }
    let orphans = parents
        .iter()
        .filter(|parent| !ids.contains(*parent))
        .count();
    let (root_service, root_name) = root
        .map(|(_, service, name)| (service, name))
        .unwrap_or_default();
    let services: Vec<JsonValue> = services
        .into_iter()
        .map(|(name, (spans, errors))| json!({"name": name, "spanCount": spans, "errorSpanCount": errors}))
        .collect();
    json!({
        "traceId": trace_id,
        "rootServiceName": root_service,
        "rootOperationName": root_name,
        "minStartTimeUnixNano": start.min(end).to_string(),
        "maxEndTimeUnixNano": end.to_string(),
        "spanCount": spans,
        "errorSpanCount": errors,
        "orphanSpanCount": orphans,
        "services": services,
    })
}

/// A Jaeger tag from an OTLP attribute.
fn tag(key: &str, value: Option<&AnyValue>) -> JsonValue {
    match value.and_then(|value| value.value.as_ref()) {
        Some(any_value::Value::BoolValue(flag)) => {
            json!({"key": key, "type": "bool", "value": flag})
        }
        Some(any_value::Value::IntValue(number)) => {
            json!({"key": key, "type": "int64", "value": number})
        }
        Some(any_value::Value::DoubleValue(number)) => {
            json!({"key": key, "type": "float64", "value": number})
        }
        Some(any_value::Value::StringValue(text)) => {
            json!({"key": key, "type": "string", "value": text})
        }
        Some(any_value::Value::BytesValue(bytes)) => {
            json!({"key": key, "type": "binary", "value": to_hex(bytes)})
        }
        Some(other) => {
            let text = serde_json::to_string(&AnyValue {
                value: Some(other.clone()),
            })
            .unwrap_or_default();
            json!({"key": key, "type": "string", "value": text})
        }
        None => json!({"key": key, "type": "string", "value": ""}),
    }
}

fn tags(attributes: &[KeyValue]) -> Vec<JsonValue> {
    attributes
        .iter()
        .map(|kv| tag(&kv.key, kv.value.as_ref()))
        .collect()
}

/// One trace in Jaeger's JSON model: a process per distinct resource, references from
/// parents and links, span kind and status as tags, events as logs; times in µs.
pub fn jaeger_trace(batches: &[ResourceSpans]) -> JsonValue {
    let mut processes = serde_json::Map::new();
    let mut spans = Vec::new();
    let mut trace_hex = String::new();
    for (index, batch) in batches.iter().enumerate() {
        let process_id = format!("p{}", index + 1);
        let attributes = batch
            .resource
            .as_ref()
            .map(|resource| resource.attributes.as_slice())
            .unwrap_or_default();
        let service = attributes
            .iter()
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .and_then(|value| match &value.value {
                Some(any_value::Value::StringValue(text)) => Some(text.clone()),
                _ => None,
            })
            .unwrap_or_else(|| crate::model::UNKNOWN_SERVICE.to_owned());
        let process_tags: Vec<JsonValue> = attributes
            .iter()
            .filter(|kv| kv.key != "service.name")
            .map(|kv| tag(&kv.key, kv.value.as_ref()))
            .collect();
        processes.insert(
            process_id.clone(),
            json!({"serviceName": service, "tags": process_tags}),
        );
        for scope in &batch.scope_spans {
            for span in &scope.spans {
                trace_hex = to_hex(&span.trace_id);
                let mut references = Vec::new();
                if !span.parent_span_id.is_empty() && span.parent_span_id.iter().any(|b| *b != 0) {
                    references.push(json!({"refType": "CHILD_OF", "traceID": trace_hex, "spanID": to_hex(&span.parent_span_id)}));
                }
                for link in &span.links {
                    references.push(json!({"refType": "FOLLOWS_FROM", "traceID": to_hex(&link.trace_id), "spanID": to_hex(&link.span_id)}));
                }
                let mut span_tags = tags(&span.attributes);
                if span.kind > 1 {
                    span_tags.push(json!({"key": "span.kind", "type": "string", "value": kind_name(span.kind)}));
                }
                if let Some(status) = &span.status {
                    match status.code {
                        2 => {
                            span_tags.push(json!({"key": "error", "type": "bool", "value": true}));
                            span_tags.push(json!({"key": "otel.status_code", "type": "string", "value": "ERROR"}));
                        }
                        1 => span_tags.push(
                            json!({"key": "otel.status_code", "type": "string", "value": "OK"}),
                        ),
                        _ => {}
                    }
                    if !status.message.is_empty() {
                        span_tags.push(json!({"key": "otel.status_description", "type": "string", "value": status.message}));
                    }
                }
                if let Some(scope) = &scope.scope {
                    if !scope.name.is_empty() {
                        span_tags.push(json!({"key": "otel.scope.name", "type": "string", "value": scope.name}));
                    }
                }
                let logs: Vec<JsonValue> = span
                    .events
                    .iter()
                    .map(|event| {
                        let mut fields =
                            vec![json!({"key": "event", "type": "string", "value": event.name})];
                        fields.extend(tags(&event.attributes));
                        json!({"timestamp": event.time_unix_nano / 1000, "fields": fields})
                    })
                    .collect();
                spans.push(json!({
                    "traceID": trace_hex,
                    "spanID": to_hex(&span.span_id),
                    "operationName": span.name,
                    "references": references,
                    "startTime": span.start_time_unix_nano / 1000,
                    "duration": span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano) / 1000,
                    "tags": span_tags,
                    "logs": logs,
                    "processID": process_id,
                    "warnings": null,
                    "flags": span.flags,
                }));
            }
        }
    }
    json!({"traceID": trace_hex, "spans": spans, "processes": processes, "warnings": null})
}
