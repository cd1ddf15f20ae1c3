//! TraceQL metrics as Grafana's Tempo data source and Traces Drilldown ask for them
//! (`/api/metrics/query_range`, `/api/metrics/query`), over checkout traces the
//! OpenTelemetry SDK made and its OTLP exporter sent: answers decoded into structs that,
//! like Grafana's jsonpb decoding of Tempo's protobufs, refuse any field the protobuf
//! does not have; counts, rates, exact quantiles and power-of-two histograms checked
//! against the known spans, from the head and again from the index after a restart;
//! every exemplar opens a stored trace; bad queries get Tempo's plain-text 400.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use serde::Deserialize;

use common::sdk::{six_checkouts, Checkouts};
use common::TestServer;

/// `tempopb.QueryRangeResponse` and what it holds, as jsonpb reads them.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct QueryRangeResponse {
    #[serde(default)]
    series: Vec<TimeSeries>,
    metrics: Option<SearchMetrics>,
    status: Option<String>,
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TimeSeries {
    #[serde(default)]
    labels: Vec<KeyValue>,
    #[serde(default)]
    samples: Vec<Sample>,
    #[serde(default)]
    prom_labels: String,
    #[serde(default)]
    exemplars: Vec<Exemplar>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Sample {
    timestamp_ms: String,
    value: f64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Exemplar {
    labels: Vec<KeyValue>,
    value: f64,
    timestamp_ms: String,
}

/// `tempopb.QueryInstantResponse`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct QueryInstantResponse {
    #[serde(default)]
    series: Vec<InstantSeries>,
    metrics: Option<SearchMetrics>,
    status: Option<String>,
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InstantSeries {
    #[serde(default)]
    labels: Vec<KeyValue>,
    value: f64,
    #[serde(default)]
    prom_labels: String,
}

/// `tempopb.SearchMetrics`: uint32 fields are numbers, uint64 ones strings. Every field of
/// the protobuf is here, read or not, so that only unknown fields are refused.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SearchMetrics {
    inspected_traces: Option<u32>,
    inspected_bytes: Option<String>,
    total_blocks: Option<u32>,
    completed_jobs: Option<u32>,
    total_jobs: Option<u32>,
    total_block_bytes: Option<String>,
    inspected_spans: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyValue {
    key: String,
    value: AnyValue,
}

#[allow(dead_code)]
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AnyValue {
    string_value: Option<String>,
    int_value: Option<String>,
    double_value: Option<f64>,
    bool_value: Option<bool>,
}

impl TimeSeries {
    fn label(&self, key: &str) -> Option<&AnyValue> {
        self.labels
            .iter()
            .find(|label| label.key == key)
            .map(|label| &label.value)
    }

    fn total(&self) -> f64 {
        self.samples.iter().map(|sample| sample.value).sum()
    }
}

/// Series by the string value of one label.
fn by_label<'a>(series: &'a [TimeSeries], key: &str) -> BTreeMap<String, &'a TimeSeries> {
    series
        .iter()
        .map(|series| {
            let value = series
                .label(key)
                .and_then(|value| value.string_value.clone())
                .unwrap_or_default();
            (value, series)
        })
        .collect()
}

struct Window {
    start: String,
    end: String,
}

async fn get(server: &TestServer, path: &str, params: &[(&str, &str)]) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(server.url(path))
        .header("Accept", "application/json")
        .query(params)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn range(server: &TestServer, window: &Window, q: &str, step: &str) -> QueryRangeResponse {
    let (status, body) = get(
        server,
        "/api/metrics/query_range",
        &[
            ("q", q),
            ("start", &window.start),
            ("end", &window.end),
            ("step", step),
            ("exemplars", "5"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{q}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|error| panic!("{q}: {error}: {body}"))
}

async fn instant(server: &TestServer, window: &Window, q: &str) -> QueryInstantResponse {
    let (status, body) = get(
        server,
        "/api/metrics/query",
        &[("q", q), ("start", &window.start), ("end", &window.end)],
    )
    .await;
    assert_eq!(status, 200, "{q}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|error| panic!("{q}: {error}: {body}"))
}

/// Every answer below, asked of `server`; `failed` are the ids of the failed traces.
async fn check_answers(server: &TestServer, window: &Window, failed: &[String]) {
    // Spans per service: 2 of every trace in gateway, 1 in payments; six traces.
    let counted = range(
        server,
        window,
        "{} | count_over_time() by(resource.service.name)",
        "10s",
    )
    .await;
    let counted_by_service = by_label(&counted.series, "resource.service.name");
    assert_eq!(
        counted_by_service.keys().collect::<Vec<_>>(),
        ["gateway", "payments"]
    );
    assert_eq!(counted_by_service["gateway"].total(), 12.0);
    assert_eq!(counted_by_service["payments"].total(), 6.0);
    let series = counted_by_service["gateway"];
    assert!(series
        .prom_labels
        .contains("resource.service.name=\"gateway\""));
    // Every step of the range, oldest first, aligned to the step: the intervals from the
    // start rounded down to the step until the end (12 of them over these 120 s when the
    // start falls on a step, 13 otherwise).
    let start_seconds: u64 = window.start.parse().unwrap();
    let end_seconds: u64 = window.end.parse().unwrap();
    let intervals = (end_seconds - (start_seconds - start_seconds % 10)).div_ceil(10);
    assert_eq!(series.samples.len() as u64, intervals, "{series:?}");
    let stamps: Vec<u64> = series
        .samples
        .iter()
        .map(|sample| sample.timestamp_ms.parse().unwrap())
        .collect();
    assert!(stamps.windows(2).all(|pair| pair[1] - pair[0] == 10_000));
    assert_eq!(stamps[0] % 10_000, 0);
    let metrics = counted.metrics.as_ref().unwrap();
    assert_eq!(metrics.inspected_traces, Some(6));
    assert_eq!(metrics.inspected_spans.as_deref(), Some("18"));
    assert_eq!(
        (metrics.completed_jobs, metrics.total_jobs),
        (Some(1), Some(1))
    );
    assert!(counted.status.is_none() && counted.message.is_none());

    // Errors per second, as Drilldown asks: only payments failed, three times.
    let errors = range(
        server,
        window,
        "{ status = error } | rate() by(resource.service.name)",
        "10s",
    )
    .await;
    assert_eq!(errors.series.len(), 1);
    let series = &errors.series[0];
    assert_eq!(
        series
            .label("resource.service.name")
            .unwrap()
            .string_value
            .as_deref(),
        Some("payments")
    );
    assert!((series.total() * 10.0 - 3.0).abs() < 1e-9, "{series:?}");
    // Exemplars: the failed traces, each opening a stored trace, drawn on the rate line.
    assert!(!series.exemplars.is_empty());
    for exemplar in &series.exemplars {
        let trace_id = exemplar
            .labels
            .iter()
            .find(|label| label.key == "trace:id")
            .and_then(|label| label.value.string_value.clone())
            .unwrap();
        assert!(failed.contains(&trace_id), "{trace_id} did not fail");
        let (status, _) = get(server, &format!("/api/v2/traces/{trace_id}"), &[]).await;
        assert_eq!(status, 200, "exemplar {trace_id} opens its trace");
        assert!(exemplar.labels.iter().any(|label| label.key == "span:id"));
        let at = exemplar.timestamp_ms.parse::<u64>().unwrap();
        let sample = series
            .samples
            .iter()
            .rev()
            .find(|sample| sample.timestamp_ms.parse::<u64>().unwrap() <= at)
            .unwrap();
        assert_eq!(exemplar.value, sample.value);
    }

    // Exact quantiles of payments' durations (0.1 s … 0.6 s), one series per quantile.
    let quantiles = instant(
        server,
        window,
        "{ resource.service.name = \"payments\" } | quantile_over_time(duration, 0.5, 1)",
    )
    .await;
    let mut by_p: Vec<(f64, f64)> = quantiles
        .series
        .iter()
        .map(|series| {
            let p = series
                .labels
                .iter()
                .find(|label| label.key == "p")
                .and_then(|label| label.value.double_value)
                .unwrap();
            (p, series.value)
        })
        .collect();
    by_p.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(by_p.len(), 2);
    assert!((by_p[0].1 - 0.35).abs() < 1e-9, "{by_p:?}");
    assert!((by_p[1].1 - 0.6).abs() < 1e-9, "{by_p:?}");
    assert!(quantiles.series[0]
        .labels
        .iter()
        .any(|label| label.key == "__name__"
            && label.value.string_value.as_deref() == Some("quantile_over_time")));
    assert!(quantiles.metrics.is_some());
    assert!(quantiles.status.is_none() && quantiles.message.is_none());
    assert!(quantiles
        .series
        .iter()
        .all(|series| !series.prom_labels.is_empty()));

    // Power-of-two buckets, in seconds: 0.1 → 0.125, 0.2 → 0.25, 0.3–0.5 → 0.5, 0.6 → 1.
    let histogram = range(
        server,
        window,
        "{ resource.service.name = \"payments\" } | histogram_over_time(duration) with(sample=true)",
        "60s",
    )
    .await;
    let buckets: BTreeMap<String, f64> = histogram
        .series
        .iter()
        .map(|series| {
            let bucket = series.label("__bucket").unwrap().double_value.unwrap();
            (format!("{bucket}"), series.total())
        })
        .collect();
    let expected: BTreeMap<String, f64> = [("0.125", 1.0), ("0.25", 1.0), ("0.5", 3.0), ("1", 1.0)]
        .into_iter()
        .map(|(bucket, count)| (bucket.to_owned(), count))
        .collect();
    assert_eq!(buckets, expected);

    // A by() value the span lacks is a label without a value, as Tempo's nil.
    let grouped = instant(
        server,
        window,
        "{ kind = server } | count_over_time() by(span.http.status_code)",
    )
    .await;
    let mut groups: Vec<(Option<String>, f64)> = grouped
        .series
        .iter()
        .map(|series| (series.labels[0].value.int_value.clone(), series.value))
        .collect();
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        groups,
        vec![
            (None, 6.0),
            (Some("200".to_owned()), 3.0),
            (Some("500".to_owned()), 3.0)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drilldown_metrics_over_sdk_traces_from_the_head_and_the_index() {
    let dir = common::temp_dir();
    let data = common::data_path(&dir);
    let server = TestServer::start(&data, |raw| {
        // The first answers come from the head alone.
        raw.storage.trace_idle_ms = 60_000;
    })
    .await;
    let Checkouts {
        trace_ids,
        base_seconds,
        ..
    } = six_checkouts(&server).await;
    let failed = vec![
        trace_ids[1].clone(),
        trace_ids[3].clone(),
        trace_ids[5].clone(),
    ];
    // 120 s around the traces, in unix seconds as Grafana sends them.
    let window = Window {
        start: (base_seconds - 60).to_string(),
        end: (base_seconds + 60).to_string(),
    };
    check_answers(&server, &window, &failed).await;

    // Bad queries: Tempo's plain-text 400.
    for (path, q, says) in [
        (
            "/api/metrics/query_range",
            "{ status = error }",
            "is not a metrics query",
        ),
        (
            "/api/metrics/query_range",
            "{ status = error } | rate(",
            "invalid TraceQL query: parse error at line 1, col",
        ),
        (
            "/api/metrics/query",
            "{} | compare({ status = error })",
            "`compare` is not supported",
        ),
        (
            "/api/search",
            "{} | rate()",
            "answered by /api/metrics/query_range",
        ),
    ] {
        let (status, body) = get(&server, path, &[("q", q)]).await;
        assert_eq!(status, 400, "{q}: {body}");
        assert!(body.contains(says), "{q}: {body}");
    }
    let (status, body) = get(
        &server,
        "/api/metrics/query_range",
        &[("q", "{} | rate()"), ("step", "soon")],
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("invalid step"), "{body}");

    // Stop (every trace leaves the head and is committed) and start again: the same
    // answers, now from the index.
    server.stop().await;
    let server = TestServer::start(&data, |_| {}).await;
    check_answers(&server, &window, &failed).await;
    server.stop().await;
}
