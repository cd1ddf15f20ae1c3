//! `tracelink bench metrics`: what span metrics cost in memory and time, without I/O:
//! the record path per span, `/metrics` render time with many series, and the memory of
//! one operation's latency histograms with every window filled.

use std::time::Instant;

use crate::metrics::latency::{LatencyHistograms, Observation, OperationKey};
use crate::metrics::{default_buckets, Metrics};
use crate::model::{Span, TraceId};

pub struct MetricsBenchOptions {
    pub series: usize,
    pub spans: usize,
}

fn span(number: usize, series: usize) -> Span {
    let otlp = opentelemetry_proto::tonic::trace::v1::Span {
        trace_id: crate::bench::bench_trace_id(3, number as u64).to_vec(),
        span_id: (number as u64 + 1).to_be_bytes().to_vec(),
        // Letters, not digits: digits in span names are normalised away.
        name: format!("operation-{}", letters(number % series)),
        kind: 2,
        start_time_unix_nano: 1,
        end_time_unix_nano: 1 + 1_000_000 * (1 + (number as u64 % 500)),
        ..Default::default()
    };
    let mut span = Span::from_otlp(None, "", None, "", otlp)
        .unwrap_or_else(|rejected| panic!("bench span is valid: {}", rejected.reason));
    span.service = format!("service-{}", (number % series) % 50).into();
    span
}

fn letters(mut number: usize) -> String {
    let mut text = String::new();
    loop {
        text.push((b'a' + (number % 26) as u8) as char);
        number /= 26;
        if number == 0 {
            return text;
        }
    }
}

pub fn run(options: MetricsBenchOptions) {
    let series = options.series.max(1);
    let metrics = Metrics::new(default_buckets(), series * 2, true);
    let spans: Vec<Span> = (0..options.spans.max(series))
        .map(|number| span(number, series))
        .collect();
    let started = Instant::now();
    for (number, chunk) in spans.chunks(512).enumerate() {
        // Every held-back exemplar is settled as kept, as with sampling's default.
        let pending = metrics.record_spans(chunk, number as u64);
        metrics.settle(pending, true);
    }
    let elapsed = started.elapsed();
    println!(
        "record: {} spans into {} label sets in {:.1} ms: {:.0} ns per span (Prometheus histogram and counter with exemplars, hdrhistogram, service graph)",
        spans.len(),
        series,
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_nanos() as f64 / spans.len() as f64
    );
    for (name, render) in [
        (
            "OpenMetrics",
            Metrics::render_openmetrics as fn(&Metrics) -> String,
        ),
        ("0.0.4 text", Metrics::render_prometheus_text),
    ] {
        let started = Instant::now();
        let mut bytes = 0;
        let rounds = 5;
        for _ in 0..rounds {
            bytes = render(&metrics).len();
        }
        println!(
            "render: /metrics as {name} with {series} span series (+ buckets): {:.1} ms, {:.1} MiB",
            started.elapsed().as_secs_f64() * 1e3 / rounds as f64,
            bytes as f64 / (1 << 20) as f64
        );
    }

    // The latency snapshot the indexer writes every 10 s holds the histograms' lock while
    // it serialises: what that costs with this many operations.
    let started = Instant::now();
    let snapshot = crate::lock(&metrics.latency).snapshot();
    println!(
        "snapshot: latency histograms of {} operations serialised in {:.1} ms (lock held), {:.1} MiB",
        crate::lock(&metrics.latency).len(),
        started.elapsed().as_secs_f64() * 1e3,
        snapshot.len() as f64 / (1 << 20) as f64
    );

    // One operation with every minute of the last hour filled (1,000 spans a minute).
    let mut histograms = LatencyHistograms::default();
    let key = OperationKey {
        service: "orders".into(),
        span_name: "GET /orders/{id}".into(),
        span_kind: 2,
    };
    let now_minute = crate::metrics::latency::current_minute();
    for minute in now_minute - 59..=now_minute {
        for index in 0..1000u64 {
            histograms.record(
                &key,
                &Observation {
                    duration_us: 200 + (index * 7919) % 2_000_000,
                    end_unix_nano: minute * 60_000_000_000 + index,
                    error: index % 50 == 0,
                    trace_id: TraceId([1; 16]),
                },
                minute,
            );
        }
    }
    println!(
        "memory: one operation with cumulative, current-minute and 59 closed minutes (60k spans): {:.1} KiB",
        histograms.heap_bytes() as f64 / 1024.0
    );
    let started = Instant::now();
    let stats = histograms.stats(&key, Some(60), now_minute);
    println!(
        "query: 1-hour window of one operation (merge of 60 minutes): {:.2} ms, p99 {:.1} ms over {} spans",
        started.elapsed().as_secs_f64() * 1e3,
        stats.map_or(0.0, |stats| stats.p99_ms),
        60_000
    );
}
