//! `GET /metrics` (OpenMetrics with exemplars when asked for, else the 0.0.4 text format)
//! and `GET /api/metrics/latency` (exact quantiles and exemplar traces per operation).

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::cluster::latency::LatencyAsk;
use crate::metrics::latency::{Minutes, TraceSample, WindowStats};
use crate::metrics::SpanKindLabel;

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let metrics = state.pipeline.metrics.clone();
    let rendered = tokio::task::spawn_blocking(move || {
        if openmetrics {
            metrics.render_openmetrics()
        } else {
            metrics.render_prometheus_text()
        }
    })
    .await;
    let Ok(body) = rendered else {
        return ApiError::Internal("rendering metrics failed".into()).into_response();
    };
    let content_type = if openmetrics {
        OPENMETRICS_CONTENT_TYPE
    } else {
        PROMETHEUS_TEXT_CONTENT_TYPE
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct LatencyParams {
    pub service: Option<String>,
    pub span_name: Option<String>,
    pub window: Option<String>,
}

/// `1m`, `5m`, `1h` (or any whole number of minutes up to 60), or `all` (since start).
pub fn parse_window(text: &str) -> Result<Option<u64>, ApiError> {
    if text == "all" {
        return Ok(None);
    }
    let minutes = crate::api::loki::logql::parse_duration(text)
        .map(|duration| duration.as_secs() / 60)
        .filter(|minutes| (1..=60).contains(minutes))
        .ok_or_else(|| ApiError::BadRequest(format!("window {text:?}: use 1m … 1h, or all")))?;
    Ok(Some(minutes))
}

pub fn sample_json(sample: &TraceSample) -> Value {
    json!({"trace_id": sample.trace_id.to_hex(), "duration_ms": sample.duration_us as f64 / 1000.0})
}

/// The JSON of one operation's window.
pub fn stats_json(stats: &WindowStats, window_minutes: Option<u64>) -> Value {
    let rate = match window_minutes {
        Some(minutes) => stats.count as f64 / (minutes as f64 * 60.0),
        None => 0.0,
    };
    let error_rate = if stats.count == 0 {
        0.0
    } else {
        stats.errors as f64 / stats.count as f64
    };
    json!({
        "count": stats.count,
        "rate_per_second": rate,
        "error_rate": error_rate,
        "p50_ms": stats.p50_ms,
        "p90_ms": stats.p90_ms,
        "p95_ms": stats.p95_ms,
        "p99_ms": stats.p99_ms,
        "p999_ms": stats.p999_ms,
        "max_ms": stats.max_ms,
        "exemplars": {
            "slowest": stats.slowest.as_ref().map(sample_json),
            "bands": stats.band_samples.iter().map(sample_json).collect::<Vec<_>>(),
        },
    })
}

pub async fn latency(
    State(state): State<AppState>,
    Query(params): Query<LatencyParams>,
) -> Result<Response, ApiError> {
    let service = params
        .service
        .filter(|service| !service.is_empty())
        .ok_or_else(|| ApiError::BadRequest("service is required".into()))?;
    let window_text = params.window.unwrap_or_else(|| "5m".into());
    let window = parse_window(&window_text)?;
    let now = crate::metrics::latency::current_minute();
    let ask = LatencyAsk {
        service: Some(service.clone()),
        span_name: params.span_name.clone(),
        minutes: vec![Minutes::last(window, now)],
        ..LatencyAsk::default()
    };
    let merged = crate::cluster::latency::gather_blocking(
        state.storage.clone(),
        state.pipeline.metrics.clone(),
        ask,
    )
    .await
    .map_err(ApiError::Internal)?;
    let operations: Vec<Value> = merged
        .operations
        .into_iter()
        .filter_map(|(key, windows)| {
            let stats = windows.into_iter().next()?.stats();
            let mut value = stats_json(&stats, window);
            value["span_name"] = json!(key.span_name);
            value["span_kind"] = json!(format!("{:?}", SpanKindLabel::from_otlp(key.span_kind)));
            Some(value)
        })
        .collect();
    if operations.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no spans of service {service:?}{} seen",
            params
                .span_name
                .map(|name| format!(" named {name:?}"))
                .unwrap_or_default()
        )));
    }
    let mut response =
        Json(json!({"service": service, "window": window_text, "operations": operations}))
            .into_response();
    super::tempo::mark_partial(&mut response, &merged.missing);
    Ok(response)
}
