//! tracelink's own page: server-rendered HTML with its CSS embedded in the binary (no
//! Node, no bundler, no script: every page works with JavaScript off; attributes open
//! with `<details>`). Pages: search (`/`, `/search?…`), a trace's waterfall with its logs
//! and its operations' normal band (`/trace/{id}`), a log line (`/log/{id}`, which opens
//! its trace there), services with the service graph (`/services`), logs (`/logs`) and
//! the window diagnosis (`/diagnose`). `/go?id=` takes a trace id, a Datadog decimal id
//! or a log id.

mod render;
pub use render::TraceRow;

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde_json::Value;

use crate::api::AppState;
use crate::model::Level;
use crate::store::LogQuery;

pub use render::escape;

type Params = Query<HashMap<String, String>>;

fn page(title: &str, body: &str) -> Html<String> {
    Html(render::layout(title, body))
}

fn failure(title: &str, error: impl std::fmt::Display) -> Response {
    (
        axum::http::StatusCode::BAD_REQUEST,
        page(
            title,
            &format!("<p class=\"problem\">{}</p>", escape(&error.to_string())),
        ),
    )
        .into_response()
}

fn param<'a>(params: &'a HashMap<String, String>, key: &str) -> &'a str {
    params
        .get(key)
        .map(|value| value.trim())
        .unwrap_or_default()
}

/// The window a `range` parameter names (`5m`, `15m`, `1h`, `6h`, `24h`, `7d`; the form's
/// default, the last hour, otherwise), in ns.
fn range_nanos(text: &str) -> u64 {
    let minutes = match text {
        "5m" => 5,
        "15m" => 15,
        "6h" => 360,
        "24h" => 1440,
        "7d" => 10_080,
        _ => 60,
    };
    minutes * 60 * 1_000_000_000
}

/// The TraceQL the search form's fields make (the free query wins when given).
pub fn form_query(params: &HashMap<String, String>) -> String {
    let free = param(params, "q");
    if !free.is_empty() {
        return free.to_owned();
    }
    let quoted = |text: &str| format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""));
    let mut conditions = Vec::new();
    let service = param(params, "service");
    if !service.is_empty() {
        conditions.push(format!("resource.service.name = {}", quoted(service)));
    }
    let operation = param(params, "operation");
    if !operation.is_empty() {
        conditions.push(format!("name = {}", quoted(operation)));
    }
    match param(params, "status") {
        "error" => conditions.push("status = error".into()),
        "ok" => conditions.push("status != error".into()),
        _ => {}
    }
    for (key, operator) in [("min", ">="), ("max", "<=")] {
        let value = param(params, key);
        if crate::query::traceql::parse_duration(value).is_some() {
            conditions.push(format!("duration {operator} {value}"));
        }
    }
    format!("{{ {} }}", conditions.join(" && "))
}

/// The page's search as a node asks its cluster peers for it: TraceQL over a range.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PageSearch {
    pub q: String,
    pub start: u64,
    pub end: u64,
}

/// The rows of the traces this node holds that match.
fn search_rows(
    storage: &crate::store::Storage,
    request: &crate::query::search::SearchRequest,
) -> Result<Vec<render::TraceRow>, crate::store::StoreError> {
    let result = crate::query::search::search(storage, request)?;
    Ok(result.traces.iter().map(render::TraceRow::of).collect())
}

/// `POST /internal/cluster/v1/page/search`: the rows this node alone holds.
pub async fn peer_search(
    State(state): State<AppState>,
    axum::Json(asked): axum::Json<PageSearch>,
) -> Result<axum::Json<Vec<render::TraceRow>>, crate::api::ApiError> {
    let query = crate::query::traceql::parse(&asked.q)
        .map_err(|error| crate::api::ApiError::BadRequest(error.to_string()))?;
    let request = crate::query::search::SearchRequest {
        query,
        limit: 20,
        start_unix_nano: Some(asked.start),
        end_unix_nano: Some(asked.end),
        min_duration_nanos: None,
        max_duration_nanos: None,
    };
    let storage = state.storage.clone();
    let rows = crate::api::blocking(move || search_rows(&storage, &request))
        .await
        .map_err(crate::api::ApiError::Internal)?;
    Ok(axum::Json(rows))
}

pub async fn search(State(state): State<AppState>, Query(params): Params) -> Response {
    let query_text = form_query(&params);
    let query = match crate::query::traceql::parse(&query_text) {
        Ok(query) => query,
        Err(error) => {
            return (
                axum::http::StatusCode::BAD_REQUEST,
                page(
                    "Search",
                    &render::search_page(&params, &query_text, None, Some(&error.to_string())),
                ),
            )
                .into_response()
        }
    };
    let end = crate::api::diagnose::now_nanos();
    let request = crate::query::search::SearchRequest {
        query,
        limit: 20,
        start_unix_nano: Some(end.saturating_sub(range_nanos(param(&params, "range")))),
        end_unix_nano: Some(end),
        min_duration_nanos: None,
        max_duration_nanos: None,
    };
    let storage = state.storage.clone();
    let asked = PageSearch {
        q: query_text.clone(),
        start: request.start_unix_nano.unwrap_or(0),
        end,
    };
    let found = crate::api::blocking(move || {
        let mut rows = search_rows(&storage, &request)?;
        // In a cluster, every node's traces: newest first, each once, the first 20.
        if let Some(peers) = storage.peers.get() {
            rows.extend(peers.page_rows(&asked));
            rows.sort_by(|a, b| b.start.cmp(&a.start).then(a.trace_id.cmp(&b.trace_id)));
            rows.dedup_by(|a, b| a.trace_id == b.trace_id);
            rows.truncate(request.limit);
        }
        Ok(rows)
    })
    .await;
    match found {
        Ok(rows) => page(
            "Search",
            &render::search_page(&params, &query_text, Some(&rows), None),
        )
        .into_response(),
        Err(error) => failure("Search", error),
    }
}

pub async fn trace(State(state): State<AppState>, Path(raw_id): Path<String>) -> Response {
    let (trace_id, low_only) = match crate::api::logs::parse_query_trace_id(&raw_id) {
        Ok(parsed) => parsed,
        Err(error) => return failure("Trace", error),
    };
    let joined = tokio::task::spawn_blocking(move || {
        let trace_id = crate::api::join::resolve_trace_id(&state.storage, trace_id, low_only)?;
        crate::api::join::join_trace(&state, &trace_id)
            .map(|joined| (joined, state.config.grafana.clone()))
    })
    .await;
    match joined {
        Ok(Ok((Some(joined), grafana))) => {
            page("Trace", &render::trace_page(&joined, grafana.as_ref())).into_response()
        }
        Ok(Ok((None, _))) => (
            axum::http::StatusCode::NOT_FOUND,
            page(
                "Trace",
                &format!(
                    "<p class=\"problem\">Trace {} is not stored.</p>",
                    escape(&raw_id)
                ),
            ),
        )
            .into_response(),
        Ok(Err(error)) => failure("Trace", error),
        Err(error) => failure("Trace", error),
    }
}

/// A log line: its trace (where the line is marked), or the line alone.
pub async fn log(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let storage = state.storage.clone();
    let lookup = id.clone();
    match crate::api::blocking(move || storage.log_by_id(&lookup)).await {
        Ok(Some(record)) => match record.trace_id {
            Some(trace_id) => {
                Redirect::to(&format!("/trace/{}#log-{}", trace_id.to_hex(), id)).into_response()
            }
            None => page(
                "Log",
                &render::log_lines(&[serde_json::to_value(&record).unwrap_or_default()]),
            )
            .into_response(),
        },
        Ok(None) => (
            axum::http::StatusCode::NOT_FOUND,
            page(
                "Log",
                &format!(
                    "<p class=\"problem\">Log {} is not stored.</p>",
                    escape(&id)
                ),
            ),
        )
            .into_response(),
        Err(error) => failure("Log", error),
    }
}

/// The id box: a stored log id, else a trace id in any spelling (a log id can look like
/// URL-safe base64, so the logs are asked first).
pub async fn go(State(state): State<AppState>, Query(params): Params) -> Response {
    let id = param(&params, "id").to_owned();
    let storage = state.storage.clone();
    let lookup = id.clone();
    let is_log = matches!(
        crate::api::blocking(move || storage.log_by_id(&lookup)).await,
        Ok(Some(_))
    );
    if is_log {
        return Redirect::to(&format!("/log/{}", crate::cli::query_escape(&id))).into_response();
    }
    if crate::api::logs::parse_query_trace_id(&id).is_ok() {
        return Redirect::to(&format!("/trace/{}", crate::cli::query_escape(&id))).into_response();
    }
    failure(
        "Go",
        format!("{id:?} is neither a trace id nor a stored log id"),
    )
}

pub async fn services(State(state): State<AppState>, Query(params): Params) -> Response {
    let minutes: u64 = match param(&params, "window") {
        "5m" => 5,
        "60m" => 60,
        _ => 15,
    };
    let now = crate::metrics::latency::current_minute();
    let end_ms = now * 60_000 + 60_000;
    // Every operation's stats once, of every node; the services' rows are merged from
    // them.
    let ask = crate::cluster::latency::LatencyAsk {
        minutes: vec![crate::metrics::latency::Minutes::last(Some(minutes), now)],
        links: Some((end_ms, minutes * 60_000)),
        ..Default::default()
    };
    let merged = match crate::cluster::latency::gather_blocking(
        state.storage.clone(),
        state.pipeline.metrics.clone(),
        ask,
    )
    .await
    {
        Ok(merged) => merged,
        Err(error) => return failure("Services", error),
    };
    let all: Vec<_> = merged
        .operations
        .into_iter()
        .filter_map(|(key, windows)| Some((key, windows.into_iter().next()?.stats())))
        .collect();
    let mut names: Vec<String> = all
        .iter()
        .filter(|(_, stats)| stats.count > 0)
        .map(|(key, _)| key.service.clone())
        .collect();
    names.sort();
    names.dedup();
    let services: Vec<_> = names
        .into_iter()
        .filter_map(|name| {
            let stats = crate::metrics::latency::service_summary(&all, &name)?;
            Some((name, stats))
        })
        .collect();
    let mut rows: Vec<_> = all
        .into_iter()
        .filter(|(_, stats)| stats.count > 0)
        .collect();
    rows.sort_by(|a, b| {
        (&a.0.service, a.0.span_kind != 2, &a.0.span_name).cmp(&(
            &b.0.service,
            b.0.span_kind != 2,
            &b.0.span_name,
        ))
    });
    let mut response = page(
        "Services",
        &render::services_page(minutes, &services, &rows, &merged.links),
    )
    .into_response();
    crate::api::tempo::mark_partial(&mut response, &merged.missing);
    response
}

pub async fn logs(State(state): State<AppState>, Query(params): Params) -> Response {
    let mut query = LogQuery {
        limit: 200,
        ..LogQuery::default()
    };
    let service = param(&params, "service");
    if !service.is_empty() {
        query.service = Some(service.to_owned());
    }
    let level = param(&params, "level");
    if !level.is_empty() {
        query.level = Level::parse(level);
    }
    let text = param(&params, "text");
    if !text.is_empty() {
        query.text = Some(text.to_owned());
    }
    let trace = param(&params, "trace_id");
    if !trace.is_empty() {
        match crate::api::logs::parse_query_trace_id(trace) {
            Ok((trace_id, low_only)) => {
                query.trace_id = Some(trace_id);
                query.trace_low64_only = low_only;
            }
            Err(error) => return failure("Logs", error),
        }
    }
    let storage = state.storage.clone();
    match crate::api::blocking(move || storage.search_logs(&query)).await {
        Ok(records) => {
            let records: Vec<Value> = records
                .iter()
                .map(|record| serde_json::to_value(record).unwrap_or_default())
                .collect();
            page("Logs", &render::logs_page(&params, &records)).into_response()
        }
        Err(error) => failure("Logs", error),
    }
}

pub async fn diagnose(State(state): State<AppState>, Query(params): Params) -> Response {
    let request = match crate::api::diagnose::request(&params, crate::api::diagnose::now_nanos()) {
        Ok(request) => request,
        Err(error) => return failure("Diagnose", error),
    };
    match crate::api::diagnose::run(&state, request).await {
        Ok(diagnosis) => {
            let value = serde_json::to_value(&diagnosis).unwrap_or_default();
            page("Diagnose", &render::diagnose_page(&params, &value)).into_response()
        }
        Err(error) => failure("Diagnose", error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn the_search_form_becomes_traceql_and_the_free_query_wins() {
        let fields = params(&[
            ("service", "pay\"ments"),
            ("operation", "Charge"),
            ("status", "error"),
            ("min", "100ms"),
            ("max", "not a duration"),
        ]);
        let query = form_query(&fields);
        assert_eq!(
            query,
            r#"{ resource.service.name = "pay\"ments" && name = "Charge" && status = error && duration >= 100ms }"#
        );
        assert!(crate::query::traceql::parse(&query).is_ok());
        assert_eq!(form_query(&params(&[])), "{  }");
        assert!(crate::query::traceql::parse(&form_query(&params(&[]))).is_ok());
        let free = params(&[("service", "x"), ("q", "{ .a = 1 }")]);
        assert_eq!(form_query(&free), "{ .a = 1 }");
    }

    #[test]
    fn the_range_defaults_to_the_hour_the_form_shows() {
        assert_eq!(range_nanos(""), 3_600_000_000_000);
        assert_eq!(range_nanos("15m"), 900_000_000_000);
        assert_eq!(range_nanos("7d"), 7 * 24 * 3_600_000_000_000);
    }
}
