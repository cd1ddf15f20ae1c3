//! `tracelink bench spans`: ingest throughput and trace-by-id latency.
//!
//! Phase 1 (ingest): `senders` gRPC clients send OTLP batches of `batch` spans (~300 bytes,
//! 8 attributes, 10 spans per trace) as fast as they are acked; reports acked spans per
//! second and per CPU-second of the whole process (server and clients together), with
//! overload refusals counted and retried. Phase 2 (query): while ingest runs at half the
//! measured rate, `GET /api/v2/traces/{id}` over HTTP for random stored traces; reports
//! latency percentiles. Then: disk bytes per span of the committed index and resident
//! memory. Nothing here is asserted; the figures are printed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan, Status};

use super::{cpu_seconds, dir_bytes, latency_summary, resident_mib, scratch_dir, BenchServer};

pub struct BenchOptions {
    pub spans: u64,
    pub batch: usize,
    pub senders: usize,
    pub query_seconds: u64,
    pub data_dir: Option<PathBuf>,
    /// Span metrics on (the default) or off, to measure what they cost.
    pub span_metrics: bool,
}

const SPANS_PER_TRACE: u64 = 10;
const SERVICES: [&str; 5] = ["gateway", "orders", "inventory", "pricing", "notification"];

fn string_value(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn int_value(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// Trace id of the `trace`-th trace of a run: distinct across runs by `run_tag`.
pub fn bench_trace_id(run_tag: u64, trace: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&run_tag.to_be_bytes());
    id[8..].copy_from_slice(&(trace + 1).to_be_bytes());
    id
}

/// A batch of `batch` spans starting at global span number `first_span`.
pub fn make_batch(run_tag: u64, first_span: u64, batch: usize) -> ExportTraceServiceRequest {
    let service = SERVICES[(first_span / batch as u64) as usize % SERVICES.len()];
    let spans = (first_span..first_span + batch as u64)
        .map(|number| {
            let trace = number / SPANS_PER_TRACE;
            let index = number % SPANS_PER_TRACE;
            let start = 1_700_000_000_000_000_000 + number * 1_000;
            OtlpSpan {
                trace_id: bench_trace_id(run_tag, trace).to_vec(),
                span_id: (number + 1).to_be_bytes().to_vec(),
                parent_span_id: if index == 0 {
                    Vec::new()
                } else {
                    (trace * SPANS_PER_TRACE + 1).to_be_bytes().to_vec()
                },
                name: format!("GET /api/orders/{{id}}/items-{}", index % 4),
                kind: if index == 0 { 2 } else { 3 },
                start_time_unix_nano: start,
                end_time_unix_nano: start + 1_000_000 + (number % 997) * 10_000,
                attributes: vec![
                    string_value("http.request.method", "GET"),
                    string_value("http.route", "/api/orders/{id}/items"),
                    int_value("http.response.status_code", 200 + (number % 3) as i64),
                    string_value("server.address", "orders.internal"),
                    int_value("server.port", 8080),
                    string_value("user_agent.original", "okhttp/4"),
                    string_value("db.system", "postgresql"),
                    int_value("thread.id", (number % 64) as i64),
                ],
                status: (number % 50 == 0).then(|| Status {
                    message: "upstream timeout".into(),
                    code: 2,
                }),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    string_value("service.name", service),
                    string_value("host.name", "node-7"),
                    string_value("telemetry.sdk.language", "rust"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "bench".into(),
                    version: "1.0".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

struct Sender {
    client: TraceServiceClient<tonic::transport::Channel>,
    refusals: Arc<AtomicU64>,
}

impl Sender {
    async fn send(&mut self, request: ExportTraceServiceRequest) -> Result<(), tonic::Status> {
        loop {
            match self.client.export(request.clone()).await {
                Ok(_) => return Ok(()),
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    self.refusals.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(status) => return Err(status),
            }
        }
    }
}

pub async fn run(options: BenchOptions) -> anyhow::Result<()> {
    let scratch = scratch_dir(options.data_dir.clone())?;
    let span_metrics = options.span_metrics;
    let server =
        BenchServer::start(&scratch, |raw| raw.metrics.span_metrics = span_metrics).await?;
    println!("span metrics: {}", if span_metrics { "on" } else { "off" });
    let grpc_endpoint = format!("http://{}", server.otlp_grpc);
    let http = server.http;
    let client = reqwest::Client::new();
    let run_tag = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(1);
    let refusals = Arc::new(AtomicU64::new(0));

    // === phase 1: ingest at full speed ===
    let batches = options.spans.div_ceil(options.batch as u64);
    let next_batch = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..options.senders {
        let mut sender = Sender {
            client: TraceServiceClient::connect(grpc_endpoint.clone())
                .await?
                .max_encoding_message_size(256 << 20),
            refusals: refusals.clone(),
        };
        let next_batch = next_batch.clone();
        let batch = options.batch;
        tasks.push(tokio::spawn(async move {
            loop {
                let number = next_batch.fetch_add(1, Ordering::Relaxed);
                if number >= batches {
                    return Ok::<(), tonic::Status>(());
                }
                sender
                    .send(make_batch(run_tag, number * batch as u64, batch))
                    .await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let ingested = batches * options.batch as u64;
    let rate = ingested as f64 / elapsed;
    println!(
        "ingest: {ingested} spans in batches of {} from {} gRPC senders",
        options.batch, options.senders
    );
    println!(
        "ingest: {:.0} spans/s acked (wall), {:.0} spans per CPU-second (process, clients included), {} overload refusals retried",
        rate,
        ingested as f64 / cpu,
        refusals.load(Ordering::Relaxed)
    );

    // === phase 2: trace by id over HTTP while ingest runs at half load ===
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let stop = stop.clone();
        let mut sender = Sender {
            client: TraceServiceClient::connect(grpc_endpoint.clone()).await?,
            refusals: refusals.clone(),
        };
        let batch = options.batch;
        let interval = Duration::from_secs_f64(batch as f64 / (rate / 2.0).max(1.0));
        let first = batches;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            let mut number = first;
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                ticker.tick().await;
                if sender
                    .send(make_batch(run_tag, number * batch as u64, batch))
                    .await
                    .is_err()
                {
                    break;
                }
                number += 1;
                sent += batch as u64;
            }
            sent
        })
    };
    let traces = ingested / SPANS_PER_TRACE;
    let mut latencies = Vec::new();
    let mut state = run_tag | 1;
    let query_deadline = Instant::now() + Duration::from_secs(options.query_seconds);
    while Instant::now() < query_deadline {
        // xorshift: a different stored trace each time.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let trace = state % traces;
        let id = crate::model::to_hex(&bench_trace_id(run_tag, trace));
        let asked = Instant::now();
        let response = client
            .get(format!("http://{http}/api/v2/traces/{id}"))
            .header("accept", "application/protobuf")
            .send()
            .await?;
        let status = response.status();
        let body = response.bytes().await?;
        latencies.push(asked.elapsed());
        if status != 200 || body.is_empty() {
            anyhow::bail!("trace {id} came back with {status}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let background_spans = background.await?;
    println!(
        "query: {} trace-by-id requests over HTTP (10 spans each) with {} spans stored, ingest at half load ({} spans sent meanwhile)",
        latencies.len(),
        ingested,
        background_spans
    );
    println!("query: {}", latency_summary(&mut latencies));

    server.stop().await?;
    let stored = ingested + background_spans;
    let index_bytes = dir_bytes(&scratch.join("spans"));
    println!(
        "disk: spans index {:.1} MiB, {:.1} bytes per span (after the final commit; merges may still shrink it)",
        index_bytes as f64 / (1 << 20) as f64,
        index_bytes as f64 / stored as f64
    );
    println!(
        "memory: {:.0} MiB resident at the end (server and bench clients in one process)",
        resident_mib()
    );
    if options.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn bench_spans_are_about_300_bytes_with_8_attributes() {
        let request = make_batch(1, 0, 512);
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 512);
        assert!(spans.iter().all(|span| span.attributes.len() == 8));
        let per_span = request.encoded_len() / 512;
        assert!((250..=350).contains(&per_span), "{per_span} bytes per span");
        assert_eq!(spans[0].trace_id, spans[9].trace_id);
        assert_ne!(spans[9].trace_id, spans[10].trace_id);
    }
}
