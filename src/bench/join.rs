//! `tracelink bench join`: `/api/join/trace/{id}` latency for a 50-span trace with 200 log
//! lines, with `spans` other spans and as many other log records stored.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::{bench_trace_id, latency_summary, make_batch, resident_mib, scratch_dir, BenchServer};

pub struct JoinBenchOptions {
    pub spans: u64,
    pub query_seconds: u64,
    pub data_dir: Option<std::path::PathBuf>,
}

const BATCH: usize = 512;

fn logs_request(
    run_tag: u64,
    first: u64,
    count: u64,
    trace_of: impl Fn(u64) -> [u8; 16],
) -> ExportLogsServiceRequest {
    let records = (first..first + count)
        .map(|number| LogRecord {
            time_unix_nano: 1_700_000_000_000_000_000 + number * 1000,
            severity_number: if number % 20 == 0 { 17 } else { 9 },
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(format!(
                    "request {number} handled; order placed and payment authorised"
                ))),
            }),
            trace_id: trace_of(number).to_vec(),
            span_id: (number + 1).to_be_bytes().to_vec(),
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(format!(
                            "svc-{}",
                            run_tag % 3
                        ))),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

pub async fn run(options: JoinBenchOptions) -> anyhow::Result<()> {
    let scratch = scratch_dir(options.data_dir.clone())?;
    let server = BenchServer::start(&scratch, |_| {}).await?;
    let endpoint = format!("http://{}", server.otlp_grpc);
    let mut traces = TraceServiceClient::connect(endpoint.clone()).await?;
    let mut logs = LogsServiceClient::connect(endpoint).await?;
    let run_tag = 7;
    let batches = options.spans.div_ceil(BATCH as u64);
    let started = Instant::now();
    // A full ingest queue (spans wait in the head for their trace to complete) answers
    // UNAVAILABLE: wait and send again, as an OTLP exporter does.
    let refused = |status: &tonic::Status| status.code() == tonic::Code::Unavailable;
    let pause = || tokio::time::sleep(std::time::Duration::from_millis(20));
    for batch in 0..batches {
        let spans = make_batch(run_tag, batch * BATCH as u64, BATCH);
        while let Err(status) = traces.export(spans.clone()).await {
            if !refused(&status) {
                return Err(status.into());
            }
            pause().await;
        }
        let first = batch * BATCH as u64;
        let records = logs_request(run_tag, first, BATCH as u64, |number| {
            bench_trace_id(run_tag, number / 10)
        });
        while let Err(status) = logs.export(records.clone()).await {
            if !refused(&status) {
                return Err(status.into());
            }
            pause().await;
        }
    }
    // The trace under test: 50 spans (5 batches' worth of 10-span traces would be
    // different traces, so build it from one trace id) and 200 log lines.
    let target = bench_trace_id(run_tag + 1, 0);
    let mut request = make_batch(run_tag + 1, 0, 50);
    for span in &mut request.resource_spans[0].scope_spans[0].spans {
        span.trace_id = target.to_vec();
    }
    traces.export(request).await?;
    logs.export(logs_request(run_tag, options.spans, 200, |_| target))
        .await?;
    println!(
        "join: stored {} spans and {} log records in {:.1} s",
        batches * BATCH as u64 + 50,
        batches * BATCH as u64 + 200,
        started.elapsed().as_secs_f64()
    );
    let client = reqwest::Client::new();
    let url = format!(
        "http://{}/api/join/trace/{}",
        server.http,
        crate::model::to_hex(&target)
    );
    // Wait until the commit makes the 200 log lines searchable.
    loop {
        let joined: serde_json::Value = client.get(&url).send().await?.json().await?;
        if joined["logs"].as_array().map_or(0, Vec::len) == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(options.query_seconds);
    while Instant::now() < deadline {
        let asked = Instant::now();
        let joined: serde_json::Value = client.get(&url).send().await?.json().await?;
        latencies.push(asked.elapsed());
        if joined["trace"]["span_count"] != 50 {
            anyhow::bail!("join answered {} spans", joined["trace"]["span_count"]);
        }
    }
    println!(
        "join: {} requests for a 50-span trace with 200 log lines: {}",
        latencies.len(),
        latency_summary(&mut latencies)
    );
    println!("memory: {:.0} MiB resident", resident_mib());
    server.stop().await?;
    if options.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    Ok(())
}
