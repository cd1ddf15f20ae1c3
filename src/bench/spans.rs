//! `tracelink bench spans`: ingest throughput against a null sink, trace-by-id latency,
//! disk, memory and start-up time.
//!
//! The servers run as child processes (`tracelink serve`, and `tracelink bench null-sink`,
//! which decodes each request and drops it), so their CPU time and peak memory are read
//! from `/proc` apart from the load generator's. Phase 0: the null sink under the load.
//! Phase 1 (ingest): `senders` gRPC clients send OTLP batches of `batch` spans (~300
//! bytes, 8 attributes, 10 spans per trace) as fast as they are acked; reports acked spans
//! per second, per CPU-second of the server, ack latency, the ratio to the null sink and
//! the peak resident memory. Phase 2 (query): while ingest runs at half the measured rate,
//! `GET /api/v2/traces/{id}` over HTTP for random stored traces; reports latency
//! percentiles. Then disk bytes per span, and the time to `/ready` of a restart on what is
//! stored. Nothing here is asserted; the figures are printed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan, Status};

use super::child::ChildServer;
use super::{cpu_seconds, dir_bytes, latency_summary, scratch_dir};

pub struct BenchOptions {
    pub spans: u64,
    pub batch: usize,
    pub senders: usize,
    pub query_seconds: u64,
    pub data_dir: Option<PathBuf>,
    /// Span metrics on (the default) or off, to measure what they cost.
    pub span_metrics: bool,
    /// Measure the decode-and-drop sink first, with the same load.
    pub null_sink: bool,
    /// `sampling.fraction` for the server (its default, 1.0, keeps everything).
    pub sampling_fraction: Option<f64>,
    /// Another tracelink binary whose server is measured instead of this one's.
    pub server_binary: Option<PathBuf>,
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
    async fn connect(endpoint: &str, refusals: Arc<AtomicU64>) -> anyhow::Result<Sender> {
        let client = TraceServiceClient::connect(endpoint.to_owned())
            .await?
            .max_encoding_message_size(256 << 20);
        Ok(Sender { client, refusals })
    }

    /// Send until acked; refusals (the queue is full) are counted and retried.
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

/// What one full-speed ingest phase measured.
pub(super) struct Ingest {
    pub(super) spans: u64,
    seconds: f64,
    /// The server's CPU seconds when the phase began, and what it used during it.
    server_cpu_before: f64,
    server_cpu: f64,
    client_cpu: f64,
    ack_latencies: Vec<Duration>,
    refusals: u64,
}

impl Ingest {
    pub(super) fn rate(&self) -> f64 {
        self.spans as f64 / self.seconds
    }

    pub(super) fn seconds(&self) -> f64 {
        self.seconds
    }

    /// The servers' CPU seconds when the phase began.
    pub(super) fn server_cpu_before(&self) -> f64 {
        self.server_cpu_before
    }

    pub(super) fn report(&mut self, what: &str) {
        println!(
            "{what}: {:.0} spans/s acked (wall); {:.0} spans per CPU-second of the server process ({:.2} cores busy), {:.0} µs of server CPU per span; load generator {:.2} cores; {} overload refusals retried",
            self.rate(),
            self.spans as f64 / self.server_cpu,
            self.server_cpu / self.seconds,
            self.server_cpu / self.spans as f64 * 1e6,
            self.client_cpu / self.seconds,
            self.refusals
        );
        println!(
            "{what}: ack latency per batch {}",
            latency_summary(&mut self.ack_latencies)
        );
    }
}

/// `senders` gRPC clients send `batches` batches as fast as they are acked.
async fn ingest(
    server: &ChildServer,
    options: &BenchOptions,
    run_tag: u64,
    batches: u64,
) -> anyhow::Result<Ingest> {
    let batch = options.batch;
    ingest_with(server, options.senders, batches, move |number| {
        make_batch(run_tag, number * batch as u64, batch)
    })
    .await
}

/// `senders` gRPC clients send batches `0..batches`, made by `make`, as fast as they are
/// acked.
pub(super) async fn ingest_with(
    server: &ChildServer,
    senders_wanted: usize,
    batches: u64,
    make: impl Fn(u64) -> ExportTraceServiceRequest + Send + Sync + 'static,
) -> anyhow::Result<Ingest> {
    let endpoint = format!("http://{}", server.otlp_grpc);
    ingest_to(
        &[endpoint],
        || server.cpu_seconds(),
        senders_wanted,
        batches,
        make,
    )
    .await
}

/// As [`ingest_with`], the senders spread over `endpoints` (sender `i` to endpoint
/// `i mod n`), the servers' CPU read by `server_cpu`.
pub(super) async fn ingest_to(
    endpoints: &[String],
    server_cpu: impl Fn() -> f64,
    senders_wanted: usize,
    batches: u64,
    make: impl Fn(u64) -> ExportTraceServiceRequest + Send + Sync + 'static,
) -> anyhow::Result<Ingest> {
    let make = Arc::new(make);
    let refusals = Arc::new(AtomicU64::new(0));
    let next_batch = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for index in 0..senders_wanted {
        let endpoint = &endpoints[index % endpoints.len()];
        senders.push(Sender::connect(endpoint, refusals.clone()).await?);
    }
    let server_cpu_before = server_cpu();
    let client_cpu_before = cpu_seconds();
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut spans = 0u64;
    for mut sender in senders {
        let next_batch = next_batch.clone();
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let number = next_batch.fetch_add(1, Ordering::Relaxed);
                if number >= batches {
                    return Ok::<Vec<(Duration, u64)>, tonic::Status>(latencies);
                }
                let request = make(number);
                let count = request
                    .resource_spans
                    .iter()
                    .flat_map(|resource| &resource.scope_spans)
                    .map(|scope| scope.spans.len() as u64)
                    .sum::<u64>();
                let sent = Instant::now();
                sender.send(request).await?;
                latencies.push((sent.elapsed(), count));
            }
        }));
    }
    let mut ack_latencies = Vec::new();
    for task in tasks {
        for (latency, count) in task.await?? {
            ack_latencies.push(latency);
            spans += count;
        }
    }
    Ok(Ingest {
        spans,
        seconds: started.elapsed().as_secs_f64(),
        server_cpu_before,
        server_cpu: server_cpu() - server_cpu_before,
        client_cpu: cpu_seconds() - client_cpu_before,
        ack_latencies,
        refusals: refusals.load(Ordering::Relaxed),
    })
}

/// Wait until the server says it has indexed `spans` spans (its own counter).
pub(super) async fn wait_indexed(http: std::net::SocketAddr, spans: u64) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let text = client
            .get(format!("http://{http}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let indexed = text
            .lines()
            .find_map(|line| line.strip_prefix("tracelink_spans_indexed_total "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .ok_or_else(|| anyhow::anyhow!("no tracelink_spans_indexed_total in /metrics"))?;
        if indexed as u64 >= spans {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("only {indexed} of {spans} spans indexed after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(super) async fn wait_ready(http: std::net::SocketAddr) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    loop {
        let ready = client
            .get(format!("http://{http}/ready"))
            .send()
            .await
            .is_ok_and(|response| response.status() == 200);
        if ready {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn run(options: BenchOptions) -> anyhow::Result<()> {
    let scratch = scratch_dir(options.data_dir.clone())?;
    let run_tag = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(1);
    let batches = options.spans.div_ceil(options.batch as u64);
    println!(
        "ingest: {} spans in batches of {} (10 spans a trace, 8 attributes a span, ~300 bytes) from {} gRPC senders; servers are child processes, measured from /proc",
        batches * options.batch as u64,
        options.batch,
        options.senders
    );

    // === phase 0: the same load against a sink that decodes and drops ===
    let null_rate = if options.null_sink {
        let sink = ChildServer::null_sink()?;
        let mut measured = ingest(&sink, &options, run_tag ^ 0x5eed, batches).await?;
        measured.report("null sink");
        sink.terminate()?;
        Some(measured.rate())
    } else {
        None
    };

    // === phase 1: ingest at full speed ===
    let mut env = vec![(
        "TRACELINK_METRICS_SPAN_METRICS",
        options.span_metrics.to_string(),
    )];
    if let Some(fraction) = options.sampling_fraction {
        env.push(("TRACELINK_SAMPLING_FRACTION", fraction.to_string()));
    }
    let server = ChildServer::serve(options.server_binary.as_deref(), &scratch, &env)?;
    let http = server
        .http
        .ok_or_else(|| anyhow::anyhow!("tracelink did not say its http address"))?;
    wait_ready(http).await?;
    println!(
        "tracelink: span metrics {}, sampling fraction {}",
        if options.span_metrics { "on" } else { "off" },
        options.sampling_fraction.unwrap_or(1.0)
    );
    // VmHWM counts the index files' mapped pages too; the heap's own peak is sampled.
    let sampling = Arc::new(AtomicBool::new(true));
    let anonymous_peak = {
        let sampling = sampling.clone();
        let status = format!("/proc/{}/status", server.pid());
        tokio::spawn(async move {
            let mut peak = 0f64;
            while sampling.load(Ordering::Relaxed) {
                peak = peak.max(super::child::status_mib(&status, "RssAnon:"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    };
    let mut measured = ingest(&server, &options, run_tag, batches).await?;
    sampling.store(false, Ordering::Relaxed);
    let anonymous_peak = anonymous_peak.await?;
    measured.report("tracelink");
    if let Some(null_rate) = null_rate {
        println!(
            "tracelink: {:.2} × the null sink's rate, same load generator, same run",
            measured.rate() / null_rate
        );
    }
    let (peak_mib, _, _) = server.memory_mib();
    println!(
        "memory: peak resident {peak_mib:.0} MiB during full-rate ingest (VmHWM, mapped index pages included); anonymous memory peaked at {anonymous_peak:.0} MiB (sampled every 100 ms)"
    );
    // The acked rate leaves out what the indexer still had to do (the head holds traces
    // for trace_idle_ms, and more when the indexer is behind): count the server's CPU
    // until every acked span is in the index too.
    let acked_at = Instant::now();
    wait_indexed(http, measured.spans).await?;
    let all_in_cpu = server.cpu_seconds() - measured.server_cpu_before;
    println!(
        "tracelink: every acked span indexed {:.1} s after the last ack; counting that work, {:.0} spans per CPU-second of the server process, {:.1} µs per span",
        acked_at.elapsed().as_secs_f64(),
        measured.spans as f64 / all_in_cpu,
        all_in_cpu / measured.spans as f64 * 1e6
    );
    let ingested = measured.spans;
    let rate = measured.rate();

    // === phase 2: trace by id over HTTP while ingest runs at half load ===
    let refusals = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let stop = stop.clone();
        let mut sender =
            Sender::connect(&format!("http://{}", server.otlp_grpc), refusals.clone()).await?;
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
    let query_seconds = options.query_seconds;
    // The query client has a thread and a runtime of its own: on the load generator's
    // runtime, an answer waits while a worker builds the next background batch, and the
    // latency measured would be the client's.
    let queries = std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let client = reqwest::Client::new();
            let mut latencies = Vec::new();
            let mut state = run_tag | 1;
            let query_deadline = Instant::now() + Duration::from_secs(query_seconds);
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
            Ok(latencies)
        })
    });
    let mut latencies = tokio::task::spawn_blocking(move || queries.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the query thread panicked"))??;
    stop.store(true, Ordering::Relaxed);
    let background_spans = background.await?;
    let stored = ingested + background_spans;
    println!(
        "query: {} trace-by-id requests over HTTP (10 spans each) with {stored} spans stored, ingest at half load ({background_spans} spans sent meanwhile)",
        latencies.len(),
    );
    println!("query: {}", latency_summary(&mut latencies));
    let (_, resident_mib, anonymous_mib) = server.memory_mib();
    println!(
        "memory: {resident_mib:.0} MiB resident after the query phase ({anonymous_mib:.0} MiB of it anonymous, the rest mapped index pages), {:.1} MiB per million spans stored",
        resident_mib / (stored as f64 / 1e6)
    );
    server.terminate()?;
    let index_bytes = dir_bytes(&scratch.join("traces"));
    println!(
        "disk: traces index {:.1} MiB, {:.1} bytes per span (after the final commit)",
        index_bytes as f64 / (1 << 20) as f64,
        index_bytes as f64 / stored as f64
    );

    // === phase 3: start again on what is stored ===
    let started = Instant::now();
    let server = ChildServer::serve(options.server_binary.as_deref(), &scratch, &env)?;
    let http = server
        .http
        .ok_or_else(|| anyhow::anyhow!("tracelink did not say its http address"))?;
    wait_ready(http).await?;
    let (_, resident_mib, _) = server.memory_mib();
    println!(
        "startup: /ready {:.2} s after the process started, with {stored} spans stored; {resident_mib:.0} MiB resident",
        started.elapsed().as_secs_f64()
    );
    server.terminate()?;
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
        // Ordinary spans are stored as they came: nothing in them for the redactor.
        let redactor = crate::redact::Redactor::new(crate::redact::RedactionConfig {
            builtin: true,
            ..Default::default()
        });
        for span in spans {
            assert!(!redactor.screen(&span.encode_to_vec()), "{span:?}");
        }
        assert_ne!(spans[9].trace_id, spans[10].trace_id);
    }
}
