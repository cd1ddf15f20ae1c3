//! Zipkin's v2 read API, as Zipkin Lens and Zipkin clients call it, on `:3200/api/v2` and
//! under `/zipkin/api/v2`: `services`, `spans`, `remoteServices`, `traces`, `trace/{id}`,
//! `traceMany`, `autocompleteKeys`, `autocompleteValues`, and `/zipkin/config.json`.
//! Units are Zipkin's (µs timestamps and durations, ms `endTs` and `lookback`) and so
//! are its names (service and span names lower-case, matched without case). A search is
//! the TraceQL of one span holding service, span name, remote service, annotation query
//! and duration bounds.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::extract::{Path, Query as QueryParams, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use serde_json::{json, Value as JsonValue};

use super::AppState;
use crate::model::{to_hex, TraceId};
use crate::query::search::{search, search_traces, SearchRequest};
use crate::query::traceql::{
    CompareOp, FieldExpr, Intrinsic, Literal, Operand, Query, Scope, SpansetExpr,
};
use crate::store::tags::TagScope;

const DEFAULT_LIMIT: usize = 10;
const DEFAULT_LOOKBACK_MS: u64 = 86_400_000;
/// Traces looked at for `remoteServices`, newest first.
const REMOTE_SERVICE_TRACES: usize = 1000;
/// Where a client span names the service it called, first found wins.
const REMOTE_SERVICE_KEYS: [&str; 4] = [
    "peer.service",
    "server.address",
    "net.peer.name",
    "db.system",
];

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let message = message.into();
    if status.is_server_error() {
        tracing::error!(error = %message, "zipkin query failed");
        return (status, "internal error").into_response();
    }
    (status, message).into_response()
}

/// Why a query got no answer: a 400 saying why, or a 500 whose detail goes to the log.
enum ZipkinError {
    BadRequest(String),
    Internal(String),
}

impl IntoResponse for ZipkinError {
    fn into_response(self) -> Response {
        match self {
            ZipkinError::BadRequest(message) => error(StatusCode::BAD_REQUEST, message),
            ZipkinError::Internal(message) => error(StatusCode::INTERNAL_SERVER_ERROR, message),
        }
    }
}

/// Name lists, cached by clients for 300 s as Zipkin's are.
fn names(names: BTreeSet<String>) -> Response {
    (
        [(header::CACHE_CONTROL, "max-age=300, must-revalidate")],
        Json(json!(names)),
    )
        .into_response()
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, ZipkinError> {
    super::blocking(work).await.map_err(ZipkinError::Internal)
}

/// `GET /api/v2/services`
pub async fn services(State(state): State<AppState>) -> Response {
    let storage = state.storage.clone();
    match blocking(move || storage.traces.operations()).await {
        Ok(operations) => names(
            operations
                .into_iter()
                .map(|(service, _, _)| service.to_lowercase())
                .collect(),
        ),
        Err(failure) => failure.into_response(),
    }
}

/// `GET /api/v2/spans?serviceName=`
pub async fn span_names(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    let Some(service) = params
        .get("serviceName")
        .filter(|s| !s.is_empty())
        .map(|s| s.to_lowercase())
    else {
        return error(StatusCode::BAD_REQUEST, "serviceName is required");
    };
    let storage = state.storage.clone();
    match blocking(move || storage.traces.operations()).await {
        Ok(operations) => names(
            operations
                .into_iter()
                .filter(|(s, _, _)| s.to_lowercase() == service)
                .map(|(_, _, name)| name.to_lowercase())
                .collect(),
        ),
        Err(failure) => failure.into_response(),
    }
}

/// `GET /api/v2/remoteServices?serviceName=`: what the service's client and producer
/// spans called, in its newest traces.
pub async fn remote_services(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    let Some(service) = params.get("serviceName").filter(|s| !s.is_empty()).cloned() else {
        return error(StatusCode::BAD_REQUEST, "serviceName is required");
    };
    let outgoing = FieldExpr::Or(Box::new(kind_is(3)), Box::new(kind_is(4)));
    let query = Query {
        spansets: SpansetExpr::Filter(Some(FieldExpr::And(
            Box::new(named(
                Operand::Attribute(Scope::Resource, "service.name".into()),
                &service,
            )),
            Box::new(outgoing),
        ))),
        stages: Vec::new(),
    };
    let storage = state.storage.clone();
    let found = blocking(move || {
        search(
            &storage,
            &SearchRequest {
                query,
                limit: REMOTE_SERVICE_TRACES,
                start_unix_nano: None,
                end_unix_nano: None,
                min_duration_nanos: None,
                max_duration_nanos: None,
            },
        )
    })
    .await;
    match found {
        Ok(found) => {
            let mut remote = BTreeSet::new();
            for trace in &found.traces {
                for index in &trace.matched.spans {
                    let span = &trace.trace.spans[*index];
                    let name = REMOTE_SERVICE_KEYS.iter().find_map(|key| {
                        span.attributes
                            .iter()
                            .find(|(name, _)| name == key)
                            .map(|(_, value)| value)
                    });
                    if let Some(crate::query::traceql::eval::Value::String(name)) = name {
                        remote.insert(name.to_lowercase());
                    }
                }
            }
            names(remote)
        }
        Err(failure) => failure.into_response(),
    }
}

/// `GET /api/v2/autocompleteKeys`: the span tag keys stored.
pub async fn autocomplete_keys(State(state): State<AppState>) -> Response {
    let storage = state.storage.clone();
    match blocking(move || storage.traces.tag_names()).await {
        Ok(tags) => names(
            tags.into_iter()
                .filter(|(scope, _)| *scope == TagScope::Span)
                .map(|(_, key)| key)
                .collect(),
        ),
        Err(failure) => failure.into_response(),
    }
}

/// `GET /api/v2/autocompleteValues?key=`
pub async fn autocomplete_values(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    let Some(key) = params.get("key").filter(|k| !k.is_empty()).cloned() else {
        return error(StatusCode::BAD_REQUEST, "key is required");
    };
    let storage = state.storage.clone();
    match blocking(move || storage.traces.tag_values(TagScope::Span, &key, 1000)).await {
        Ok((values, _)) => names(values.into_iter().map(|(_, value)| value).collect()),
        Err(failure) => failure.into_response(),
    }
}

/// `GET /api/v2/dependencies?endTs=<ms>&lookback=<ms>`: links with call and error counts.
pub async fn dependencies(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    let (end, lookback) = match (number(&params, "endTs"), number(&params, "lookback")) {
        (Ok(Some(end)), Ok(lookback)) => (end, lookback.unwrap_or(DEFAULT_LOOKBACK_MS)),
        (Ok(None), _) => return error(StatusCode::BAD_REQUEST, "endTs is required"),
        (Err(failure), _) | (_, Err(failure)) => return failure.into_response(),
    };
    let links = crate::lock(&state.pipeline.metrics.dependencies).links(end, lookback);
    let links: Vec<JsonValue> = links
        .into_iter()
        .map(|link| {
            json!({
                "parent": link.parent.to_lowercase(),
                "child": link.child.to_lowercase(),
                "callCount": link.calls,
                "errorCount": link.errors,
            })
        })
        .collect();
    Json(json!(links)).into_response()
}

/// `GET /zipkin/config.json`: what Lens needs to start.
pub async fn config() -> Json<JsonValue> {
    Json(json!({
        "environment": "",
        "queryLimit": DEFAULT_LIMIT,
        "defaultLookback": 7 * DEFAULT_LOOKBACK_MS,
        "searchEnabled": true,
        "dependency": {"enabled": true, "lowErrorRate": 0.5, "highErrorRate": 0.75},
    }))
}

fn kind_is(kind: i32) -> FieldExpr {
    FieldExpr::Compare(
        Operand::Intrinsic(Intrinsic::Kind),
        CompareOp::Eq,
        Literal::Kind(kind),
    )
}

/// Zipkin names match without case.
fn named(operand: Operand, name: &str) -> FieldExpr {
    FieldExpr::Compare(
        operand,
        CompareOp::Regex,
        Literal::String(format!("(?i){}", regex::escape(name))),
    )
}

fn number(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ZipkinError> {
    params
        .get(name)
        .filter(|value| !value.is_empty())
        .map(|value| {
            value.parse::<u64>().map_err(|_| {
                ZipkinError::BadRequest(format!("{name} must be a non-negative integer"))
            })
        })
        .transpose()
}

/// `GET /api/v2/traces?serviceName=&remoteServiceName=&spanName=&annotationQuery=&minDuration=&maxDuration=&endTs=&lookback=&limit=`
pub async fn traces(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    let param = |name: &str| {
        params
            .get(name)
            .filter(|value| !value.is_empty() && *value != "all")
    };
    let mut terms = Vec::new();
    if let Some(service) = param("serviceName") {
        terms.push(named(
            Operand::Attribute(Scope::Resource, "service.name".into()),
            service,
        ));
    }
    if let Some(span_name) = param("spanName") {
        terms.push(named(Operand::Intrinsic(Intrinsic::Name), span_name));
    }
    if let Some(remote) = param("remoteServiceName") {
        terms.push(named(
            Operand::Attribute(Scope::Span, "peer.service".into()),
            remote,
        ));
    }
    if let Some(annotations) = param("annotationQuery") {
        for criterion in annotations
            .split(" and ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            terms.push(match criterion.split_once('=') {
                Some((key, value)) => {
                    FieldExpr::equals_text(Operand::Attribute(Scope::Span, key.to_owned()), value)
                }
                None if criterion == "error" => FieldExpr::Compare(
                    Operand::Intrinsic(Intrinsic::Status),
                    CompareOp::Eq,
                    Literal::Status(2),
                ),
                None => FieldExpr::Compare(
                    Operand::Attribute(Scope::Span, criterion.to_owned()),
                    CompareOp::Ne,
                    Literal::Nil,
                ),
            });
        }
    }
    let micros = |name: &str| {
        number(&params, name).map(|value| value.map(|micros| micros.saturating_mul(1000)))
    };
    match micros("minDuration") {
        Ok(Some(min)) => terms.push(FieldExpr::Compare(
            Operand::Intrinsic(Intrinsic::Duration),
            CompareOp::Ge,
            Literal::Duration(min),
        )),
        Ok(None) => {}
        Err(failure) => return failure.into_response(),
    }
    match micros("maxDuration") {
        Ok(Some(max)) => terms.push(FieldExpr::Compare(
            Operand::Intrinsic(Intrinsic::Duration),
            CompareOp::Le,
            Literal::Duration(max),
        )),
        Ok(None) => {}
        Err(failure) => return failure.into_response(),
    }
    let (end_ms, lookback_ms, limit) = match (
        number(&params, "endTs"),
        number(&params, "lookback"),
        number(&params, "limit"),
    ) {
        (Ok(end), Ok(lookback), Ok(limit)) => (end, lookback, limit),
        (Err(failure), _, _) | (_, Err(failure), _) | (_, _, Err(failure)) => {
            return failure.into_response()
        }
    };
    let end_ms = end_ms.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or(0)
    });
    let start_ms = end_ms.saturating_sub(lookback_ms.unwrap_or(DEFAULT_LOOKBACK_MS));
    let request = SearchRequest {
        query: Query {
            spansets: SpansetExpr::Filter(FieldExpr::all(terms)),
            stages: Vec::new(),
        },
        limit: limit
            .filter(|limit| *limit > 0)
            .map_or(DEFAULT_LIMIT, |limit| limit as usize),
        start_unix_nano: Some(start_ms.saturating_mul(1_000_000)),
        end_unix_nano: Some(end_ms.saturating_mul(1_000_000).saturating_add(999_999)),
        min_duration_nanos: None,
        max_duration_nanos: None,
    };
    let storage = state.storage.clone();
    let found = blocking(move || search_traces(&storage, &request)).await;
    match found {
        Ok(traces) => {
            let traces: Vec<Vec<JsonValue>> =
                traces.iter().map(|batches| zipkin_spans(batches)).collect();
            Json(json!(traces)).into_response()
        }
        Err(failure) => failure.into_response(),
    }
}

async fn load(state: &AppState, raw_id: &str) -> Result<Option<Vec<ResourceSpans>>, ZipkinError> {
    let trace_id = TraceId::parse(raw_id).map_err(|failure| {
        ZipkinError::BadRequest(format!("malformed trace id {raw_id:?}: {failure}"))
    })?;
    let storage = state.storage.clone();
    blocking(move || storage.find_trace(&trace_id)).await
}

/// `GET /api/v2/trace/{id}`
pub async fn trace(State(state): State<AppState>, Path(raw_id): Path<String>) -> Response {
    match load(&state, &raw_id).await {
        Ok(Some(batches)) => Json(json!(zipkin_spans(&batches))).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("trace {raw_id} not found")),
        Err(failure) => failure.into_response(),
    }
}

/// `GET /api/v2/traceMany?traceIds=a,b`: the traces found, in the order asked.
pub async fn trace_many(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    let ids: Vec<String> = params
        .get("traceIds")
        .map(|ids| {
            ids.split(',')
                .map(str::trim)
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if ids.is_empty() {
        return error(StatusCode::BAD_REQUEST, "traceIds is required");
    }
    let mut traces = Vec::new();
    for id in ids {
        match load(&state, &id).await {
            Ok(Some(batches)) => traces.push(zipkin_spans(&batches)),
            Ok(None) => {}
            Err(failure) => return failure.into_response(),
        }
    }
    Json(json!(traces)).into_response()
}

fn text_of(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        Some(any_value::Value::BytesValue(bytes)) => to_hex(bytes),
        Some(other) => serde_json::to_string(&AnyValue {
            value: Some(other.clone()),
        })
        .unwrap_or_default(),
        None => String::new(),
    }
}

fn find<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
}

/// A trace's spans in Zipkin's v2 model.
pub fn zipkin_spans(batches: &[ResourceSpans]) -> Vec<JsonValue> {
    let mut out = Vec::new();
    for batch in batches {
        let resource = batch
            .resource
            .as_ref()
            .map(|r| r.attributes.as_slice())
            .unwrap_or_default();
        let service = find(resource, "service.name")
            .map(|value| text_of(Some(value)))
            .unwrap_or_else(|| crate::model::UNKNOWN_SERVICE.to_owned())
            .to_lowercase();
        let mut local = json!({"serviceName": service});
        if let Some(ip) = find(resource, "host.ip") {
            local["ipv4"] = json!(text_of(Some(ip)));
        }
        for scope in &batch.scope_spans {
            for span in &scope.spans {
                let mut object = serde_json::Map::new();
                object.insert("traceId".into(), json!(to_hex(&span.trace_id)));
                object.insert("id".into(), json!(to_hex(&span.span_id)));
                if span.parent_span_id.iter().any(|byte| *byte != 0) {
                    object.insert("parentId".into(), json!(to_hex(&span.parent_span_id)));
                }
                object.insert("name".into(), json!(span.name.to_lowercase()));
                let kind = match span.kind {
                    2 => Some("SERVER"),
                    3 => Some("CLIENT"),
                    4 => Some("PRODUCER"),
                    5 => Some("CONSUMER"),
                    _ => None,
                };
                if let Some(kind) = kind {
                    object.insert("kind".into(), json!(kind));
                }
                object.insert("timestamp".into(), json!(span.start_time_unix_nano / 1000));
                let duration = span
                    .end_time_unix_nano
                    .saturating_sub(span.start_time_unix_nano)
                    / 1000;
                object.insert("duration".into(), json!(duration.max(1)));
                object.insert("localEndpoint".into(), local.clone());
                if let Some(remote) = find(&span.attributes, "peer.service") {
                    let mut endpoint = json!({"serviceName": text_of(Some(remote)).to_lowercase()});
                    if let Some(ip) = find(&span.attributes, "net.peer.ip") {
                        endpoint["ipv4"] = json!(text_of(Some(ip)));
                    }
                    if let Some(port) = find(&span.attributes, "net.peer.port") {
                        endpoint["port"] = json!(text_of(Some(port)).parse::<u16>().unwrap_or(0));
                    }
                    object.insert("remoteEndpoint".into(), endpoint);
                }
                let mut tags: BTreeMap<String, String> = span
                    .attributes
                    .iter()
                    .filter(|kv| {
                        !matches!(
                            kv.key.as_str(),
                            "peer.service"
                                | "net.peer.ip"
                                | "net.peer.port"
                                | "zipkin.shared"
                                | "zipkin.debug"
                        )
                    })
                    .map(|kv| (kv.key.clone(), text_of(kv.value.as_ref())))
                    .collect();
                if let Some(status) = span.status.as_ref().filter(|status| status.code == 2) {
                    let message = if status.message.is_empty() {
                        "true"
                    } else {
                        status.message.as_str()
                    };
                    tags.insert("error".into(), message.to_owned());
                }
                if !tags.is_empty() {
                    object.insert("tags".into(), json!(tags));
                }
                if !span.events.is_empty() {
                    let annotations: Vec<JsonValue> = span
                        .events
                        .iter()
                        .map(|event| json!({"timestamp": event.time_unix_nano / 1000, "value": event.name}))
                        .collect();
                    object.insert("annotations".into(), json!(annotations));
                }
                if matches!(
                    find(&span.attributes, "zipkin.shared").and_then(|v| v.value.as_ref()),
                    Some(any_value::Value::BoolValue(true))
                ) {
                    object.insert("shared".into(), json!(true));
                }
                out.push(JsonValue::Object(object));
            }
        }
    }
    out.sort_by_key(|span| span["timestamp"].as_u64().unwrap_or(0));
    out
}
