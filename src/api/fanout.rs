//! In a cluster, the search and listing routes (Tempo search and tags, Jaeger's and
//! Zipkin's services, operations, trace searches and dependency links, Loki's labels)
//! answer for every node: the request goes to each live peer as well (marked to be
//! answered from what that peer holds alone), and the JSON answers merge by their shape:
//! lists become their union, traces are folded by id and cut to the request's `limit`,
//! newest first where the answer orders them. A peer that did not answer in time is named
//! in the `tracelink-partial` header instead of failing the request. (TraceQL metrics
//! merge what each node accumulated before series are made: see
//! [`crate::query::metrics::Accumulated`].)

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::tempo::mark_partial;
use super::AppState;
use crate::cluster::peers::SCOPE_HEADER;

/// Largest answer of a peer or of this node that is merged.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// The routes whose answers are merged across the cluster.
fn fanned(path: &str) -> bool {
    let zipkin = path
        .strip_prefix("/zipkin")
        .unwrap_or(path)
        .strip_prefix("/api/v2/");
    if let Some(rest) = zipkin {
        if matches!(
            rest,
            "services"
                | "spans"
                | "remoteServices"
                | "traces"
                | "dependencies"
                | "autocompleteKeys"
                | "autocompleteValues"
        ) {
            return true;
        }
    }
    matches!(
        path,
        "/api/search"
            | "/api/search/tags"
            | "/api/v2/search/tags"
            | "/jaeger/api/services"
            | "/jaeger/api/operations"
            | "/jaeger/api/traces"
            | "/jaeger/api/dependencies"
            | "/jaeger/api/v3/services"
            | "/jaeger/api/v3/operations"
            | "/loki/api/v1/labels"
    ) || (path.starts_with("/api/search/tag/") && path.ends_with("/values"))
        || (path.starts_with("/api/v2/search/tag/") && path.ends_with("/values"))
        || (path.starts_with("/jaeger/api/services/") && path.ends_with("/operations"))
        || (path.starts_with("/loki/api/v1/label/") && path.ends_with("/values"))
}

/// Tempo's search statistics, summed (64-bit counts stay strings, as Tempo writes them).
fn sum_metrics<'a>(metrics: &mut Map<String, Value>, theirs: impl Iterator<Item = &'a Value>) {
    for their in theirs {
        let Value::Object(their) = their else {
            continue;
        };
        for (name, value) in their {
            if matches!(name.as_str(), "completedJobs" | "totalJobs") {
                continue;
            }
            let sum = number(metrics.get(name)) + number(Some(value));
            let summed = match value {
                Value::String(_) => Value::String(sum.to_string()),
                _ => Value::from(sum),
            };
            metrics.insert(name.clone(), summed);
        }
    }
}

pub async fn fan_out(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(peers) = state.storage.peers.get().cloned() else {
        return next.run(request).await;
    };
    if request.method() != Method::GET
        || request.headers().contains_key(SCOPE_HEADER)
        || !fanned(request.uri().path())
    {
        return next.run(request).await;
    }
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|value| value.as_str().to_owned())
        .unwrap_or_default();
    let limit = query_limit(request.uri().query().unwrap_or_default());
    let (local, remote) = tokio::join!(next.run(request), peers.get_json(&path_and_query));
    if local.status() != StatusCode::OK {
        return local;
    }
    let (parts, body) = local.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_ANSWER_BYTES).await else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "answer too large to merge",
        )
            .into_response();
    };
    let Ok(mine) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let merged = merge(mine, remote.answers, limit);
    let mut response = Response::from_parts(parts, Body::from(merged.to_string()));
    response
        .headers_mut()
        .remove(axum::http::header::CONTENT_LENGTH);
    mark_partial(&mut response, &remote.missing);
    response
}

/// The request's `limit` (Tempo, Jaeger, Zipkin all call it that).
fn query_limit(query: &str) -> Option<usize> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == "limit").then(|| value.parse().ok()).flatten()
    })
}

/// Merge one node's answer with the others', by the answer's shape.
pub fn merge(mine: Value, others: Vec<Value>, limit: Option<usize>) -> Value {
    match mine {
        Value::Array(items) => {
            let lists =
                std::iter::once(items).chain(others.into_iter().filter_map(|other| match other {
                    Value::Array(items) => Some(items),
                    _ => None,
                }));
            Value::Array(merge_list(lists, limit))
        }
        Value::Object(mut object) => {
            let others: Vec<Map<String, Value>> = others
                .into_iter()
                .filter_map(|other| match other {
                    Value::Object(object) => Some(object),
                    _ => None,
                })
                .collect();
            merge_object(&mut object, &others, limit);
            Value::Object(object)
        }
        other => other,
    }
}

fn merge_object(
    object: &mut Map<String, Value>,
    others: &[Map<String, Value>],
    limit: Option<usize>,
) {
    let keys: Vec<String> = object.keys().cloned().collect();
    for key in keys {
        let theirs = others.iter().filter_map(|other| other.get(&key));
        match key.as_str() {
            // Tempo's search statistics and Jaeger's count: sums, or recounted below.
            "metrics" => {
                if let Some(Value::Object(metrics)) = object.get_mut("metrics") {
                    sum_metrics(metrics, theirs);
                }
            }
            // Tempo v2 tags: scopes merge by name.
            "scopes" => {
                let mut scopes: Vec<Value> = match object.remove("scopes") {
                    Some(Value::Array(scopes)) => scopes,
                    _ => Vec::new(),
                };
                for their in theirs {
                    let Value::Array(their) = their else { continue };
                    for scope in their {
                        let name = scope.get("name").cloned();
                        match scopes
                            .iter_mut()
                            .find(|mine| mine.get("name").cloned() == name)
                        {
                            Some(mine) => {
                                let tags = merge_list(
                                    [mine.get("tags"), scope.get("tags")]
                                        .into_iter()
                                        .flatten()
                                        .filter_map(|tags| tags.as_array().cloned()),
                                    None,
                                );
                                mine["tags"] = Value::Array(tags);
                            }
                            None => scopes.push(scope.clone()),
                        }
                    }
                }
                object.insert("scopes".into(), Value::Array(scopes));
            }
            // Loki's and Jaeger's `data`, Tempo's `traces`, `tagNames`, `tagValues`,
            // Jaeger v3's `services` and `operations`: lists.
            _ => {
                let Some(Value::Array(items)) = object.get_mut(&key) else {
                    continue;
                };
                let mine = std::mem::take(items);
                let lists = std::iter::once(mine)
                    .chain(theirs.filter_map(|their| their.as_array().cloned()));
                let merged = merge_list(lists, limit);
                object.insert(key.clone(), Value::Array(merged));
            }
        }
    }
    if let (Some(Value::Array(data)), Some(Value::Number(_))) =
        (object.get("data"), object.get("total"))
    {
        let total = data.len();
        object.insert("total".into(), Value::from(total));
    }
}

fn number(value: Option<&Value>) -> u64 {
    match value {
        Some(Value::Number(number)) => number.as_u64().unwrap_or(0),
        Some(Value::String(text)) => text.parse().unwrap_or(0),
        _ => 0,
    }
}

/// The id of a listed trace: Tempo's `traceID`, Jaeger's `traceID`, or a Zipkin trace (a
/// list of spans) by its first span's `traceId`.
fn trace_id_of(item: &Value) -> Option<&str> {
    match item {
        Value::Object(object) => object.get("traceID").and_then(Value::as_str),
        Value::Array(spans) => spans.first()?.get("traceId").and_then(Value::as_str),
        _ => None,
    }
}

/// Tempo's start, Jaeger's first span's start, Zipkin's first span's timestamp.
fn start_of(item: &Value) -> u128 {
    let field = match item {
        Value::Object(object) => object
            .get("startTimeUnixNano")
            .or_else(|| object.get("spans")?.get(0)?.get("startTime")),
        Value::Array(spans) => spans.first().and_then(|span| span.get("timestamp")),
        _ => None,
    };
    match field {
        Some(Value::String(text)) => text.parse().unwrap_or(0),
        Some(Value::Number(number)) => u128::from(number.as_u64().unwrap_or(0)),
        _ => 0,
    }
}

/// The union of lists: traces folded by id (the one with more spans kept) and newest
/// first, cut to `limit`; anything else once each, strings sorted.
fn merge_list(lists: impl Iterator<Item = Vec<Value>>, limit: Option<usize>) -> Vec<Value> {
    let all: Vec<Value> = lists.flatten().collect();
    // Dependency links (Jaeger's and Zipkin's): one per parent and child, counts added.
    if all
        .first()
        .is_some_and(|item| item.get("parent").is_some() && item.get("child").is_some())
    {
        let mut links: Vec<Value> = Vec::new();
        for item in all {
            let same = |link: &&mut Value| {
                link["parent"] == item["parent"] && link["child"] == item["child"]
            };
            match links.iter_mut().find(|link| same(link)) {
                Some(link) => {
                    for count in ["callCount", "errorCount"] {
                        if let (Some(a), Some(b)) = (link.get(count), item.get(count)) {
                            let sum = number(Some(a)) + number(Some(b));
                            link[count] = Value::from(sum);
                        }
                    }
                }
                None => links.push(item),
            }
        }
        return links;
    }
    if all.iter().any(|item| trace_id_of(item).is_some()) {
        let mut by_id: std::collections::HashMap<String, Value> = Default::default();
        let mut others = Vec::new();
        for item in all {
            match trace_id_of(&item).map(str::to_owned) {
                Some(id) => {
                    let size = |value: &Value| value.to_string().len();
                    match by_id.get(&id) {
                        Some(kept) if size(kept) >= size(&item) => {}
                        _ => {
                            by_id.insert(id, item);
                        }
                    }
                }
                None => others.push(item),
            }
        }
        let mut traces: Vec<Value> = by_id.into_values().collect();
        traces.sort_by_key(|trace| std::cmp::Reverse(start_of(trace)));
        if let Some(limit) = limit.filter(|limit| *limit > 0) {
            traces.truncate(limit);
        }
        traces.extend(others);
        return traces;
    }
    let mut seen = std::collections::HashSet::new();
    let mut merged: Vec<Value> = all
        .into_iter()
        .filter(|item| seen.insert(item.to_string()))
        .collect();
    if merged.iter().all(Value::is_string) {
        merged.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_merge_by_shape() {
        // Tempo search: traces by id, newest first, limited; statistics summed.
        let merged = merge(
            json!({"traces": [{"traceID": "a", "startTimeUnixNano": "30"}, {"traceID": "b", "startTimeUnixNano": "10"}],
                   "metrics": {"inspectedTraces": 2, "inspectedSpans": "5", "completedJobs": 1}}),
            vec![
                json!({"traces": [{"traceID": "c", "startTimeUnixNano": "20"}, {"traceID": "a", "startTimeUnixNano": "30", "spanSet": {}}],
                        "metrics": {"inspectedTraces": 3, "inspectedSpans": "7", "completedJobs": 1}}),
            ],
            Some(2),
        );
        assert_eq!(merged["traces"][0]["traceID"], "a");
        assert!(
            merged["traces"][0].get("spanSet").is_some(),
            "the fuller copy is kept"
        );
        assert_eq!(merged["traces"][1]["traceID"], "c");
        assert_eq!(merged["traces"].as_array().unwrap().len(), 2);
        assert_eq!(merged["metrics"]["inspectedTraces"], 5);
        assert_eq!(merged["metrics"]["inspectedSpans"], "12");
        assert_eq!(merged["metrics"]["completedJobs"], 1);
        // Zipkin's names and Jaeger's data: unions, counted again.
        assert_eq!(
            merge(json!(["b", "a"]), vec![json!(["c", "a"])], None),
            json!(["a", "b", "c"])
        );
        let jaeger = merge(
            json!({"data": ["checkout"], "total": 1}),
            vec![json!({"data": ["payments", "checkout"], "total": 2})],
            None,
        );
        assert_eq!(
            jaeger,
            json!({"data": ["checkout", "payments"], "total": 2})
        );
        // Tempo v2 tags: scopes by name.
        let tags = merge(
            json!({"scopes": [{"name": "span", "tags": ["http.route"]}]}),
            vec![
                json!({"scopes": [{"name": "span", "tags": ["db.system"]}, {"name": "resource", "tags": ["service.name"]}]}),
            ],
            None,
        );
        assert_eq!(
            tags["scopes"][0]["tags"],
            json!(["db.system", "http.route"])
        );
        assert_eq!(tags["scopes"][1]["name"], "resource");
        // Zipkin traces: lists of spans, by their trace id.
        let zipkin = merge(
            json!([[{"traceId": "x", "timestamp": 1}]]),
            vec![json!([[{"traceId": "y", "timestamp": 2}], [{"traceId": "x", "timestamp": 1}]])],
            Some(10),
        );
        assert_eq!(zipkin.as_array().unwrap().len(), 2);
        assert_eq!(zipkin[0][0]["traceId"], "y");
        // Dependency links: counts of the same edge add up.
        let links = merge(
            json!({"data": [{"parent": "a", "child": "b", "callCount": 2}]}),
            vec![
                json!({"data": [{"parent": "a", "child": "b", "callCount": 3}, {"parent": "b", "child": "c", "callCount": 1}]}),
            ],
            None,
        );
        assert_eq!(
            links["data"],
            json!([{"parent": "a", "child": "b", "callCount": 5}, {"parent": "b", "child": "c", "callCount": 1}])
        );
        assert!(fanned("/jaeger/api/dependencies") && fanned("/api/v2/dependencies"));
        assert!(fanned("/zipkin/api/v2/services") && fanned("/api/search/tag/service.name/values"));
        assert!(!fanned("/api/traces/abc") && !fanned("/api/v2/spans/x"));
    }
}
