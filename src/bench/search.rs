//! `tracelink bench search`: Tempo search latency over traces spread across the last
//! 24 hours. A child `tracelink serve` takes `spans` spans over gRPC (the `bench spans`
//! load: 10-span traces of five services, 8 attributes a span, one trace in five failing),
//! their start times spread evenly over the day before now; then, for each query, one
//! HTTP client asks `GET /api/search` (or a tag-values route) again and again for
//! `query_seconds` and the latency percentiles are printed with the traces found; then
//! TraceQL metrics queries over the last hour. Nothing is asserted.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use super::child::ChildServer;
use super::spans::{ingest_with, make_batch, wait_ready};
use super::{latency_summary, scratch_dir};

pub struct SearchBenchOptions {
    pub spans: u64,
    pub query_seconds: u64,
    pub data_dir: Option<PathBuf>,
}

const BATCH: usize = 512;
const SPANS_PER_TRACE: u64 = 10;
const DAY_NANOS: u64 = 86_400_000_000_000;
/// What `make_batch` starts span `n` at: this plus `n` µs.
const BENCH_EPOCH_NANOS: u64 = 1_700_000_000_000_000_000;

/// The `bench spans` batch, its traces moved so that trace `t` of `traces` starts at
/// `day_start + t / traces` of a day.
fn spread_batch(
    run_tag: u64,
    number: u64,
    traces: u64,
    day_start: u64,
) -> ExportTraceServiceRequest {
    let mut request = make_batch(run_tag, number * BATCH as u64, BATCH);
    for span in request
        .resource_spans
        .iter_mut()
        .flat_map(|resource| &mut resource.scope_spans)
        .flat_map(|scope| &mut scope.spans)
    {
        let span_number = (span.start_time_unix_nano - BENCH_EPOCH_NANOS) / 1_000;
        let trace = span_number / SPANS_PER_TRACE;
        let trace_start = day_start
            + (u128::from(trace) * u128::from(DAY_NANOS) / u128::from(traces.max(1))) as u64;
        let duration = span.end_time_unix_nano - span.start_time_unix_nano;
        span.start_time_unix_nano = trace_start + (span_number % SPANS_PER_TRACE) * 1_000;
        span.end_time_unix_nano = span.start_time_unix_nano + duration;
    }
    request
}

pub async fn run(options: SearchBenchOptions) -> anyhow::Result<()> {
    let scratch = scratch_dir(options.data_dir.clone())?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let run_tag = now.as_secs();
    let day_start = now.as_nanos() as u64 - DAY_NANOS;
    let batches = options.spans.div_ceil(BATCH as u64);
    let traces = batches * BATCH as u64 / SPANS_PER_TRACE;
    let env = [("TRACELINK_STORAGE_TRACE_IDLE_MS", "500".to_owned())];
    let server = ChildServer::serve(None, &scratch, &env)?;
    let http = server
        .http
        .ok_or_else(|| anyhow::anyhow!("tracelink did not say its http address"))?;
    wait_ready(http).await?;
    let mut ingested = ingest_with(&server, 4, batches, move |number| {
        spread_batch(run_tag, number, traces, day_start)
    })
    .await?;
    ingested.report("ingest");
    // Every trace leaves the head and is committed: the searches below read the index.
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "search: {} spans in {traces} traces over the last 24 h; one client, each query for {} s",
        ingested.spans, options.query_seconds
    );
    let end = now.as_secs();
    let hour = (end - 3600).to_string();
    let day = (end - 86_400).to_string();
    let end = end.to_string();
    let queries = [
        (
            "errors of a service",
            r#"{resource.service.name="orders" && status=error}"#,
        ),
        (
            "slow spans of a service",
            r#"{resource.service.name="orders" && duration > 10ms}"#,
        ),
        ("no match", r#"{resource.service.name="nobody"}"#),
    ];
    let windows = [("last hour", &hour), ("24 h", &day)];
    let queries = queries.iter().flat_map(|(what, query)| {
        windows
            .iter()
            .map(move |(window, start)| (format!("{what}, {window}"), *query, *start))
    });
    let client = reqwest::Client::new();
    for (what, query, start) in queries {
        let mut latencies = Vec::new();
        let mut found = 0;
        let until = Instant::now() + Duration::from_secs(options.query_seconds.max(1));
        while Instant::now() < until {
            let asked = Instant::now();
            let body: serde_json::Value = client
                .get(format!("http://{http}/api/search"))
                .query(&[
                    ("q", query),
                    ("limit", "20"),
                    ("start", start),
                    ("end", end.as_str()),
                ])
                .send()
                .await?
                .json()
                .await?;
            latencies.push(asked.elapsed());
            found = body["traces"].as_array().map_or(0, Vec::len);
        }
        println!(
            "search: {what} ({found} traces, limit 20): {}",
            latency_summary(&mut latencies)
        );
    }
    // TraceQL metrics over the last hour: every matching trace is read whole.
    let metrics_queries = [
        (
            "error rate by service",
            r#"{status=error} | rate() by(resource.service.name)"#,
        ),
        (
            "p50/p99 of a service",
            r#"{resource.service.name="orders"} | quantile_over_time(duration, 0.5, 0.99)"#,
        ),
    ];
    for (what, query) in metrics_queries {
        let mut latencies = Vec::new();
        let mut inspected = String::new();
        let until = Instant::now() + Duration::from_secs(options.query_seconds.max(1));
        while Instant::now() < until || latencies.is_empty() {
            let asked = Instant::now();
            let body: serde_json::Value = client
                .get(format!("http://{http}/api/metrics/query_range"))
                .query(&[
                    ("q", query),
                    ("start", hour.as_str()),
                    ("end", end.as_str()),
                    ("step", "60s"),
                ])
                .send()
                .await?
                .json()
                .await?;
            latencies.push(asked.elapsed());
            inspected = body["metrics"]["inspectedTraces"].to_string();
        }
        println!(
            "metrics: {what}, last hour ({inspected} traces inspected): {}",
            latency_summary(&mut latencies)
        );
    }
    let mut latencies = Vec::new();
    let until = Instant::now() + Duration::from_secs(options.query_seconds.max(1));
    let mut values = 0;
    while Instant::now() < until {
        let asked = Instant::now();
        let body: serde_json::Value = client
            .get(format!(
                "http://{http}/api/v2/search/tag/span.thread.id/values"
            ))
            .send()
            .await?
            .json()
            .await?;
        latencies.push(asked.elapsed());
        values = body["tagValues"].as_array().map_or(0, Vec::len);
    }
    println!(
        "search: tag values of span.thread.id ({values} values): {}",
        latency_summary(&mut latencies)
    );
    server.terminate()?;
    Ok(())
}
