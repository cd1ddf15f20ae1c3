//! Tempo's tag autocompletion, as Grafana's search builder calls it: tag names
//! (`/api/search/tags`, `/api/v2/search/tags` by scope) and tag values
//! (`/api/search/tag/{tag}/values`, `/api/v2/search/tag/{tag}/values?q=` with types,
//! narrowed by the TraceQL in `q`). Names and values come from the traces index's terms;
//! spans still assembling in the head join them once their trace is committed (within
//! `trace_idle_ms` and a commit). Values past `limit` are left out, and the answer says
//! so with `"truncated": true`.

use std::collections::{BTreeSet, HashMap};

use axum::extract::{Path, Query as QueryParams, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;
use crate::query::search::{search, SearchRequest};
use crate::query::traceql::eval::Value;
use crate::query::traceql::{self, Intrinsic, Operand, Query, Scope, SpansetExpr, KINDS};
use crate::store::tags::{TagScope, TagType};
use crate::store::StoreError;

const DEFAULT_VALUES_LIMIT: usize = 1000;
/// Traces a `q`-narrowed value lookup inspects at most, newest first.
const NARROWING_TRACES: usize = 500;
const INTRINSICS: [&str; 8] = [
    "duration",
    "kind",
    "name",
    "rootName",
    "rootServiceName",
    "status",
    "statusMessage",
    "traceDuration",
];
const STATUSES: [&str; 3] = ["error", "ok", "unset"];

/// Why a tag lookup got no answer: Tempo's plain-text 400, or a 500 whose detail goes
/// to the log.
enum TagError {
    BadRequest(String),
    Internal(String),
}

impl IntoResponse for TagError {
    fn into_response(self) -> Response {
        match self {
            TagError::BadRequest(message) => (StatusCode::BAD_REQUEST, message).into_response(),
            TagError::Internal(error) => {
                tracing::error!(%error, "tag lookup failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
            }
        }
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, TagError> {
    super::blocking(work).await.map_err(TagError::Internal)
}

fn scope_param(params: &HashMap<String, String>) -> Result<Option<String>, TagError> {
    match params.get("scope").map(String::as_str) {
        None | Some("") | Some("all") => Ok(None),
        Some(scope @ ("resource" | "span" | "intrinsic")) => Ok(Some(scope.to_owned())),
        Some(other) => Err(TagError::BadRequest(format!(
            "invalid scope {other:?}: resource, span, intrinsic or all"
        ))),
    }
}

/// The `scope` asked for (`None`: all) and every stored (scope, attribute key).
async fn stored_tag_names(
    state: &AppState,
    params: &HashMap<String, String>,
) -> Result<(Option<String>, BTreeSet<(TagScope, String)>), TagError> {
    let scope = scope_param(params)?;
    let storage = state.storage.clone();
    let names = blocking(move || storage.traces.tag_names()).await?;
    Ok((scope, names))
}

/// `GET /api/search/tags`: `{"tagNames": [...]}`.
pub async fn tag_names_v1(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    let (scope, names) = match stored_tag_names(&state, &params).await {
        Ok(found) => found,
        Err(error) => return error.into_response(),
    };
    let mut tag_names: BTreeSet<String> = BTreeSet::new();
    for (name_scope, name) in names {
        if scope
            .as_deref()
            .is_none_or(|scope| scope == name_scope.as_str())
        {
            tag_names.insert(name);
        }
    }
    if scope.as_deref() == Some("intrinsic") {
        tag_names.extend(INTRINSICS.iter().map(|name| name.to_string()));
    }
    Json(json!({"tagNames": tag_names})).into_response()
}

/// `GET /api/v2/search/tags`: `{"scopes": [{"name": …, "tags": […]}, …]}`.
pub async fn tag_names_v2(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    let (scope, names) = match stored_tag_names(&state, &params).await {
        Ok(found) => found,
        Err(error) => return error.into_response(),
    };
    let mut scopes = Vec::new();
    for tag_scope in [TagScope::Resource, TagScope::Span] {
        if scope
            .as_deref()
            .is_some_and(|scope| scope != tag_scope.as_str())
        {
            continue;
        }
        let tags: Vec<&str> = names
            .iter()
            .filter(|(name_scope, _)| *name_scope == tag_scope)
            .map(|(_, name)| name.as_str())
            .collect();
        scopes.push(json!({"name": tag_scope.as_str(), "tags": tags}));
    }
    if scope.as_deref().is_none_or(|scope| scope == "intrinsic") {
        scopes.push(json!({"name": "intrinsic", "tags": INTRINSICS}));
    }
    Json(json!({"scopes": scopes})).into_response()
}

/// `GET /api/search/tag/{tag}/values`: `{"tagValues": ["…"]}`, the tag a bare attribute
/// name (either scope) or an intrinsic.
pub async fn tag_values_v1(
    State(state): State<AppState>,
    Path(tag): Path<String>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    let operand = match INTRINSICS.iter().position(|name| *name == tag) {
        Some(_) => intrinsic_operand(&tag),
        None => Some(Operand::Attribute(Scope::Unscoped, tag.clone())),
    };
    match values(&state, operand, &params).await {
        Ok((values, truncated)) => {
            let values: Vec<&String> = values.iter().map(|(_, value)| value).collect();
            Json(with_truncated(json!({"tagValues": values}), truncated)).into_response()
        }
        Err(error) => error.into_response(),
    }
}

/// `GET /api/v2/search/tag/{tag}/values?q=`: `{"tagValues": [{"type": …, "value": …}]}`,
/// the tag scoped (`resource.service.name`, `span.http.method`, `.http.method`) or an
/// intrinsic; `q` narrows to the spans of traces it matches.
pub async fn tag_values_v2(
    State(state): State<AppState>,
    Path(tag): Path<String>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    let operand = tag_operand(&tag);
    match values(&state, operand, &params).await {
        Ok((values, truncated)) => {
            let values: Vec<serde_json::Value> = values
                .iter()
                .map(|(kind, value)| json!({"type": kind, "value": value}))
                .collect();
            Json(with_truncated(json!({"tagValues": values}), truncated)).into_response()
        }
        Err(error) => error.into_response(),
    }
}

fn with_truncated(mut body: serde_json::Value, truncated: bool) -> serde_json::Value {
    if truncated {
        body["truncated"] = json!(true);
    }
    body
}

fn intrinsic_operand(name: &str) -> Option<Operand> {
    let intrinsic = match name {
        "name" => Intrinsic::Name,
        "status" => Intrinsic::Status,
        "statusMessage" => Intrinsic::StatusMessage,
        "kind" => Intrinsic::Kind,
        "rootName" => Intrinsic::RootName,
        "rootServiceName" => Intrinsic::RootServiceName,
        "duration" => Intrinsic::Duration,
        "traceDuration" => Intrinsic::TraceDuration,
        _ => return None,
    };
    Some(Operand::Intrinsic(intrinsic))
}

fn tag_operand(tag: &str) -> Option<Operand> {
    if let Some(key) = tag.strip_prefix("resource.") {
        return Some(Operand::Attribute(Scope::Resource, key.to_owned()));
    }
    if let Some(key) = tag.strip_prefix("span.") {
        return Some(Operand::Attribute(Scope::Span, key.to_owned()));
    }
    if let Some(key) = tag.strip_prefix('.') {
        return Some(Operand::Attribute(Scope::Unscoped, key.to_owned()));
    }
    intrinsic_operand(tag)
}

type Values = BTreeSet<(&'static str, String)>;

async fn values(
    state: &AppState,
    operand: Option<Operand>,
    params: &HashMap<String, String>,
) -> Result<(Values, bool), TagError> {
    let Some(operand) = operand else {
        return Ok((Values::new(), false));
    };
    let limit = params
        .get("limit")
        .and_then(|limit| limit.parse::<usize>().ok())
        .filter(|limit| *limit > 0)
        .unwrap_or(DEFAULT_VALUES_LIMIT);
    let narrowing = match params.get("q").map(|q| q.trim()).filter(|q| !q.is_empty()) {
        Some(text) => {
            let query = traceql::parse(text)
                .map_err(|error| TagError::BadRequest(format!("invalid TraceQL query: {error}")))?;
            (query.spansets != SpansetExpr::Filter(None) || !query.stages.is_empty())
                .then_some(query)
        }
        None => None,
    };
    let storage = state.storage.clone();
    blocking(move || match narrowing {
        Some(query) => values_in_matches(&storage, query, &operand, limit),
        None => values_in_index(&storage, &operand, limit),
    })
    .await
}

fn values_in_index(
    storage: &crate::store::Storage,
    operand: &Operand,
    limit: usize,
) -> Result<(Values, bool), StoreError> {
    let typed = |values: BTreeSet<(TagType, String)>| -> Values {
        values
            .into_iter()
            .map(|(kind, value)| (kind.as_str(), value))
            .collect()
    };
    let strings = |(values, truncated): (BTreeSet<String>, bool)| -> (Values, bool) {
        (
            values.into_iter().map(|value| ("string", value)).collect(),
            truncated,
        )
    };
    Ok(match operand {
        Operand::Attribute(Scope::Resource, key) => {
            let (values, truncated) = storage.traces.tag_values(TagScope::Resource, key, limit)?;
            (typed(values), truncated)
        }
        Operand::Attribute(Scope::Span, key) => {
            let (values, truncated) = storage.traces.tag_values(TagScope::Span, key, limit)?;
            (typed(values), truncated)
        }
        Operand::Attribute(Scope::Unscoped, key) => {
            let (mut values, mut truncated) =
                storage.traces.tag_values(TagScope::Span, key, limit)?;
            let (more, more_truncated) =
                storage.traces.tag_values(TagScope::Resource, key, limit)?;
            values.extend(more);
            truncated |= more_truncated || values.len() > limit;
            let mut values = typed(values);
            while values.len() > limit {
                values.pop_last();
            }
            (values, truncated)
        }
        Operand::Intrinsic(Intrinsic::Name) => strings(storage.traces.field_values("name", limit)?),
        Operand::Intrinsic(Intrinsic::RootName) => {
            strings(storage.traces.field_values("root_name", limit)?)
        }
        Operand::Intrinsic(Intrinsic::RootServiceName) => {
            strings(storage.traces.field_values("root_service", limit)?)
        }
        Operand::Intrinsic(Intrinsic::Status) => (
            STATUSES
                .iter()
                .map(|value| ("keyword", value.to_string()))
                .collect(),
            false,
        ),
        Operand::Intrinsic(Intrinsic::Kind) => (
            KINDS
                .iter()
                .map(|value| ("keyword", value.to_string()))
                .collect(),
            false,
        ),
        Operand::Intrinsic(_) => (Values::new(), false),
    })
}

/// Values the operand takes on the spans `query` selects, in the newest matching traces.
fn values_in_matches(
    storage: &crate::store::Storage,
    query: Query,
    operand: &Operand,
    limit: usize,
) -> Result<(Values, bool), StoreError> {
    let request = SearchRequest {
        query,
        limit: NARROWING_TRACES,
        start_unix_nano: None,
        end_unix_nano: None,
        min_duration_nanos: None,
        max_duration_nanos: None,
    };
    let found = search(storage, &request)?;
    let mut values = Values::new();
    let mut truncated = false;
    for trace in &found.traces {
        for index in &trace.matched.spans {
            let span = &trace.trace.spans[*index];
            let value = match operand {
                Operand::Attribute(scope, key) => {
                    let find = |attributes: &[(String, Value)]| {
                        attributes
                            .iter()
                            .find(|(name, _)| name == key)
                            .map(|(_, value)| value.clone())
                    };
                    match scope {
                        Scope::Span => find(&span.attributes),
                        Scope::Resource => find(&span.resource),
                        Scope::Unscoped => find(&span.attributes).or_else(|| find(&span.resource)),
                    }
                    .map(|value| match value {
                        Value::String(text) => ("string", text),
                        Value::Int(number) => ("int", number.to_string()),
                        Value::Float(number) => ("float", number.to_string()),
                        Value::Bool(flag) => ("bool", flag.to_string()),
                    })
                }
                Operand::Intrinsic(Intrinsic::Name) => Some(("string", span.name.clone())),
                Operand::Intrinsic(Intrinsic::Status) => Some((
                    "keyword",
                    STATUSES[match span.status_code {
                        2 => 0,
                        1 => 1,
                        _ => 2,
                    }]
                    .to_owned(),
                )),
                Operand::Intrinsic(Intrinsic::Kind) => Some((
                    "keyword",
                    KINDS
                        .get(span.kind as usize)
                        .unwrap_or(&"unspecified")
                        .to_string(),
                )),
                Operand::Intrinsic(Intrinsic::RootServiceName) => trace
                    .trace
                    .root()
                    .map(|root| ("string", root.service.to_string())),
                Operand::Intrinsic(Intrinsic::RootName) => {
                    trace.trace.root().map(|root| ("string", root.name.clone()))
                }
                Operand::Intrinsic(Intrinsic::StatusMessage) => {
                    Some(("string", span.status_message.clone()))
                        .filter(|(_, text)| !text.is_empty())
                }
                Operand::Intrinsic(_) => None,
            };
            if let Some(value) = value {
                if values.len() >= limit && !values.contains(&value) {
                    truncated = true;
                    continue;
                }
                values.insert(value);
            }
        }
    }
    Ok((values, truncated))
}
